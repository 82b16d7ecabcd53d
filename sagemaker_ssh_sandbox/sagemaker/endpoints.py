"""Real-time endpoints in the sandbox: CreateEndpoint, DescribeEndpoint, ListEndpoints,
DeleteEndpoint, and AddTags/ListTags/DeleteTags on endpoint ARNs, served through ``Gateway.apis``.

Models and endpoint configurations stay in moto (the gateway forwards CreateModel,
CreateEndpointConfig and their Describe/Delete); CreateEndpoint reads both from there and starts
``InitialInstanceCount`` containers per production variant, each running
:mod:`sagemaker_ssh_sandbox.sagemaker.model_server` on the model's files
(:mod:`sagemaker_ssh_sandbox.sagemaker.serving`). Lifecycle, as SageMaker reports it:

* ``Creating`` until every instance's model server has loaded the model, then ``InService``;
* ``Failed`` with a FailureReason when a container ends before that, or when a variant's
  ``ContainerStartupHealthCheckTimeoutInSeconds`` passes first;
* DeleteEndpoint: ``Deleting`` while the containers stop (SIGTERM, SIGKILL after the sandbox's
  stop grace), then gone: DescribeEndpoint answers ``Could not find endpoint``.

Container output goes to CloudWatch Logs group ``/aws/sagemaker/Endpoints/<name>``, stream
``<variant>/<instance id>``, where Logs Insights finds the SSM registration line. An instance
whose container ends after ``InService`` is not replaced (the endpoint stays InService).

SSM access (``EnableSSMAccess`` on a production variant, as AWS documents it in "Access
containers through SSM"): each instance of such a variant runs SageMaker's own SSM agent (the
agent stand-in as a platform sidecar, as for training jobs' remote debugging) under the target
``sagemaker-endpoint:<endpoint>_<variant>_<instance id>``, which is no managed instance and
takes sessions only, while the instance runs and the endpoint is not deleted or failed
(``TargetNotConnected`` otherwise). The instance's SSM log stream ``<variant>/<instance id>/ssm``
is created with the target ID as its first line: AWS documents that stream and that the target
IDs are "listed at the beginning", not the exact wording of that line, so clients should build
the target from the stream's name. Turning SSM access on for a running endpoint needs
UpdateEndpoint with a new configuration.

UpdateEndpoint (AWS: "Deploys the EndpointConfig specified in the request to a new fleet of
instances", shifts the traffic to them "and then deletes the old instances"; the endpoint is
``Updating`` meanwhile and ``InService`` after): only an ``InService`` endpoint may be updated
(``ValidationException`` otherwise); a new fleet of instances with new IDs starts from the new
configuration (their log streams, and SageMaker's agent where the new variant has SSM access);
once every new instance is ready the endpoint takes the new configuration, is ``InService`` and
the old instances are stopped (their SSM targets are no longer connected; their log streams
stay, as in CloudWatch). A new instance that ends before it is ready fails the update: the new
fleet is stopped and the endpoint stays on its configuration, ``InService`` with a
FailureReason. DescribeEndpoint shows ``PendingDeploymentSummary`` while it updates.
"""
from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_sandbox.sagemaker import remote_debug, serving
from sagemaker_ssh_sandbox.sagemaker.container import Container, ContainerConfig, OutputCallback
from sagemaker_ssh_sandbox.sagemaker.cwlogs import LogShipper
from sagemaker_ssh_sandbox.sagemaker.jobs import (
    NAME_RE,
    ApiError,
    _in_range,
    list_page,
    tag_operation,
)
from sagemaker_ssh_sandbox.sagemaker.layout import JobSetupError, Platform
from sagemaker_ssh_sandbox.sagemaker.model_server import READY_LINE

logger = logging.getLogger(__name__)

OPERATIONS = ("CreateEndpoint", "DescribeEndpoint", "ListEndpoints", "DeleteEndpoint",
              "UpdateEndpoint")
TAG_OPERATIONS = ("AddTags", "ListTags", "DeleteTags")
FAILURE_REASON_MAX = 1024
SSM_TARGET_PREFIX = "sagemaker-endpoint:"


@dataclass
class Instance:
    id: str
    variant: str
    container: Container | None = None
    ready: bool = False
    exit_code: int | None = None
    ssm: bool = False  # SageMaker's agent runs in it (its variant had EnableSSMAccess)
    fleet: int = 0  # the deployment that started it: 0 CreateEndpoint, n the n-th update
    retired: bool = False  # replaced by UpdateEndpoint (stopped, or being stopped)


@dataclass
class Endpoint:
    name: str
    arn: str
    config_name: str
    variants: list[dict[str, Any]]
    tags: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)
    status: str = "Creating"
    failure_reason: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)
    fleet: int = 0  # the newest deployment (UpdateEndpoint counts up)
    pending: tuple[str, list[dict[str, Any]]] | None = None  # UpdateEndpoint's config
    events: queue.Queue[tuple[str, Instance | None, int | None]] = field(
        default_factory=queue.Queue)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def set_status(self, status: str, reason: str | None = None) -> None:
        with self.lock:
            self.status = status
            if reason:
                self.failure_reason = reason[:FAILURE_REASON_MAX]
            self.modified = time.time()

    def describe(self) -> dict[str, Any]:
        with self.lock:
            variants = []
            for v in self.variants:
                name = v["VariantName"]
                serving_now = [i for i in self.instances if i.variant == name and i.ready
                               and i.exit_code is None and not i.retired]
                weight = float(v.get("InitialVariantWeight", 1.0))
                entry: dict[str, Any] = {
                    "VariantName": name, "CurrentWeight": weight, "DesiredWeight": weight,
                    "CurrentInstanceCount": len(serving_now),
                    "DesiredInstanceCount": int(v.get("InitialInstanceCount") or 1)}
                if name in self.images:
                    entry["DeployedImages"] = [{"SpecifiedImage": self.images[name],
                                                "ResolvedImage": self.images[name],
                                                "ResolutionTime": self.created}]
                variants.append(entry)
            out: dict[str, Any] = {
                "EndpointName": self.name, "EndpointArn": self.arn,
                "EndpointConfigName": self.config_name, "ProductionVariants": variants,
                "EndpointStatus": self.status, "CreationTime": self.created,
                "LastModifiedTime": self.modified}
            if self.failure_reason:
                out["FailureReason"] = self.failure_reason
            if self.pending is not None:
                out["PendingDeploymentSummary"] = {"EndpointConfigName": self.pending[0],
                                                   "StartTime": self.modified}
            return out

    def summary(self) -> dict[str, Any]:
        return {"EndpointName": self.name, "EndpointArn": self.arn,
                "CreationTime": self.created, "LastModifiedTime": self.modified,
                "EndpointStatus": self.status}


class EndpointsAPI:
    """Endpoint records, their containers, and the JSON 1.1 operations on them."""

    def __init__(self, region: str, account: str, sagemaker: Any, s3: Any, platform: Platform,
                 state_dir: Path, bridges: dict[int, Path],
                 binds: list[tuple[str, str]] | None = None,
                 shipper: LogShipper | None = None, stop_grace: float = 10.0) -> None:
        self.region = region
        self.account = account
        self.sagemaker = sagemaker
        self.s3 = s3
        self.platform = platform
        self.state_dir = state_dir
        self.bridges = dict(bridges)
        self.binds = list(binds or [])
        self.shipper = shipper
        self.stop_grace = stop_grace
        # the SSM stand-in, for variants with EnableSSMAccess (set by the sandbox server)
        self.ssm_backend: Any = None
        self._endpoints: dict[str, Endpoint] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- registry ---------------------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            return sorted(self._endpoints.values(), key=lambda e: e.created)

    def _arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:endpoint/{name.lower()}"

    def get(self, name: str) -> Endpoint:
        with self._lock:
            endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise ApiError("ValidationException", f'Could not find endpoint "{self._arn(name)}".')
        return endpoint

    def by_arn(self, arn: str) -> Endpoint | None:
        with self._lock:
            return next((e for e in self._endpoints.values() if e.arn == arn), None)

    def containers(self) -> list[dict[str, Any]]:
        return [dict(i.container.info(), job=e.name, kind="endpoint")
                for e in self.endpoints() for i in list(e.instances) if i.container is not None]

    def endpoint_dir(self, name: str) -> Path:
        return self.state_dir / "jobs" / "endpoint" / name

    # -- dispatch ---------------------------------------------------------------------------
    def handles(self, operation: str, body: dict[str, Any]) -> bool:
        if operation in OPERATIONS:
            return True
        return operation in TAG_OPERATIONS and self.by_arn(body.get("ResourceArn", "")) is not None

    def handle(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        if operation in TAG_OPERATIONS:
            return self._tags(operation, body)
        handler: Callable[[dict[str, Any]], dict[str, Any]] = {
            "CreateEndpoint": self._create, "DescribeEndpoint": self._describe,
            "ListEndpoints": self._list, "DeleteEndpoint": self._delete,
            "UpdateEndpoint": self._update}[operation]
        return handler(body)

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("EndpointName") or "")
        if not NAME_RE.match(name):
            raise ApiError("ValidationException",
                           f"1 validation error detected: Value '{name}' at 'endpointName' "
                           "failed to satisfy constraint: Member must satisfy regular "
                           f"expression pattern: {NAME_RE.pattern}")
        config_name = str(body.get("EndpointConfigName") or "")
        variants = self._config_variants(config_name)
        endpoint = Endpoint(name=name, arn=self._arn(name), config_name=config_name,
                            variants=variants,
                            tags={t["Key"]: t.get("Value", "") for t in body.get("Tags") or []})
        with self._lock:
            if name in self._endpoints:
                raise ApiError("ValidationException",
                               f'Cannot create already existing endpoint "{endpoint.arn}".')
            self._endpoints[name] = endpoint
            thread = threading.Thread(target=self._lifecycle, args=(endpoint,), daemon=True,
                                      name=f"endpoint {name}")
            self._threads.append(thread)
        logger.info("endpoint %s: creating from %s", name, config_name)
        thread.start()
        return {"EndpointArn": endpoint.arn}

    def _config_variants(self, config_name: str) -> list[dict[str, Any]]:
        try:
            config = self.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
        except Exception as e:
            message = getattr(e, "response", {}).get("Error", {}).get("Message") or str(e)
            raise ApiError("ValidationException", message) from None
        return list(json.loads(json.dumps(config.get("ProductionVariants") or [], default=str)))

    def _update(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self.get(str(body.get("EndpointName") or ""))
        config_name = str(body.get("EndpointConfigName") or "")
        variants = self._config_variants(config_name)
        with endpoint.lock:
            if endpoint.status != "InService":
                raise ApiError("ValidationException",
                               f'Cannot update in-progress endpoint "{endpoint.arn}".')
            endpoint.pending = (config_name, variants)
            endpoint.failure_reason = None
            endpoint.set_status("Updating")
            endpoint.events.put(("update", None, None))
        logger.info("endpoint %s: updating to %s", endpoint.name, config_name)
        return {"EndpointArn": endpoint.arn}

    def _describe(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.get(str(body.get("EndpointName") or "")).describe()

    def _delete(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self.get(str(body.get("EndpointName") or ""))
        with endpoint.lock:
            if endpoint.status != "Deleting":
                endpoint.set_status("Deleting")
                endpoint.events.put(("delete", None, None))
        return {}

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        contains = str(body.get("NameContains") or "").lower()
        status = body.get("StatusEquals")
        found = [e for e in self.endpoints() if contains in e.name.lower()
                 and (not status or e.status == status)
                 and _in_range(e.created, body, "CreationTime")
                 and _in_range(e.modified, body, "LastModifiedTime")]
        key: Callable[[Endpoint], Any] = {"Name": lambda e: e.name.lower(),
                                          "Status": lambda e: e.status}.get(
            str(body.get("SortBy")), lambda e: e.created)
        return list_page(found, body, key, "Endpoints", "Descending")

    def _tags(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self.by_arn(body.get("ResourceArn", ""))
        assert endpoint is not None
        with endpoint.lock:
            return tag_operation(endpoint.tags, operation, body)

    def ssm_refusal(self, target_id: str) -> str | None:
        """Why SageMaker opens no session to the endpoint target ``target_id`` now (None: it
        does)."""
        parsed = parse_ssm_target(target_id)
        if parsed is None:
            return "not an endpoint target"
        with self._lock:
            endpoint = self._endpoints.get(parsed[0])
        if endpoint is None:
            return "no such endpoint"
        with endpoint.lock:
            if endpoint.status in ("Deleting", "Failed"):
                return f"the endpoint is {endpoint.status}"
            instance = next((i for i in endpoint.instances if i.id == parsed[2]
                             and i.variant == parsed[1]), None)
        if instance is None or instance.exit_code is not None or instance.retired:
            return f"no running instance {parsed[2]}"
        return None if instance.ssm else "the variant has no SSM access"

    # -- lifecycle --------------------------------------------------------------------------
    def _lifecycle(self, endpoint: Endpoint) -> None:
        """The endpoint's life, from creation until DeleteEndpoint (or sandbox shutdown)."""
        try:
            self._start_instances(endpoint, endpoint.variants, 0)
            self._watch(endpoint)
        except JobSetupError as e:
            self._fail(endpoint, str(e))
        except Exception as e:  # the endpoint fails; the sandbox keeps serving
            logger.exception("endpoint %s failed in the sandbox itself", endpoint.name)
            self._fail(endpoint, f"InternalFailure: sandbox: {e}")
        while endpoint.status != "Deleting":
            endpoint.events.get()
        self._terminate(endpoint)
        with self._lock:
            if self._endpoints.get(endpoint.name) is endpoint:
                del self._endpoints[endpoint.name]
        logger.info("endpoint %s deleted", endpoint.name)

    def _fail(self, endpoint: Endpoint, reason: str) -> None:
        with endpoint.lock:
            if endpoint.status == "Creating":
                endpoint.set_status("Failed", reason)
        threading.Thread(target=self._terminate, args=(endpoint,), daemon=True).start()

    def _start_instances(self, endpoint: Endpoint, variants: list[dict[str, Any]],
                         fleet: int) -> None:
        """Start the instances of ``variants`` as deployment ``fleet``."""
        for variant in variants:
            definition = serving.container_definition(
                serving.describe_model(self.sagemaker, str(variant.get("ModelName"))))
            endpoint.images[variant["VariantName"]] = str(definition.get("Image") or "")
            for _ in range(int(variant.get("InitialInstanceCount") or 1)):
                if endpoint.status not in ("Creating", "Updating") or endpoint.fleet != fleet:
                    return
                self._start_instance(endpoint, variant, definition, fleet)

    def _start_instance(self, endpoint: Endpoint, variant_config: dict[str, Any],
                        definition: dict[str, Any], fleet: int) -> None:
        variant = str(variant_config["VariantName"])
        instance = Instance(id=f"i-{secrets.token_hex(9)[:17]}", variant=variant, fleet=fleet,
                            ssm=variant_config.get("EnableSSMAccess") is True)
        root = self.endpoint_dir(endpoint.name) / instance.id
        config = ContainerConfig(name=f"{endpoint.name}-{instance.id}", hostname=instance.id,
                                 root=root, argv=[], env={}, bridges=dict(self.bridges),
                                 binds=list(self.binds))
        container = Container(config, on_output=self._watcher(endpoint, instance),
                              python=self.platform.python)
        config.argv, config.cwd, config.env = serving.prepare_endpoint(
            self.s3, container.opt_ml, definition, self.platform)
        if self.ssm_backend is not None and instance.ssm:
            target_id = ssm_target(endpoint.name, variant, instance.id)
            self.ssm_backend.register_sagemaker_target(target_id, instance.id)
            config.sidecars.append(remote_debug.agent_sidecar(
                target_id, self.platform.region, self.platform.env()))
            if self.shipper is not None:  # the SSM log stream, its target first
                self.shipper.sink_to(f"/aws/sagemaker/Endpoints/{endpoint.name}",
                                     f"{variant}/{instance.id}/ssm")(
                    "ssm", f"[sagemaker ssm logs][container_0] SSM target: {target_id}")
        with endpoint.lock:
            instance.container = container
            endpoint.instances.append(instance)
        container.start()
        threading.Thread(target=lambda: endpoint.events.put(("exit", instance, container.wait())),
                         daemon=True, name=f"{config.name} wait").start()

    def _watcher(self, endpoint: Endpoint, instance: Instance) -> OutputCallback:
        sink: OutputCallback | None = None
        if self.shipper is not None:
            sink = self.shipper.sink_to(f"/aws/sagemaker/Endpoints/{endpoint.name}",
                                        f"{instance.variant}/{instance.id}")

        def on_output(name: str, line: str) -> None:
            if sink is not None:
                sink(name, line)
            if line.strip() == READY_LINE:
                endpoint.events.put(("ready", instance, None))

        return on_output

    def _startup_deadline(self, endpoint: Endpoint) -> float | None:
        key = "ContainerStartupHealthCheckTimeoutInSeconds"
        limits = [float(v[key]) for v in endpoint.variants if v.get(key)]
        return time.monotonic() + min(limits) if limits else None

    def _watch(self, endpoint: Endpoint) -> None:
        """React to instance events until DeleteEndpoint."""
        deadline = self._startup_deadline(endpoint)
        while endpoint.status != "Deleting":
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event, instance, code = endpoint.events.get(timeout=timeout)
            except queue.Empty:
                deadline = None
                waiting = sorted({i.variant for i in endpoint.instances if not i.ready})
                self._fail(endpoint, f"The primary container for production variant "
                                     f"{', '.join(waiting)} did not pass the ping health check "
                                     "within ContainerStartupHealthCheckTimeoutInSeconds. "
                                     f"{self._logs_hint(endpoint)}")
                continue
            if event == "update":
                self._start_update(endpoint)
                continue
            if instance is None:
                continue
            with endpoint.lock:
                if event == "ready":
                    instance.ready = True
                else:
                    instance.exit_code = code
            if instance.retired:
                continue
            if endpoint.status == "Updating" and instance.fleet == endpoint.fleet:
                self._update_event(endpoint, event, instance, code)
            elif event == "ready" and endpoint.status == "Creating" and all(
                    i.ready for i in endpoint.instances) and self._all_started(endpoint):
                endpoint.set_status("InService")
                deadline = None
                logger.info("endpoint %s is InService", endpoint.name)
            elif event == "exit" and endpoint.status == "Creating":
                self._fail(endpoint, self._exit_reason(endpoint, instance, code))
            elif event == "exit" and endpoint.status == "InService":
                logger.warning("endpoint %s: the container of %s ended (exit code %s)",
                               endpoint.name, instance.id, code)

    def _all_started(self, endpoint: Endpoint) -> bool:
        wanted = sum(int(v.get("InitialInstanceCount") or 1) for v in endpoint.variants)
        return len(endpoint.instances) == wanted

    # -- UpdateEndpoint ---------------------------------------------------------------------
    def _start_update(self, endpoint: Endpoint) -> None:
        """Start the new fleet of the configuration UpdateEndpoint named."""
        with endpoint.lock:
            if endpoint.pending is None or endpoint.status != "Updating":
                return
            endpoint.fleet += 1
            fleet, variants = endpoint.fleet, endpoint.pending[1]
        try:
            self._start_instances(endpoint, variants, fleet)
        except JobSetupError as e:
            self._end_update(endpoint, f"UpdateEndpoint failed: {e}")

    def _update_event(self, endpoint: Endpoint, event: str, instance: Instance,
                      code: int | None) -> None:
        if event == "exit":
            self._end_update(endpoint, self._exit_reason(endpoint, instance, code))
            return
        assert endpoint.pending is not None
        new = [i for i in endpoint.instances if i.fleet == endpoint.fleet]
        wanted = sum(int(v.get("InitialInstanceCount") or 1) for v in endpoint.pending[1])
        if len(new) == wanted and all(i.ready for i in new):
            self._end_update(endpoint, None)

    def _end_update(self, endpoint: Endpoint, failure: str | None) -> None:
        """The new fleet takes over (``failure`` None), or is dropped; the other is stopped."""
        with endpoint.lock:
            if endpoint.pending is None:
                return
            fleet = endpoint.fleet
            if failure is None:
                endpoint.config_name, endpoint.variants = endpoint.pending
            stopped = [i for i in endpoint.instances if not i.retired and (
                (i.fleet != fleet) if failure is None else (i.fleet == fleet))]
            for instance in stopped:
                instance.retired = True
            endpoint.pending = None
            endpoint.set_status("InService", failure)
        logger.info("endpoint %s: update %s", endpoint.name,
                    "done" if failure is None else f"failed: {failure}")
        containers = [i.container for i in stopped if i.container is not None]
        for container in containers:
            threading.Thread(target=container.terminate, args=(self.stop_grace,), daemon=True,
                             name=f"{container.name} retire").start()

    def _logs_hint(self, endpoint: Endpoint) -> str:
        return (f"Please check the CloudWatch logs of this endpoint "
                f"(/aws/sagemaker/Endpoints/{endpoint.name}).")

    def _exit_reason(self, endpoint: Endpoint, instance: Instance, code: int | None) -> str:
        container = instance.container
        tail = [line for line in (container.stderr_tail if container else []) if line.strip()]
        why = f": {tail[-1].strip()}" if tail else ""
        return (f"The primary container for production variant {instance.variant} did not pass "
                f"the ping health check: its process exited with code {code}{why}. "
                f"{self._logs_hint(endpoint)}")

    def _terminate(self, endpoint: Endpoint) -> None:
        """Stop every container of the endpoint (in parallel) and wait for them."""
        with endpoint.lock:
            containers = [i.container for i in endpoint.instances if i.container is not None]
        threads = [threading.Thread(target=c.terminate, args=(self.stop_grace,), daemon=True)
                   for c in containers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for container in containers:
            container.remove_scratch()

    # -- daemon -----------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> None:
        """Delete every endpoint (stopping its containers) and wait for that."""
        for endpoint in self.endpoints():
            with endpoint.lock:
                if endpoint.status != "Deleting":
                    endpoint.set_status("Deleting")
                    endpoint.events.put(("delete", None, None))
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def ssm_target(endpoint: str, variant: str, instance_id: str) -> str:
    """The target of a single-container endpoint's instance (AWS's documented format)."""
    return f"{SSM_TARGET_PREFIX}{endpoint}_{variant}_{instance_id}"


def parse_ssm_target(text: str) -> tuple[str, str, str] | None:
    """(endpoint, variant, instance id); names of endpoints and variants have no ``_``; a
    multi-container target's ``_<container>`` suffix is dropped."""
    if not text.startswith(SSM_TARGET_PREFIX):
        return None
    parts = text[len(SSM_TARGET_PREFIX):].split("_", 3)
    return (parts[0], parts[1], parts[2]) if len(parts) >= 3 and all(parts[:3]) else None
