"""The offline sandbox's whole journey, end to end.

- ``sm-ssh sandbox demo`` succeeds and prints every phase with its time;
- a 2-node training job registers one managed instance per node, each tagged for the job;
- a job whose entry point fails after SSH setup ends Failed and its instance is deregistered;
- a job stopped with StopTrainingJob (SIGTERM) deregisters its instance too;
- a job whose registration fails says why and goes on instead of waiting the whole time.

Jobs are launched by unchanged user launch scripts through the SageMaker SDK v2 and
``SSHEstimatorWrapper``; the test talks to them only through ``sm-ssh`` and the AWS APIs.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SANDBOX_E2E, allow_team_owner, run, sm_ssh
from e2e_helpers import launch, user_env

from sagemaker_ssh_sandbox import Sandbox

pytestmark = SANDBOX_E2E

LAUNCH = """\
import os, sys

from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper

source_dir, base_name, instance_count = sys.argv[1], sys.argv[2], int(sys.argv[3])
estimator = PyTorch(entry_point="train.py", source_dir=source_dir,
                    dependencies=[SSHEstimatorWrapper.dependency_dir()],
                    role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                    py_version="py310", instance_count=instance_count,
                    instance_type="ml.m5.xlarge", base_job_name=base_name)
SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=600,
                           local_user_id="journey-owner")
estimator.fit(wait=False)
print(estimator.latest_training_job.name)
"""

HOLD_THEN_FINISH = """\
import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()
print("released", flush=True)
"""

HOLD_THEN_FAIL = """\
import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()
raise RuntimeError("the training script failed on purpose")
"""


def test_demo_command_runs_the_whole_journey(tmp_path: Path) -> None:
    done = subprocess.run(sm_ssh("sandbox", "demo", "--state-dir", str(tmp_path / "demo")),
                          capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for phase in ("sandbox up", "launch a training job", "cat resourceconfig.json",
                  "-L", "sm-wait stop", "Completed", "sandbox down"):
        # A phase may print detail lines before its "ok (<elapsed> s)" line.
        assert re.search(rf"==> .*{re.escape(phase)}.*\n(    (?!ok ).*\n)*    ok \(\d+\.\d s\)",
                         out), phase
    assert '"current_host": "algo-1"' in out
    assert re.search(r"hello from algo-1 in ssh-demo-", out)
    assert "demo complete in" in out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("journey"), stop_grace=3.0) as sb:
        allow_team_owner(sb, "journey-owner")
        yield sb


@pytest.fixture(scope="module")
def client_env(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return user_env(sandbox.env, tmp_path_factory.mktemp("home"))


def launch_job(client_env: dict[str, str], tmp_path: Path, entry_point: str, base_name: str,
               instance_count: int) -> str:
    return launch(LAUNCH, tmp_path, {"train.py": entry_point}, client_env, base_name,
                  str(instance_count))


def online_instances(sandbox: Sandbox, job: str, count: int) -> list[str]:
    from sagemaker_ssh_helper.manager import SSMManager

    with sandbox.activated():
        return list(SSMManager().get_training_instance_ids(job, timeout_in_sec=180,
                                                           expected_count=count))


def release(client_env: dict[str, str], job: str, *node: str) -> None:
    done = run(sm_ssh("connect", *node, f"{job}.training.sagemaker", "--", "sm-wait", "stop"),
               client_env)
    assert done.returncode == 0, done.stderr[-3000:]


def tags_of(ssm: Any, instance_id: str) -> dict[str, str]:
    listed = ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=instance_id)
    return {t["Key"]: t["Value"] for t in listed["TagList"]}


def test_two_node_job_registers_one_instance_per_node(sandbox: Sandbox, client_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    job = launch_job(client_env, tmp_path, HOLD_THEN_FINISH, "two-nodes", 2)
    ids = online_instances(sandbox, job, 2)
    assert len(set(ids)) == 2

    ssm = sandbox.client("ssm")
    info = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": ids}])["InstanceInformationList"]
    assert sorted(i["ComputerName"] for i in info) == ["algo-1", "algo-2"]
    assert all(i["PingStatus"] == "Online" for i in info)
    for instance_id in ids:
        tags = tags_of(ssm, instance_id)
        assert tags["SSHResourceName"] == job
        assert tags["SSHResourceArn"].endswith(f":training-job/{job.lower()}")
        assert tags["SSHOwner"] == "journey-owner"
        assert tags["SSHCreator"] and int(tags["SSHTimestamp"]) <= time.time()

    release(client_env, job, "--node", "algo-1")
    release(client_env, job, "--node", "algo-2")
    assert sandbox.wait_for_job(job, timeout=120)["TrainingJobStatus"] == "Completed"


def deregistered(sandbox: Sandbox, instance_id: str, timeout: float = 60) -> bool:
    ssm = sandbox.client("ssm")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ssm.describe_instance_information(
                Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]
        )["InstanceInformationList"]:
            return True
        time.sleep(0.5)
    return False


def test_a_stopped_job_deregisters_its_instance(sandbox: Sandbox, client_env: dict[str, str],
                                                tmp_path: Path) -> None:
    """StopTrainingJob sends SIGTERM, and Python skips atexit on it."""
    job = launch_job(client_env, tmp_path, HOLD_THEN_FINISH, "stopped", 1)
    (instance_id,) = online_instances(sandbox, job, 1)
    sandbox.client("sagemaker").stop_training_job(TrainingJobName=job)
    assert sandbox.wait_for_job(job, timeout=120)["TrainingJobStatus"] == "Stopped"
    assert deregistered(sandbox, instance_id), f"{instance_id} is still registered"
    assert f"deregistered {instance_id} from SSM" in sandbox.container_log(job)


def test_a_failed_registration_says_why_and_the_job_goes_on(
        sandbox: Sandbox, client_env: dict[str, str], tmp_path: Path) -> None:
    ssm = sandbox.client("ssm")
    activations_before = len(ssm.describe_activations()["ActivationList"])
    request = urllib.request.Request(
        f"{client_env['AWS_ENDPOINT_URL_SSM']}/_sandbox/faults", method="POST",
        data=json.dumps({"operation": "RegisterManagedInstance",
                         "error_code": "AccessDeniedException", "count": 1}).encode())
    urllib.request.urlopen(request, timeout=10).close()
    job = launch_job(client_env, tmp_path, HOLD_THEN_FINISH, "no-ssm", 1)  # waits up to 600 s
    described = sandbox.wait_for_job(job, timeout=180)
    assert described["TrainingJobStatus"] == "Completed"
    log = sandbox.container_log(job)
    assert re.search(r"sm-wait: SSH setup failed: amazon-ssm-agent -register failed \(exit 1\)"
                     r".*; nobody can connect, so the job continues in \d+ s", log), log
    assert "released" in log
    # the activation whose code was handed to the agent is not left valid for 24 hours
    assert len(ssm.describe_activations()["ActivationList"]) == activations_before


def test_failing_job_ends_failed_and_deregisters_its_instance(
        sandbox: Sandbox, client_env: dict[str, str], tmp_path: Path) -> None:
    job = launch_job(client_env, tmp_path, HOLD_THEN_FAIL, "fails", 1)
    (instance_id,) = online_instances(sandbox, job, 1)

    release(client_env, job)
    described = sandbox.wait_for_job(job, timeout=120)
    assert described["TrainingJobStatus"] == "Failed"
    assert "the training script failed on purpose" in described["FailureReason"]

    assert deregistered(sandbox, instance_id), f"{instance_id} is still registered"
