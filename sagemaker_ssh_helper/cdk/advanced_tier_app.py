"""SSH Helper v2's SSM advanced-tier app: one stack, ``SSM-Advanced-Tier-Stack``::

    cdk -a "python -m sagemaker_ssh_helper.cdk.advanced_tier_app" deploy SSM-Advanced-Tier-Stack

The region and account are the CDK CLI's (``AWS_REGION=<region> cdk ...``). All stacks
together, under this package's own stack names, are in ``python -m sagemaker_ssh_helper.cdk.app``.
"""
from __future__ import annotations

import sys
from typing import Any

from sagemaker_ssh_helper.cdk.app import build_single, run_single
from sagemaker_ssh_helper.cdk.iam_ssm.ssm_advanced_tier_stack import SsmAdvancedTierStack

STACK_NAME = "SSM-Advanced-Tier-Stack"


def build(app: Any | None = None) -> Any:
    """The app with its one stack (``app``: a ``cdk.App`` to build into, e.g. in tests)."""
    return build_single(SsmAdvancedTierStack, STACK_NAME, app)


def main() -> int:
    return run_single(SsmAdvancedTierStack, STACK_NAME, __spec__.name if __spec__ else __name__)


if __name__ == "__main__":
    sys.exit(main())
