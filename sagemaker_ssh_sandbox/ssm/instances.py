"""DescribeInstanceInformation filters and the JSON shapes of instances and activations."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from sagemaker_ssh_sandbox.ssm.state import (
    AGENT_VERSION,
    Activation,
    Instance,
    SSMError,
    tag_list,
)

_PING_VALUES = ("Online", "ConnectionLost", "Inactive")
_LEGACY_KEYS = ("InstanceIds", "AgentVersion", "PingStatus", "PlatformTypes", "ActivationIds",
                "IamRole", "ResourceType", "AssociationStatus")


def _attribute(inst: Instance, key: str, ping: str) -> str:
    return {
        "InstanceIds": inst.instance_id, "SourceIds": inst.instance_id,
        "AgentVersion": inst.agent_version, "PingStatus": ping, "PlatformTypes": "Linux",
        "ActivationIds": inst.activation_id, "IamRole": inst.iam_role,
        "ResourceType": "ManagedInstance", "SourceTypes": "AWS::SSM::ManagedInstance",
        "AssociationStatus": "",
    }[key]


def _check_values(key: str, values: Any) -> List[str]:
    if not isinstance(values, list) or not 1 <= len(values) <= 100 \
            or not all(isinstance(v, str) for v in values):
        raise SSMError("InvalidInstanceInformationFilterValue",
                       f"Filter {key} needs 1 to 100 string values.")
    if key == "PingStatus" and any(v not in _PING_VALUES for v in values):
        raise SSMError("InvalidInstanceInformationFilterValue",
                       f"PingStatus values must be among {', '.join(_PING_VALUES)}.")
    return values


def _filters(body: Dict[str, Any]) -> List[tuple]:
    """Normalise both filter styles into (key, values) pairs, validating keys like AWS."""
    out: List[tuple] = []
    for flt in body.get("InstanceInformationFilterList") or []:
        key = flt.get("key")
        if key not in _LEGACY_KEYS:
            raise SSMError("InvalidFilterKey", f"The filter key {key} is not valid.")
        out.append((key, _check_values(key, flt.get("valueSet"))))
    for flt in body.get("Filters") or []:
        key = flt.get("Key")
        valid = isinstance(key, str) and (
            key in _LEGACY_KEYS or key in ("SourceIds", "SourceTypes", "tag-key")
            or (key.startswith("tag:") and len(key) > 4))
        if not valid:
            raise SSMError("InvalidFilterKey", f"The filter key {key} is not valid.")
        out.append((key, _check_values(key, flt.get("Values"))))
    return out


def matcher(body: Dict[str, Any], ping_status: Callable[[Instance], str]
            ) -> Callable[[Instance], bool]:
    """A predicate for the request's filters: values OR-ed within a filter, filters AND-ed."""
    filters = _filters(body)

    def match(inst: Instance) -> bool:
        for key, values in filters:
            if key == "tag-key":
                ok = any(v in inst.tags for v in values)
            elif key.startswith("tag:"):
                ok = inst.tags.get(key[4:]) in values
            else:
                ping = ping_status(inst) if key == "PingStatus" else ""
                ok = _attribute(inst, key, ping) in values
            if not ok:
                return False
        return True

    return match


def instance_json(inst: Instance, ping: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "InstanceId": inst.instance_id, "PingStatus": ping,
        "AgentVersion": inst.agent_version, "IsLatestVersion": inst.agent_version == AGENT_VERSION,
        "PlatformType": "Linux", "PlatformName": inst.platform_name,
        "PlatformVersion": inst.platform_version, "ActivationId": inst.activation_id,
        "IamRole": inst.iam_role, "RegistrationDate": inst.registered,
        "ResourceType": "ManagedInstance", "IPAddress": inst.ip_address,
        "ComputerName": inst.computer_name, "SourceId": inst.instance_id,
        "SourceType": "AWS::SSM::ManagedInstance",
    }
    if inst.last_ping is not None:
        out["LastPingDateTime"] = inst.last_ping
    if inst.name:
        out["Name"] = inst.name
    return {k: v for k, v in out.items() if v != ""}


def activation_json(act: Activation, now: float) -> Dict[str, Any]:
    return {
        "ActivationId": act.activation_id, "Description": act.description,
        "DefaultInstanceName": act.default_instance_name, "IamRole": act.iam_role,
        "RegistrationLimit": act.registration_limit, "RegistrationsCount": act.registrations,
        "ExpirationDate": act.expiration, "Expired": now > act.expiration,
        "CreatedDate": act.created, "Tags": tag_list(act.tags),
    }
