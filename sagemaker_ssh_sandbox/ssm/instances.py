"""DescribeInstanceInformation and DescribeInstanceProperties filters, and the JSON shapes of
instances and activations."""
from __future__ import annotations

from typing import Any, Callable

from sagemaker_ssh_sandbox.ssm.state import (
    AGENT_VERSION,
    Activation,
    Instance,
    SSMError,
    tag_list,
    validation,
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


def _valid_values(key: str, values: Any, error: str, most: int, non_empty: bool) -> list[str]:
    """A filter's values as the service checks them: a list of 1 to ``most`` strings (none
    empty where ``non_empty``), known states for PingStatus; else the ``error`` code."""
    if not isinstance(values, list) or not 1 <= len(values) <= most \
            or not all(isinstance(v, str) and (v or not non_empty) for v in values):
        strings = "non-empty string" if non_empty else "string"
        raise SSMError(error, f"Filter {key} needs 1 to {most} {strings} values.")
    if key == "PingStatus" and any(v not in _PING_VALUES for v in values):
        raise SSMError(error, f"PingStatus values must be among {', '.join(_PING_VALUES)}.")
    return values


def _check_values(key: str, values: Any) -> list[str]:
    """DescribeInstanceInformation's filter values."""
    return _valid_values(key, values, "InvalidInstanceInformationFilterValue", 100, False)


def _filters(body: dict[str, Any]) -> list[tuple]:
    """Normalise both filter styles into (key, values) pairs, validating keys like AWS."""
    out: list[tuple] = []
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


def matcher(body: dict[str, Any], ping_status: Callable[[Instance], str]
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


# DescribeInstanceProperties: InstancePropertyFilterList keys (the model's enum) and the
# operators of FiltersWithOperator; both lists take 1 to 40 values per filter.
_PROPERTY_KEYS = ("InstanceIds", "AgentVersion", "PingStatus", "PlatformTypes", "DocumentName",
                  "ActivationIds", "IamRole", "ResourceType", "AssociationStatus")
_OPERATORS = ("Equal", "NotEqual", "BeginWith", "LessThan", "GreaterThan")


def _property_values(key: str, values: Any) -> list[str]:
    """DescribeInstanceProperties' filter values."""
    return _valid_values(key, values, "InvalidInstancePropertyFilterValue", 40, True)


def _version(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def _property_filters(body: dict[str, Any]) -> list[tuple]:
    """(key, operator, values) triples of either filter style, validated like the service."""
    if body.get("InstancePropertyFilterList") and body.get("FiltersWithOperator"):
        raise SSMError("ValidationException", "InstancePropertyFilterList and "
                       "FiltersWithOperator cannot be used in the same request.")
    filters: list[tuple] = []
    for flt in body.get("InstancePropertyFilterList") or []:
        key = flt.get("key")
        if key not in _PROPERTY_KEYS:
            raise SSMError("InvalidFilterKey", f"The filter key {key} is not valid.")
        filters.append((key, "Equal", _property_values(key, flt.get("valueSet"))))
    for flt in body.get("FiltersWithOperator") or []:
        key, operator = flt.get("Key"), flt.get("Operator", "Equal")
        if not (isinstance(key, str) and (key in _PROPERTY_KEYS or key == "tag-key"
                                          or (key.startswith("tag:") and len(key) > 4))):
            raise SSMError("InvalidFilterKey", f"The filter key {key} is not valid.")
        if operator not in _OPERATORS:
            raise validation(operator, "filtersWithOperator.member.operator",
                             f"satisfy enum value set: [{', '.join(_OPERATORS)}]")
        filters.append((key, operator, _property_values(key, flt.get("Values"))))
    return filters


def _compare(actual: str | None, operator: str, values: list[str], key: str) -> bool:
    if actual is None:  # no such tag
        return operator == "NotEqual"
    if operator == "Equal":
        return actual in values
    if operator == "NotEqual":
        return actual not in values
    if operator == "BeginWith":
        return any(actual.startswith(v) for v in values)
    order: Callable[[str], Any] = _version if key == "AgentVersion" else str
    if operator == "LessThan":
        return any(order(actual) < order(v) for v in values)
    return any(order(actual) > order(v) for v in values)


def property_matcher(body: dict[str, Any], ping_status: Callable[[Instance], str]
                     ) -> Callable[[Instance], bool]:
    """DescribeInstanceProperties' filters: InstancePropertyFilterList (``key``/``valueSet``,
    equality) or FiltersWithOperator (``Key``/``Values``/``Operator``; also ``tag-key`` and
    ``tag:<key>``), values OR-ed within a filter (NotEqual: none of them), filters AND-ed."""
    filters = _property_filters(body)

    def holds(inst: Instance, key: str, operator: str, values: list[str]) -> bool:
        if key == "tag-key":
            return any(v in inst.tags for v in values) != (operator == "NotEqual")
        if key.startswith("tag:"):
            return _compare(inst.tags.get(key[4:]), operator, values, key)
        if key == "DocumentName":
            return operator == "NotEqual"  # no association documents in the stand-in
        ping = ping_status(inst) if key == "PingStatus" else ""
        return _compare(_attribute(inst, key, ping), operator, values, key)

    return lambda inst: all(holds(inst, *flt) for flt in filters)


def property_json(inst: Instance, ping: str) -> dict[str, Any]:
    """One InstanceProperties entry: DescribeInstanceInformation's fields without
    ``IsLatestVersion`` (the model's InstanceProperty has no such member)."""
    out = instance_json(inst, ping)
    out.pop("IsLatestVersion", None)
    return out


def instance_json(inst: Instance, ping: str) -> dict[str, Any]:
    out: dict[str, Any] = {
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


def activation_json(act: Activation, now: float) -> dict[str, Any]:
    return {
        "ActivationId": act.activation_id, "Description": act.description,
        "DefaultInstanceName": act.default_instance_name, "IamRole": act.iam_role,
        "RegistrationLimit": act.registration_limit, "RegistrationsCount": act.registrations,
        "ExpirationDate": act.expiration, "Expired": now > act.expiration,
        "CreatedDate": act.created, "Tags": tag_list(act.tags),
    }
