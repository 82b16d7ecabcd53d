"""The native transport without containers: the sandbox's SageMaker job API (behind its gateway,
with moto for S3) answers ``sm-ssh`` as AWS would, and every state in which SageMaker opens no
remote-debugging session gets its one-line error; RemoteDebugConfig follows AWS's state rules;
sshd's keys command takes only plain keys of the job owner's own folder.

The journey over real sessions and sshd is tests/test_native_e2e.py.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import RecordingRunner, moto_address

from sagemaker_ssh_helper import native, native_container, sm_ssh, transport
from sagemaker_ssh_sandbox.gateway import Gateway
from sagemaker_ssh_sandbox.sagemaker.jobs import JobsAPI
from sagemaker_ssh_sandbox.ssm.commands import check_instance_ids
from sagemaker_ssh_sandbox.ssm.state import SSMError

SANDBOX_BIN = Path(__file__).resolve().parents[1] / "sagemaker_ssh_sandbox" / "ssm" / "bin"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0c1b3xqSm2TQ1o2mQ8rOI3XmKgFW0w9mHqV5nP0e9"
OWNER = "AIDAEXAMPLEOWNER:alice"
NATIVE_ENV = {"START_SSH": "true", "SSH_TRANSPORT": "native", "SSH_OWNER_TAG": OWNER,
              "SSH_INSTANCE_COUNT": "2",
              "SSH_AUTHORIZED_KEYS_PATH": "s3://keys/ssh-native-keys/"}


@pytest.fixture
def jobs(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobsAPI]:
    api = JobsAPI("us-east-1", "123456789012", RecordingRunner())
    gw = Gateway(("127.0.0.1", 0), moto_address(moto_url), api).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", gw.url)  # how every client finds the sandbox
    monkeypatch.setenv("PATH", f"{SANDBOX_BIN}{os.pathsep}{os.environ['PATH']}")  # the plugin
    yield api
    gw.stop()


def create(name: str, env: dict[str, str], **extra: Any) -> None:
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": "any:latest", "TrainingInputMode": "File"},
        "RoleArn": ROLE, "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2,
                           "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "Environment": env,
        "RemoteDebugConfig": {"EnableRemoteDebug": True}}
    request.update(extra)
    boto3.client("sagemaker").create_training_job(**request)


def connect_error(capsys: pytest.CaptureFixture, name: str, *options: str,
                  command: str = "connect") -> tuple:
    code = sm_ssh.main([command, *options, f"{name}.training.sagemaker", "--wait", "0"])
    return code, capsys.readouterr().err.strip()


def test_each_state_without_a_session_gets_one_line(jobs: JobsAPI,
                                                    capsys: pytest.CaptureFixture) -> None:
    # not yet Training: the secondary status and how long the job has been in it
    create("native-early", NATIVE_ENV)
    job = jobs.get("training", "native-early")
    job.set_secondary("Downloading", "Downloading input data", now=time.time() - 42)
    code, err = connect_error(capsys, "native-early", "--node", "algo-1")
    assert code == 3 and err.startswith(
        "sm-ssh: training job native-early is Downloading (for 4"), err
    assert "once it is Training" in err and "\n" not in err

    # finished
    job.finish("Completed", "Completed", "Training job completed")
    code, err = connect_error(capsys, "native-early", "--node", "algo-1")
    assert (code, err) == (3, "sm-ssh: training job native-early is Completed: SSH is "
                              "available only while it runs")

    # remote debugging turned off (UpdateTrainingJob) on a native job
    create("native-off", NATIVE_ENV)
    jobs.get("training", "native-off").set_secondary("Training", "Training in progress.")
    boto3.client("sagemaker").update_training_job(
        TrainingJobName="native-off", RemoteDebugConfig={"EnableRemoteDebug": False})
    code, err = connect_error(capsys, "native-off", "--index", "0")
    assert code == 3 and "has remote debugging off: turn it on with `aws sagemaker " \
        "update-training-job --training-job-name native-off --remote-debug-config " \
        "EnableRemoteDebug=true`" in err and "transport='native'" in err, err

    # network isolation and built-in algorithms: AWS offers no remote debugging
    create("native-isolated", NATIVE_ENV, EnableNetworkIsolation=True)
    code, err = connect_error(capsys, "native-isolated", "--node", "algo-1")
    assert code == 3 and "runs with network isolation: AWS offers no remote debugging" in err
    create("native-builtin", NATIVE_ENV, AlgorithmSpecification={
        "AlgorithmName": "xgboost-builtin", "TrainingInputMode": "File"})
    code, err = connect_error(capsys, "native-builtin", "--node", "algo-1")
    assert code == 3 and "runs the algorithm xgboost-builtin: AWS offers no remote " \
        "debugging for SageMaker built-in or AWS Marketplace algorithms" in err, err

    # remote debugging on, SSH Helper not used: no sshd there, the plain shell is offered
    create("plain-debug", {"USER_VAR": "x"})
    jobs.get("training", "plain-debug").set_secondary("Training", "Training in progress.")
    code, err = connect_error(capsys, "plain-debug", "--node", "algo-1")
    assert (code, err) == (3, "sm-ssh: no SSH server runs in training job plain-debug (it was "
                              "not started with SSH Helper): open a shell in it with "
                              "`sm-ssh shell plain-debug.training.sagemaker`")

    # node choice on a 2-node native job: one line, exit 2
    create("native-two", NATIVE_ENV)
    jobs.get("training", "native-two").set_secondary("Training", "Training in progress.")
    code, err = connect_error(capsys, "native-two")
    assert code == 2 and "has 2 nodes with SSH: algo-1, algo-2; choose one" in err, err
    code, err = connect_error(capsys, "native-two", "--node", "algo-7")
    assert code == 2 and "has no node 'algo-7' with SSH" in err, err
    code, err = connect_error(capsys, "native-two", "--instance", "mi-0123456789abcdef0")
    assert code == 2 and "choose its node with --node algo-N or --index N" in err, err


def test_remote_debug_config_follows_the_state_rules(jobs: JobsAPI) -> None:
    sm = boto3.client("sagemaker")
    create("rd-rules", NATIVE_ENV, RemoteDebugConfig={"EnableRemoteDebug": False})
    job = jobs.get("training", "rd-rules")

    def update(enabled: bool) -> None:
        sm.update_training_job(TrainingJobName="rd-rules",
                               RemoteDebugConfig={"EnableRemoteDebug": enabled})

    with pytest.raises(ClientError, match="SecondaryStatus is Downloading or Training; it is "
                                          "Starting"):
        update(True)
    for status in ("Downloading", "Training"):
        job.set_secondary(status, status)
        update(status == "Downloading")
        assert sm.describe_training_job(TrainingJobName="rd-rules")["RemoteDebugConfig"] == \
            {"EnableRemoteDebug": status == "Downloading"}
    job.finish("Completed", "Completed", "done")
    with pytest.raises(ClientError, match="it is Completed"):
        update(True)
    with pytest.raises(ClientError, match="ResourceNotFound|does not exist"):
        sm.update_training_job(TrainingJobName="no-such-job",
                               RemoteDebugConfig={"EnableRemoteDebug": True})


def test_send_command_refuses_sagemaker_targets() -> None:
    check_instance_ids({"InstanceIds": ["mi-0123456789abcdef0", "i-0123456789abcdef0"]})
    with pytest.raises(SSMError) as raised:
        check_instance_ids({"InstanceIds": ["sagemaker-training-job:job_algo-1"]})
    assert raised.value.code == "ValidationException"
    assert "sagemaker-training-job:job_algo-1" in str(raised.value)


def test_keys_layout_puts_the_owner_first() -> None:
    layout = transport.KeyLayout.for_job("s3://b/p", "AIDA:me/x", "job-1")
    assert layout.client_key("laptop") == "p/AIDA:me_x/job-1/laptop.pub"
    assert layout.host_keys("algo-2") == "p/AIDA:me_x/job-1/host-keys/algo-2"
    assert transport.KeyLayout.from_environment({"SSH_AUTHORIZED_KEYS_PATH": "s3://b/"}, "j") \
        is None  # no owner: nothing to read
    for bad in ("b/p", "s3://", "s3:///p"):
        with pytest.raises(ValueError, match="s3://"):
            transport.split_s3(bad)
    with pytest.raises(ValueError, match="transport must be one of 'hybrid', 'native', 'auto'"):
        transport.check_transport("ssm")


def test_sshd_gets_plain_keys_of_the_owners_job_folder_only(moto_url: str,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="keys")
    layout = transport.KeyLayout.for_job("s3://keys/ssh-native-keys/", OWNER, "job-a")
    other = transport.KeyLayout.for_job("s3://keys/ssh-native-keys/", "AIDAOTHER", "job-a")
    put = {layout.client_key("laptop"): f"{KEY} sm-ssh-client:laptop\n",
           layout.client_key("evil"): f'command="sh" {KEY}\n',          # options: refused
           layout.client_key("junk"): "not a key\n",
           layout.host_keys("algo-1"): f"{KEY} root@algo-1\n",          # host keys: not read
           other.client_key("mallory"): f"{KEY} mallory\n"}             # someone else's
    for key, body in put.items():
        s3.put_object(Bucket="keys", Key=key, Body=body.encode())
    config = {"bucket": "keys", "prefix": layout.job_prefix, "env": {}}
    assert native_container.read_keys(config, s3) == [f"{KEY} sm-ssh-client:laptop"]


def test_host_keys_of_replaced_endpoint_instances_are_told_apart_by_time() -> None:
    t = 1_800_000_000_000.0  # ms, as CloudWatch Logs gives a stream's creationTime
    new_fleet = [(t + 3_000, "AllTraffic", "i-new")]  # its stream 3 s after its keys at t
    # never updated: every file counts
    assert native.keys_since(new_fleet, 0.0) == 0.0
    # UpdateEndpoint: the old fleet started 5 min before; the new keys (t) count, the old
    # (t - 300 s) do not, whichever of stream and keys came first
    since = native.keys_since(new_fleet, t - 300_000)
    assert (t - 300_000) / 1000 < since < t / 1000
    # one instance of two replaced: the survivor is as old as the replaced one
    survivor = [(t - 300_000, "AllTraffic", "i-a"), (t + 3_000, "AllTraffic", "i-c")]
    assert native.keys_since(survivor, t - 300_000) == 0.0
