"""`sm-ssh sandbox demo`: the whole user journey, offline, with each phase timed.

The journey uses only the public surfaces a user has: an unchanged launch script that calls
``SSHEstimatorWrapper.create`` and ``fit(wait=False)``, an entry point that calls
``setup_and_start_ssh()``, and the ``sm-ssh`` command line. The sandbox provides the AWS side.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from sagemaker_ssh_helper.errors import SSHHelperError

ENTRY_POINT = '''\
"""Demo entry point: serves a page on 127.0.0.1:8080, then holds the job for SSH."""
import http.server
import os
import socket
import threading

import sagemaker_ssh_helper


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {socket.gethostname()} in {os.environ['TRAINING_JOB_NAME']}\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Hello)
threading.Thread(target=server.serve_forever, daemon=True).start()
sagemaker_ssh_helper.setup_and_start_ssh()
print("training: released by the user, finishing", flush=True)
'''

LAUNCH_SCRIPT = '''\
"""Demo launch script, written as a user would for real SageMaker."""
import os
import sys

from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper

role = os.environ["SM_SSH_SANDBOX_ROLE_ARN"]
estimator = PyTorch(
    entry_point="train.py",
    source_dir=sys.argv[1],
    dependencies=[SSHEstimatorWrapper.dependency_dir()],
    role=role,
    framework_version="2.2",
    py_version="py310",
    instance_count=1,
    instance_type="ml.m5.xlarge",
    base_job_name="ssh-demo",
)
ssh_wrapper = SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=600)
estimator.fit(wait=False)
print(estimator.latest_training_job.name)
'''

LOCAL_PORT = 18080


class DemoFailed(SSHHelperError):
    exit_code = 1


class Journey:
    """Runs the phases in order, printing each one with its elapsed time."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.timings: list[tuple] = []
        self.started = time.monotonic()

    @contextmanager
    def phase(self, title: str) -> Iterator[None]:
        self.out(f"==> {title}")
        begin = time.monotonic()
        try:
            yield
        except Exception:
            self.out(f"    FAILED after {time.monotonic() - begin:.1f} s")
            raise
        elapsed = time.monotonic() - begin
        self.timings.append((title, elapsed))
        self.out(f"    ok ({elapsed:.1f} s)")


def _sm_ssh() -> list[str]:
    return [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh"]


def _run(argv: list[str], env: dict[str, str], timeout: float, what: str,
         cwd: str | None = None) -> str:
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise DemoFailed(f"{what} did not finish within {timeout:.0f} s") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise DemoFailed(f"{what} failed (exit {done.returncode}): " + " | ".join(tail))
    return done.stdout


def parse_exports(text: str) -> dict[str, str]:
    """Parse the ``export NAME=value`` lines that ``sandbox up`` prints."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
    return env


def _wait_http(url: str, deadline: float, proc: subprocess.Popen) -> str:
    last: BaseException | None = None
    delay = 0.05
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoFailed(f"the port-forwarding ssh exited early (exit {proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError as e:
            last = e
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise DemoFailed(f"nothing answered on {url} through the tunnel: {last}")


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _job_status(env: dict[str, str], job: str) -> str:
    code = ("import boto3,sys;print(boto3.client('sagemaker').describe_training_job("
            "TrainingJobName=sys.argv[1])['TrainingJobStatus'])")
    return _run([sys.executable, "-c", code, job], env, 60, "DescribeTrainingJob").strip()


def journey(env: dict[str, str], workdir: Path, journey_: Journey) -> None:
    out = journey_.out
    src = workdir / "src"
    src.mkdir()
    (src / "train.py").write_text(ENTRY_POINT)
    (workdir / "launch.py").write_text(LAUNCH_SCRIPT)

    with journey_.phase("launch a training job with SSHEstimatorWrapper (fit(wait=False))"):
        job = _run([sys.executable, str(workdir / "launch.py"), str(src)], env, 180,
                   "the launch script", cwd=str(workdir)).strip().splitlines()[-1]
        out(f"    training job: {job}")
    fqdn = f"{job}.training.sagemaker"

    with journey_.phase(f"sm-ssh connect {fqdn} -- cat resourceconfig.json"):
        text = _run(_sm_ssh() + ["connect", fqdn, "--", "cat",
                                 "/opt/ml/input/config/resourceconfig.json"],
                    env, 240, "sm-ssh connect")
        config = json.loads(text)
        if config.get("current_host") != "algo-1":
            raise DemoFailed(f"unexpected resourceconfig.json: {text.strip()}")
        out("    " + json.dumps(config))

    port = _free_port(LOCAL_PORT)
    with journey_.phase(f"sm-ssh connect {fqdn} -N -L {port}:localhost:8080, fetch a page"):
        proc = subprocess.Popen(
            _sm_ssh() + ["connect", fqdn, "-N", "-L", f"{port}:localhost:8080"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            page = _wait_http(f"http://127.0.0.1:{port}/", time.monotonic() + 60, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if job not in page:
            raise DemoFailed(f"unexpected page through the tunnel: {page!r}")
        out(f"    {page.strip()}")

    with journey_.phase("sm-ssh connect ... -- sm-wait stop (release the job)"):
        _run(_sm_ssh() + ["connect", fqdn, "--", "sm-wait", "stop"], env, 120,
             "sm-wait stop")

    with journey_.phase("wait for the job to reach Completed"):
        deadline = time.monotonic() + 120
        status, delay = "", 0.1
        while time.monotonic() < deadline:
            status = _job_status(env, job)
            if status in ("Completed", "Failed", "Stopped"):
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if status != "Completed":
            raise DemoFailed(f"training job {job} ended as {status or 'unknown'}, "
                             "expected Completed (see `sm-ssh sandbox status`)")


def run_demo(args: argparse.Namespace) -> int:
    """Bring a sandbox up, run the journey, tear it down. Exit 0 only if every step worked.

    Without ``--state-dir`` the demo runs in a fresh private state directory, so a sandbox the
    user already has running is never touched; it is removed after a successful run and kept
    (with its logs) after a failure. A sandbox already running in the given ``--state-dir`` is
    used but left running.
    """
    from sagemaker_ssh_sandbox import control

    def out(line: str) -> None:
        print(line, flush=True)

    private = not getattr(args, "state_dir", None)
    state_dir = Path(tempfile.mkdtemp(prefix="sm-ssh-demo-") if private else args.state_dir)
    base_env = dict(os.environ, SM_SSH_SANDBOX_DIR=str(state_dir),
                    SAGEMAKER_SUPPRESS_V2_WARNING="1")
    already_running = control.running_state(control.StateDir(state_dir)) is not None
    j = Journey(out)
    workdir = Path(tempfile.mkdtemp(prefix="sm-ssh-demo-work-"))
    started = False
    ok = False
    try:
        with j.phase("sandbox up (moto, SSM stand-in, job runner)"):
            # Tied to this process: a demo that is killed does not leave its sandbox running.
            exports = _run(_sm_ssh() + ["sandbox", "up", "--stop-with", str(os.getpid())],
                           base_env, 120, "sm-ssh sandbox up")
            started = not already_running
        env = dict(base_env)
        env.update(parse_exports(exports))
        # Keep the demo's client keys and known_hosts inside the sandbox, not in ~/.ssh.
        home = state_dir / "demo-home"
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
        journey(env, workdir, j)
        ok = True
    except SSHHelperError:
        raise
    except Exception as e:  # anything unexpected still ends as one line, not a traceback
        raise DemoFailed(f"the demo failed: {type(e).__name__}: {e}") from e
    finally:
        if started:
            with j.phase("sandbox down"):
                _run(_sm_ssh() + ["sandbox", "down"], base_env, 120, "sm-ssh sandbox down")
        shutil.rmtree(workdir, ignore_errors=True)
        if private and ok:
            shutil.rmtree(state_dir, ignore_errors=True)
        elif not ok:
            out(f"sandbox state and logs kept in {state_dir}")
    total = time.monotonic() - j.started
    out(f"demo complete in {total:.1f} s:")
    for title, elapsed in j.timings:
        out(f"  {elapsed:6.1f} s  {title}")
    return 0
