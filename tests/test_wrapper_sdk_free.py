"""The v3 wrappers' ``attach()`` and helpers need boto3 alone: with no SageMaker SDK importable,
they find and follow a training job and an endpoint created with plain boto3 (moto server), and
the SDK v2 names say in one line what to use instead. Runs under either SDK (and none)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3

from sagemaker_ssh_helper import sdk_versions

REPO = Path(__file__).resolve().parent.parent
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ssh-test:latest"

NO_SDK = """
import importlib.abc, sys

class NoSDK(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sagemaker" or name.startswith("sagemaker."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, NoSDK())
"""

CLIENT = NO_SDK + """
import json
from sagemaker_ssh_helper.wrapper import SSHModelBuilderWrapper, SSHModelTrainerWrapper

job = SSHModelTrainerWrapper.attach(sys.argv[1])
endpoint = SSHModelBuilderWrapper.attach(sys.argv[2])
try:
    from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper
    v2 = "imported"
except ImportError as e:
    v2 = str(e)
print(json.dumps({
    "fqdn": job.fqdn(),
    "status": job.wait_training_job_with_status(poll_seconds=0),
    "endpoint": endpoint.fqdn(), "endpoint_status": endpoint.describe()["EndpointStatus"],
    "v2": v2, "sdk_modules": sorted(m for m in sys.modules if m.split(".")[0] == "sagemaker"),
}))
"""


def test_attach_works_with_boto3_alone(moto_url: str) -> None:
    sm = boto3.client("sagemaker", endpoint_url=moto_url)
    env = {"START_SSH": "true", "SSH_SSM_ROLE": "SageMakerRole", "SSH_OWNER_TAG": "owner",
           "SSH_WAIT_TIME_SECONDS": "600", "SSH_INSTANCE_COUNT": "2", "SSH_LOG_TO_STDOUT": "false"}
    sm.create_training_job(
        TrainingJobName="boto3-job", RoleArn=ROLE, Environment=env,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://bucket/output"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 2,
                        "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})
    sm.create_model(ModelName="boto3-model", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "Environment": env})
    sm.create_endpoint_config(EndpointConfigName="boto3-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "boto3-model", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge"}])
    sm.create_endpoint(EndpointName="boto3-endpoint", EndpointConfigName="boto3-config")

    run_env = dict(os.environ, AWS_ENDPOINT_URL=moto_url, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", CLIENT, "boto3-job", "boto3-endpoint"],
                          env=run_env, cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["fqdn"] == "boto3-job.training.sagemaker"
    # (moto drops a training job's Environment: the sandbox journey checks what attach reads)
    assert result["status"] == "Completed"  # moto completes jobs at once
    assert result["endpoint"] == "boto3-endpoint.inference.sagemaker"
    assert result["endpoint_status"] == "InService"
    # one line that says what to use: the v3 wrapper, or (v2 installed but hidden) why not v2
    if sdk_versions.installed_major() == 2:
        assert result["v2"].startswith("SSHEstimatorWrapper needs the SageMaker Python SDK v2, "
                                       "which failed to import: No module named 'sagemaker'")
    else:
        assert result["v2"].startswith("SSHEstimatorWrapper wraps SageMaker Python SDK v2 ")
        assert "use SSHModelTrainerWrapper.create(model_trainer)" in result["v2"]
    assert "\n" not in result["v2"]
    assert result["sdk_modules"] == []
