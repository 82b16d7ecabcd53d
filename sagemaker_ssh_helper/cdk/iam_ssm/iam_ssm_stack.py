"""``IamSsmStack``: SSH Helper v2's IAM stack class, configured from CDK context.

Context (``-c name=value``): ``sagemaker_role`` (required: name, ``path/name`` or ARN of the
SageMaker execution role), ``user_role`` (the role, or comma-separated roles, of the users),
``authorized_keys_path`` and ``policy_name_suffix`` (optional). Keyword arguments of
:class:`~sagemaker_ssh_helper.cdk.iam_ssm_stack.SSHIAMSSMStack` win over the context.
"""
from __future__ import annotations

from typing import Any

from constructs import Construct

from sagemaker_ssh_helper.cdk.iam_ssm_stack import SSHIAMSSMStack


def _context(scope: Construct, name: str) -> str | None:
    value = scope.node.try_get_context(name)
    return str(value).strip() if value not in (None, "") else None


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


class IamSsmStack(SSHIAMSSMStack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        if "sagemaker_role" not in kwargs:
            role = _context(scope, "sagemaker_role")
            if not role:
                raise ValueError(f"{construct_id} needs the SageMaker execution role: pass "
                                 "-c sagemaker_role=<role ARN or name> (and -c user_role=<role>)")
            kwargs["sagemaker_role"] = role
        kwargs.setdefault("user_roles", _names(_context(scope, "user_role")))
        kwargs.setdefault("authorized_keys_path", _context(scope, "authorized_keys_path"))
        kwargs.setdefault("policy_name_suffix", _context(scope, "policy_name_suffix") or "")
        kwargs.setdefault("description", "SageMaker SSH Helper: IAM policies and SSM trust")
        super().__init__(scope, construct_id, **kwargs)
