"""Custom resource handler: let ``ssm.amazonaws.com`` assume an existing role, keeping its trust.

CloudFormation cannot add one statement to the trust policy of a role it does not own, and
replacing the whole document would drop whatever the role trusts today (SageMaker, other
accounts, ...). This handler reads the current trust policy and appends one statement with a
known ``Sid``; on delete it removes that statement again, and only if it added it.

Runs in AWS Lambda behind the CDK provider framework (``on_event`` returns the response
fields); needs only boto3. Resource properties: ``RoleName`` (without path), ``Statement``
(the JSON statement to add, with ``Sid``).
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

ADDED = "added"
PRESENT = "present"


def _iam() -> Any:
    import boto3

    return boto3.client("iam")


def read_trust(iam: Any, role_name: str) -> dict[str, Any]:
    document = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    if isinstance(document, str):  # some SDKs hand back the URL-encoded JSON
        document = json.loads(urllib.parse.unquote(document))
    return dict(document)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def trusts_service(statement: dict[str, Any], service: str) -> bool:
    """An Allow statement that lets ``service`` call sts:AssumeRole."""
    if statement.get("Effect") != "Allow":
        return False
    principal = statement.get("Principal")
    services = _as_list(principal.get("Service")) if isinstance(principal, dict) else []
    actions = _as_list(statement.get("Action"))
    return service in services and any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions)


def physical_id(role_name: str, state: str) -> str:
    return f"ssm-trust:{role_name}:{state}"


def add_statement(iam: Any, role_name: str, statement: dict[str, Any]) -> str:
    """Append ``statement`` unless the role already trusts its service; returns the state."""
    document = read_trust(iam, role_name)
    statements = _as_list(document.get("Statement"))
    sid = statement["Sid"]
    service = statement["Principal"]["Service"]
    ours = [s for s in statements if s.get("Sid") == sid]
    if ours:
        if ours[0] == statement:
            return ADDED
        statements = [s for s in statements if s.get("Sid") != sid]  # refresh our statement
    elif any(trusts_service(s, service) for s in statements):
        logger.info("%s already trusts %s; leaving its trust policy alone", role_name, service)
        return PRESENT
    document["Statement"] = statements + [statement]
    iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=json.dumps(document))
    logger.info("added %s to the trust policy of %s", sid, role_name)
    return ADDED


def remove_statement(iam: Any, role_name: str, sid: str) -> None:
    """Remove the statement with ``sid``; a role that is gone needs nothing."""
    try:
        document = read_trust(iam, role_name)
    except iam.exceptions.NoSuchEntityException:
        logger.info("%s no longer exists", role_name)
        return
    statements = _as_list(document.get("Statement"))
    kept = [s for s in statements if s.get("Sid") != sid]
    if len(kept) == len(statements):
        return
    document["Statement"] = kept
    iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=json.dumps(document))
    logger.info("removed %s from the trust policy of %s", sid, role_name)


def _parse_physical_id(value: str | None) -> tuple[str, str] | None:
    parts = (value or "").split(":")
    if len(parts) == 3 and parts[0] == "ssm-trust":
        return parts[1], parts[2]
    return None


def on_event(event: dict[str, Any], context: Any = None, iam: Any = None) -> dict[str, Any]:
    iam = iam or _iam()
    request = event["RequestType"]
    props = event.get("ResourceProperties") or {}
    statement = props["Statement"]
    if isinstance(statement, str):
        statement = json.loads(statement)
    if request in ("Create", "Update"):
        role_name = props["RoleName"]
        state = add_statement(iam, role_name, statement)
        # A new physical id (other role) makes CloudFormation delete the old one afterwards.
        return {"PhysicalResourceId": physical_id(role_name, state), "Data": {"State": state}}
    if request == "Delete":
        parsed = _parse_physical_id(event.get("PhysicalResourceId"))
        if parsed and parsed[1] == ADDED:
            remove_statement(iam, parsed[0], statement["Sid"])
        return {"PhysicalResourceId": event.get("PhysicalResourceId")}
    raise ValueError(f"unknown request type {request!r}")
