"""sm-ssh-ide's parsing side (no sandbox): metadata, connect lines, bad input."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sagemaker_ssh_helper import ide_container

REPO = Path(__file__).resolve().parents[1]
IDE = REPO / "sagemaker_ssh_helper" / "sm-ssh-ide"

SPACE_APP = {"AppType": "JupyterLab", "DomainId": "d-abc123", "SpaceName": "team-space",
             "ResourceArn": "arn:aws:sagemaker:eu-west-1:111122223333:app/d-abc123/team-space/"
                            "jupyterlab/default",
             "ResourceName": "default",
             "ExecutionRoleArn": "arn:aws:iam::111122223333:role/service-role/StudioRole"}


def env_with_base(tmp_path: Path, metadata: dict[str, str] | None) -> dict[str, str]:
    if metadata is not None:
        (tmp_path / "metadata").mkdir()
        (tmp_path / "metadata" / "resource-metadata.json").write_text(json.dumps(metadata))
    return dict(os.environ, SAGEMAKER_BASE_DIR=str(tmp_path),
                PYTHONPATH=str(REPO), SM_SSH_PYTHON=os.environ.get("SM_SSH_PYTHON", "python3"))


@pytest.mark.parametrize("command", ["configure", "start", "get-metadata", "init-ssm",
                                     "set-local-user-id"])
def test_outside_studio_one_line_exit_2(tmp_path: Path, command: str) -> None:
    args = [command, "someone"] if command == "set-local-user-id" else [command]
    done = subprocess.run(["bash", str(IDE), *args], env=env_with_base(tmp_path, None),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "not in a SageMaker Studio app or notebook instance" in done.stderr


def test_unknown_command_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(IDE), "frobnicate"], env=env_with_base(tmp_path, SPACE_APP),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "unknown command 'frobnicate'" in done.stderr


def test_get_metadata_prints_connect_lines(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(IDE), "get-metadata"],
                          env=env_with_base(tmp_path, SPACE_APP), capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "sm-ssh connect default.team-space.d-abc123.studio.sagemaker" in done.stdout
    assert "User or space: team-space" in done.stdout


def test_target_fqdn_for_user_app_and_notebook() -> None:
    user_app = dict(SPACE_APP, UserProfileName="alice")
    del user_app["SpaceName"]
    assert ide_container.target_fqdn(user_app) == "default.alice.d-abc123.studio.sagemaker"
    notebook = {"ResourceArn": "arn:aws:sagemaker:us-east-1:1:notebook-instance/nb1",
                "ResourceName": "nb1"}
    assert ide_container.target_fqdn(notebook) == "nb1.notebook.sagemaker"


def test_execution_role_from_metadata() -> None:
    assert ide_container.execution_role(SPACE_APP).endswith(":role/service-role/StudioRole")


def test_jb_license_server_mapping_is_idempotent(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    ide_container.set_jb_license_server("license.example.com", hosts)
    ide_container.set_jb_license_server("license.example.com", hosts)
    assert hosts.read_text().splitlines() == ["127.0.0.1 localhost",
                                              "127.0.0.1 license.example.com"]


def test_bad_local_user_id() -> None:
    with pytest.raises(ide_container.UsageError):
        ide_container.set_local_user_id("two words")
