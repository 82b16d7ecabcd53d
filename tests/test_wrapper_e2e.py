"""End to end in the offline sandbox: a user script launches a training job through
``SSHEstimatorWrapper``, finds its instance, opens ``start_ssm_connection``, reads the env
contract inside the container while the job is held, then connects with
``start_ssm_connection_and_continue`` (which releases the job) and waits for it. Needs root on
Linux.

The scripts use SSH Helper v2's calls as its README and tests wrote them: ``print_ssh_info()``,
``SSMProxy(port, extra_args, region_name, cloudwatch_url)``, ``InteractiveSageMaker`` listing,
``start_ssm_connection_and_continue(port, timeout=timedelta(...))`` and the positional
(deprecated) ``retry``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SANDBOX_E2E, allow_team_owner, run, sm_ssh

from sagemaker_ssh_sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]

pytestmark = SANDBOX_E2E

ENTRY_POINT = """\
import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()
print("released by the user", flush=True)
"""

USER_SCRIPT = """\
import json, os, socket, sys
from datetime import timedelta

from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.interactive_sagemaker import InteractiveSageMaker, SageMaker
from sagemaker_ssh_helper.manager import SSMManager
from sagemaker_ssh_helper.proxy import SSMProxy
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the estimator of SSH Helper v2's README, as its users wrote it
estimator = PyTorch(entry_point="train.py", source_dir=sys.argv[1],
                    dependencies=[SSHEstimatorWrapper.dependency_dir()],
                    role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="1.9.1",
                    py_version="py38", instance_count=1, instance_type="ml.m5.xlarge",
                    base_job_name="ssh-wrapper-e2e")
wrapper = SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=600,
                                     local_user_id="e2e-owner")
estimator.fit(wait=False)
wrapper.print_ssh_info()
ids = wrapper.get_instance_ids(timeout_in_sec=180)
held = wrapper.is_job_in_progress()
SSHEstimatorWrapper.attach(wrapper.training_job_name()).print_ssh_info()  # v2's FAQ

# v2's SSMProxy constructor: (port, extra_args, region_name, cloudwatch_url)
with SSMProxy(free_port(), "", wrapper.region(), wrapper.get_cloudwatch_url()) as ssm_proxy:
    ssm_proxy.connect_to_ssm_instance(ids[0])
    proxy_rc = ssm_proxy.run_command("test -d /opt/ml")
    proxy_output = ssm_proxy.fetch_proxy_output()

interactive = InteractiveSageMaker(SageMaker(), SSMManager(progress=None))
listed = [str(job) for job in interactive.list_training_jobs(interactive.managed_instances())
          if job.training_job_name == wrapper.training_job_name()]

attached = SSHEstimatorWrapper.attach(wrapper.training_job_name())
proxy = attached.start_ssm_connection(free_port(), timeout_in_sec=60)
try:
    environment = proxy.run_command_with_output("cat /etc/environment", timeout=300).decode()
    hostname = proxy.run_command_with_output("hostname", timeout=300).decode().strip()
finally:
    proxy.disconnect()
held_after_disconnect = attached.is_job_in_progress()

# connect again, and this time let the job go on (the call v2's README links to)
proxy = wrapper.start_ssm_connection_and_continue(free_port(), timeout=timedelta(minutes=1))
status = wrapper.wait_training_job_with_status(poll_seconds=1)
print("RESULT " + json.dumps({"job": wrapper.training_job_name(), "ids": ids,
                              "instance_id": proxy.instance_id, "environment": environment,
                              "hostname": hostname, "status": status, "held": held,
                              "held_after_disconnect": held_after_disconnect,
                              "proxy_rc": proxy_rc, "proxy_output": proxy_output,
                              "listed": listed, "closed": proxy.master is None}), flush=True)
"""


PROCESSING_SCRIPT = """\
import os, sys

sys.path.append("/opt/ml/processing/input")
import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()
print("processing released by the user", flush=True)
"""

PROCESSING_USER_SCRIPT = """\
import json, os, socket, sys

from sagemaker.processing import ScriptProcessor
from sagemaker_ssh_helper.wrapper import SSHProcessorWrapper

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
processor = ScriptProcessor(command=["python3"], image_uri="any:latest",
                            role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], instance_count=1,
                            instance_type="ml.m5.xlarge", base_job_name="ssh-wrapper-e2e-proc")
wrapper = SSHProcessorWrapper.create(processor, connection_wait_time_seconds=900)
processor.run(code=os.path.join(sys.argv[1], "process.py"),
              inputs=[wrapper.augmented_input()], wait=False, logs=False)  # as in v2
ids = wrapper.get_instance_ids(timeout_in_sec=180)
held = wrapper.is_job_in_progress()
proxy = wrapper.start_ssm_connection_and_continue(port, 6)  # v2: retry=6, i.e. 60 s
wrapper.wait_processing_job(poll_seconds=1)
print("RESULT " + json.dumps({"job": wrapper.processing_job_name(), "ids": ids,
                              "instance_id": proxy.instance_id, "held": held,
                              "status": wrapper.describe()["ProcessingJobStatus"]}), flush=True)
"""


CRASHING_ENTRY_POINT = """\
import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()
with open("/tmp/evidence.txt", "w") as f:
    f.write("state of the failed run\\n")
raise RuntimeError("loss is NaN at step 42")
"""

CRASHING_USER_SCRIPT = """\
import json, os, sys

from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper

estimator = PyTorch(entry_point="crash.py", source_dir=sys.argv[1],
                    dependencies=[SSHEstimatorWrapper.dependency_dir()],
                    role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                    py_version="py310", instance_count=1, instance_type="ml.m5.xlarge",
                    base_job_name="ssh-wrapper-crash")
SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=600,
                           local_user_id="e2e-owner", keep_alive_on_failure_seconds=900)
estimator.fit(wait=False)
print("RESULT " + json.dumps({"job": estimator.latest_training_job.name}), flush=True)
"""


FAILING_COMMAND_USER_SCRIPT = """\
import json, os, sys

from sagemaker.processing import ScriptProcessor
from sagemaker_ssh_helper.wrapper import SSHProcessorWrapper

# our entry point runs the user's shell script: a non-zero exit holds the container too
processor = ScriptProcessor(
    command=["python3", "-m", "sagemaker_ssh_helper.postmortem", "--", "bash"],
    image_uri="any:latest", role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], instance_count=1,
    instance_type="ml.m5.xlarge", base_job_name="ssh-wrapper-exit3",
    env={"PYTHONPATH": "/opt/ml/processing/input"})
SSHProcessorWrapper.create(processor, connection_wait_time_seconds=0, local_user_id="e2e-owner",
                           keep_alive_on_failure_seconds=900)
processor.run(code=os.path.join(sys.argv[1], "step.sh"),
              inputs=[SSHProcessorWrapper.augmented_input()], wait=False, logs=False)
print("RESULT " + json.dumps({"job": processor.latest_job.job_name}), flush=True)
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("sandbox"), stop_grace=3.0) as sb:
        allow_team_owner(sb, "e2e-owner")
        yield sb


def user_env(sandbox: Sandbox, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"  # client keys and known_hosts stay out of the real ~/.ssh
    home.mkdir(exist_ok=True)
    env = dict(os.environ, **sandbox.env, HOME=str(home), SAGEMAKER_SUPPRESS_V2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    return env


def run_user_script(sandbox: Sandbox, tmp_path: Path, script: str,
                    sources: dict[str, str]) -> dict[str, Any]:
    source = tmp_path / "src"
    source.mkdir()
    for name, text in sources.items():
        (source / name).write_text(text)
    (tmp_path / "launch.py").write_text(script)
    env = user_env(sandbox, tmp_path)
    done = subprocess.run([sys.executable, str(tmp_path / "launch.py"), str(source)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return dict(json.loads(lines[-1][len("RESULT "):]))


def test_estimator_wrapper_journey(sandbox: Sandbox, tmp_path: Path) -> None:
    result = run_user_script(sandbox, tmp_path, USER_SCRIPT, {"train.py": ENTRY_POINT})
    assert len(result["ids"]) == 1 and result["ids"][0].startswith("mi-")
    assert result["instance_id"] == result["ids"][0]
    assert result["hostname"] == "algo-1"
    environment = result["environment"]
    for name, value in (("SSH_OWNER_TAG", "e2e-owner"), ("SSH_WAIT_TIME_SECONDS", "600"),
                        ("SSH_INSTANCE_COUNT", "1"), ("SSH_SSM_ROLE", r"[\w+=,.@/-]+")):
        assert re.search(rf"^(export )?{name}=['\"]?{value}['\"]?$", environment, re.M), name
    assert result["held"] is True and result["held_after_disconnect"] is True
    assert result["status"] == "Completed"
    assert "released by the user" in sandbox.container_log(result["job"])
    assert result["proxy_rc"] == 0 and isinstance(result["proxy_output"], str)
    assert [line.split() for line in result["listed"]] == [
        ["Online", "TrainingJob", "InProgress", f"{result['job']}.training.sagemaker"]]
    assert result["closed"] is True  # _and_continue disconnects, as in v2


def test_processor_wrapper_journey(sandbox: Sandbox, tmp_path: Path) -> None:
    result = run_user_script(sandbox, tmp_path, PROCESSING_USER_SCRIPT,
                             {"process.py": PROCESSING_SCRIPT})
    assert len(result["ids"]) == 1 and result["instance_id"] == result["ids"][0]
    assert result["held"] is True
    assert result["status"] == "Completed"
    log = sandbox.container_log(result["job"], kind="processing")
    assert "processing released by the user" in log


def test_crashed_job_is_held_for_a_post_mortem(sandbox: Sandbox, tmp_path: Path) -> None:
    """keep_alive_on_failure_seconds: the script's uncaught exception keeps the container
    connectable until `sm-wait stop`, then the job fails with the script's own error."""
    job = run_user_script(sandbox, tmp_path, CRASHING_USER_SCRIPT,
                          {"crash.py": CRASHING_ENTRY_POINT})["job"]
    fqdn = f"{job}.training.sagemaker"
    env = user_env(sandbox, tmp_path)
    # the hold before the script (connection_wait_time_seconds) is released as usual ...
    done = run(sm_ssh("stop-waiting", fqdn), env)
    assert done.returncode == 0, done.stderr
    # ... and its stop file does not cut the post-mortem hold short
    deadline = time.monotonic() + 180
    while "post-mortem hold" not in sandbox.container_log(job) and time.monotonic() < deadline:
        assert sandbox.wait_for_job(job, timeout=0)["TrainingJobStatus"] == "InProgress", \
            sandbox.container_log(job)
        time.sleep(0.5)
    log = sandbox.container_log(job)
    assert "RuntimeError: loss is NaN at step 42" in log and "post-mortem hold" in log, log
    assert f"connect with: sm-ssh connect {fqdn}" in log, log
    done = run(sm_ssh("connect", fqdn, "--", "cat /tmp/evidence.txt; pgrep -f crash.py"), env)
    assert done.returncode == 0, done.stderr
    evidence, *crashed_script = done.stdout.splitlines()
    assert evidence == "state of the failed run" and crashed_script, done.stdout  # still there
    assert sandbox.wait_for_job(job, timeout=0)["TrainingJobStatus"] == "InProgress"

    copies_through_s3_and_scp(sandbox, env, fqdn, tmp_path)  # e.g. the failed run's files

    done = run(sm_ssh("connect", fqdn, "--", "sm-wait stop"), env)
    assert done.returncode == 0, done.stderr
    described = sandbox.wait_for_job(job, timeout=120)
    assert described["TrainingJobStatus"] == "Failed", described
    reason = described["FailureReason"]
    assert "RuntimeError: loss is NaN at step 42" in reason, reason
    assert "post-mortem" not in reason and "sm-wait" not in reason, reason
    assert "post-mortem hold over" in sandbox.container_log(job)


def test_failing_command_under_our_entry_point_is_held(sandbox: Sandbox, tmp_path: Path) -> None:
    """``python -m sagemaker_ssh_helper.postmortem -- CMD``: CMD's non-zero exit holds the
    container until `sm-ssh stop-waiting`, then the job fails."""
    job = run_user_script(sandbox, tmp_path, FAILING_COMMAND_USER_SCRIPT,
                          {"step.sh": "echo step output > /tmp/evidence.txt\nexit 3\n"})["job"]
    deadline = time.monotonic() + 180
    while "post-mortem hold" not in sandbox.container_log(job, kind="processing") \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    log = sandbox.container_log(job, kind="processing")
    assert "bash exited with code 3: post-mortem hold" in log, log
    fqdn = f"{job}.processing.sagemaker"
    env = user_env(sandbox, tmp_path)
    done = run(sm_ssh("connect", fqdn, "--", "cat /tmp/evidence.txt"), env)
    assert (done.returncode, done.stdout) == (0, "step output\n"), done.stderr
    assert sandbox.wait_for_job(job, kind="processing", timeout=0)[
        "ProcessingJobStatus"] == "InProgress"

    done = run(sm_ssh("stop-waiting", fqdn), env)
    assert done.returncode == 0, done.stderr
    described = sandbox.wait_for_job(job, kind="processing", timeout=120)
    assert described["ProcessingJobStatus"] == "Failed", described
    assert "post-mortem hold over" in sandbox.container_log(job, kind="processing")


def copies_through_s3_and_scp(sandbox: Sandbox, env: dict[str, str], fqdn: str,
                              tmp_path: Path) -> None:
    """``sm-ssh cp``: big files both ways through S3 (checksummed, temporary objects deleted),
    small ones over scp; ``sm-ssh sync`` of a folder both ways; a corrupted download never
    replaces the destination."""
    s3 = sandbox.client("s3")
    bucket = f"sagemaker-{sandbox.region}-123456789012"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    done = run(sm_ssh("cp", str(big), f"{fqdn}:/tmp/", "--s3-threshold", "2M"), env)
    assert done.returncode == 0, done.stderr
    assert "upload to S3" in done.stderr and "verified" in done.stderr, done.stderr

    back = tmp_path / "back"
    back.mkdir()
    done = run(sm_ssh("cp", "--s3-threshold", "2M", f"{fqdn}:/tmp/big.bin", str(back)), env)
    assert done.returncode == 0, done.stderr
    assert "download from S3" in done.stderr and "verified" in done.stderr, done.stderr
    assert (back / "big.bin").read_bytes() == big.read_bytes()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket,
                                                Prefix="sagemaker-ssh-helper/transfers/")

    done = run(sm_ssh("cp", f"{fqdn}:/tmp/evidence.txt", str(back / "evidence.txt")), env)
    assert done.returncode == 0 and "over the SSH session" in done.stderr, done.stderr
    assert (back / "evidence.txt").read_text() == "state of the failed run\n"
    small = tmp_path / "small.txt"
    small.write_text("small file\n")
    done = run(sm_ssh("cp", str(small), f"{fqdn}:/tmp/small.txt"), env)
    assert done.returncode == 0 and "over the SSH session" in done.stderr, done.stderr
    # scp takes a relative name with a ':' or a leading '-' as a file, a remote space literally
    (tmp_path / "-ckpt-12:30.txt").write_text("odd name\n")
    done = subprocess.run(sm_ssh("cp", "./-ckpt-12:30.txt", f"{fqdn}:/tmp/odd name.txt"),
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0 and "over the SSH session" in done.stderr, done.stderr
    done = run(sm_ssh("cp", f"{fqdn}:/tmp/odd name.txt", str(back / "odd.txt")), env)
    assert done.returncode == 0 and (back / "odd.txt").read_text() == "odd name\n", done.stderr

    # sync: a folder's new and changed files, both ways; nothing when up to date
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    remote_tree = f"{fqdn}:/tmp/tree"
    done = run(sm_ssh("sync", str(tree), remote_tree), env)
    assert done.returncode == 0 and "2 new or changed file(s)" in done.stderr, done.stderr
    done = run(sm_ssh("sync", str(tree), remote_tree), env)
    assert done.returncode == 0 and "/tmp/tree is up to date" in done.stderr, done.stderr
    (tree / "a.txt").write_text("changed\n")
    (tree / "c.txt").write_text("new\n")
    done = run(sm_ssh("sync", str(tree), remote_tree), env)
    assert done.returncode == 0 and "2 new or changed file(s)" in done.stderr, done.stderr
    mirror = tmp_path / "mirror"
    done = run(sm_ssh("sync", remote_tree, str(mirror)), env)
    assert done.returncode == 0 and "3 new or changed file(s)" in done.stderr, done.stderr
    assert sorted(str(p.relative_to(mirror)) for p in mirror.rglob("*") if p.is_file()) == \
        ["a.txt", "c.txt", "sub/b.bin"]
    assert all((mirror / p).read_bytes() == (tree / p).read_bytes()
               for p in ("a.txt", "c.txt", "sub/b.bin"))
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket,
                                                Prefix="sagemaker-ssh-helper/transfers/")

    done = run(sm_ssh("cp", "--s3", "s3://no-such-bucket/tmp/", str(big), f"{fqdn}:/tmp/"), env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == ["sm-ssh: bucket no-such-bucket does not exist: create "
                                        "it, or pass --s3 s3://<your-bucket>/<prefix>/ (cp "
                                        "also has --via scp)"], done.stderr

    # the container's half refuses a download whose checksum differs, and keeps the old file
    s3.put_object(Bucket=bucket, Key="corrupt/big.bin", Body=b"not what was sent")
    remote = REPO / "sagemaker_ssh_helper" / "transfer_remote.py"
    with open(remote, "rb") as script:
        done = subprocess.run(sm_ssh("connect", fqdn, "--", "python3", "-", "fetch", bucket,
                                     "corrupt/big.bin", "/tmp/big.bin", digest),
                              env=env, stdin=script, capture_output=True, text=True,
                              timeout=180, check=False)
    assert done.returncode == 1 and "checksum mismatch" in done.stderr, done.stderr
    done = run(sm_ssh("connect", fqdn, "--", "sha256sum /tmp/big.bin; cat /tmp/small.txt; "
                                              "ls -a /tmp /tmp/tree"), env)
    assert done.stdout.split()[0] == digest, done.stdout  # the copy up, kept intact
    assert "small file\n" in done.stdout, done.stdout
    assert "sm-ssh-part" not in done.stdout and ".sm-ssh-sync" not in done.stdout, done.stdout
