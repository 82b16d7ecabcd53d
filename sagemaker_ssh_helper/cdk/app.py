"""The CDK app of SSH Helper: ``cdk -a "python -m sagemaker_ssh_helper.cdk.app" <command>``.

Stacks (context values with ``-c name=value``):

* ``SSH-IAM-SSM-Stack``: ``sagemaker_role`` (name, path/name or ARN of the SageMaker execution
  role), ``user_role`` (comma-separated names of the roles that connect; optional),
  ``authorized_keys_path`` (``s3://bucket/prefix/`` for public keys; optional);
* ``SSH-IAM-SSM-Advanced-Tier-Stack``: no context;
* ``SSH-Low-GPU-Notification-Stack``: ``sns_notification_topic_arn``.

A stack whose required context is missing is left out of the app (with a note on stderr), so
``cdk deploy <stack>`` then says the stack does not exist rather than failing half-way.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

import aws_cdk as cdk

from sagemaker_ssh_helper import cli
from sagemaker_ssh_helper.cdk.advanced_tier_stack import SSMAdvancedTierStack
from sagemaker_ssh_helper.cdk.iam_ssm_stack import SSHIAMSSMStack
from sagemaker_ssh_helper.cdk.low_gpu_stack import LowGPUNotificationStack
from sagemaker_ssh_helper.errors import UsageError

PROG = "sagemaker_ssh_helper.cdk.app"

IAM_STACK = "SSH-IAM-SSM-Stack"
ADVANCED_TIER_STACK = "SSH-IAM-SSM-Advanced-Tier-Stack"
LOW_GPU_STACK = "SSH-Low-GPU-Notification-Stack"
STACKS = (IAM_STACK, ADVANCED_TIER_STACK, LOW_GPU_STACK)
CONTEXT_KEYS = ("sagemaker_role", "user_role", "authorized_keys_path",
                "sns_notification_topic_arn", "policy_name_suffix")


def _context(app: cdk.App, name: str) -> str | None:
    assert name in CONTEXT_KEYS, name
    value = app.node.try_get_context(name)
    return str(value).strip() if value not in (None, "") else None


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _note(message: str) -> None:
    cli.progress(f"{PROG}: {message}")


def _environment() -> Any:
    return cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                           region=os.environ.get("CDK_DEFAULT_REGION"))


def build_app(app: cdk.App | None = None) -> cdk.App:
    app = app or cdk.App()
    env: Any = _environment()
    sagemaker_role = _context(app, "sagemaker_role")
    if sagemaker_role:
        SSHIAMSSMStack(app, IAM_STACK, env=env, sagemaker_role=sagemaker_role,
                       user_roles=_names(_context(app, "user_role")),
                       authorized_keys_path=_context(app, "authorized_keys_path"),
                       policy_name_suffix=_context(app, "policy_name_suffix") or "",
                       description="SageMaker SSH Helper: IAM policies and SSM trust")
    else:
        _note(f"{IAM_STACK} left out: pass -c sagemaker_role=<role> -c user_role=<role>")
    SSMAdvancedTierStack(app, ADVANCED_TIER_STACK, env=env,
                         description="SageMaker SSH Helper: SSM advanced-instances tier")
    topic = _context(app, "sns_notification_topic_arn")
    if topic:
        LowGPUNotificationStack(app, LOW_GPU_STACK, env=env, sns_notification_topic_arn=topic,
                                description="SageMaker SSH Helper: low GPU use notifications")
    else:
        _note(f"{LOW_GPU_STACK} left out: pass -c sns_notification_topic_arn=<topic ARN>")
    return app


def build_single(stack_class: Any, stack_name: str, app: cdk.App | None = None) -> cdk.App:
    """An app with one stack (the SSH Helper v2 app modules: ``iam_ssm_app`` and friends)."""
    app = app or cdk.App()
    stack_class(app, stack_name, env=_environment())
    return app


def _synth(build: Callable[[], cdk.App]) -> int:
    try:
        build().synth()
    except ValueError as e:  # bad or missing context values
        raise UsageError(str(e)) from e
    return 0


def run_single(stack_class: Any, stack_name: str, prog: str) -> int:
    """Synthesize ``build_single``'s app; bad or missing context is one line, exit 2."""
    return cli.guarded_main(prog, lambda frame: _synth(
        lambda: build_single(stack_class, stack_name)))


def main() -> int:
    return cli.guarded_main(PROG, lambda frame: _synth(build_app))


if __name__ == "__main__":
    sys.exit(main())
