"""The low-GPU notification handler (:func:`sagemaker_ssh_helper.cdk.handlers.low_gpu.handler`,
under SSH Helper v2's name)."""
from __future__ import annotations

from typing import Any

from sagemaker_ssh_helper.cdk.handlers import low_gpu


def handler(event: dict[str, Any], context: Any = None, sagemaker: Any = None,
            sns: Any = None) -> dict[str, Any]:
    return low_gpu.handler(event, context, sagemaker, sns)
