"""SSH Helper v2's CDK entry points: each app module synthesizes its stack under v2's stack name
the way the CDK CLI runs it (context in ``CDK_CONTEXT_JSON``), the IAM stack creates the
managed policies under v2's names, missing context is one line (exit 2), and the v2 handler
names drive the same handlers."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
pytest.importorskip("aws_cdk")

ACCOUNT = "111122223333"
REGION = "eu-west-1"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:gpu-alerts"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/service-role/SMExecution"
USER_ARN = f"arn:aws:iam::{ACCOUNT}:role/DataScientist"


def cli_env(outdir: Path, context: dict[str, str]) -> dict[str, str]:
    """What the CDK CLI gives an app: output directory, context, account and region."""
    return {"CDK_OUTDIR": str(outdir), "CDK_CONTEXT_JSON": json.dumps(context),
            "CDK_DEFAULT_ACCOUNT": ACCOUNT, "CDK_DEFAULT_REGION": REGION}


def run_app(module: str, outdir: Path, context: dict[str, str]) -> tuple[int, str]:
    """``python -m sagemaker_ssh_helper.cdk.<module>`` as ``cdk -a`` runs it. The IAM app runs
    as a real subprocess; the others are built in this process (the jsii runtime starts once,
    and reads its environment then, so context and outdir are passed to the App)."""
    if module == "iam_ssm_app":
        done = subprocess.run([sys.executable, "-m", f"sagemaker_ssh_helper.cdk.{module}"],
                              env=dict(os.environ, **cli_env(outdir, context)),
                              capture_output=True, text=True, timeout=300, check=False)
        return done.returncode, done.stderr
    import aws_cdk as cdk

    app = cdk.App(context=context, outdir=str(outdir))
    try:
        importlib.import_module(f"sagemaker_ssh_helper.cdk.{module}").build(app).synth()
    except ValueError as e:
        return 2, f"sagemaker_ssh_helper.cdk.{module}: {e}"
    return 0, ""


def resources(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r["Properties"] for r in template["Resources"].values() if r["Type"] == kind]


@pytest.mark.parametrize("module, stack, context, kinds", [
    ("iam_ssm_app", "SSH-IAM-SSM-Stack",
     {"sagemaker_role": ROLE_ARN, "user_role": USER_ARN},
     {"AWS::IAM::ManagedPolicy", "Custom::SSHHelperSSMTrust"}),
    ("advanced_tier_app", "SSM-Advanced-Tier-Stack", {}, {"Custom::AWS"}),
    ("low_gpu_lambda_app", "Low-GPU-Lambda-Stack", {"sns_notification_topic_arn": TOPIC},
     {"AWS::Lambda::Function", "AWS::Events::Rule"}),
])
def test_v2_app_module_synthesizes_its_stack(tmp_path: Path, module: str, stack: str,
                                             context: dict[str, str], kinds: set) -> None:
    code, stderr = run_app(module, tmp_path, context)
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.glob("*.template.json")) == [f"{stack}.template.json"]
    template = json.loads((tmp_path / f"{stack}.template.json").read_text())
    assert kinds <= {r["Type"] for r in template["Resources"].values()}
    if module == "iam_ssm_app":
        policies = {p["ManagedPolicyName"]: p for p in
                    resources(template, "AWS::IAM::ManagedPolicy")}
        assert set(policies) == {"SSHSageMakerServerPolicy", "SSHSageMakerClientPolicy",
                                 "SSHSageMakerAdminPolicy", "SSHSageMakerNoRemoteDebugPolicy"}
        assert policies["SSHSageMakerServerPolicy"]["Roles"] == ["SMExecution"]
        assert policies["SSHSageMakerClientPolicy"]["Roles"] == ["DataScientist"]
    if module == "low_gpu_lambda_app":
        function = resources(template, "AWS::Lambda::Function")[0]
        assert function["Environment"]["Variables"]["SNS_NOTIFICATION_TOPIC_ARN"] == TOPIC


@pytest.mark.parametrize("module, needed", [
    ("iam_ssm_app", "-c sagemaker_role="),  # also shows the subprocess path
    ("low_gpu_lambda_app", "-c sns_notification_topic_arn="),
])
def test_missing_context_is_one_line(tmp_path: Path, module: str, needed: str) -> None:
    code, stderr = run_app(module, tmp_path, {})
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("sagemaker_ssh")]
    assert len(lines) == 1 and needed in lines[0], stderr
    assert "Traceback" not in stderr
    assert not list(tmp_path.glob("*.template.json"))


def test_policy_name_suffix_for_a_second_copy(tmp_path: Path) -> None:
    import aws_cdk as cdk

    from sagemaker_ssh_helper.cdk.app import build_single
    from sagemaker_ssh_helper.cdk.iam_ssm.iam_ssm_stack import IamSsmStack

    app = build_single(IamSsmStack, "SSH-IAM-SSM-Stack", cdk.App(
        context={"sagemaker_role": "SMExecution", "policy_name_suffix": "-eu"},
        outdir=str(tmp_path)))
    template = app.synth().get_stack_by_name("SSH-IAM-SSM-Stack").template
    assert sorted(p["ManagedPolicyName"] for p in
                  resources(template, "AWS::IAM::ManagedPolicy")) == [
        "SSHSageMakerAdminPolicy-eu", "SSHSageMakerClientPolicy-eu",
        "SSHSageMakerNoRemoteDebugPolicy-eu", "SSHSageMakerServerPolicy-eu"]
    with pytest.raises(ValueError, match="policy_name_suffix must be"):
        build_single(IamSsmStack, "X", cdk.App(context={
            "sagemaker_role": "SMExecution", "policy_name_suffix": "bad name"},
            outdir=str(tmp_path / "bad")))


def test_v2_advanced_tier_handler_sets_the_tier() -> None:
    from sagemaker_ssh_helper.cdk.iam_ssm import advanced_tier_lambda

    ssm = boto3.client("ssm", region_name=REGION)
    setting = {"SettingId": "/ssm/managed-instance/activation-tier", "SettingValue": "advanced"}
    with Stubber(ssm) as stub:  # moto has no UpdateServiceSetting
        stub.add_response("update_service_setting", {}, setting)
        stub.add_response("update_service_setting", {}, setting)
        assert advanced_tier_lambda.handler({"RequestType": "Create"}, None, ssm)["Data"] == \
            {"SettingValue": "advanced"}
        advanced_tier_lambda.handler({}, None, ssm)  # a trigger event: no RequestType
        deleted = advanced_tier_lambda.handler(
            {"RequestType": "Delete", "PhysicalResourceId": "p"}, None, ssm)
        assert deleted == {"PhysicalResourceId": "p"}  # the tier stays advanced
        stub.assert_no_pending_responses()


def test_v2_trust_and_low_gpu_handler_names_reach_the_handlers() -> None:
    from moto import mock_aws

    from sagemaker_ssh_helper.cdk import policies
    from sagemaker_ssh_helper.cdk.iam_ssm import trust_relationship_lambda
    from sagemaker_ssh_helper.cdk.low_gpu import low_gpu_lambda

    statement = policies.ssm_trust_statement(policies.Target(account="123456789012"))
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_role(RoleName="SMExecution", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                "Action": "sts:AssumeRole"}]}))
        out = trust_relationship_lambda.handler({"RequestType": "Create", "ResourceProperties": {
            "RoleName": "SMExecution", "Statement": statement}}, None, iam)
        assert out["Data"] == {"State": "added"}
        trust = iam.get_role(RoleName="SMExecution")["Role"]["AssumeRolePolicyDocument"]
        assert any(s.get("Sid") == statement["Sid"] for s in trust["Statement"])
    os.environ["SNS_NOTIFICATION_TOPIC_ARN"] = TOPIC
    try:
        result = low_gpu_lambda.handler({"detail": {}}, None, sagemaker=object(), sns=object())
    finally:
        del os.environ["SNS_NOTIFICATION_TOPIC_ARN"]
    assert result == {"notified": False, "reason": "not a rule evaluation job"}
