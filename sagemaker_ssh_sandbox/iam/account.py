"""The sandbox account's identities and their policies, as the CDK stacks would set them up.

* ``sandbox-user`` (an IAM user; the access key every sandbox client uses, ``CREDENTIALS``) has
  ``SSHClientPolicy`` and ``SSHAdminPolicy`` — what ``SSH-IAM-SSM-Stack`` gives the users' roles
  — plus ``SandboxLauncher`` for the services the sandbox does not check (SageMaker, S3, Logs).
* The SageMaker execution roles (``SageMakerRole``, and the Studio execution role) have
  ``SSHServerPolicy`` for their own role, as the stack attaches it.
* Job, endpoint, Studio and notebook containers run with credentials of their execution role,
  assumed through STS with the session name ``SageMaker`` (as SageMaker does): their
  ``sts:GetCallerIdentity`` is ``AROA…:SageMaker``, the ``SSHCreator`` they tag activations with.

Every policy document comes from :mod:`sagemaker_ssh_helper.cdk.policies`, so the sandbox enforces
exactly what the stacks deploy. Only the SSM stand-in evaluates them (``ssm.iam``).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any, Callable

from sagemaker_ssh_helper.cdk import policies

USER_NAME = "sandbox-user"
STUDIO_ROLE_NAME = "SageMakerStudioExecutionRole"
SESSION_NAME = "SageMaker"
LAUNCHER = {"Version": "2012-10-17", "Statement": [{
    "Sid": "SandboxLauncher", "Effect": "Allow",
    "Action": ["sagemaker:*", "s3:*", "logs:*", "iam:GetRole", "iam:PassRole", "sts:*"],
    "Resource": "*"}]}


def _managed_policy(iam: Any, name: str, document: dict[str, Any]) -> str:
    return str(iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))
               ["Policy"]["Arn"])


def seed(iam: Any, account: str, credentials: dict[str, str], role_names: Iterable[str],
         trust_policy: str) -> None:
    """Create the user, the roles' policies and the user's access key (``credentials``)."""
    for role in role_names:
        try:
            iam.get_role(RoleName=role)
        except iam.exceptions.NoSuchEntityException:
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust_policy)
        target = policies.Target(account=account, sagemaker_role=role)
        arn = _managed_policy(iam, f"SSHServerPolicy-{role}", policies.server_policy(target))
        iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    target = policies.Target(account=account)
    iam.create_user(UserName=USER_NAME)
    for name, document in (("SSHClientPolicy", policies.client_policy(target)),
                           ("SSHAdminPolicy", policies.admin_policy(target))):
        iam.attach_user_policy(UserName=USER_NAME,
                               PolicyArn=_managed_policy(iam, name, document))
    iam.put_user_policy(UserName=USER_NAME, PolicyName="SandboxLauncher",
                        PolicyDocument=json.dumps(LAUNCHER))
    iam.create_access_key(UserName=USER_NAME)
    _use_fixed_key(account, credentials)


def _use_fixed_key(account: str, credentials: dict[str, str]) -> None:
    """Give the user's key the fixed ID and secret every sandbox client knows (moto runs in
    this process; its API has no way to choose a key's ID)."""
    from moto.iam.models import iam_backends

    key = iam_backends[account]["aws"].users[USER_NAME].access_keys[0]
    key.access_key_id = credentials["AWS_ACCESS_KEY_ID"]
    key.secret_access_key = credentials["AWS_SECRET_ACCESS_KEY"]


def role_credentials(sts: Any) -> Callable[[str], dict[str, str]]:
    """``role ARN -> AWS_* variables`` of a fresh ``SageMaker`` session of that role."""
    lock = threading.Lock()  # boto3 clients are thread-safe; moto's STS backend is not

    def credentials(role_arn: str) -> dict[str, str]:
        with lock:
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=SESSION_NAME,
                                    DurationSeconds=43200)["Credentials"]
        return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                "AWS_SESSION_TOKEN": creds["SessionToken"]}

    return credentials
