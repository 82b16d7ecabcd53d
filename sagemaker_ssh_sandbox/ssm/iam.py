"""IAM for the SSM stand-in: who is calling, and may they? (enforced when the backend has an
:class:`Authorizer`; the stand-in run on its own, as in unit tests, enforces nothing).

Each public operation becomes one or more ``iam.policy.Request`` s, as IAM authorizes
them for Systems Manager: the action, the resource ARN (a managed instance, a document, a
session, or ``*`` for actions without a resource type) and the condition keys the policies may
use: ``ssm:resourceTag/K`` and ``aws:ResourceTag/K`` of the instance, ``aws:RequestTag/K`` and
``aws:TagKeys`` of tags being set, ``iam:PassedToService`` when a role is passed, plus the
caller's ``aws:userid``, ``aws:username``, ``aws:PrincipalArn``, ``aws:PrincipalAccount``.

The sandbox daemon resolves callers with :class:`MotoPrincipals`: access keys of IAM users and of
roles assumed through STS (the job containers' credentials), with their attached and inline
policies, read from moto's IAM at each call so that policy changes apply at once.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sagemaker_ssh_sandbox.iam.policy import (
    ALLOW,
    EXPLICIT_DENY,
    Request,
    Value,
    evaluate,
    tag_context,
)
from sagemaker_ssh_sandbox.ssm.state import SSMError, tags_from

SSM_SERVICE = "ssm.amazonaws.com"
TARGET_ID_KEY = "ssm:resourceTag/aws:ssmmessages:target-id"


@dataclass(frozen=True)
class Principal:
    arn: str
    userid: str
    account: str
    name: str                       # IAM user name, or the role session name
    username: str | None = None  # aws:username exists for IAM users only
    policies: Sequence[Any] = field(default_factory=list)

    def context(self) -> dict[str, Value]:
        out: dict[str, Value] = {"aws:userid": self.userid, "aws:PrincipalArn": self.arn,
                                 "aws:PrincipalAccount": self.account}
        if self.username:
            out["aws:username"] = self.username
        return out


class Principals(Protocol):
    def principal(self, access_key_id: str) -> Principal | None: ...


class Authorizer:
    """Checks each public SSM call against the caller's identity policies."""

    def __init__(self, principals: Principals) -> None:
        self.principals = principals

    def check(self, backend: Any, operation: str, body: Mapping[str, Any],
              access_key_id: str) -> Principal:
        principal = self.principals.principal(access_key_id)
        if principal is None:
            raise SSMError("UnrecognizedClientException",
                           "The security token included in the request is invalid.")
        for request in requests_for(backend, operation, body):
            request = Request(request.action, request.resource,
                              {**request.context, **principal.context()})
            decision = evaluate(principal.policies, request)
            if decision != ALLOW:
                why = ("with an explicit deny in an identity-based policy"
                       if decision == EXPLICIT_DENY
                       else f"because no identity-based policy allows the {request.action} "
                            "action")
                raise SSMError("AccessDeniedException",
                               f"User: {principal.arn} is not authorized to perform: "
                               f"{request.action} on resource: {request.resource} {why}")
        return principal


def _arn(backend: Any, resource: str, account: str | None = None) -> str:
    acct = backend.account_id if account is None else account
    return f"arn:aws:ssm:{backend.region}:{acct}:{resource}"


def _instance(backend: Any, instance_id: Any) -> Request:
    """ARN and tag context of a managed instance (unknown IDs still get their ARN)."""
    with backend.lock:
        inst = backend.live_instance(instance_id)
        tags = dict(inst.tags) if inst is not None else {}
    context = {**tag_context("ssm:resourceTag/", tags), **tag_context("aws:ResourceTag/", tags)}
    return Request("", _arn(backend, f"managed-instance/{instance_id}"), context)


def _with(request: Request, action: str, extra: Mapping[str, Value] | None = None
          ) -> Request:
    return Request(action, request.resource, {**request.context, **(extra or {})})


def _request_tags(body: Mapping[str, Any]) -> dict[str, Value]:
    tags = tags_from(body.get("Tags"))
    out: dict[str, Value] = tag_context("aws:RequestTag/", tags)
    out["aws:TagKeys"] = list(tags)
    return out


def requests_for(backend: Any, operation: str, body: Mapping[str, Any]) -> list[Request]:
    """What IAM authorizes for one call (the action alone on ``*`` when nothing else)."""
    action = f"ssm:{operation}"
    if operation == "CreateActivation":
        tagging = _request_tags(body)
        role = str(body.get("IamRole") or "")
        requests = [Request(action, "*", tagging),
                    Request("iam:PassRole", f"arn:aws:iam::{backend.account_id}:role/{role}",
                            {"iam:PassedToService": SSM_SERVICE})]
        if body.get("Tags"):  # tagging at creation needs the tagging permission too
            requests.append(Request("ssm:AddTagsToResource", "*", tagging))
        return requests
    if operation in ("AddTagsToResource", "RemoveTagsFromResource", "ListTagsForResource"):
        target = _instance(backend, body.get("ResourceId"))
        extra: dict[str, Value] = {}
        if operation == "AddTagsToResource":
            extra = _request_tags(body)
        elif operation == "RemoveTagsFromResource":
            extra = {"aws:TagKeys": [str(k) for k in body.get("TagKeys") or []]}
        return [_with(target, action, extra)]
    if operation == "DeregisterManagedInstance":
        return [_with(_instance(backend, body.get("InstanceId")), action)]
    if operation == "SendCommand":
        document = _arn(backend, f"document/{body.get('DocumentName', '')}", account="")
        return ([_with(_instance(backend, i), action) for i in body.get("InstanceIds") or []]
                + [Request(action, document)])
    if operation == "StartSession":
        to = body.get("Target")  # Session Manager policies may scope targets by their ID
        requests = [_with(_instance(backend, to), action,
                          {TARGET_ID_KEY: str(to)} if isinstance(to, str) else {})]
        if body.get("DocumentName"):
            requests.append(Request(action, _arn(
                backend, f"document/{body['DocumentName']}", account="")))
        return requests
    if operation in ("GetServiceSetting", "UpdateServiceSetting"):
        setting = str(body.get("SettingId", ""))
        return [Request(action, setting if setting.startswith("arn:")
                        else _arn(backend, f"servicesetting{setting}"))]
    if operation in ("TerminateSession", "ResumeSession"):
        return [Request(action, _arn(backend, f"session/{body.get('SessionId', '')}"))]
    return [Request(action, "*")]


class MotoPrincipals:
    """Callers as moto's IAM and STS know them (the sandbox daemon runs moto in-process)."""

    def __init__(self, account: str, partition: str = "aws") -> None:
        self.account = account
        self.partition = partition

    def _iam(self) -> Any:
        from moto.iam.models import iam_backends

        return iam_backends[self.account][self.partition]

    def principal(self, access_key_id: str) -> Principal | None:
        from moto.sts.models import sts_backends

        iam = self._iam()
        assumed = sts_backends[self.account][self.partition] \
            .get_assumed_role_from_access_key(access_key_id)
        if assumed is not None:
            try:
                role = iam.get_role_by_arn(assumed.role_arn)
            except Exception:  # the role was deleted: the credentials grant nothing
                return None
            return Principal(assumed.arn, assumed.user_id, self.account,
                             assumed.session_name, None, _documents(role))
        user = iam.get_user_from_access_key_id(access_key_id)
        if user is None:
            return None
        return Principal(user.arn, user.id, self.account, user.name, user.name,
                         _documents(user))


def _documents(entity: Any) -> list[Any]:
    """Attached managed policies (their default versions) and inline policies."""
    docs: list[Any] = []
    for policy in list(entity.managed_policies.values()):
        for version in policy.versions:
            if version.is_default:
                docs.append(_parsed(version.document))
    docs += [_parsed(doc) for doc in list(entity.policies.values())]
    return docs


def _parsed(document: Any) -> Any:
    if isinstance(document, str):
        from urllib.parse import unquote

        text = document if document.lstrip().startswith("{") else unquote(document)
        return json.loads(text)
    return document
