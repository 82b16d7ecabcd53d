"""In-memory SSM backend: activations, managed instances, tags, agent traffic, faults, counters.

Run Command lives in ``commands`` and Session Manager in ``sessions``; this module owns
the rest and the dispatch of operation names to methods. Thread-safe: one re-entrant lock.
"""
from __future__ import annotations

import collections
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Union

from sagemaker_ssh_sandbox.ssm.commands import CommandOps, check_instance_ids
from sagemaker_ssh_sandbox.ssm.instances import (
    activation_json,
    instance_json,
    matcher,
    property_json,
    property_matcher,
)
from sagemaker_ssh_sandbox.ssm.sessions import SessionOps
from sagemaker_ssh_sandbox.ssm.state import (
    AGENT_VERSION,
    Activation,
    Instance,
    SSMError,
    fingerprint,
    load_state,
    max_results,
    new_activation_code,
    new_instance_id,
    new_uuid,
    paginate,
    save_state,
    tag_list,
    tags_from,
    validation,
)

logger = logging.getLogger(__name__)

PUBLIC_OPERATIONS = frozenset({
    "CreateActivation", "DescribeActivations", "DeleteActivation",
    "DescribeInstanceInformation", "DescribeInstanceProperties", "DeregisterManagedInstance",
    "AddTagsToResource", "RemoveTagsFromResource", "ListTagsForResource",
    "SendCommand", "GetCommandInvocation", "ListCommands", "ListCommandInvocations",
    "StartSession", "TerminateSession", "ResumeSession", "DescribeSessions",
    "GetServiceSetting", "UpdateServiceSetting",
})
# Service settings as the sandbox account has them: the advanced-instances tier is on (the
# CDK's advanced-tier stack sets it; a fresh AWS account starts with "standard").
ACTIVATION_TIER = "/ssm/managed-instance/activation-tier"
SERVICE_SETTINGS = {ACTIVATION_TIER: ("advanced", ("standard", "advanced"))}
# internal agent endpoint -> operation name (as the real agent's own API calls are named)
AGENT_OPERATIONS = {
    "register": "RegisterManagedInstance",
    "heartbeat": "UpdateInstanceInformation",
    "poll": "GetMessages",
    "command-result": "SendReply",
    "stream-failed": "FailStream",
}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_STATUS = {"InternalServerError": 500, "ServiceUnavailable": 503}
_MESSAGES = {
    "ThrottlingException": "Rate exceeded",
    "AccessDeniedException": "User is not authorized to perform: ssm:{op}",
}
MAX_POLL_SECONDS = 20.0
TagSpec = Union[None, dict[str, str], Callable[[int], dict[str, str]]]


class SSMBackend(CommandOps, SessionOps):
    """State and operations of the stand-in. ``handle(op, body)`` is the AWS-facing entry."""

    def __init__(self, account_id: str = "123456789012", region: str = "us-east-1",
                 heartbeat_timeout: float = 10.0, state_dir: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(account_id, region, heartbeat_timeout, clock)
        self._init_sessions()
        self.call_counts: dict[str, int] = collections.Counter()
        self.agent_call_counts: dict[str, int] = collections.Counter()
        self.faults: list[dict[str, Any]] = []
        # per-operation request rates (calls per second; none by default), enforced as SSM
        # does: a call sooner than 1/rate after the last accepted one is throttled
        self.rate_limits: dict[str, float] = {}
        self._last_accepted: dict[str, float] = {}
        self.throttled: dict[str, int] = collections.Counter()
        self.service_settings = {k: v for k, (v, _) in SERVICE_SETTINGS.items()}
        # IAM enforcement (the sandbox daemon sets one; None lets every call through)
        self.authorizer: Any | None = None
        # SageMaker's own targets: target -> why no session opens now (None: it does)
        self.sagemaker_gate: Callable[[str], str | None] | None = None
        self.state_file = Path(state_dir) / "ssm-state.json" if state_dir else None
        self._load()

    # ---- dispatch, faults, counters ----------------------------------------------------
    def handle(self, operation: str, body: dict[str, Any], caller: str = "") -> dict[str, Any]:
        """Run one public operation; raises SSMError exactly as AWS would answer."""
        with self.lock:
            self.call_counts[operation] += 1
        if operation not in PUBLIC_OPERATIONS:
            raise SSMError("UnknownOperationException", f"Unknown operation {operation}")
        self._maybe_fault(operation)
        if operation == "SendCommand":
            check_instance_ids(body)
        self._maybe_throttle(operation)
        self.caller.user = caller
        if self.authorizer is not None:  # sessions are named after the caller, as in AWS
            self.caller.user = self.authorizer.check(self, operation, body, caller).name
        result: dict[str, Any] = getattr(self, "op_" + operation)(body)
        return result

    def handle_agent(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        operation = AGENT_OPERATIONS.get(name)
        if operation is None:
            raise SSMError("UnknownOperationException", f"Unknown agent operation {name}", 404)
        with self.lock:
            self.agent_call_counts[operation] += 1
        self._maybe_fault(operation)
        handler = {"register": self.agent_register, "heartbeat": self.agent_heartbeat,
                   "poll": self.agent_poll, "command-result": self._reply,
                   "stream-failed": self.agent_stream_failed}[name]
        return handler(body)

    def inject_fault(self, operation: str, error_code: str, count: int = 1,
                     message: str | None = None) -> None:
        """Make the next ``count`` calls of ``operation`` ("*" = any public one) fail."""
        with self.lock:
            self.faults.append({"operation": operation, "error_code": error_code,
                                "count": int(count), "message": message})

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _maybe_fault(self, operation: str) -> None:
        with self.lock:
            for fault in self.faults:
                wildcard = fault["operation"] == "*" and operation in PUBLIC_OPERATIONS
                if (fault["operation"] == operation or wildcard) and fault["count"] > 0:
                    fault["count"] -= 1
                    self.faults = [f for f in self.faults if f["count"] > 0]
                    code = fault["error_code"]
                    text = fault["message"] or _MESSAGES.get(code, f"Injected {code}")
                    raise SSMError(code, text.format(op=operation), _STATUS.get(code, 400))

    def set_rate_limit(self, operation: str, per_second: float) -> None:
        """Throttle ``operation`` above ``per_second`` calls (0 removes the limit)."""
        with self.lock:
            if per_second > 0:
                self.rate_limits[operation] = float(per_second)
            else:
                self.rate_limits.pop(operation, None)
            self._last_accepted.pop(operation, None)

    def _maybe_throttle(self, operation: str) -> None:
        rate = self.rate_limits.get(operation)
        if rate is None:
            return
        with self.lock:
            now = time.monotonic()
            last = self._last_accepted.get(operation)
            if last is not None and now - last < 1.0 / rate:
                self.throttled[operation] += 1
                raise SSMError("ThrottlingException", _MESSAGES["ThrottlingException"])
            self._last_accepted[operation] = now

    def reset_call_counts(self) -> None:
        with self.lock:
            self.call_counts.clear()
            self.throttled.clear()
            self.agent_call_counts.clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"CallCounts": dict(self.call_counts),
                    "AgentCallCounts": dict(self.agent_call_counts),
                    "Instances": sum(not i.deregistered for i in self.instances.values()),
                    "Activations": len(self.activations), "Commands": len(self.commands),
                    "Sessions": len(self.sessions),
                    "Faults": [dict(f) for f in self.faults],
                    "Throttled": dict(self.throttled), "RateLimits": dict(self.rate_limits)}

    # ---- activations -------------------------------------------------------------------
    def op_CreateActivation(self, body: dict[str, Any]) -> dict[str, Any]:
        role = body.get("IamRole")
        if not isinstance(role, str) or not role or len(role) > 64:
            raise validation(role, "iamRole", "have length less than or equal to 64 "
                             "(the role name, not its ARN)")
        limit = body.get("RegistrationLimit", 1)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise validation(limit, "registrationLimit", "be between 1 and 1000")
        now = self.clock()
        expiration = body.get("ExpirationDate", now + 24 * 3600)
        if not isinstance(expiration, (int, float)) or not now < expiration <= now + 30 * 86400:
            raise SSMError("InvalidParameters",
                           "ExpirationDate must be in the future and at most 30 days away.")
        for member in ("Description", "DefaultInstanceName"):
            if len(str(body.get(member, ""))) > 256:
                raise validation(body[member], member[0].lower() + member[1:],
                                 "have length less than or equal to 256")
        tags = tags_from(body.get("Tags"))
        with self.lock:
            act = Activation(new_uuid(), new_activation_code(), role,
                             str(body.get("Description", "")),
                             str(body.get("DefaultInstanceName", "")), limit, float(expiration),
                             now, tags, self.next_seq())
            self.activations[act.activation_id] = act
            self.save()
        return {"ActivationId": act.activation_id, "ActivationCode": act.code}

    def op_DescribeActivations(self, body: dict[str, Any]) -> dict[str, Any]:
        limit = max_results(body, 1, 50, 50)
        with self.lock:
            rows = sorted(self.activations.values(), key=lambda a: a.seq)
            for flt in body.get("Filters") or []:
                key, values = flt.get("FilterKey"), flt.get("FilterValues") or []
                attr = {"ActivationIds": "activation_id", "IamRole": "iam_role",
                        "DefaultInstanceName": "default_instance_name"}.get(key)
                if attr is None:
                    raise SSMError("InvalidFilter", f"The filter key {key} is not valid.")
                rows = [a for a in rows if getattr(a, attr) in values]
            page, token = paginate(rows, lambda a: a.seq, limit, body.get("NextToken"),
                                   fingerprint("DescribeActivations", body.get("Filters")))
            out: dict[str, Any] = {"ActivationList": [activation_json(a, self.clock())
                                                      for a in page]}
        if token:
            out["NextToken"] = token
        return out

    def _activation(self, activation_id: Any) -> Activation:
        if not isinstance(activation_id, str) or not _UUID.match(activation_id):
            raise SSMError("InvalidActivationId", "The activation ID is not valid. Verify that "
                           "you entered the correct ActivationId or ActivationCode and try again.")
        act = self.activations.get(activation_id)
        if act is None:
            raise SSMError("InvalidActivation", "The activation is not valid. The activation "
                           "might have been deleted, or the ActivationId and the ActivationCode "
                           "do not match.")
        return act

    def op_DeleteActivation(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            act = self._activation(body.get("ActivationId"))
            del self.activations[act.activation_id]
            self.save()
        return {}

    # ---- managed instances -------------------------------------------------------------
    def op_DescribeInstanceInformation(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("Filters") and body.get("InstanceInformationFilterList"):
            raise SSMError("ValidationException", "Filters and InstanceInformationFilterList "
                           "cannot be used in the same request.")
        limit = max_results(body, 5, 50, 10)
        with self.lock:
            match = matcher(body, self.ping_status)
            rows = [i for i in self.instances.values()
                    if not i.deregistered and not i.sagemaker and match(i)]
            page, token = paginate(rows, lambda i: i.seq, limit, body.get("NextToken"),
                                   fingerprint("DescribeInstanceInformation",
                                               body.get("Filters"),
                                               body.get("InstanceInformationFilterList")))
            out: dict[str, Any] = {"InstanceInformationList": [
                instance_json(i, self.ping_status(i)) for i in page]}
        if token:
            out["NextToken"] = token
        return out

    def op_DescribeInstanceProperties(self, body: dict[str, Any]) -> dict[str, Any]:
        """The console's view of managed nodes: up to 1,000 per page (MaxResults 5 to 1000)."""
        limit = max_results(body, 5, 1000, 50)
        with self.lock:
            match = property_matcher(body, self.ping_status)
            rows = [i for i in self.instances.values()
                    if not i.deregistered and not i.sagemaker and match(i)]
            page, token = paginate(rows, lambda i: i.seq, limit, body.get("NextToken"),
                                   fingerprint("DescribeInstanceProperties",
                                               body.get("FiltersWithOperator"),
                                               body.get("InstancePropertyFilterList")))
            out: dict[str, Any] = {"InstanceProperties": [
                property_json(i, self.ping_status(i)) for i in page]}
        if token:
            out["NextToken"] = token
        return out

    def op_DeregisterManagedInstance(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            inst = self.live_instance(body.get("InstanceId"))
            if inst is None:
                raise SSMError("InvalidInstanceId", f"Instance Id {body.get('InstanceId')} "
                               "is not valid or is not registered.")
            inst.deregistered = True
            self.terminate_sessions_of(inst.instance_id)
            self.changed.notify_all()
            self.save()
        return {}

    def _tagged(self, body: dict[str, Any]) -> Instance:
        if body.get("ResourceType") != "ManagedInstance":
            raise SSMError("InvalidResourceType", f"The resource type {body.get('ResourceType')}"
                           " is not supported by the sandbox (use ManagedInstance).")
        inst = self.live_instance(body.get("ResourceId"))
        if inst is None:
            raise SSMError("InvalidResourceId", f"The resource ID {body.get('ResourceId')} "
                           "isn't valid.")
        return inst

    def op_AddTagsToResource(self, body: dict[str, Any]) -> dict[str, Any]:
        tags = tags_from(body.get("Tags"))
        with self.lock:
            inst = self._tagged(body)
            if len({**inst.tags, **tags}) > 50:
                raise SSMError("TooManyTagsError", "A managed instance can have at most 50 tags.")
            inst.tags.update(tags)
            self.save()
        return {}

    def op_RemoveTagsFromResource(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            inst = self._tagged(body)
            for key in body.get("TagKeys") or []:
                inst.tags.pop(key, None)
            self.save()
        return {}

    def op_ListTagsForResource(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return {"TagList": tag_list(self._tagged(body).tags)}

    # ---- service settings (the activation tier) ----------------------------------------------
    def _setting_id(self, body: dict[str, Any]) -> str:
        setting = str(body.get("SettingId", ""))
        if setting.startswith("arn:"):
            setting = setting.split(":servicesetting", 1)[-1]
        if setting not in SERVICE_SETTINGS:
            raise SSMError("ServiceSettingNotFound",
                           f"ServiceSetting {body.get('SettingId', '')} not found")
        return setting

    def op_GetServiceSetting(self, body: dict[str, Any]) -> dict[str, Any]:
        setting = self._setting_id(body)
        with self.lock:
            value = self.service_settings[setting]
        default = SERVICE_SETTINGS[setting][0]
        return {"ServiceSetting": {
            "SettingId": setting, "SettingValue": value,
            "ARN": f"arn:aws:ssm:{self.region}:{self.account_id}:servicesetting{setting}",
            "Status": "Default" if value == default else "Customized",
            "LastModifiedUser": "System"}}

    def op_UpdateServiceSetting(self, body: dict[str, Any]) -> dict[str, Any]:
        setting = self._setting_id(body)
        value = str(body.get("SettingValue", ""))
        if value not in SERVICE_SETTINGS[setting][1]:
            raise validation(value, "settingValue",
                             "be one of " + ", ".join(SERVICE_SETTINGS[setting][1]))
        with self.lock:
            self.service_settings[setting] = value
        return {}

    def add_fake_instances(self, n: int, tags: TagSpec = None, ping_status: str = "Online",
                           iam_role: str = "SageMakerRole") -> list[str]:
        """Register ``n`` agent-less instances at once (benchmarks, pagination tests).

        ``tags`` is one dict for all or ``callable(i) -> dict``; ``ping_status`` stays fixed.
        """
        now = self.clock()
        ids: list[str] = []
        with self.lock:
            act = Activation(new_uuid(), new_activation_code(), iam_role, "sandbox fake", "",
                             1000, now + 86400, now, {}, self.next_seq(), n)
            self.activations[act.activation_id] = act
            for i in range(n):
                item_tags = tags(i) if callable(tags) else dict(tags or {})
                inst = Instance(new_instance_id(), act.activation_id, iam_role, "", now,
                                f"fake-{i}", "127.0.0.1", "Ubuntu", "22.04", AGENT_VERSION,
                                dict(item_tags), self.next_seq(), last_ping=now,
                                static_ping=ping_status)
                self.instances[inst.instance_id] = inst
                ids.append(inst.instance_id)
            self.save()
        return ids

    def register_sagemaker_target(self, target: str, hostname: str) -> None:
        """A target that SageMaker's own agent serves (remote debugging): the agent in the
        container heartbeats under this ID; it is never listed as a managed instance."""
        with self.lock:
            inst = Instance(target, "", "", "", self.clock(), hostname, "", "", "",
                            AGENT_VERSION, {}, self.next_seq(), sagemaker=True)
            self.instances[target] = inst

    def sagemaker_refusal(self, target: Any) -> str | None:
        """Why SageMaker's target ``target`` takes no session now (None: it does)."""
        inst = self.live_instance(target)
        if inst is None or not inst.sagemaker:
            return None
        gate = self.sagemaker_gate
        return gate(inst.instance_id) if gate is not None else None

    def expire_heartbeat(self, instance_id: str) -> None:
        """Make an instance look offline now (as if its agent stopped long ago)."""
        with self.lock:
            inst = self.instances[instance_id]
            inst.static_ping = None
            inst.last_ping = self.clock() - self.heartbeat_timeout - 1

    def instance(self, instance_id: str) -> dict[str, Any]:
        """Test helper: the DescribeInstanceInformation entry, deregistered ones included."""
        with self.lock:
            inst = self.instances[instance_id]
            out = instance_json(inst, self.ping_status(inst))
            out["Deregistered"] = inst.deregistered
            out["Tags"] = dict(inst.tags)
            return out

    # ---- agent side --------------------------------------------------------------------
    def heartbeat_interval(self) -> float:
        return max(0.1, min(2.0, self.heartbeat_timeout / 4))

    def agent_register(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            act = self._activation(body.get("ActivationId"))
            if body.get("ActivationCode") != act.code:
                raise SSMError("InvalidActivation", "The activation is not valid: the "
                               "ActivationId and the ActivationCode do not match.")
            if body.get("Region") != self.region:
                raise SSMError("InvalidActivation", f"The activation does not exist in region "
                               f"{body.get('Region')} (it was created in {self.region}).")
            if self.clock() > act.expiration:
                raise SSMError("ActivationExpired", "The activation has expired.")
            if act.registrations >= act.registration_limit:
                raise SSMError("InvalidActivation", "The activation has reached its "
                               f"registration limit of {act.registration_limit}.")
            act.registrations += 1
            inst = Instance(new_instance_id(), act.activation_id, act.iam_role,
                            act.default_instance_name, self.clock(), "", "", "", "",
                            AGENT_VERSION, dict(act.tags), self.next_seq())
            self._update_facts(inst, body)
            self.instances[inst.instance_id] = inst
            self.save()
            logger.info("registered %s (%s) from activation %s", inst.instance_id,
                        inst.computer_name, act.activation_id)
        return {"InstanceId": inst.instance_id, "Region": self.region,
                "HeartbeatIntervalSeconds": self.heartbeat_interval()}

    @staticmethod
    def _update_facts(inst: Instance, body: dict[str, Any]) -> None:
        for attr, key in (("computer_name", "Hostname"), ("ip_address", "IPAddress"),
                          ("platform_name", "PlatformName"),
                          ("platform_version", "PlatformVersion"),
                          ("agent_version", "AgentVersion")):
            if isinstance(body.get(key), str) and body[key]:
                setattr(inst, attr, body[key])

    def _agent_instance(self, body: dict[str, Any]) -> Instance:
        inst = self.live_instance(body.get("InstanceId"))
        if inst is None:
            raise SSMError("InvalidInstanceId", f"Instance {body.get('InstanceId')} is not "
                           "registered (it may have been deregistered).")
        return inst

    def agent_heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            inst = self._agent_instance(body)
            self._update_facts(inst, body)
            inst.last_ping = self.clock()
        return {"HeartbeatIntervalSeconds": self.heartbeat_interval()}

    def agent_poll(self, body: dict[str, Any]) -> dict[str, Any]:
        wait = min(float(body.get("WaitSeconds", 10.0)), MAX_POLL_SECONDS)
        deadline = time.monotonic() + max(0.0, wait)
        with self.lock:
            while True:
                inst = self._agent_instance(body)
                inst.last_ping = self.clock()
                queue = self.queues[inst.instance_id]
                remaining = deadline - time.monotonic()
                if queue or remaining <= 0 or self.closing:
                    break
                self.changed.wait(remaining)
            messages = []
            while queue:
                message = queue.popleft()
                if message["Type"] != "RunCommand" or \
                        self.deliver_command(inst.instance_id, message):
                    messages.append(message)
        return {"Messages": messages}

    def _reply(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._agent_instance(body)
        return self.agent_command_result(body)

    def close(self) -> None:
        """Wake long polls and end every session (server shutdown)."""
        with self.lock:
            self.closing = True
            self.changed.notify_all()
        self.close_sessions()

    # ---- persistence -------------------------------------------------------------------
    def save(self) -> None:
        if self.state_file is not None:
            save_state(self.state_file, self.activations, self.instances)

    def _load(self) -> None:
        if self.state_file is not None:
            self.activations, self.instances = load_state(self.state_file)
            self._seq = max([a.seq for a in self.activations.values()]
                            + [i.seq for i in self.instances.values()], default=0)
