"""SSH Helper v2's low-GPU notification app: one stack, ``Low-GPU-Lambda-Stack``::

    cdk -a "python -m sagemaker_ssh_helper.cdk.low_gpu_lambda_app" deploy Low-GPU-Lambda-Stack \\
        -c sns_notification_topic_arn=<topic ARN>

The region and account are the CDK CLI's (``AWS_REGION=<region> cdk ...``). All stacks
together, under this package's own stack names, are in ``python -m sagemaker_ssh_helper.cdk.app``.
"""
from __future__ import annotations

import sys
from typing import Any

from sagemaker_ssh_helper.cdk.app import build_single, run_single
from sagemaker_ssh_helper.cdk.low_gpu.low_gpu_lambda_stack import LowGPULambdaStack

STACK_NAME = "Low-GPU-Lambda-Stack"


def build(app: Any | None = None) -> Any:
    """The app with its one stack (``app``: a ``cdk.App`` to build into, e.g. in tests)."""
    return build_single(LowGPULambdaStack, STACK_NAME, app)


def main() -> int:
    return run_single(LowGPULambdaStack, STACK_NAME, __spec__.name if __spec__ else __name__)


if __name__ == "__main__":
    sys.exit(main())
