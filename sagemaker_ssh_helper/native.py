"""The native transport on the client: SSH into training jobs through SageMaker's own SSM
targets (remote debugging), with the same experience as the hybrid transport.

A training job is native when its environment says ``SSH_TRANSPORT=native`` (the wrappers'
``transport="native"``). For such a job ``DescribeTrainingJob`` tells everything: whether
remote debugging is on, the secondary status (SageMaker opens sessions only while it is
``Training``), the nodes (``ResourceConfig.InstanceCount``, the first ``SSH_INSTANCE_COUNT`` of
them run sshd), the owner and the S3 prefix of the keys. No managed instance is looked up.

Connecting: pick the node, put this client's public key in the job's folder under its owner's,
``<prefix><owner>/<job>/`` in S3, where only the owner may write (sshd reads it at login
through ``AuthorizedKeysCommand``, with the job's own credentials), pin the host keys the
container published next to it, and start ``AWS-StartSSHSession`` to
``sagemaker-training-job:<job>_algo-<n>`` on port 22 through the plugin: from there on the
connection is the hybrid one (``connect.run_and_explain``, ``start-proxy``, ``SSMProxy``).

Trust: the session target is named by SageMaker after the job and node, so a session to it
reaches that job's container and no other (no tag that another job could copy is involved); the
host keys read from S3 are then checked by ssh against that container's sshd.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from sagemaker_ssh_helper import aws, fqdn, retry, transport
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError, UsageError
from sagemaker_ssh_helper.transport import KeyLayout

if TYPE_CHECKING:  # connect imports this module where a job is native
    from sagemaker_ssh_helper.connect import Choice, Context, Prepared
    from sagemaker_ssh_helper.keys import Authorized
    from sagemaker_ssh_helper.resources import Row

logger = logging.getLogger(__name__)

FINISHED = ("Completed", "Failed", "Stopped", "Stopping")
READY = "Training"
Clock = Callable[[], float]
Sleep = Callable[[float], None]


class Resource:
    """What a training job and an endpoint reached over SageMaker's targets have in common:
    the environment SSH Helper's wrapper wrote, and whether SageMaker runs its agent there."""

    kind = ""  # "training job", "endpoint"
    arn_key = ""  # the ARN's member in the Describe answer
    relaunch = ""  # how to get the environment right
    launched = ""  # "started", "deployed"
    name = ""
    described: dict[str, Any] = {}

    @property
    def env(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def sagemaker_agent(self) -> bool:
        """SageMaker runs its SSM agent there (remote debugging, the variant's SSM access)."""
        raise NotImplementedError

    @property
    def transport(self) -> str:
        """``native``/``hybrid`` as the wrapper set it; "" for resources launched without it."""
        return self.env.get(transport.TRANSPORT_ENV, "")

    @property
    def runs_ssh(self) -> bool:
        return self.env.get("START_SSH", "").strip().lower() == "true"

    @property
    def native(self) -> bool:
        """Reached over SageMaker's target: launched native, or SageMaker's agent in a resource
        that SSH Helper did not set up (only a shell there)."""
        return self.transport == transport.NATIVE or (self.sagemaker_agent and not self.runs_ssh)

    def layout(self) -> KeyLayout:
        """Its key folder, whose bucket must be owned by the account the launch chose (else
        the resource's own)."""
        layout = transport.KeyLayout.from_environment(
            self.env, self.name, arn_account(self.described.get(self.arn_key)))
        if layout is None:
            raise ResolutionError(f"{self.kind} {self.name} has no {transport.KEYS_PATH_ENV} or "
                                  f"SSH_OWNER_TAG in its environment: {self.relaunch} with SSH "
                                  "Helper's transport='native'")
        return layout

    fqdn_kind = ""  # "training", "inference"

    @property
    def node_names(self) -> list[str]:
        """Its nodes that run sshd (once waited for): hosts, or instance IDs."""
        raise NotImplementedError

    def target_of(self, node: str) -> str:
        """SageMaker's SSM target of ``node``."""
        raise NotImplementedError

    def targets(self) -> list[str]:
        """SageMaker's SSM targets that run sshd (once waited for)."""
        return [self.target_of(node) for node in self.node_names]

    def check_sshd(self, target: fqdn.Target, shell: bool) -> None:
        if not shell and not self.runs_ssh:
            raise ResolutionError(
                f"no SSH server runs in {self.kind} {self.name} (it was not {self.launched} "
                f"with SSH Helper): open a shell in it with `sm-ssh shell {target.fqdn}`")


class Job(Resource):
    """One training job as DescribeTrainingJob reports it."""

    kind, arn_key, relaunch, launched = ("training job", "TrainingJobArn", "relaunch it",
                                         "started")
    fqdn_kind = "training"

    def __init__(self, described: dict[str, Any]) -> None:
        self.described = described
        self.name = str(described.get("TrainingJobName", ""))
        self._env: dict[str, str] = {str(k): str(v) for k, v in
                                     dict(described.get("Environment") or {}).items()}

    @property
    def env(self) -> dict[str, str]:
        return self._env

    @property
    def status(self) -> str:
        return str(self.described.get("TrainingJobStatus", ""))

    @property
    def secondary(self) -> str:
        return str(self.described.get("SecondaryStatus", ""))

    @property
    def remote_debug(self) -> bool:
        config = dict(self.described.get("RemoteDebugConfig") or {})
        return bool(config.get("EnableRemoteDebug"))

    @property
    def sagemaker_agent(self) -> bool:
        return self.remote_debug

    @property
    def node_names(self) -> list[str]:
        return self.ssh_hosts

    def target_of(self, node: str) -> str:
        return transport.training_target(self.name, node)

    @property
    def hosts(self) -> list[str]:
        count = int(dict(self.described.get("ResourceConfig") or {}).get("InstanceCount") or 1)
        return [f"algo-{i}" for i in range(1, max(count, 1) + 1)]

    @property
    def ssh_hosts(self) -> list[str]:
        try:
            count = int(self.env.get("SSH_INSTANCE_COUNT", "1"))
        except ValueError:
            count = 1
        return self.hosts[:max(1, count)]

    def since(self, now: float) -> float | None:
        """Seconds in the current secondary status, if SageMaker said when it began."""
        transitions = list(self.described.get("SecondaryStatusTransitions") or [])
        start: Any = transitions[-1].get("StartTime") if transitions else None
        if start is not None and hasattr(start, "timestamp"):
            start = start.timestamp()
        return max(0.0, now - float(start)) if isinstance(start, (int, float)) else None


def describe(ctx: Context, target: fqdn.Target) -> Job | None:
    """The job ``target`` names, or None when it cannot be described (not found, no
    permission: the hybrid path then explains)."""
    sm = aws.client(ctx.session, "sagemaker", ctx.region_name)
    try:
        return Job(sm.describe_training_job(TrainingJobName=target.name))
    except Exception as e:
        logger.debug("DescribeTrainingJob %s: %s", target.name, e)
        return None


def check_reachable(job: Job, target: fqdn.Target, shell: bool = False) -> None:
    """One line for each state in which SageMaker opens no session (or no sshd runs)."""
    what = f"training job {job.name}"
    if job.status in FINISHED:
        raise ResolutionError(f"{what} is {job.status}: SSH is available only while it runs")
    spec = dict(job.described.get("AlgorithmSpecification") or {})
    if spec.get("AlgorithmName"):
        raise ResolutionError(
            f"{what} runs the algorithm {spec['AlgorithmName']}: AWS offers no remote debugging "
            "for SageMaker built-in or AWS Marketplace algorithms")
    if job.described.get("EnableNetworkIsolation"):
        raise ResolutionError(
            f"{what} runs with network isolation: AWS offers no remote debugging then (the "
            "container cannot reach SSM); relaunch it without EnableNetworkIsolation")
    if not job.remote_debug:
        raise ResolutionError(
            f"{what} has remote debugging off: turn it on with `aws sagemaker "
            f"update-training-job --training-job-name {job.name} --remote-debug-config "
            "EnableRemoteDebug=true` (while it is Downloading or Training), or relaunch it "
            "with transport='native'")
    job.check_sshd(target, shell)


_R = TypeVar("_R", bound=Resource)


def wait_ready(resource: _R, wait: float, check: Callable[[_R], None],
               ready: Callable[[_R], bool], refresh: Callable[[], _R | None],
               waiting: Callable[[_R], str], timed_out: Callable[[_R], str],
               clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> _R:
    """The one wait of the native path: until ``ready`` (up to ``wait`` seconds), checking
    every state (``check`` raises the one line for those without a session) and describing
    the resource again (``refresh``) between checks, with a growing pause."""
    poll = retry.Poll(wait, first=1.0, cap=10.0, clock=clock, sleep=sleep)
    while True:
        check(resource)
        if ready(resource):
            return resource
        if poll.expired():
            raise ResolutionError(timed_out(resource))
        cli_progress(waiting(resource))
        poll.wait()
        resource = refresh() or resource


def wait_training(ctx: Context, target: fqdn.Target, job: Job, wait: float,
                  clock: Clock = time.monotonic, sleep: Sleep = time.sleep,
                  shell: bool = False) -> Job:
    """Wait (up to ``wait`` seconds) until the job is Training; recheck every state."""

    def timed_out(job: Job) -> str:
        since = job.since(time.time())
        held = f" (for {since:.0f} s)" if since is not None else ""
        return (f"training job {job.name} is {job.secondary or job.status}{held}: SageMaker "
                "opens remote-debugging sessions once it is Training; retry, or wait longer "
                "with --wait SECONDS")

    return wait_ready(
        job, wait, lambda j: check_reachable(j, target, shell), lambda j: j.secondary == READY,
        lambda: describe(ctx, target),
        lambda j: f"sm-ssh: training job {j.name} is {j.secondary}: waiting for Training",
        timed_out, clock, sleep)


def cli_progress(line: str) -> None:
    from sagemaker_ssh_helper import cli

    cli.progress(line)


def pick_host(hosts: list[str], target: fqdn.Target, choice: Choice) -> tuple[str, bool]:
    """(host, picked among several) by ``--node``/``--index``, as for hybrid instances."""
    if getattr(choice, "instance", None) is not None:
        raise UsageError(f"{target.fqdn} is reached through SageMaker's remote debugging, not "
                         "a managed instance: choose its node with --node algo-N or --index N")
    several = len(hosts) > 1
    if choice.node is not None:
        if choice.node not in hosts:
            raise UsageError(f"{target.fqdn} has no node {choice.node!r} with SSH: choose one "
                             f"of {', '.join(hosts)}")
        return choice.node, several
    if choice.index is not None:
        if not 0 <= choice.index < len(hosts):
            raise UsageError(f"--index {choice.index} is out of range: {target.fqdn} has "
                             f"{len(hosts)} node(s) with SSH")
        return hosts[choice.index], several
    if several:
        raise UsageError(f"{target.fqdn} has {len(hosts)} nodes with SSH: {', '.join(hosts)}; "
                         "choose one with --node NAME or --index N")
    return hosts[0], False


def arn_account(arn: object) -> str:
    """The account of a resource ARN ("" when there is none)."""
    try:
        return aws.parse_arn(str(arn)).account if arn else ""
    except SSHHelperError:
        return ""


def s3_error(e: Exception, layout: transport.KeyLayout, action: str, key: str) -> Exception:
    """One line for a failed S3 call on the key folder (AccessDenied names the owner check)."""
    if aws.error_code(e) in ("AccessDenied", "403"):
        from sagemaker_ssh_helper.errors import AwsError

        return AwsError(layout.refused(action, key))
    return aws.explain(e, action)


def layout_of(job: Job) -> transport.KeyLayout:
    return job.layout()


def push_key(s3: Any, layout: transport.KeyLayout, key_line: str, marker: str) -> str:
    """Put this client's public key in the job's folder (replacing its previous one)."""
    from sagemaker_ssh_helper.keys import MARKER_PREFIX

    key = layout.client_key(marker[len(MARKER_PREFIX):])
    try:
        s3.put_object(Bucket=layout.bucket, Key=key, Body=f"{key_line} {marker}\n".encode(),
                      **layout.owner_args())
    except Exception as e:
        raise s3_error(e, layout, "s3:PutObject", key) from e
    return key


def fetch_host_keys(s3: Any, layout: transport.KeyLayout, host: str, target_id: str,
                    wait: float, clock: Clock = time.monotonic, sleep: Sleep = time.sleep
                    ) -> list[tuple[str, str]]:
    """The host keys ``host`` published; waits (sshd starts shortly after Training begins)."""
    from sagemaker_ssh_helper.hostkeys import parse_host_keys

    key = layout.host_keys(host)

    def read() -> list[tuple[str, str]]:
        try:
            body = s3.get_object(Bucket=layout.bucket, Key=key,
                                 **layout.owner_args())["Body"].read().decode()
        except Exception as e:
            if aws.error_code(e) not in ("NoSuchKey", "404", "NotFound"):
                raise s3_error(e, layout, "s3:GetObject", key) from e
            return []
        return parse_host_keys(f"--- sm-ssh host keys ---\n{body}")

    return poll_host_keys(read, wait, f"{target_id} has published no SSH host keys at "
                          f"{layout.url(key)}: sshd has not started there yet (does the entry "
                          "point call setup_and_start_ssh()? see the job's logs), or wait "
                          "longer with --wait SECONDS", clock, sleep)


def poll_host_keys(read: Callable[[], list[tuple[str, str]]], wait: float, missing: str,
                   clock: Clock = time.monotonic, sleep: Sleep = time.sleep
                   ) -> list[tuple[str, str]]:
    """``read()`` until it finds host keys (sshd publishes them once it runs), up to
    ``wait`` seconds; then ``missing`` is the one line."""
    poll = retry.Poll(wait, first=0.2, cap=2.0, clock=clock, sleep=sleep)
    while True:
        keys = read()
        if keys:
            return keys
        if poll.expired():
            raise ResolutionError(missing)
        poll.wait()


def authorize(ctx: Context, job: Job, target: fqdn.Target, host: str, alias: str,
              wait: float) -> Authorized:
    """The native counterpart of ``keys.authorize``: key to S3, host keys from S3, pinned."""
    layout = layout_of(job)
    target_id = transport.training_target(job.name, host)
    return authorize_with(ctx, layout, target, alias, target_id,
                          lambda s3: fetch_host_keys(s3, layout, host, target_id, wait))


def authorize_with(ctx: Any, layout: transport.KeyLayout, target: fqdn.Target, alias: str,
                   target_id: str, fetch: Callable[[Any], list[tuple[str, str]]]
                   ) -> Authorized:
    """This client's key (created once per target) into the key folder, then the host keys
    ``fetch(s3)`` finds, pinned for ``alias``: the one authorization of the native path."""
    from sagemaker_ssh_helper import keyfile, keys

    path = keys.key_path(target.fqdn)
    line = keys.ensure_key(path, comment=f"sm-ssh {target.fqdn}")
    marker = keys.client_marker(path, line)
    known_hosts = keys.known_hosts_path()
    keyfile.ensure_dir(known_hosts.parent)
    keyfile.refuse_directory(known_hosts)
    s3 = aws.client(ctx.session, "s3", ctx.region_name)
    push_key(s3, layout, line, marker)
    host_keys = fetch(s3)
    alias = alias.lower()
    return keys.Authorized(path, keys.pin_host_keys(alias, host_keys, known_hosts, target_id),
                           alias)


def prepare(ctx: Context, target: fqdn.Target, resource: Resource, choice: Choice,
            for_proxy: bool) -> Prepared:
    """``connect.prepare`` for a native training job or endpoint: a ``connect.Prepared`` whose
    instance is SageMaker's target of the chosen node."""
    from sagemaker_ssh_helper.connect import Prepared, user_for

    resource = _wait_kind(ctx, target, resource, choice.wait)
    node, several = pick_host(resource.node_names, target, choice)
    name = fqdn.format_fqdn(resource.fqdn_kind, resource.name or target.name or "")
    alias = f"{node}.{name}" if several and not for_proxy else name
    auth = _authorize_kind(ctx, resource, target, node, alias, max(choice.wait, 30.0))
    return Prepared(resource.target_of(node), name.lower(), user_for(target), auth)


def _authorize_kind(ctx: Context, resource: Resource, target: fqdn.Target, node: str,
                    alias: str, wait: float) -> Authorized:
    if isinstance(resource, Job):
        return authorize(ctx, resource, target, node, alias, wait)
    assert isinstance(resource, Endpoint)
    return authorize_endpoint(ctx, resource, target, node, alias, wait)


def native_job(ctx: Context, target: fqdn.Target) -> Job | None:
    """The job if ``target`` is a native training job, else None (the hybrid path)."""
    if target.kind.kind != "training" or target.name is None:
        return None
    job = describe(ctx, target)
    return job if job is not None and job.native else None


def stop_waiting(ctx: Context, target: fqdn.Target, job: Job | Endpoint,
                 choice: Choice) -> int:
    """``sm-wait stop`` over ssh on every SSH node (or the chosen one): SageMaker's targets
    take no SendCommand, so this needs the container's sshd."""
    from sagemaker_ssh_helper import connect, proxy

    if isinstance(job, Endpoint):
        job = wait_endpoint(ctx, target, job, choice.wait)
        hosts = job.node_names
    else:
        job = wait_training(ctx, target, job, choice.wait)
        hosts = job.ssh_hosts
    if choice.node is not None or choice.index is not None:
        hosts = [pick_host(hosts, target, choice)[0]]
    failed = 0
    for host in hosts:
        node_choice = connect.Choice(node=host, wait=choice.wait)
        prepared = prepare(ctx, target, job, node_choice, for_proxy=False)
        code = connect.run_and_explain(ctx, prepared, ["-T"], [proxy.STOP_WAITING])
        print(f"{host} ({prepared.instance_id}): " + ("released" if code == 0 else
                                                       f"failed with exit code {code}"),
              flush=True)
        failed += code != 0
    return 1 if failed else 0


def shell(ctx: Context, target: fqdn.Target, choice: Choice) -> int:
    """A plain shell session on a node of a job with remote debugging (no sshd needed)."""
    from sagemaker_ssh_helper import session

    if target.kind.kind == "inference":
        endpoint = describe_endpoint(ctx, target)
        if endpoint is None:
            raise SSHHelperError(f"cannot describe endpoint {target.name} (DescribeEndpoint "
                                 "failed): check its name, region and your permissions")
        endpoint = wait_endpoint(ctx, target, endpoint, choice.wait, shell=True)
        node, _ = pick_host(endpoint.node_names, target, choice)
        return session.run_session(aws.client(ctx.session, "ssm", ctx.region_name),
                                   endpoint.target_of(node), None, None, ctx.profile)
    job = describe(ctx, target)
    if job is None:
        from sagemaker_ssh_helper import resources

        resources.check_running(ctx.session, ctx.region_name, target, ctx.region_source)
        raise SSHHelperError(f"cannot describe training job {target.name} (DescribeTrainingJob "
                             "failed): check your permissions")
    job = wait_training(ctx, target, job, choice.wait, shell=True)
    host, _ = pick_host(job.hosts, target, choice)
    ssm = aws.client(ctx.session, "ssm", ctx.region_name)
    return session.run_session(ssm, transport.training_target(job.name, host), None, None,
                               ctx.profile)


# -- the Python API: SSMProxy and the wrappers' instance IDs ---------------------------------
def _context(session: Any, region: str) -> Context:
    from sagemaker_ssh_helper.connect import Context

    return Context(None, region, _session=session)


def parse_target(target_id: str) -> tuple[str, str]:
    """``sagemaker-training-job:<job>_<host>`` -> (job, host); job names have no ``_``."""
    job, _, host = target_id[len(transport.TRAINING_TARGET_PREFIX):].rpartition("_")
    if not target_id.startswith(transport.TRAINING_TARGET_PREFIX) or not job or not host:
        raise UsageError(f"{target_id!r} is not a SageMaker training job target "
                         "(sagemaker-training-job:<job>_algo-<n>)")
    return job, host


def authorize_target(session: Any, region: str, target_id: str, name: str | None = None,
                     wait: float = 60.0) -> Authorized:
    """``keys.authorize`` for a native target ID (as ``SSMProxy.connect_to_ssm_instance``
    takes it): the job is described, its key pushed and its host keys pinned."""
    if target_id.startswith(transport.ENDPOINT_TARGET_PREFIX):
        return authorize_endpoint_target(session, region, target_id, name, wait)
    job_name, host = parse_target(target_id)
    ctx, target, job = described_and_ready(session, region, "training", job_name, wait)
    assert isinstance(job, Job)
    if host not in job.ssh_hosts:
        raise UsageError(f"{target.fqdn} has no node {host!r} with SSH: choose one of "
                         + ", ".join(job.ssh_hosts))
    return authorize(ctx, job, target, host, name or target.fqdn, wait)


def described_and_ready(session: Any, region: str, kind: str, name: str, wait: float
                        ) -> tuple[Context, fqdn.Target, Resource]:
    """The training job or endpoint ``name`` (``kind``: an fqdn kind), described and waited
    for until SageMaker opens sessions to it (a target ID names it: it must exist)."""
    ctx = _context(session, region)
    target = fqdn.parse_resource(f"{name}.{kind}.{fqdn.SUFFIX}")
    resource = _describe_kind(ctx, target)
    if resource is None:
        what = "training job" if kind == "training" else "endpoint"
        raise ResolutionError(f"cannot describe {what} {name} in {region}")
    return ctx, target, _wait_kind(ctx, target, resource, wait)


def _describe_kind(ctx: Context, target: fqdn.Target) -> Resource | None:
    if target.kind.kind == "training":
        return describe(ctx, target)
    return describe_endpoint(ctx, target)


def _wait_kind(ctx: Context, target: fqdn.Target, resource: Resource, wait: float) -> Resource:
    if isinstance(resource, Job):
        return wait_training(ctx, target, resource, wait)
    assert isinstance(resource, Endpoint)
    return wait_endpoint(ctx, target, resource, wait)


def native_targets(session: Any, region: str, kind: str, name: str,
                   timeout: float) -> list[str] | None:
    """SageMaker's targets of a native training job's SSH nodes (once it is Training) or of a
    native endpoint's instances (the wrappers' ``get_instance_ids``); None when the resource
    is not native (the hybrid lookup then runs)."""
    ctx = _context(session, region)
    target = fqdn.parse_resource(f"{name}.{kind}.{fqdn.SUFFIX}")
    resource = _describe_kind(ctx, target)
    if resource is None or not resource.native:
        return None
    return _wait_kind(ctx, target, resource, timeout).targets()


# -- sm-ssh list --------------------------------------------------------------------------------
# Running resources without managed instances that one ``sm-ssh list`` describes to learn
# whether they are native (the first ones listed, the newest); the others keep an unknown
# transport, and ``sm-ssh list <fqdn>`` tells: a listing stays a few calls whatever the account
# runs without SSH.
LIST_DESCRIBES = 8


def annotate(session: Any, region: str, rows: list[Row]) -> None:
    """Mark each row's transport: hybrid where managed instances were found; for running
    training jobs without any, one DescribeTrainingJob tells whether they are native (and
    whether SageMaker opens sessions now); for endpoints without any, their configuration and
    model do (for the first LIST_DESCRIBES such resources)."""
    sm = None
    described = 0
    for row in rows:
        if row.instances:
            row.transport = transport.HYBRID
            continue
        endpoint = row.kind == "inference" and row.status not in ENDPOINT_GONE
        if not endpoint and (row.kind != "training" or row.status != "InProgress"):
            continue
        if described >= LIST_DESCRIBES:
            logger.debug("%s: transport not looked up (more than %d running resources without "
                         "managed instances)", row.name, LIST_DESCRIBES)
            continue
        described += 1
        sm = sm or aws.client(session, "sagemaker", region)
        if endpoint:
            annotate_endpoint(sm, session, region, row)
            continue
        try:
            job = Job(sm.describe_training_job(TrainingJobName=row.name))
        except Exception as e:  # the listing goes on without it
            logger.debug("DescribeTrainingJob %s: %s", row.name, e)
            continue
        if not job.native:
            continue
        row.transport = transport.NATIVE
        if not job.remote_debug:
            row.native_ssh = "RemoteDebugOff"
        elif not job.runs_ssh:
            row.native_ssh = "ShellOnly" if job.secondary == READY else job.secondary
        else:
            row.native_ssh = "Online" if job.secondary == READY else job.secondary
        row.instances = []


# -- real-time endpoints with SSM access ------------------------------------------------------
# What AWS documents ("Access containers through SSM", CreateEndpointConfig): a production
# variant with ``EnableSSMAccess`` runs SageMaker's SSM agent in each instance's model container
# (the account must be allowlisted by AWS support); its target is
# ``sagemaker-endpoint:<endpoint>_<variant>_<ec2 instance id>`` (``_<container>`` appended on
# multi-container endpoints, which this path does not handle); the instance IDs are not in
# DescribeEndpoint: each instance has an SSM log stream ``<variant>/<instance id>/ssm`` in the
# endpoint's log group, which "lists the target IDs at its beginning" (the wording of that line
# is not documented, so the target is built from the stream's name). AWS names the group
# ``/aws/sagemaker/Endpoints/<endpoint>`` in its CloudWatch page (the SSM page spells it
# lower-case); we use the former, as the rest of the project does. Network isolation and
# built-in / Marketplace algorithm containers take no session. Not documented: how soon after
# an instance starts its target takes sessions, and the container's host name (so the keys of
# all the endpoint's instances are pinned for it, see ``authorize_endpoint``).
ENDPOINT_GONE = ("Failed", "Deleting", "OutOfService", "UpdateRollbackFailed")
SSM_STREAM_SUFFIX = "/ssm"


class Endpoint(Resource):
    """An endpoint, its configuration's variants and its models' environments."""

    kind, arn_key, relaunch, launched = ("endpoint", "EndpointArn", "redeploy it", "deployed")
    fqdn_kind = "inference"

    def __init__(self, described: dict[str, Any], variants: list[dict[str, Any]],
                 models: dict[str, dict[str, Any]]) -> None:
        self.described = described
        self.name = str(described.get("EndpointName", ""))
        self.variants = variants
        self.models = models  # model name -> DescribeModel
        self.nodes: list[tuple[str, str]] = []  # (variant, instance id), from the SSM streams
        # host keys published before this (epoch s) belong to replaced instances; 0: none
        self.nodes_since = 0.0

    @property
    def status(self) -> str:
        return str(self.described.get("EndpointStatus", ""))

    @property
    def ssm_variants(self) -> list[str]:
        return [str(v.get("VariantName")) for v in self.variants if v.get("EnableSSMAccess")]

    def _model(self) -> dict[str, Any]:
        names = [str(v.get("ModelName")) for v in self.variants if v.get("EnableSSMAccess")] or \
            [str(v.get("ModelName")) for v in self.variants]
        return self.models.get(names[0], {}) if names else {}

    @property
    def env(self) -> dict[str, str]:
        model = self._model()
        container = dict(model.get("PrimaryContainer") or
                         (list(model.get("Containers") or []) or [{}])[0])
        return {str(k): str(v) for k, v in dict(container.get("Environment") or {}).items()}

    @property
    def sagemaker_agent(self) -> bool:
        return bool(self.ssm_variants)

    def instance_count(self, variant: str) -> int:
        """The variant's instances: DescribeEndpoint's count, else its configuration's."""
        for v in self.described.get("ProductionVariants") or []:
            if v.get("VariantName") == variant:
                count = v.get("CurrentInstanceCount") or v.get("DesiredInstanceCount")
                if count:
                    return int(count)
        for v in self.variants:
            if v.get("VariantName") == variant:
                return max(1, int(v.get("InitialInstanceCount") or 1))
        return 1

    @property
    def node_names(self) -> list[str]:
        return [instance for _, instance in self.nodes]

    def target_of(self, node: str) -> str:
        variant = next(v for v, i in self.nodes if i == node)
        return transport.endpoint_target(self.name, variant, node)


def describe_endpoint(ctx: Any, target: fqdn.Target) -> Endpoint | None:
    """The endpoint with its configuration and models (3 calls for one variant), or None when
    it cannot be described (the hybrid path then explains)."""
    sm = aws.client(ctx.session, "sagemaker", ctx.region_name)
    try:
        described = sm.describe_endpoint(EndpointName=target.name)
        config = sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        variants = [dict(v) for v in config.get("ProductionVariants") or []]
        models: dict[str, dict[str, Any]] = {}
        for name in {str(v.get("ModelName")) for v in variants if v.get("ModelName")}:
            models[name] = dict(sm.describe_model(ModelName=name))
    except Exception as e:
        logger.debug("describing endpoint %s: %s", target.name, e)
        return None
    return Endpoint(dict(described), variants, models)


def check_endpoint(endpoint: Endpoint, target: fqdn.Target, shell: bool = False) -> None:
    """One line for each state in which SageMaker opens no session (or no sshd runs)."""
    what = f"endpoint {endpoint.name}"
    if endpoint.status in ENDPOINT_GONE:
        raise ResolutionError(f"{what} is {endpoint.status}: SSH is available only while it runs "
                              "(Creating, InService, Updating, SystemUpdating or RollingBack)")
    if not endpoint.ssm_variants:
        raise ResolutionError(
            f"{what} has SSM access off: create an endpoint configuration whose production "
            "variant has EnableSSMAccess=true and `aws sagemaker update-endpoint` to it (AWS "
            "must have allowlisted the account), or redeploy with transport='native'")
    if endpoint._model().get("EnableNetworkIsolation"):
        raise ResolutionError(f"{what} runs its model with network isolation: AWS opens no "
                              "SSM session then; redeploy it without EnableNetworkIsolation")
    endpoint.check_sshd(target, shell)


def endpoint_nodes(ctx: Any, endpoint: Endpoint) -> tuple[list[tuple[float, str, str]], float]:
    """(created, variant, instance id) of the SSM log streams ``<variant>/<instance id>/ssm`` of the
    variant's current instances, oldest first, and when the newest replaced one was created
    (0: none). Streams outlive their instances (UpdateEndpoint replaces them all, scaling in or
    a failed instance some): of each variant the newest streams, as many as it has instances
    (DescribeEndpoint's instance count), are taken."""
    logs = aws.client(ctx.session, "logs", ctx.region_name)
    group = f"/aws/sagemaker/Endpoints/{endpoint.name}"
    nodes: list[tuple[float, str, str]] = []
    replaced = 0.0
    for variant in endpoint.ssm_variants:
        found: list[tuple[float, str, str]] = []
        try:
            for page in logs.get_paginator("describe_log_streams").paginate(
                    logGroupName=group, logStreamNamePrefix=f"{variant}/"):
                for stream in page.get("logStreams", []):
                    name = str(stream.get("logStreamName", ""))
                    parts = name.split("/")
                    if name.endswith(SSM_STREAM_SUFFIX) and len(parts) == 3 and parts[1]:
                        found.append((float(stream.get("creationTime") or 0), variant,
                                      parts[1]))
        except Exception as e:
            if aws.error_code(e) != "ResourceNotFoundException":
                raise aws.explain(e, "logs:DescribeLogStreams") from e
        count = endpoint.instance_count(variant)
        found.sort()
        nodes += found[-count:]
        replaced = max([replaced] + [created for created, _, _ in found[:-count]])
    return sorted(nodes), replaced


def keys_since(nodes: list[tuple[float, str, str]], replaced: float) -> float:
    """From when (epoch s) host-key files belong to the current instances: halfway between the
    newest replaced instance's SSM stream and the oldest current one's (a new fleet starts
    minutes after the one it replaces, while a container's stream and its host keys appear
    seconds apart, in an order AWS does not document). 0 (every file) when nothing was
    replaced, or when current instances are as old as a replaced one (one instance of several
    replaced): the files cannot be told apart by time then, and a replaced instance is gone."""
    if not nodes or not replaced or nodes[0][0] <= replaced:
        return 0.0
    return (replaced + nodes[0][0]) / 2 / 1000.0


def wait_endpoint(ctx: Any, target: fqdn.Target, endpoint: Endpoint, wait: float,
                  clock: Clock = time.monotonic, sleep: Sleep = time.sleep,
                  shell: bool = False) -> Endpoint:
    """Wait (up to ``wait`` seconds) until an instance's SSM log stream names it."""

    def found(endpoint: Endpoint) -> bool:
        nodes, replaced = endpoint_nodes(ctx, endpoint)
        endpoint.nodes = [(variant, instance) for _, variant, instance in nodes]
        endpoint.nodes_since = keys_since(nodes, replaced)
        return bool(nodes)

    return wait_ready(
        endpoint, wait, lambda e: check_endpoint(e, target, shell), found,
        lambda: describe_endpoint(ctx, target),
        lambda e: f"sm-ssh: endpoint {e.name} is {e.status}: waiting for its instances' SSM "
                  "log streams",
        lambda e: f"endpoint {e.name} ({e.status}) has no instance with SSM access yet (no "
                  f"<variant>/<instance>/ssm stream in /aws/sagemaker/Endpoints/{e.name}): "
                  "retry, or wait longer with --wait SECONDS", clock, sleep)


def fetch_endpoint_host_keys(s3: Any, layout: transport.KeyLayout, count: int, target_id: str,
                             wait: float, clock: Clock = time.monotonic,
                             sleep: Sleep = time.sleep, since: float = 0.0
                             ) -> list[tuple[str, str]]:
    """The host keys of the endpoint's instances, once at least ``count`` have published;
    only those published from ``since`` on (when the current instances started: the files of
    instances that UpdateEndpoint replaced stay behind; S3 times are whole seconds)."""
    from sagemaker_ssh_helper.hostkeys import parse_host_keys

    folder = f"{layout.job_prefix}{transport.HOST_KEYS_FOLDER}/"

    def read() -> list[tuple[str, str]]:
        keys: list[tuple[str, str]] = []
        try:
            listed = [item for item in s3.list_objects_v2(
                Bucket=layout.bucket, Prefix=folder, **layout.owner_args()).get("Contents", [])
                if _modified(item) >= math.floor(since)]
            for item in listed[:100]:
                body = s3.get_object(Bucket=layout.bucket, Key=item["Key"],
                                     **layout.owner_args())["Body"].read()
                keys += parse_host_keys(f"--- sm-ssh host keys ---\n{body.decode()}")
        except Exception as e:
            raise s3_error(e, layout, "s3:ListBucket", folder) from e
        return keys if len(listed) >= count else []

    return poll_host_keys(read, wait, f"{target_id} has published no SSH host keys under "
                          f"{layout.url(folder)}: sshd has not started there yet (does the "
                          "inference script call setup_and_start_ssh()? see the endpoint's "
                          "logs), or wait longer with --wait", clock, sleep)


def _modified(item: dict[str, Any]) -> float:
    stamp: Any = item.get("LastModified")
    return float(stamp.timestamp()) if hasattr(stamp, "timestamp") else 0.0


def authorize_endpoint(ctx: Any, endpoint: Endpoint, target: fqdn.Target, node: str,
                       alias: str, wait: float) -> Authorized:
    """Key to S3, host keys from S3. The container's host name is not documented for endpoints,
    so the host keys of every instance of the endpoint are pinned for it: each was published
    under the owner's folder, where only the owner and the endpoint's role may write."""
    layout = endpoint.layout()
    target_id = endpoint.target_of(node)
    return authorize_with(ctx, layout, target, alias, target_id, lambda s3: (
        fetch_endpoint_host_keys(s3, layout, len(endpoint.nodes), target_id, wait,
                                 since=endpoint.nodes_since)))


def native_endpoint(ctx: Any, target: fqdn.Target) -> Endpoint | None:
    """The endpoint if ``target`` is one reached over SSM access, else None (hybrid)."""
    if target.kind.kind != "inference" or target.name is None:
        return None
    endpoint = describe_endpoint(ctx, target)
    return endpoint if endpoint is not None and endpoint.native else None


def authorize_endpoint_target(session: Any, region: str, target_id: str,
                              name: str | None = None, wait: float = 60.0) -> Authorized:
    """``authorize_target`` for ``sagemaker-endpoint:<endpoint>_<variant>_<instance>``."""
    rest = target_id[len(transport.ENDPOINT_TARGET_PREFIX):].split("_")
    if not target_id.startswith(transport.ENDPOINT_TARGET_PREFIX) or len(rest) != 3 or \
            not all(rest):
        raise UsageError(f"{target_id!r} is not a SageMaker endpoint target "
                         "(sagemaker-endpoint:<endpoint>_<variant>_<instance id>)")
    ctx, target, endpoint = described_and_ready(session, region, "inference", rest[0], wait)
    assert isinstance(endpoint, Endpoint)
    if rest[2] not in endpoint.node_names:
        raise UsageError(f"{target.fqdn} has no instance {rest[2]!r} with SSM access: choose "
                         "one of " + ", ".join(endpoint.node_names))
    return authorize_endpoint(ctx, endpoint, target, rest[2], name or target.fqdn, wait)


def annotate_endpoint(sm: Any, session: Any, region: str, row: Any) -> None:
    """``sm-ssh list``: mark an endpoint without managed instances that is reached natively."""
    ctx = _context(session, region)
    endpoint = describe_endpoint(ctx, fqdn.parse_resource(f"{row.name}.inference.{fqdn.SUFFIX}"))
    if endpoint is None or not endpoint.native:
        return
    row.transport = transport.NATIVE
    if not endpoint.ssm_variants:
        row.native_ssh = "SSMAccessOff"
    elif not endpoint.runs_ssh:
        row.native_ssh = "ShellOnly"
    else:
        row.native_ssh = "Online" if endpoint.status in ("InService", "Updating") \
            else endpoint.status
    row.instances = []
