"""``SsmAdvancedTierStack``: SSH Helper v2's name for
:class:`~sagemaker_ssh_helper.cdk.advanced_tier_stack.SSMAdvancedTierStack` (no context)."""
from __future__ import annotations

from typing import Any

from constructs import Construct

from sagemaker_ssh_helper.cdk.advanced_tier_stack import SSMAdvancedTierStack


class SsmAdvancedTierStack(SSMAdvancedTierStack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("description", "SageMaker SSH Helper: SSM advanced-instances tier")
        super().__init__(scope, construct_id, **kwargs)
