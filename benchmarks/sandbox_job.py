"""What the benchmarks share: a sandbox in a folder of its own, a training job launched as a
user launches one (the SDK v2 wrapper, in an interpreter of its own), a HOME of the benchmark's
own (keys, host keys and ssh config start empty), the time to a command's first output, and,
for the benchmarks without the sandbox, moto and a boto3 session that counts its calls."""
from __future__ import annotations

import argparse
import collections
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = "import sagemaker_ssh_helper\nsagemaker_ssh_helper.setup_and_start_ssh()\n"
LAUNCH = """\
import os, sys
from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper
source_dir, base_job_name, wait, nodes, transport = sys.argv[1:6]
estimator = PyTorch(entry_point="train.py", source_dir=source_dir,
                    dependencies=[SSHEstimatorWrapper.dependency_dir()],
                    role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                    py_version="py310", instance_count=int(nodes), instance_type="ml.m5.xlarge",
                    base_job_name=base_job_name)
SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=int(wait),
                           ssh_instance_count=int(nodes), transport=transport)
estimator.fit(wait=False)
print(estimator.latest_training_job.name)
"""


def sm_ssh(*args: str) -> list[str]:
    """``sm-ssh ARGS`` as this interpreter runs it."""
    return [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args]


def workspace(sandbox: Any, work: Path) -> dict[str, str]:
    """The job's source folder and launch script under ``work``, and the environment of a user
    of ``sandbox`` whose HOME is ``work/home``. Connections are not shared (``SM_SSH_REUSE=off``):
    each run measures a whole connect; bench_reuse.py measures sharing."""
    (work / "src").mkdir()
    (work / "src" / "train.py").write_text(ENTRY_POINT)
    (work / "launch.py").write_text(LAUNCH)
    return dict(user_env(sandbox, work / "home"), SM_SSH_REUSE="off")


def user_env(sandbox: Any, home: Path) -> dict[str, str]:
    """The environment of a user of ``sandbox`` whose HOME is ``home`` (made here), with this
    checkout importable and no SDK v2 warning."""
    home.mkdir()
    env = dict(os.environ, **sandbox.env, HOME=str(home), SAGEMAKER_SUPPRESS_V2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    return env


def launch_job(env: dict[str, str], work: Path, base_job_name: str, wait_seconds: int,
               nodes: int = 1, transport: str = "hybrid") -> str:
    """Start a training job from ``work`` (see ``workspace``); returns its name."""
    done = subprocess.run([sys.executable, str(work / "launch.py"), str(work / "src"),
                           base_job_name, str(wait_seconds), str(nodes), transport],
                          env=env, capture_output=True, text=True, timeout=300, check=True)
    return done.stdout.strip().splitlines()[-1]


def runs_parser(doc: str | None, runs: int = 5) -> argparse.ArgumentParser:
    """The options of a benchmark that repeats its measure: ``--runs N`` and ``--json``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    return parser


def cannot_run(name: str) -> bool:
    """True, after one line on stderr saying why, where the sandbox cannot run (it needs root
    on Linux: it runs jobs in namespaces)."""
    from sagemaker_ssh_sandbox import requirements_problem

    problem = requirements_problem()
    if problem:
        print(f"{name}: {problem}", file=sys.stderr)
    return problem is not None


@contextmanager
def sandbox_in_tempdir(prefix: str) -> Iterator[tuple[Any, Path]]:
    """A sandbox whose state lives in a temporary folder, and the folder (for the benchmark's
    own files); both gone afterwards."""
    from sagemaker_ssh_sandbox import Sandbox

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        with Sandbox(work / "sandbox", stop_grace=3.0) as sandbox:
            yield sandbox, work


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` (the in-process phases use the same AWS endpoints as
    the commands), restored afterwards."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def first_output(argv: list[str], env: dict[str, str], until: bytes = b"") -> float:
    """Seconds from spawning ``argv`` to its first stdout bytes (containing ``until``)."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    seen = b""
    while until not in seen or not seen:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"{argv[:4]} ended without output: "
                               f"{proc.communicate()[1].decode(errors='replace')[-500:]}")
        seen += chunk
    elapsed = time.perf_counter() - began
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return elapsed


# -- without the sandbox: moto and the SSM stand-in in this process -----------------------------
JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/{}"


def job_tags(name: str) -> dict[str, str]:
    """The tags an SSH Helper container puts on its managed instance, for the job ``name``."""
    return {"SSHResourceName": name, "SSHResourceArn": JOB_ARN.format(name.lower()),
            "SSHTimestamp": str(int(time.time())), "SSHOwner": "bench"}


@contextmanager
def moto_aws() -> Iterator[None]:
    """Fake credentials and a moto server (STS, SageMaker) as ``AWS_ENDPOINT_URL``."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    try:
        yield
    finally:
        moto.stop()


@contextmanager
def ssm_stand_in() -> Iterator[tuple[Any, Any, collections.Counter[str]]]:
    """A fresh SSM stand-in as ``AWS_ENDPOINT_URL_SSM``; yields it, a boto3 session and the
    calls that session makes, by operation."""
    import boto3

    from sagemaker_ssh_sandbox.ssm.service import start_ssm_server

    server = start_ssm_server()
    os.environ["AWS_ENDPOINT_URL_SSM"] = server.url
    calls: collections.Counter[str] = collections.Counter()
    session = boto3.Session(region_name="us-east-1")
    session.events.register("before-call", lambda model, **_: calls.update([model.name]))
    try:
        yield server, session, calls
    finally:
        server.shutdown()
