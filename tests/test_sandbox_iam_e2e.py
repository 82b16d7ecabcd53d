"""Trust and secrets end to end, in one sandbox with IAM enforced (the SSM stand-in evaluates the
policies the CDK stacks generate, per principal: the sandbox user, the jobs' execution role).

* A victim's training job runs with ``SM_SSH_DEBUG=true``; an attacker's job (same execution
  role, as in a shared team account) registers its container with the victim's tags, owner ID
  included (readable from DescribeTrainingJob). ``sm-ssh connect`` lands in the victim's
  container and names the impostor; ``--instance`` picks an instance on purpose.
* The attacks through IAM fail: re-tagging or untagging the victim's instance, forging
  ``SSHCreator``, extra tag keys, deregistering another role's instance, and a user reaching an
  instance whose ``SSHOwner`` is not theirs.
* The victim's CloudWatch log carries the registration line although debug output is
  abundant, and no secret (session token, activation code) reaches it.
* Another region sees none of it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest
from conftest import SANDBOX_E2E
from e2e_helpers import upload_source, user_env, wait_for

from sagemaker_ssh_helper.aws import role_name_from_arn
from sagemaker_ssh_sandbox import Sandbox
from sagemaker_ssh_sandbox.iam.account import STUDIO_ROLE_NAME

REPO = Path(__file__).resolve().parents[1]

pytestmark = SANDBOX_E2E

VICTIM = """\
open("/tmp/who", "w").write("victim\\n")
import sagemaker_ssh_helper
sagemaker_ssh_helper.setup_and_start_ssh()
"""
# The attack of the issue: claim the victim's job, owner ID included, then set up SSH as usual.
ATTACKER = """\
import os
import boto3
open("/tmp/who", "w").write("attacker\\n")
victim = boto3.client("sagemaker").describe_training_job(TrainingJobName=os.environ["VICTIM"])
os.environ["TRAINING_JOB_NAME"] = victim["TrainingJobName"]
os.environ["TRAINING_JOB_ARN"] = victim["TrainingJobArn"]
os.environ["SSH_OWNER_TAG"] = victim["Environment"]["SSH_OWNER_TAG"]
import sagemaker_ssh_helper
sagemaker_ssh_helper.setup_and_start_ssh()
"""
REGISTERED = "Successfully registered the instance with AWS SSM using Managed instance-id"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("iam"), stop_grace=3.0, iam=True) as sb:
        yield sb


def source(sandbox: Sandbox) -> str:
    return upload_source(sandbox, "iam", {"victim.py": VICTIM, "attacker.py": ATTACKER})


def create_job(sandbox: Sandbox, name: str, uri: str, program: str,
               environment: dict[str, str]) -> None:
    sandbox.client("sagemaker").create_training_job(
        TrainingJobName=name, RoleArn=sandbox.role_arn,
        HyperParameters={"sagemaker_program": json.dumps(program),
                         "sagemaker_submit_directory": json.dumps(uri)},
        AlgorithmSpecification={"TrainingImage": "pytorch-training:2.2",
                                "TrainingInputMode": "File"},
        Environment=environment,
        OutputDataConfig={"S3OutputPath": f"s3://{sandbox.state['bucket']}/out"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 900})


def sm_ssh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def as_role(sandbox: Sandbox, role_arn: str, service: str) -> Any:
    """A client with the credentials a job of ``role_arn`` gets (session ``SageMaker``)."""
    creds = sandbox.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="SageMaker")[
        "Credentials"]
    endpoint = sandbox.state["ssm_endpoint_url"] if service == "ssm" else sandbox.endpoint_url
    return boto3.client(service, region_name=sandbox.region, endpoint_url=endpoint,
                        aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def denied(call: Callable[..., Any], **kwargs: Any) -> str:
    try:
        call(**kwargs)
    except Exception as e:  # botocore ClientError
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", e))
    return "allowed"


def instances_of(sandbox: Sandbox, job: str) -> list[dict[str, Any]]:
    return list(sandbox.client("ssm").describe_instance_information(Filters=[
        {"Key": "tag:SSHResourceName", "Values": [job]},
        {"Key": "PingStatus", "Values": ["Online"]}])["InstanceInformationList"])


def test_forged_tags_and_tag_changes_fail(sandbox: Sandbox, tmp_path: Path) -> None:
    uri = source(sandbox)
    owner = sandbox.client("sts").get_caller_identity()["UserId"]
    common = {"START_SSH": "true", "SSH_SSM_ROLE": role_name_from_arn(sandbox.role_arn),
              "SSH_INSTANCE_COUNT": "1", "SSH_WAIT_TIME_SECONDS": "600"}
    create_job(sandbox, "victim-job", uri, "victim.py",
               dict(common, SSH_OWNER_TAG=owner, SM_SSH_DEBUG="true"))
    [victim] = wait_for("the victim's instance", lambda: instances_of(sandbox, "victim-job"))
    create_job(sandbox, "attacker-job", uri, "attacker.py",
               dict(common, SSH_OWNER_TAG="AROAATTACKER:SageMaker", VICTIM="victim-job"))
    pair = wait_for("the impostor", lambda: [i for i in instances_of(sandbox, "victim-job")
                                             if i["InstanceId"] != victim["InstanceId"]])
    impostor = pair[0]["InstanceId"]
    ssm = sandbox.client("ssm")
    tags = {t["Key"]: t["Value"] for t in ssm.list_tags_for_resource(
        ResourceType="ManagedInstance", ResourceId=impostor)["TagList"]}
    assert tags["SSHOwner"] == owner and tags["SSHResourceName"] == "victim-job"  # the forgery

    env = user_env(sandbox.env, tmp_path / "home")
    # Attack 1: connect must land in the victim's container and name the impostor.
    done = sm_ssh(env, "connect", "victim-job.training.sagemaker", "--", "cat /tmp/who")
    assert (done.returncode, done.stdout) == (0, "victim\n"), done.stderr
    assert re.search(rf"ignoring .*{impostor}.*log does not name it", done.stderr), done.stderr
    # start-proxy (the ssh config path) resolves the same way
    proxy = sm_ssh(env, "start-proxy", "victim-job.training.sagemaker", "--wait", "0")
    assert impostor in proxy.stderr and "ignoring" in proxy.stderr
    # --instance: the user's explicit choice (e.g. after reading the log) is taken as given
    picked = sm_ssh(env, "connect", "victim-job.training.sagemaker", "--instance", impostor,
                    "--", "cat /tmp/who")
    assert (picked.returncode, picked.stdout) == (0, "attacker\n"), picked.stderr

    # Attacks 2-3: the job role may not re-tag nor untag a managed instance.
    job_ssm = as_role(sandbox, sandbox.role_arn, "ssm")
    assert denied(job_ssm.add_tags_to_resource, ResourceType="ManagedInstance",
                  ResourceId=victim["InstanceId"],
                  Tags=[{"Key": "SSHOwner", "Value": "AROAATTACKER:SageMaker"}]) \
        == "AccessDeniedException"
    assert denied(job_ssm.remove_tags_from_resource, ResourceType="ManagedInstance",
                  ResourceId=victim["InstanceId"], TagKeys=["SSHResourceArn"]) \
        == "AccessDeniedException"
    # Attacks 4-5: an activation must name its real creator and carry SSH tags only.
    role = role_name_from_arn(sandbox.role_arn)
    forged_creator = [{"Key": "SSHCreator", "Value": "AIDAVICTIM"},
                      {"Key": "SSHResourceArn", "Value": "arn:aws:sagemaker:x"}]
    assert denied(job_ssm.create_activation, IamRole=role, Tags=forged_creator) \
        == "AccessDeniedException"
    me = as_role(sandbox, sandbox.role_arn, "sts").get_caller_identity()["UserId"]
    extra_key = [{"Key": "SSHCreator", "Value": me},
                 {"Key": "SSHResourceArn", "Value": "arn:aws:sagemaker:x"},
                 {"Key": "Name", "Value": "x"}]
    assert denied(job_ssm.create_activation, IamRole=role, Tags=extra_key) \
        == "AccessDeniedException"
    # ... while the container's own kind of activation is allowed (and deleted at once)
    own = job_ssm.create_activation(IamRole=role, Tags=extra_key[:2])
    job_ssm.delete_activation(ActivationId=own["ActivationId"])
    # Attack 6: a job of another role cannot deregister the victim's instance.
    studio_role = sandbox.role_arn.replace(role, STUDIO_ROLE_NAME)
    other_ssm = as_role(sandbox, studio_role, "ssm")
    assert denied(other_ssm.deregister_managed_instance, InstanceId=victim["InstanceId"]) \
        == "AccessDeniedException"
    # Attacks 7-8: the owner condition: another user with the same client policy cannot send
    # commands to, nor start sessions on, the victim's instance.
    iam = sandbox.client("iam")
    iam.create_user(UserName="mallory")
    policy = next(p["Arn"] for p in iam.list_policies(Scope="Local")["Policies"]
                  if p["PolicyName"] == "SSHClientPolicy")
    iam.attach_user_policy(UserName="mallory", PolicyArn=policy)
    key = iam.create_access_key(UserName="mallory")["AccessKey"]
    mallory = boto3.client("ssm", region_name=sandbox.region,
                           endpoint_url=sandbox.state["ssm_endpoint_url"],
                           aws_access_key_id=key["AccessKeyId"],
                           aws_secret_access_key=key["SecretAccessKey"])
    assert denied(mallory.send_command, InstanceIds=[victim["InstanceId"]],
                  DocumentName="AWS-RunShellScript", Parameters={"commands": ["id"]}) \
        == "AccessDeniedException"
    assert denied(mallory.start_session, Target=victim["InstanceId"],
                  DocumentName="AWS-StartSSHSession", Parameters={"portNumber": ["22"]}) \
        == "AccessDeniedException"
    # Authorization comes before existence: an instance that does not exist answers as one
    # she may not use (not InvalidInstanceId), so refusals tell her nothing about the account.
    ghost = "mi-0123456789abcdef0"
    assert denied(mallory.send_command, InstanceIds=[ghost], DocumentName="AWS-RunShellScript",
                  Parameters={"commands": ["id"]}) == "AccessDeniedException"
    assert denied(mallory.start_session, Target=ghost, DocumentName="AWS-StartSSHSession",
                  Parameters={"portNumber": ["22"]}) == "AccessDeniedException"

    # The victim's log (SM_SSH_DEBUG=true): complete, and free of secrets.
    logs = sandbox.client("logs")
    events = logs.filter_log_events(logGroupName="/aws/sagemaker/TrainingJobs",
                                    logStreamNamePrefix="victim-job/")["events"]
    text = "\n".join(e["message"] for e in events if e["logStreamName"].startswith("victim-job/"))
    assert f"{REGISTERED}: {victim['InstanceId']}" in text
    assert "Sending http request" in text  # botocore's debug output is there ...
    spec = json.loads((sandbox.container_dir("victim-job") / "spec.json").read_text())
    token = spec["env"]["AWS_SESSION_TOKEN"]
    assert token not in text  # ... without the role's session token
    assert not re.search(r"ActivationCode['\"]?\s*[:=]\s*['\"](?!\*)", text)
    assert "x-amz-security-token" in text.lower()  # botocore printed the header ...
    values = re.findall(r"(?i)(?:security-token|authorization)['\"]?\s*[:=]\s*"
                        r"(?:b?['\"])?([^'\"\s,]*)", text)
    assert values and set(values) == {"****"}, values  # ... masked

    # Another region has none of this.
    far = sm_ssh(env, "--region", "eu-west-1", "connect", "victim-job.training.sagemaker",
                 "--wait", "0")
    assert far.returncode == 3 and "no training job victim-job in eu-west-1" in far.stderr, \
        far.stderr
    far_ssm = boto3.client("ssm", region_name="eu-west-1",
                           endpoint_url=sandbox.state["ssm_endpoint_url"],
                           **{k.lower(): v for k, v in sandbox.env.items()
                              if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                       "AWS_SESSION_TOKEN")})
    assert far_ssm.describe_instance_information()["InstanceInformationList"] == []
