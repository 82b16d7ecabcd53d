"""Faults the sandbox cannot show (it answers in every region): a job in another region, an
instance ID that SSM does not know here. moto (SageMaker, per region) and the SSM stand-in."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import create_training_job

from sagemaker_ssh_helper import sm_local, sm_ssh

ssm_service = pytest.importorskip("sagemaker_ssh_sandbox.ssm.service")
moto_server = pytest.importorskip("moto.server")

SANDBOX_BIN = Path(__file__).resolve().parents[1] / "sagemaker_ssh_sandbox" / "ssm" / "bin"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_url: str, tmp_path: Path) -> Iterator[Any]:
    server = ssm_service.start_ssm_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    monkeypatch.setenv("PATH", f"{SANDBOX_BIN}:{os.environ['PATH']}")  # the plugin stand-in
    monkeypatch.setenv("HOME", str(tmp_path))
    yield server
    server.shutdown()


def error_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines: list[str] = err.splitlines()
    assert all(line.startswith("waiting for ") for line in lines[:-1]), err
    assert lines[-1].startswith(f"{prog}: "), err
    return lines[-1]


def test_job_in_another_region_points_to_region(aws: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    create_training_job("far-job", boto3.client("sagemaker", region_name="eu-west-1"))
    assert sm_ssh.main(["connect", "far-job.training.sagemaker", "--wait", "0"]) == 3
    line = error_line(capsys, "sm-ssh")
    assert "no training job far-job in us-east-1 (the default region)" in line
    assert "pass the region it runs in with --region" in line
    assert sm_ssh.main(["--region", "us-west-2", "connect", "far-job.training.sagemaker"]) == 3
    assert "no training job far-job in us-west-2 (from --region)" in error_line(capsys, "sm-ssh")
    # In its own region the job is found (moto finishes jobs at once: Completed).
    assert sm_ssh.main(["--region", "eu-west-1", "connect", "far-job.training.sagemaker"]) == 3
    assert "training job far-job is Completed: SSH is available only while it runs" in \
        error_line(capsys, "sm-ssh")


def test_unknown_instance_id_points_to_region(aws: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert sm_local.main(["sm-local-start-ssh", "mi-0123456789abcdef0"]) == 3
    assert error_line(capsys, "sm-local-start-ssh").endswith(
        "mi-0123456789abcdef0 is not registered with SSM in us-east-1 (the default region): "
        "check the ID, or pass --region")
    assert sm_local.main(["sm-connect-ssh-proxy", "mi-nothex"]) == 2
    assert "'mi-nothex' is not a managed instance ID" in error_line(capsys,
                                                                    "sm-connect-ssh-proxy")


def test_offline_instance_id_is_one_line(aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    lost = aws.backend.add_fake_instances(1, ping_status="ConnectionLost")[0]
    assert sm_ssh.main(["connect", lost, "--", "true"]) == 3
    assert f"({lost}) is ConnectionLost since " in error_line(capsys, "sm-ssh")


def test_throttled_session_start_backs_off_then_explains(aws: Any) -> None:
    from botocore.config import Config

    from sagemaker_ssh_helper import session
    from sagemaker_ssh_helper.errors import AwsError

    mi = aws.backend.add_fake_instances(1)[0]
    aws.backend.inject_fault("StartSession", "ThrottlingException", 1)
    started = session.open_session(boto3.client("ssm"), mi, 22)  # retried, then started
    assert started.session_id and "TokenValue" in started.response_env
    assert "Token" not in " ".join(started.plugin_argv)
    aws.backend.inject_fault("StartSession", "ThrottlingException", 5)
    impatient = boto3.client("ssm", config=Config(retries={"mode": "standard",
                                                           "max_attempts": 2}))
    with pytest.raises(AwsError, match="AWS throttled ssm:StartSession after retries: wait"):
        session.open_session(impatient, mi, 22)


def test_a_persistent_5xx_is_retried_a_bounded_number_of_times(
        aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from sagemaker_ssh_helper import aws as aws_module

    aws.backend.inject_fault("DescribeInstanceInformation", "InternalServerError", 100)
    assert sm_ssh.main(["connect", "job.training.sagemaker", "--wait", "0"]) == 4
    assert "DescribeInstanceInformation failed: InternalServerError" in \
        error_line(capsys, "sm-ssh")
    calls = aws.backend.stats()["CallCounts"]["DescribeInstanceInformation"]
    assert calls == aws_module.MAX_ATTEMPTS == 4  # with backoff of at most 1 + 2 + 4 s


def test_an_unreachable_endpoint_is_tried_a_bounded_number_of_times(
        aws: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An endpoint that takes connections and drops them (a broken proxy, a wrong port)."""
    from sagemaker_ssh_helper import aws as aws_module
    from sagemaker_ssh_sandbox.faults import dropping_endpoint

    with dropping_endpoint() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", endpoint.url)
        assert sm_ssh.main(["list", "training.sagemaker"]) == 4
    assert "cannot reach the AWS endpoint for ssm:DescribeInstanceProperties" in \
        error_line(capsys, "sm-ssh")
    assert endpoint.accepted == aws_module.MAX_ATTEMPTS
