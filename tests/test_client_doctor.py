"""`sm-ssh doctor` against the sandbox's SSM stand-in and moto (STS, IAM, SageMaker): each
check passes on a good set-up, and each is made to fail here and names its fix. The checks
that need the whole sandbox (IAM by policy simulation, one resource's explanation, the
role's trust policy) run in test_client_sandbox_e2e.py."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from sagemaker_ssh_helper import doctor, sm_ssh
from sagemaker_ssh_sandbox.ssm import service as ssm_service

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "sagemaker_ssh_sandbox" / "ssm" / "bin"


@pytest.fixture(scope="module")
def ssm_server() -> Iterator[Any]:
    server = ssm_service.start_ssm_server()
    yield server
    server.shutdown()


@pytest.fixture
def aws(moto_url: str, ssm_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
        ) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", ssm_server.url)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SM_SSH_DEBUG", raising=False)
    monkeypatch.setenv("PATH", f"{PLUGIN_DIR}{os.pathsep}{os.environ['PATH']}")
    ssm_server.backend.clear_faults()
    yield ssm_server.backend
    ssm_server.backend.clear_faults()
    ssm_server.backend.service_settings[doctor.policies.ADVANCED_TIER_SETTING] = "advanced"


def run_doctor(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict[str, str]]:
    code = sm_ssh.main(["doctor", *args])
    out = capsys.readouterr().out
    lines = {line[2:].split(":", 1)[0]: line for line in out.splitlines()}
    return code, lines


def fake_tool(folder: Path, name: str, output: str) -> None:
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\necho '{output}'\n")
    tool.chmod(0o755)


def test_a_good_setup_passes_every_check(aws: Any, capsys: pytest.CaptureFixture) -> None:
    code, lines = run_doctor(capsys)
    assert code == 0, lines
    assert list(lines) == ["ssh", "session-manager-plugin", "credentials", "region",
                           "sts endpoint", "advanced tier", "iam", "stale registrations"]
    assert all(line.startswith("✓ ") for line in lines.values()), lines
    # moto has no SimulatePrincipalPolicy: the permissions are checked by harmless calls
    assert "(calls that change nothing" in lines["iam"]
    code = sm_ssh.main(["doctor", "--output", "json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and answer["failures"] == 0
    assert [c["name"] for c in answer["checks"]] == list(lines)
    assert all(c["ok"] is True for c in answer["checks"])


def test_missing_ssh_and_plugin(aws: Any, capsys: pytest.CaptureFixture,
                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    python_dir = Path(os.path.realpath(os.sys.executable)).parent
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}{python_dir}")
    code, lines = run_doctor(capsys)
    assert code == 2, lines
    assert lines["ssh"] == ("✗ ssh: ssh not found on PATH — fix: install the OpenSSH client "
                            "(apt-get install openssh-client, or Windows' optional feature "
                            "OpenSSH Client)")
    assert lines["session-manager-plugin"].startswith(
        "✗ session-manager-plugin: not found on PATH — fix: install it: sm-local-configure")


def test_a_plugin_too_old(aws: Any, capsys: pytest.CaptureFixture,
                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_tool(tmp_path / "old", "session-manager-plugin", "1.2.7.0")
    monkeypatch.setenv("PATH", f"{tmp_path / 'old'}{os.pathsep}{os.environ['PATH']}")
    code, lines = run_doctor(capsys)
    assert code == 1, lines
    assert "is version 1.2.7.0, older than 1.2.536.0 — fix: update it to 1.2.536.0 or later" \
        in lines["session-manager-plugin"]


@pytest.mark.parametrize("version, ok", [("1.2.497.0", False), ("1.2.536.0", True),
                                         ("1.2.553.0", True), ("1.3", True)])
def test_the_plugin_threshold_is_aws_clis(aws: Any, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          version: str, ok: bool) -> None:
    """As aws-cli's sessionmanager.py: the response travels in the env var to plugins newer
    than 1.2.497.0 (1.2.536.0 is the first release that reads it)."""
    fake_tool(tmp_path / "bin", "session-manager-plugin", version)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    _, lines = run_doctor(capsys)
    assert lines["session-manager-plugin"].startswith("✓ " if ok else "✗ "), lines


def test_no_credentials(aws: Any, capsys: pytest.CaptureFixture,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    code, lines = run_doctor(capsys)
    assert code == 1, lines
    assert lines["credentials"].startswith("✗ credentials: ")
    assert lines["credentials"].endswith(
        "— fix: log in (aws sso login, aws configure) or pass --profile")
    assert "advanced tier" not in lines  # nothing else is asked without credentials


def test_a_region_without_ssm(aws: Any, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_SSM")  # a real client would look the region up
    code, lines = run_doctor(capsys, "--region", "us-nowhere-1")
    assert lines["region"] == (
        "✗ region: us-nowhere-1 (from --region) is not an SSM region of partition aws — fix: "
        "pass the region the resources run in: --region us-east-1, ...")


def test_sts_legacy_global_endpoint(aws: Any, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_STS_REGIONAL_ENDPOINTS", "legacy")
    code, lines = run_doctor(capsys)
    assert code == 1, lines
    assert lines["sts endpoint"].startswith("✗ sts endpoint: AWS_STS_REGIONAL_ENDPOINTS")
    assert lines["sts endpoint"].endswith(
        "— fix: unset it or set it to 'regional' (and give SageMaker VPCs an STS VPC endpoint, "
        "com.amazonaws.<region>.sts)")


def test_standard_tier(aws: Any, capsys: pytest.CaptureFixture) -> None:
    boto3.client("ssm").update_service_setting(
        SettingId=doctor.policies.ADVANCED_TIER_SETTING, SettingValue="standard")
    code, lines = run_doctor(capsys)
    assert code == 1, lines
    assert lines["advanced tier"] == (
        "✗ advanced tier: /ssm/managed-instance/activation-tier is 'standard': Session Manager "
        "refuses sessions to SageMaker containers (hybrid activations) in the standard tier — "
        "fix: deploy the advanced-tier stack, or `aws ssm update-service-setting --setting-id "
        "/ssm/managed-instance/activation-tier --setting-value advanced` (see IAM_SSM_Setup.md)")


def test_a_denied_action_found_by_dry_calls(aws: Any, capsys: pytest.CaptureFixture) -> None:
    aws.inject_fault("GetCommandInvocation", "AccessDeniedException")
    code, lines = run_doctor(capsys)
    assert code == 1, lines
    assert "may not call ssm:GetCommandInvocation (calls that change nothing" in lines["iam"]
    assert lines["iam"].endswith("— fix: attach the SSH client policy to it (the SSH-IAM-SSM "
                                 "stack, or the policy in IAM_SSM_Setup.md)")


def test_stale_registrations_near_the_limit(aws: Any, capsys: pytest.CaptureFixture) -> None:
    tags = {"SSHOwner": "x", "SSHResourceName": "old",
            "SSHResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/old"}
    ids = aws.add_fake_instances(3, tags=tags, ping_status="ConnectionLost")
    try:
        code, lines = run_doctor(capsys, "--max-stale", "3")
        assert code == 1, lines
        assert lines["stale registrations"].startswith(
            "✗ stale registrations: 3 SSH Helper managed instances are offline")
        assert lines["stale registrations"].endswith(
            "— fix: remove them: sm-ssh-deregister-instances")
        code, lines = run_doctor(capsys, "--max-stale", "4")
        assert lines["stale registrations"] == \
            "✓ stale registrations: 3 offline SSH Helper instance(s)"
    finally:
        ssm = boto3.client("ssm")
        for instance_id in ids:
            ssm.deregister_managed_instance(InstanceId=instance_id)
