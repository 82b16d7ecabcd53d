"""The sandbox fills what SageMaker Python SDK v3 needs and moto lacks, for real clients:
iam:SimulatePrincipalPolicy (SDK v3 checks roles with it), no empty structures in SageMaker
Describe* answers (SDK v3's models reject ``VpcConfig: {}``), and the SDK's regional STS
endpoints pointed at the sandbox. The gateway tests need no SDK; the STS one needs SDK v3."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import moto_address

from sagemaker_ssh_sandbox.gateway import Gateway

REPO = Path(__file__).resolve().parent.parent
PYHOOK = REPO / "sagemaker_ssh_sandbox" / "sagemaker" / "pyhook"
ROLE = "arn:aws:iam::123456789012:role/GapsRole"
TRUST = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": '
         '{"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}')


@pytest.fixture
def gateway(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    gw = Gateway(("127.0.0.1", 0), moto_address(moto_url), jobs=None).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", gw.url)
    yield gw.url
    gw.stop()


def test_simulate_principal_policy_allows_for_existing_principals(gateway: str) -> None:
    iam = boto3.client("iam")
    iam.create_role(RoleName="GapsRole", AssumeRolePolicyDocument=TRUST)
    answer = iam.simulate_principal_policy(
        PolicySourceArn=ROLE, ActionNames=["sagemaker:CreateTrainingJob", "s3:GetObject"],
        ResourceArns=["*"])
    assert [(r["EvalActionName"], r["EvalResourceName"], r["EvalDecision"])
            for r in answer["EvaluationResults"]] == [
        ("sagemaker:CreateTrainingJob", "*", "allowed"), ("s3:GetObject", "*", "allowed")]
    with pytest.raises(ClientError) as e:
        iam.simulate_principal_policy(PolicySourceArn="arn:aws:iam::123456789012:role/Nope",
                                      ActionNames=["s3:GetObject"])
    assert e.value.response["Error"]["Code"] == "NoSuchEntity"
    # everything else of IAM still goes to moto
    assert iam.get_role(RoleName="GapsRole")["Role"]["Arn"] == ROLE


def test_describe_answers_leave_out_empty_structures(gateway: str, moto_url: str) -> None:
    sm = boto3.client("sagemaker")
    sm.create_model(ModelName="gaps-model", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": "any:latest", "Environment": {}})
    sm.create_endpoint_config(EndpointConfigName="gaps-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "gaps-model", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge"}])
    from_moto = boto3.client("sagemaker", endpoint_url=moto_url)
    assert from_moto.describe_model(ModelName="gaps-model").get("VpcConfig") == {}  # the gap

    model = sm.describe_model(ModelName="gaps-model")
    assert "VpcConfig" not in model
    assert model["PrimaryContainer"]["Image"] == "any:latest"
    config = sm.describe_endpoint_config(EndpointConfigName="gaps-config")
    assert "DataCaptureConfig" not in config
    assert config["ProductionVariants"][0]["ModelName"] == "gaps-model"


def test_pyhook_redirects_sdk_v3_sts_endpoints_in_the_sandbox(tmp_path: Path) -> None:
    pytest.importorskip("sagemaker.core", reason="SageMaker Python SDK v3 is not installed")
    code = ("from sagemaker.core.helper import session_helper as s; "
            "from sagemaker.core import common_utils as c; "
            "print(s.sts_regional_endpoint('eu-west-1'), c.sts_regional_endpoint('eu-west-1'))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PYHOOK), str(REPO)]),
               AWS_ENDPOINT_URL="http://127.0.0.1:4599")

    def python(environ: Any) -> str:
        done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                              text=True, timeout=120, check=True)
        return done.stdout.strip().splitlines()[-1]

    assert python(dict(env, SM_SSH_SANDBOX_DIR=str(tmp_path))) == \
        "http://127.0.0.1:4599 http://127.0.0.1:4599"
    assert python(env) == "https://sts.eu-west-1.amazonaws.com https://sts.eu-west-1.amazonaws.com"
