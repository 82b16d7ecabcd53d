"""Cost guards end to end in the offline sandbox (one sandbox for the module):

* examples/train_placeholder.py as a training job: it stays up while a real SSH session
  (sm-ssh connect -> SSM stand-in -> sshd in the container) is open, and ends by itself once the
  session has been closed for ``max_idle_minutes``;
* is_profiler_issues_found() inside a job, against the emulated DescribeTrainingJob rule statuses;
* the low-GPU notification Lambda handler against the emulated SageMaker API and moto's SNS.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SANDBOX_E2E
from e2e_helpers import upload_source, user_env, wait_for

from sagemaker_ssh_helper.aws import role_name_from_arn
from sagemaker_ssh_helper.cdk.handlers import low_gpu
from sagemaker_ssh_sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]

pytestmark = SANDBOX_E2E

WATCH_RULES = """\
import time
import sagemaker_ssh_helper

print("watching the profiler rules", flush=True)
while not sagemaker_ssh_helper.is_profiler_issues_found():
    time.sleep(0.2)
print("profiler issues found", flush=True)
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("sandbox"), stop_grace=3.0) as sb:
        yield sb


@pytest.fixture(scope="module")
def source_uri(sandbox: Sandbox) -> str:
    """sourcedir.tar.gz as the SDK would upload it: the scripts plus the package folder."""
    return upload_source(sandbox, "cost", {
        "train_placeholder.py": (REPO / "examples" / "train_placeholder.py").read_text(),
        "watch_rules.py": WATCH_RULES})


def create_job(sandbox: Sandbox, name: str, source: str, program: str,
               hyperparameters: dict[str, str], environment: dict[str, str],
               **extra: Any) -> str:
    hps = {"sagemaker_program": json.dumps(program),
           "sagemaker_submit_directory": json.dumps(source), **hyperparameters}
    request: dict[str, Any] = dict(
        TrainingJobName=name, RoleArn=sandbox.role_arn, HyperParameters=hps,
        AlgorithmSpecification={"TrainingImage": "pytorch-training:2.2", "TrainingInputMode":
                                "File"},
        Environment=environment,
        OutputDataConfig={"S3OutputPath": f"s3://{sandbox.state['bucket']}/out"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1,
                        "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 900})
    request.update(extra)
    return str(sandbox.client("sagemaker").create_training_job(**request)["TrainingJobArn"])


def test_placeholder_stays_while_a_session_is_open_and_ends_after(
        sandbox: Sandbox, source_uri: str, tmp_path: Path) -> None:
    owner = sandbox.client("sts").get_caller_identity()["UserId"]
    job = "cost-placeholder"
    create_job(sandbox, job, source_uri, "train_placeholder.py",
               {"max_idle_minutes": "0.05", "poll_seconds": "0.2"},  # 3 s idle, poll 0.2 s
               {"START_SSH": "true", "SSH_SSM_ROLE": role_name_from_arn(sandbox.role_arn),
                "SSH_OWNER_TAG": owner, "SSH_INSTANCE_COUNT": "1",
                # hold in setup_and_start_ssh() until the session below releases it, so the
                # idle clock starts while that session is open
                "SSH_WAIT_TIME_SECONDS": "600"})
    # One session that releases the hold and stays open for longer than the idle limit. Had
    # the job ended while it was open, the container (and the session with it) would be gone:
    # ssh would fail and never print the marker.
    remote = "sm-wait stop >/dev/null; sleep 8; echo session-survived"
    done = subprocess.run(
        [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "connect",
         f"{job}.training.sagemaker", "--wait", "180", "--", remote],
        env=user_env(sandbox.env, tmp_path / "home"), capture_output=True, text=True, timeout=300)
    log = sandbox.container_log(job)
    assert done.returncode == 0, done.stderr[-2000:] + log[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "session-survived"
    assert sandbox.client("sagemaker").describe_training_job(
        TrainingJobName=job)["TrainingJobStatus"] == "InProgress"
    described = sandbox.wait_for_job(job, timeout=120)
    log = sandbox.container_log(job)
    assert described["TrainingJobStatus"] == "Completed", log[-3000:]
    assert "train_placeholder: holding the instance until no SSH/SSM session has been open " \
           "for 0:00:03" in log
    assert "train_placeholder: no SSH/SSM session for 0:00:03, exiting" in log
    # and the ended job left no registration behind
    ssm = sandbox.client("ssm")
    assert ssm.describe_instance_information(Filters=[
        {"Key": "tag:SSHResourceName", "Values": [job]}])["InstanceInformationList"] == []


def test_profiler_issues_are_seen_inside_the_job(sandbox: Sandbox, source_uri: str) -> None:
    job = "cost-rules"
    arn = create_job(sandbox, job, source_uri, "watch_rules.py", {}, {},
                     ProfilerRuleConfigurations=[
                         {"RuleConfigurationName": "LowGPUUtilization",
                          "RuleEvaluatorImage": "debugger-rules"}],
                     DebugRuleConfigurations=[
                         {"RuleConfigurationName": "LossNotDecreasing",
                          "RuleEvaluatorImage": "debugger-rules"}])
    wait_for("the job to poll its rules",
               lambda: "watching the profiler rules" in sandbox.container_log(job))
    from sagemaker_ssh_helper import idle

    sagemaker = sandbox.client("sagemaker")
    environ = {"TRAINING_JOB_ARN": arn}
    assert idle.is_profiler_issues_found(environ, sagemaker_client=sagemaker) is False
    sandbox.set_rule_status(job, "LossNotDecreasing", "NoIssuesFound")
    assert idle.is_profiler_issues_found(environ, sagemaker_client=sagemaker) is False
    assert sagemaker.describe_training_job(TrainingJobName=job)["TrainingJobStatus"] == \
        "InProgress"
    sandbox.set_rule_status(job, "LowGPUUtilization", "IssuesFound", "GPU at 2 %")
    assert idle.is_profiler_issues_found(environ, sagemaker_client=sagemaker) is True
    described = sandbox.wait_for_job(job, timeout=60)
    log = sandbox.container_log(job)
    assert described["TrainingJobStatus"] == "Completed", log[-2000:]
    assert "profiler issues found" in log


@pytest.fixture
def topic_queue(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    sns, sqs = sandbox.client("sns"), sandbox.client("sqs")
    topic = sns.create_topic(Name="gpu-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="gpu-alerts-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("SNS_NOTIFICATION_TOPIC_ARN", topic)
    monkeypatch.delenv("LOW_GPU_RULE_NAME", raising=False)
    yield {"topic": topic, "queue": queue}


def received(sandbox: Sandbox, queue: str) -> list:
    sqs = sandbox.client("sqs")
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=0).get("Messages", [])
    for m in messages:
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    return [json.loads(m["Body"]) for m in messages]


def state_change(processing_arn: str, training_arn: str = "") -> dict[str, Any]:
    detail = {"ProcessingJobArn": processing_arn,
              "ProcessingJobName": processing_arn.rsplit("/", 1)[-1],
              "ProcessingJobStatus": "InProgress"}
    if training_arn:
        detail["TrainingJobArn"] = training_arn
    return {"version": "0", "source": "aws.sagemaker", "region": "us-east-1",
            "detail-type": "SageMaker Processing Job State Change", "detail": detail}


def test_low_gpu_handler_notifies_once_the_rule_finds_issues(
        sandbox: Sandbox, topic_queue: dict[str, str]) -> None:
    job = "cost-gpu"
    sm = sandbox.client("sagemaker")
    sm.create_training_job(
        TrainingJobName=job, RoleArn=sandbox.role_arn,
        AlgorithmSpecification={"TrainingImage": "any", "TrainingInputMode": "File",
                                "ContainerEntrypoint": ["sleep", "600"]},
        OutputDataConfig={"S3OutputPath": f"s3://{sandbox.state['bucket']}/out"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1,
                        "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 900},
        ProfilerRuleConfigurations=[
            {"RuleConfigurationName": "LowGPUUtilization", "RuleEvaluatorImage": "rules"},
            {"RuleConfigurationName": "ProfilerReport", "RuleEvaluatorImage": "rules"}])
    try:
        described = sm.describe_training_job(TrainingJobName=job)
        training_arn = described["TrainingJobArn"]
        rule_jobs = {s["RuleConfigurationName"]: s["RuleEvaluationJobArn"]
                     for s in described["ProfilerRuleEvaluationStatuses"]}
        with sandbox.activated():
            def handle(event: dict[str, Any]) -> dict[str, Any]:
                return low_gpu.handler(event)

            low = state_change(rule_jobs["LowGPUUtilization"], training_arn)
            assert handle(low)["notified"] is False  # rule still InProgress
            sandbox.set_rule_status(job, "LowGPUUtilization", "IssuesFound",
                                    "GPU utilization below 10 % for 30 minutes")
            # the other rule's processing job says nothing about the low-GPU rule
            report = state_change(rule_jobs["ProfilerReport"], training_arn)
            assert handle(report)["notified"] is False
            # no TrainingJobArn and no such processing job: not a rule evaluation job
            assert handle(state_change(rule_jobs["LowGPUUtilization"]))["notified"] is False
            result = handle(low)
        assert result["notified"] is True and result["trainingJob"] == training_arn
        [message] = received(sandbox, topic_queue["queue"])
        assert message["TopicArn"] == topic_queue["topic"]
        assert message["Subject"] == f"Low GPU utilization: {job}"
        body = message["Message"]
        assert "Rule LowGPUUtilization: GPU utilization below 10 % for 30 minutes" in body
        assert f"sm-ssh connect {job}.training.sagemaker" in body
        assert ("https://us-east-1.console.aws.amazon.com/sagemaker/home?region=us-east-1"
                f"#/jobs/{job}") in body
        # a ProfilerReport that reports the low-GPU finding counts too
        sandbox.set_rule_status(job, "ProfilerReport", "IssuesFound", "LowGPUUtilization: 1")
        with sandbox.activated():
            assert low_gpu.handler(report)["notified"] is True
        assert len(received(sandbox, topic_queue["queue"])) == 1
    finally:
        sm.stop_training_job(TrainingJobName=job)
        sandbox.wait_for_job(job, timeout=60)
