"""Switch a region's SSM activations to the advanced-instances tier (SSH Helper v2's handler).

``SSM-Advanced-Tier-Stack`` does this with an ``AwsCustomResource`` and needs no code of ours;
this handler is the same call for scripts and Lambda functions that used v2's: on a
CloudFormation ``Create``/``Update`` event, or an event without ``RequestType`` (a trigger), it
sets ``/ssm/managed-instance/activation-tier`` to ``advanced``; ``Delete`` leaves the setting as
it is (going back to the standard tier is a decision for the Fleet Manager settings).
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

SETTING_ID = "/ssm/managed-instance/activation-tier"
PHYSICAL_ID = "ssm-activation-tier-advanced"


def handler(event: dict[str, Any], context: Any = None, ssm: Any = None) -> dict[str, Any]:
    request = (event or {}).get("RequestType")
    if request == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId") or PHYSICAL_ID}
    if request not in (None, "Create", "Update"):
        raise ValueError(f"unknown request type {request!r}")
    if ssm is None:
        import boto3

        ssm = boto3.client("ssm")
    ssm.update_service_setting(SettingId=SETTING_ID, SettingValue="advanced")
    logger.info("SSM activation tier set to advanced")
    return {"PhysicalResourceId": PHYSICAL_ID, "Data": {"SettingValue": "advanced"}}
