"""``SSH-IAM-SSM-Advanced-Tier-Stack``: switch the region's SSM activations to the advanced tier.

Session Manager sessions to hybrid (``mi-``) instances need the advanced-instances tier, which is
a per-region service setting (``/ssm/managed-instance/activation-tier`` = ``advanced``). The
stack sets it with one UpdateServiceSetting call. Deleting the stack leaves the setting as it
is: going back to the standard tier is a decision to take in the Fleet Manager settings.
"""
from __future__ import annotations

from typing import Any

from aws_cdk import Aws, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import custom_resources as cr
from constructs import Construct

from sagemaker_ssh_helper.cdk import policies


class SSMAdvancedTierStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        setting = policies.advanced_tier_setting_arn(Aws.PARTITION, Aws.REGION, Aws.ACCOUNT_ID)
        call = cr.AwsSdkCall(
            service="SSM", action="updateServiceSetting",
            parameters={"SettingId": setting, "SettingValue": "advanced"},
            physical_resource_id=cr.PhysicalResourceId.of("ssm-activation-tier-advanced"))
        self.setting = cr.AwsCustomResource(
            self, "ActivationTierAdvanced", on_create=call, on_update=call,
            install_latest_aws_sdk=False,
            policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
                actions=["ssm:UpdateServiceSetting"], resources=[setting])]))
