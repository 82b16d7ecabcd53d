"""Container facts (env.py): resource detection for each kind, node rank, region, processes."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sagemaker_ssh_helper import env
from sagemaker_ssh_helper.env import ProcessInfo, Resource, detect_resource, node_rank, runs_program

ACCOUNT = "123456789012"


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "ml"


def environ(base: Path, **extra: str) -> dict[str, str]:
    return {"SAGEMAKER_BASE_DIR": str(base), **extra}


def test_studio_app_from_metadata(base: Path) -> None:
    app = "sagemaker-data-sci-ml-m5-large-1234"
    arn = f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:app/d-abc123/alice/KernelGateway/{app}"
    write_json(base / "metadata" / "resource-metadata.json", {
        "AppType": "KernelGateway", "DomainId": "d-abc123", "UserProfileName": "alice",
        "ResourceArn": arn, "ResourceName": app})
    # the metadata file wins even where a job's variables are also present
    resource = detect_resource(environ(base, TRAINING_JOB_NAME="ignored"))
    assert resource == Resource("studio", app, arn,
                                str(base / "metadata" / "resource-metadata.json"))
    assert resource.region == "eu-west-1"


def test_notebook_instance_from_metadata(base: Path) -> None:
    arn = f"arn:aws:sagemaker:us-west-2:{ACCOUNT}:notebook-instance/my-notebook"
    write_json(base / "metadata" / "resource-metadata.json",
               {"ResourceArn": arn, "ResourceName": "my-notebook"})
    resource = detect_resource(environ(base))
    assert (resource.kind, resource.name, resource.arn) == ("notebook", "my-notebook", arn)


def test_processing_job_from_its_config(base: Path) -> None:
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:processing-job/prep-2024"
    write_json(base / "config" / "processingjobconfig.json",
               {"ProcessingJobArn": arn, "ProcessingJobName": "Prep-2024",
                "ProcessingResources": {}})
    resource = detect_resource(environ(base))
    assert (resource.kind, resource.name, resource.arn) == ("processing", "Prep-2024", arn)


def test_training_job_from_environment(base: Path) -> None:
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/train-1"
    resource = detect_resource(environ(base, TRAINING_JOB_NAME="Train-1", TRAINING_JOB_ARN=arn))
    assert resource == Resource("training", "Train-1", arn, "TRAINING_JOB_ARN")


def test_training_job_with_name_only_leaves_the_arn_to_the_caller(base: Path) -> None:
    resource = detect_resource(environ(base, TRAINING_JOB_NAME="train-2"))
    assert resource == Resource("training", "train-2", None, "TRAINING_JOB_NAME")


def test_transform_job_from_environment(base: Path) -> None:
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:transform-job/batch-7"
    resource = detect_resource(environ(base, TRANSFORM_JOB_ARN=arn))
    assert (resource.kind, resource.name, resource.arn) == ("transform", "batch-7", arn)


def test_endpoint_from_environment(base: Path) -> None:
    resource = detect_resource(environ(base, SAGEMAKER_ENDPOINT_NAME="My-Endpoint"))
    assert resource == Resource("inference", "My-Endpoint", None, "SAGEMAKER_ENDPOINT_NAME")
    assert env.endpoint_arn("aws", "us-east-1", ACCOUNT, "My-Endpoint") == \
        f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/my-endpoint"


@pytest.mark.parametrize("kind, arn_type", [
    ("training", "training-job"), ("processing", "processing-job"),
    ("transform", "transform-job"), ("inference", "endpoint"),
])
def test_resource_arns_from_a_name_round_trip(kind: str, arn_type: str) -> None:
    arn = env.resource_arn("aws-cn", "cn-north-1", ACCOUNT, kind, "Job-1")
    assert arn == f"arn:aws-cn:sagemaker:cn-north-1:{ACCOUNT}:{arn_type}/job-1"
    assert env._from_arn(arn, "Job-1", "test") == Resource(kind, "Job-1", arn, "test")


def test_endpoint_falls_back_to_the_host_name_with_a_warning(
        base: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sagemaker_ssh_helper.env"):
        resource = detect_resource(environ(base))
    assert resource == Resource("inference", socket.gethostname(), None, "hostname")
    assert "SAGEMAKER_ENDPOINT_NAME" in caplog.text


def test_unreadable_metadata_is_skipped(base: Path) -> None:
    path = base / "metadata" / "resource-metadata.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert detect_resource(environ(base, TRAINING_JOB_NAME="t")).kind == "training"


@pytest.mark.parametrize("where", ["input/config", "config"])
def test_node_rank_is_the_index_in_sorted_hosts(base: Path, where: str) -> None:
    config = base / where / "resourceconfig.json"
    write_json(config, {"current_host": "algo-2", "hosts": ["algo-3", "algo-1", "algo-2"]})
    assert node_rank(environ(base)) == 1
    write_json(config, {"current_host": "algo-3", "hosts": ["algo-3", "algo-1", "algo-2"]})
    assert node_rank(environ(base)) == 2


def test_node_rank_without_config_is_zero(base: Path) -> None:
    assert node_rank(environ(base)) == 0


def test_region_order() -> None:
    arn = f"arn:aws:sagemaker:ap-south-1:{ACCOUNT}:training-job/t"
    resource = Resource("training", "t", arn, "TRAINING_JOB_ARN")
    assert env.region({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "x"}, resource) == \
        "eu-west-1"
    assert env.region({"AWS_DEFAULT_REGION": "eu-north-1"}, resource) == "eu-north-1"
    assert env.region({"SAGEMAKER_REGION": "us-west-1"}, resource) == "us-west-1"
    assert env.region({}, resource) == "ap-south-1"
    assert env.region({}, None) is None


def test_cli_prints_the_resource_as_json(base: Path) -> None:
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/cli-job"
    out = subprocess.run(
        [sys.executable, "-m", "sagemaker_ssh_helper.env", "resource"], check=True,
        capture_output=True, text=True,
        env={**os.environ, **environ(base, TRAINING_JOB_ARN=arn)}).stdout
    assert json.loads(out) == {"kind": "training", "name": "cli-job", "arn": arn,
                               "source": "TRAINING_JOB_ARN"}


def test_cli_rejects_an_unknown_fact() -> None:
    proc = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.env", "colour"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == \
        "usage: python -m sagemaker_ssh_helper.env [resource|rank|region|ip]"


def proc_info(name: str, *cmdline: str) -> ProcessInfo:
    return ProcessInfo(1, name, list(cmdline), 0.0)


def test_runs_program_recognises_the_agent_however_it_was_started() -> None:
    agent = "amazon-ssm-agent"
    assert runs_program(proc_info(agent, "/usr/bin/amazon-ssm-agent"), agent)
    # Linux keeps 15 characters of a process name
    assert runs_program(proc_info("amazon-ssm-agen", "/usr/bin/amazon-ssm-agent"), agent)
    assert runs_program(proc_info("bash", "bash", "/opt/bin/amazon-ssm-agent", "-y"), agent)
    assert runs_program(proc_info("python3", "/usr/bin/python3", "/x/amazon-ssm-agent"), agent)
    assert not runs_program(proc_info("python3", "python3", "-m", "agent"), agent)
    assert not runs_program(proc_info("vi", "vi", "amazon-ssm-agent"), agent)


def test_proc_fallback_agrees_with_psutil() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        # Popen returns once the child has forked; its command line appears when exec is done.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{sleeper.pid}/cmdline").read_bytes() != b"sleep\x0030\x00":
            assert time.monotonic() < deadline, "sleep did not start"
            time.sleep(0.01)
        by_proc = {p.pid: p for p in env._proc_processes()}
        by_psutil = {p.pid: p for p in env.iter_processes()}
        mine, theirs = by_proc[sleeper.pid], by_psutil[sleeper.pid]
        assert (mine.name, mine.cmdline) == (theirs.name, theirs.cmdline) == ("sleep",
                                                                              ["sleep", "30"])
        assert abs(mine.create_time - theirs.create_time) < 2
    finally:
        sleeper.kill()
        sleeper.wait()
