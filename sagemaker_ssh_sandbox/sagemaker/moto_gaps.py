"""Places where moto answers differently from AWS and our clients notice.

* **iam:SimulatePrincipalPolicy** is not implemented in moto; SDK v3 calls it to check a role
  before ``ModelTrainer`` or ``ModelBuilder`` launch anything. The sandbox checks identity
  policies only on the SSM calls it serves (``ssm.iam``); what SDK v3 asks about (SageMaker,
  S3, ECR, Logs) goes unchecked there, so here every action is ``allowed`` for a principal that
  exists, and an unknown principal gets ``NoSuchEntity`` as from IAM.
* **Empty structures.** moto's SageMaker Describe* answers carry ``"VpcConfig": {}``,
  ``"DataCaptureConfig": {}`` and the like where AWS leaves the member out; SDK v3's models reject
  them (their required members are missing). :func:`drop_empty_structures` removes every empty
  structure that has required members, using botocore's model of the operation's output.
* **S3's ExpectedBucketOwner** (the ``x-amz-expected-bucket-owner`` header) is ignored by moto;
  S3 answers ``403 AccessDenied`` when the bucket's owner is another account. Every bucket of
  the sandbox is its account's, so :func:`bucket_owner_refusal` refuses any other account.
"""
from __future__ import annotations

import json
import logging
import uuid
from functools import lru_cache
from typing import Any, Callable, Optional
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

logger = logging.getLogger(__name__)

IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
SIMULATE = "SimulatePrincipalPolicy"


# -- iam:SimulatePrincipalPolicy ------------------------------------------------------------
EXPECTED_OWNER_HEADER = "x-amz-expected-bucket-owner"


def bucket_owner_refusal(expected: str | None, account: str | None) -> bytes | None:
    """S3's 403 body when a request expects its bucket to be owned by an account other than
    ``account`` (the sandbox's, which owns every bucket there); None: forward it."""
    if not expected or not account or expected.strip() == account:
        return None
    request_id = uuid.uuid4().hex[:16].upper()
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>"
            f"<Message>Access Denied</Message><RequestId>{request_id}</RequestId>"
            "<HostId>sandbox</HostId></Error>").encode()


def query_form(content_type: str, body: bytes) -> dict[str, str] | None:
    """The parameters of an AWS Query-protocol request (IAM, STS), or None."""
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return None
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    return {key: values[-1] for key, values in parsed.items()}


def _members(form: dict[str, str], prefix: str) -> list[str]:
    keys = sorted((k for k in form if k.startswith(prefix + ".member.")),
                  key=lambda k: int(k.rsplit(".", 1)[1]))
    return [form[k] for k in keys]


def context_entries(form: dict[str, str]) -> dict[str, list[str]]:
    """SimulatePrincipalPolicy's ContextEntries: key name -> values."""
    entries: dict[str, list[str]] = {}
    prefix = "ContextEntries.member."
    numbers = sorted({int(k[len(prefix):].split(".", 1)[0]) for k in form
                      if k.startswith(prefix) and k.endswith(".ContextKeyName")})
    for n in numbers:
        entries[form[f"{prefix}{n}.ContextKeyName"]] = _members(
            form, f"{prefix}{n}.ContextKeyValues")
    return entries


Decide = Callable[[str, str, str, dict[str, list[str]]], Optional[str]]


def simulate_principal_policy(form: dict[str, str], principal_exists: Callable[[str], bool],
                              decide: Decide | None = None) -> tuple[int, str]:
    """(HTTP status, XML body) of SimulatePrincipalPolicy for ``form``.

    ``decide(principal, action, resource, context)`` evaluates what the sandbox enforces (its
    SSM stand-in checks the caller's policies): "allowed", "explicitDeny" or "implicitDeny",
    or None for actions the sandbox does not check, which are "allowed" as they are when
    called."""
    request_id = str(uuid.uuid4())
    source = form.get("PolicySourceArn", "")
    if not principal_exists(source):
        return 404, (f'<ErrorResponse xmlns="{IAM_NS}"><Error><Type>Sender</Type>'
                     f"<Code>NoSuchEntity</Code><Message>{escape(source)} not found</Message>"
                     f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
    resources = _members(form, "ResourceArns") or ["*"]
    context = context_entries(form)

    def decision(action: str, resource: str) -> str:
        said = decide(source, action, resource, context) if decide is not None else None
        return said or "allowed"

    results = "".join(
        f"<member><EvalActionName>{escape(action)}</EvalActionName>"
        f"<EvalResourceName>{escape(resource)}</EvalResourceName>"
        f"<EvalDecision>{decision(action, resource)}</EvalDecision><MatchedStatements/>"
        "<MissingContextValues/>"
        "<OrganizationsDecisionDetail><AllowedByOrganizations>true</AllowedByOrganizations>"
        "</OrganizationsDecisionDetail></member>"
        for action in _members(form, "ActionNames") for resource in resources)
    return 200, (f'<{SIMULATE}Response xmlns="{IAM_NS}"><{SIMULATE}Result>'
                 f"<IsTruncated>false</IsTruncated><EvaluationResults>{results}"
                 f"</EvaluationResults></{SIMULATE}Result><ResponseMetadata><RequestId>"
                 f"{request_id}</RequestId></ResponseMetadata></{SIMULATE}Response>")


def decide_in_process(principal: str, action: str, resource: str,
                      context: dict[str, list[str]]) -> str | None:
    """The decision the SSM stand-in would make for ``principal`` (a role or user of moto's
    IAM, running in this process), for ``ssm:`` actions; None for the others."""
    if not action.lower().startswith("ssm:"):
        return None
    from moto.iam.models import iam_backends

    from sagemaker_ssh_sandbox.iam.policy import ALLOW, EXPLICIT_DENY, Request, evaluate
    from sagemaker_ssh_sandbox.ssm.iam import _documents

    parts = principal.split(":")
    if len(parts) < 6:
        return None
    account, partition, name = parts[4], parts[1], parts[5].rsplit("/", 1)[-1]
    try:
        iam = iam_backends[account][partition]
        entity = iam.get_role(name) if parts[5].startswith("role/") else iam.get_user(name)
    except Exception:
        return None
    said = evaluate(_documents(entity), Request(action, resource, dict(context)))
    return {ALLOW: "allowed", EXPLICIT_DENY: "explicitDeny"}.get(said, "implicitDeny")


def principal_exists(iam: Any, arn: str) -> bool:
    """Whether the role or user ``arn`` exists in moto's IAM (other principals: assumed)."""
    kind, _, path = arn.partition(":")[2].rpartition(":")[2].partition("/")
    name = path.rsplit("/", 1)[-1]
    try:
        if kind == "role":
            iam.get_role(RoleName=name)
        elif kind == "user":
            iam.get_user(UserName=name)
        return True
    except Exception as e:
        if getattr(e, "response", {}).get("Error", {}).get("Code") == "NoSuchEntity":
            return False
        raise


# -- empty structures -----------------------------------------------------------------------
@lru_cache(maxsize=1)
def _sagemaker_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


def _prune(value: Any, shape: Any) -> Any:
    kind = getattr(shape, "type_name", None)
    if kind == "structure" and isinstance(value, dict):
        out = {}
        for key, item in value.items():
            member = shape.members.get(key)
            if member is None:
                out[key] = item
                continue
            if item == {} and member.type_name == "structure" and member.required_members:
                continue
            out[key] = _prune(item, member)
        return out
    if kind == "list" and isinstance(value, list):
        return [_prune(item, shape.member) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _prune(v, shape.value) for k, v in value.items()}
    return value


def drop_empty_structures(operation: str, body: bytes) -> bytes:
    """``body`` (a SageMaker JSON answer to ``operation``) without empty structures that have
    required members; unchanged when nothing is dropped or the operation is unknown."""
    try:
        output = _sagemaker_model().operation_model(operation).output_shape
        data = json.loads(body or b"{}")
    except Exception:  # an unknown operation or a non-JSON body: pass it on as it is
        return body
    if output is None or not isinstance(data, dict):
        return body
    pruned = _prune(data, output)
    return body if pruned == data else json.dumps(pruned).encode()
