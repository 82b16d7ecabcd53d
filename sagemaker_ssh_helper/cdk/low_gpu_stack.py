"""``SSH-Low-GPU-Notification-Stack``: an SNS message when a training job's GPUs sit idle.

An EventBridge rule sends every "SageMaker Processing Job State Change" event (Debugger runs its
rules as processing jobs) to a Lambda function (:mod:`handlers.low_gpu`) that checks the related
training job's ``LowGPUUtilization`` rule and publishes to the given SNS topic when it found
issues. Typical use: a placeholder job kept alive for interactive work that nobody uses.
"""
from __future__ import annotations

from typing import Any

from aws_cdk import Aws, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from constructs import Construct

from sagemaker_ssh_helper.cdk.iam_ssm_stack import LAMBDA_RUNTIME, handlers_code

DETAIL_TYPE = "SageMaker Processing Job State Change"


class LowGPUNotificationStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, sns_notification_topic_arn: str,
                 rule_name: str = "LowGPUUtilization", **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        topic = sns.Topic.from_topic_arn(self, "NotificationTopic", sns_notification_topic_arn)
        self.function = lambda_.Function(
            self, "LowGPUHandler", runtime=LAMBDA_RUNTIME, code=handlers_code(),
            handler="low_gpu.handler", timeout=Duration.seconds(30),
            description="SageMaker SSH Helper: notify about training jobs with low GPU use",
            environment={"SNS_NOTIFICATION_TOPIC_ARN": sns_notification_topic_arn,
                         "LOW_GPU_RULE_NAME": rule_name})
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeTrainingJob", "sagemaker:DescribeProcessingJob"],
            resources=[f"arn:{Aws.PARTITION}:sagemaker:{Aws.REGION}:{Aws.ACCOUNT_ID}:"
                       f"training-job/*",
                       f"arn:{Aws.PARTITION}:sagemaker:{Aws.REGION}:{Aws.ACCOUNT_ID}:"
                       f"processing-job/*"]))
        topic.grant_publish(self.function)
        self.rule = events.Rule(
            self, "ProcessingJobStateChange",
            description="SageMaker processing job state changes (Debugger rule evaluations)",
            event_pattern=events.EventPattern(source=["aws.sagemaker"],
                                              detail_type=[DETAIL_TYPE]),
            targets=[targets.LambdaFunction(self.function)])
