"""The custom-resource handler that lets ``ssm.amazonaws.com`` assume the SageMaker role
(:func:`sagemaker_ssh_helper.cdk.handlers.trust_policy.on_event`, under SSH Helper v2's name)."""
from __future__ import annotations

from typing import Any

from sagemaker_ssh_helper.cdk.handlers import trust_policy


def handler(event: dict[str, Any], context: Any = None, iam: Any = None) -> dict[str, Any]:
    return trust_policy.on_event(event, context, iam)
