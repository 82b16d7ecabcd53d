"""``SSH-IAM-SSM-Stack``: the IAM side of SSH Helper for one SageMaker role and its users.

* ``SSHSageMakerServerPolicy`` (:func:`policies.server_policy`) attached to the SageMaker
  execution role;
* ``SSHSageMakerClientPolicy`` (:func:`policies.client_policy`) attached to the users' roles;
* ``SSHSageMakerAdminPolicy`` (:func:`policies.admin_policy`), attached to nothing, for
  administrators who run ``sm-ssh-deregister-instances``;
* ``SSHSageMakerNoRemoteDebugPolicy`` (:func:`policies.remote_debug_deny_policy`), attached to
  nothing, for principals who must not turn on SageMaker's remote debugging (and so cannot
  launch jobs with the native transport);
* a custom resource that adds ``ssm.amazonaws.com`` to the SageMaker role's trust policy while
  keeping every statement it has (handler: :mod:`handlers.trust_policy`).

The managed policies have the IAM names SSH Helper v2 gave them (``SSHSageMakerServerPolicy``,
``SSHSageMakerClientPolicy``), so documents and scripts that attach them by name keep working.
IAM names are account-wide: a second copy of the stack (another region) needs
``policy_name_suffix`` (context ``-c policy_name_suffix=-eu-west-1``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aws_cdk import Aws, CustomResource, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import custom_resources as cr
from constructs import Construct

from sagemaker_ssh_helper.cdk import policies

HANDLERS = Path(__file__).resolve().parent / "handlers"
LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_13
SERVER_POLICY_NAME = "SSHSageMakerServerPolicy"
CLIENT_POLICY_NAME = "SSHSageMakerClientPolicy"
ADMIN_POLICY_NAME = "SSHSageMakerAdminPolicy"
NO_REMOTE_DEBUG_POLICY_NAME = "SSHSageMakerNoRemoteDebugPolicy"


def handlers_code() -> lambda_.Code:
    return lambda_.Code.from_asset(str(HANDLERS), exclude=["__pycache__", "*.pyc"])


def bare_role_name(role: str) -> str:
    """``service-role/Name`` or a role ARN -> ``Name`` (what IAM APIs take as RoleName)."""
    return role.rsplit("/", 1)[-1]


def role_path_and_name(role: str) -> str:
    """A role ARN -> ``path/Name`` (the part after ``role/``); a name stays as it is."""
    if role.startswith("arn:"):
        return role.split(":", 5)[-1][len("role/"):]
    return role


class SSHIAMSSMStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, sagemaker_role: str,
                 user_roles: Sequence[str] = (), authorized_keys_path: str | None = None,
                 policy_name_suffix: str = "", **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        bucket, prefix = _split_s3(authorized_keys_path)
        target = policies.Target(partition=Aws.PARTITION, account=Aws.ACCOUNT_ID,
                                 sagemaker_role=role_path_and_name(sagemaker_role),
                                 keys_bucket=bucket, keys_prefix=prefix)
        sm_role = iam.Role.from_role_name(self, "SageMakerRole", bare_role_name(sagemaker_role))
        users = [iam.Role.from_role_name(self, f"UserRole{i}", bare_role_name(name))
                 for i, name in enumerate(user_roles)]
        suffix = _policy_name_suffix(policy_name_suffix)
        self.server_policy = iam.ManagedPolicy(
            self, "SSHServerPolicy", roles=[sm_role],
            managed_policy_name=SERVER_POLICY_NAME + suffix,
            description="SageMaker SSH Helper: containers register with SSM (server side)",
            document=iam.PolicyDocument.from_json(policies.server_policy(target)))
        self.client_policy = iam.ManagedPolicy(
            self, "SSHClientPolicy", roles=users,
            managed_policy_name=CLIENT_POLICY_NAME + suffix,
            description="SageMaker SSH Helper: connect to your own SageMaker containers",
            document=iam.PolicyDocument.from_json(policies.client_policy(target)))
        self.admin_policy = iam.ManagedPolicy(
            self, "SSHAdminPolicy", managed_policy_name=ADMIN_POLICY_NAME + suffix,
            description="SageMaker SSH Helper: deregister stale SSH Helper managed instances",
            document=iam.PolicyDocument.from_json(policies.admin_policy(target)))
        self.no_remote_debug_policy = iam.ManagedPolicy(
            self, "SSHNoRemoteDebugPolicy",
            managed_policy_name=NO_REMOTE_DEBUG_POLICY_NAME + suffix,
            description="SageMaker SSH Helper: deny turning on remote debugging of training jobs",
            document=iam.PolicyDocument.from_json(policies.remote_debug_deny_policy(target)))
        self.trust = self._trust_ssm(target, bare_role_name(sagemaker_role))

    def _trust_ssm(self, target: policies.Target, role_name: str) -> CustomResource:
        role_arn = f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/{target.sagemaker_role}"
        function = lambda_.Function(
            self, "TrustSSMHandler", runtime=LAMBDA_RUNTIME, code=handlers_code(),
            handler="trust_policy.on_event", timeout=Duration.seconds(60),
            description="SageMaker SSH Helper: add ssm.amazonaws.com to a role's trust policy")
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["iam:GetRole", "iam:UpdateAssumeRolePolicy"], resources=[role_arn]))
        provider = cr.Provider(self, "TrustSSMProvider", on_event_handler=function)
        return CustomResource(
            self, "TrustSSM", service_token=provider.service_token,
            resource_type="Custom::SSHHelperSSMTrust",
            properties={"RoleName": role_name,
                        "Statement": policies.ssm_trust_statement(target)})


def _policy_name_suffix(value: str | None) -> str:
    suffix = (value or "").strip()
    if suffix and not re.fullmatch(r"[\w+=,.@-]{1,40}", suffix):
        raise ValueError(f"policy_name_suffix must be up to 40 of the characters IAM names "
                         f"allow (letters, digits, +=,.@_-), got {value!r}")
    return suffix


def _split_s3(path: str | None) -> tuple[str, str]:
    if not path:
        return "", policies.DEFAULT_KEYS_PREFIX
    if not path.startswith("s3://"):
        raise ValueError(f"authorized_keys_path must be an s3:// prefix, got {path!r}")
    bucket, _, prefix = path[len("s3://"):].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix
