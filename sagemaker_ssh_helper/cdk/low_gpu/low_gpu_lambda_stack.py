"""``LowGPULambdaStack``: SSH Helper v2's low-GPU stack class, configured from CDK context
``sns_notification_topic_arn`` (required) over
:class:`~sagemaker_ssh_helper.cdk.low_gpu_stack.LowGPUNotificationStack`."""
from __future__ import annotations

from typing import Any

from constructs import Construct

from sagemaker_ssh_helper.cdk.low_gpu_stack import LowGPUNotificationStack


class LowGPULambdaStack(LowGPUNotificationStack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        if "sns_notification_topic_arn" not in kwargs:
            topic = scope.node.try_get_context("sns_notification_topic_arn")
            if not topic:
                raise ValueError(f"{construct_id} needs the topic to notify: pass "
                                 "-c sns_notification_topic_arn=<SNS topic ARN>")
            kwargs["sns_notification_topic_arn"] = str(topic).strip()
        kwargs.setdefault("description", "SageMaker SSH Helper: low GPU use notifications")
        super().__init__(scope, construct_id, **kwargs)
