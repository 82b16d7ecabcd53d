"""SSH Helper v2's IAM/SSM app: one stack, ``SSH-IAM-SSM-Stack``::

    cdk -a "python -m sagemaker_ssh_helper.cdk.iam_ssm_app" deploy SSH-IAM-SSM-Stack \\
        -c sagemaker_role=<role> -c user_role=<role>

The region and account are the CDK CLI's (``AWS_REGION=<region> cdk ...``). All stacks
together, under this package's own stack names, are in ``python -m sagemaker_ssh_helper.cdk.app``.
"""
from __future__ import annotations

import sys
from typing import Any

from sagemaker_ssh_helper.cdk.app import build_single, run_single
from sagemaker_ssh_helper.cdk.iam_ssm.iam_ssm_stack import IamSsmStack

STACK_NAME = "SSH-IAM-SSM-Stack"


def build(app: Any | None = None) -> Any:
    """The app with its one stack (``app``: a ``cdk.App`` to build into, e.g. in tests)."""
    return build_single(IamSsmStack, STACK_NAME, app)


def main() -> int:
    return run_single(IamSsmStack, STACK_NAME, __spec__.name if __spec__ else __name__)


if __name__ == "__main__":
    sys.exit(main())
