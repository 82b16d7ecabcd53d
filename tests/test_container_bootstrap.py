"""setup_and_start_ssh(): who starts SSH, how the setup script is run, deregistration at exit."""
from __future__ import annotations

import json
import logging
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sagemaker_ssh_helper import bootstrap
from sagemaker_ssh_sandbox.ssm.service import SSMServer

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """Stands in for subprocess.call; records what would have run."""

    def __init__(self, rc: int = 0) -> None:
        self.rc = rc
        self.calls: list[dict[str, Any]] = []

    def __call__(self, argv: list[str], env: dict[str, str]) -> int:
        self.calls.append({"argv": argv, "env": env})
        return self.rc


@pytest.fixture(autouse=True)
def no_exit_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the test process from registering the deregistration hook."""
    monkeypatch.setattr(bootstrap, "_registered_exit_hook", True)


def job_env(tmp_path: Path, host: str = "algo-1", **extra: str) -> dict[str, str]:
    config = tmp_path / "ml" / "input" / "config" / "resourceconfig.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"current_host": host, "hosts": ["algo-1", "algo-2", "algo-3"]}))
    return {"SAGEMAKER_BASE_DIR": str(tmp_path / "ml"), "START_SSH": "true",
            "SSH_INSTANCE_COUNT": "2", "SSH_WAIT_TIME_SECONDS": "600",
            "PYTHONPATH": "/somewhere", **extra}


def test_missing_start_ssh_warns_about_create(caplog: pytest.LogCaptureFixture) -> None:
    run = Recorder()
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper.bootstrap"):
        bootstrap.setup_and_start_ssh({}, run=run)
    assert run.calls == []
    assert caplog.records[0].levelno == logging.WARNING
    assert "START_SSH is not set" in caplog.text
    assert "was the wrapper's create() called before fit()" in caplog.text


def test_warning_is_visible_without_logging_configured() -> None:
    env = {k: v for k, v in os.environ.items() if k != "START_SSH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", "import sagemaker_ssh_helper as s; s.setup_and_start_ssh()"],
        env=env, capture_output=True, text=True, check=True)
    assert proc.stdout == ""
    assert proc.stderr.startswith("[sagemaker-ssh-helper] WARNING: START_SSH is not set")
    assert len(proc.stderr.splitlines()) == 1


def test_start_ssh_false_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = Recorder()
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper.bootstrap"):
        bootstrap.setup_and_start_ssh(job_env(tmp_path, START_SSH="false"), run=run)
    assert run.calls == []
    assert "START_SSH=false: not starting SSH" in caplog.text


def test_ranks_at_or_above_the_instance_count_skip(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = Recorder()
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper.bootstrap"):
        bootstrap.setup_and_start_ssh(job_env(tmp_path, host="algo-3"), run=run)
    assert run.calls == []
    assert "node rank 2 >= SSH_INSTANCE_COUNT=2" in caplog.text


@pytest.mark.parametrize("host", ["algo-1", "algo-2"])
def test_lower_ranks_run_the_setup_script(tmp_path: Path, host: str) -> None:
    run = Recorder()
    environ = job_env(tmp_path, host=host)
    bootstrap.setup_and_start_ssh(environ, run=run)
    assert len(run.calls) == 1
    argv, env = run.calls[0]["argv"], run.calls[0]["env"]
    assert argv == ["bash", str(REPO / "sagemaker_ssh_helper" / "sm-setup-ssh"),
                    "--wait-seconds", "600", "--transport", "hybrid", "--log-to-stdout", "false"]
    assert env["SM_SSH_PYTHON"] == sys.executable
    assert env["PYTHONPATH"] == f"{REPO}{os.pathsep}/somewhere"
    assert env["SM_SSH_CALLER_PID"] == str(os.getpid())
    assert {k: env[k] for k in environ if k != "PYTHONPATH"} == \
        {k: v for k, v in environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("site_dir", [site.getsitepackages()[0], site.getusersitepackages()])
def test_an_installed_package_is_not_put_on_pythonpath(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site_dir: str) -> None:
    """site-packages on PYTHONPATH would reach SSH sessions (and other Pythons) through the
    environment the setup saves."""
    monkeypatch.setattr(bootstrap, "PACKAGE_DIR", Path(site_dir) / "sagemaker_ssh_helper")
    run = Recorder()
    bootstrap.setup_and_start_ssh(job_env(tmp_path), run=run)
    without = {k: v for k, v in job_env(tmp_path).items() if k != "PYTHONPATH"}
    bootstrap.setup_and_start_ssh(without, run=run)
    assert [call["env"].get("PYTHONPATH") for call in run.calls] == ["/somewhere", None]
    assert run.calls[0]["argv"][:2] == ["bash", f"{site_dir}/sagemaker_ssh_helper/sm-setup-ssh"]


def test_bad_instance_count_falls_back_to_two(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = Recorder()
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper.bootstrap"):
        bootstrap.setup_and_start_ssh(job_env(tmp_path, host="algo-2", SSH_INSTANCE_COUNT="two"),
                                      run=run)
    assert len(run.calls) == 1
    assert "SSH_INSTANCE_COUNT='two' is not a number; using 2" in caplog.text


def test_a_failed_setup_does_not_fail_the_job(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper.bootstrap"):
        bootstrap.setup_and_start_ssh(job_env(tmp_path), run=Recorder(rc=1))
    assert "sm-setup-ssh exited with code 1; the job continues without SSH" in caplog.text


def state_files(tmp_path: Path, owner: int, instance_id: str) -> tuple[Path, Path]:
    """The setup owner's PID file and the saved mi-id, as start-ssh leaves them."""
    owner_file, mi_id_file = tmp_path / "setup-owner-pid", tmp_path / "mi-id"
    owner_file.write_text(f"{owner}\n")
    mi_id_file.write_text(f"{instance_id}\n")
    return owner_file, mi_id_file


def test_the_process_that_started_the_setup_deregisters(tmp_path: Path,
                                                        ssm_stand_in: SSMServer) -> None:
    [instance_id] = ssm_stand_in.backend.add_fake_instances(1)
    owner_file, mi_id_file = state_files(tmp_path, os.getpid(), instance_id)
    assert bootstrap.deregister_at_exit(owner_file, mi_id_file) == instance_id
    assert ssm_stand_in.backend.instance(instance_id)["Deregistered"]
    assert not mi_id_file.exists()


def test_other_processes_leave_the_instance_alone(tmp_path: Path, ssm_stand_in: SSMServer) -> None:
    [instance_id] = ssm_stand_in.backend.add_fake_instances(1)
    owner_file, mi_id_file = state_files(tmp_path, os.getppid(), instance_id)
    assert bootstrap.deregister_at_exit(owner_file, mi_id_file) is None
    assert not ssm_stand_in.backend.instance(instance_id)["Deregistered"]
    assert ssm_stand_in.backend.stats()["CallCounts"].get("DeregisterManagedInstance", 0) == 0


def test_an_instance_already_gone_counts_as_deregistered(tmp_path: Path,
                                                         ssm_stand_in: SSMServer) -> None:
    owner_file, mi_id_file = state_files(tmp_path, os.getpid(), "mi-0123456789abcdef0")
    assert bootstrap.deregister_at_exit(owner_file, mi_id_file) == "mi-0123456789abcdef0"


def test_deregistration_errors_are_reported_not_raised(
        tmp_path: Path, ssm_stand_in: SSMServer, caplog: pytest.LogCaptureFixture) -> None:
    [instance_id] = ssm_stand_in.backend.add_fake_instances(1)
    ssm_stand_in.backend.inject_fault("DeregisterManagedInstance", "AccessDeniedException", 5)
    owner_file, mi_id_file = state_files(tmp_path, os.getpid(), instance_id)
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper.bootstrap"):
        assert bootstrap.deregister_at_exit(owner_file, mi_id_file) is None
    assert f"could not deregister {instance_id}: access denied for " \
           "ssm:DeregisterManagedInstance" in caplog.text
    assert mi_id_file.exists()
