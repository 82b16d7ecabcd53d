"""Shared pytest fixtures: every test runs with fake AWS credentials and no real endpoint."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

_AWS_VARS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_STS",
)
# One connection per command unless a test's environment drops this (shared connections, the
# default for users): a master kept from one test would skip the calls the next one checks.
os.environ["SM_SSH_REUSE"] = "off"


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[None]:
    """Isolate tests from the developer's AWS config: fake credentials, us-east-1, no profile."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("aws-config")
    (home / "config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield


def is_root_linux() -> bool:
    return os.name == "posix" and hasattr(os, "geteuid") and os.geteuid() == 0 \
        and os.uname().sysname == "Linux"


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hidden_paths(covered: tuple = ("/tmp", "/run")) -> list:
    """The repository and interpreter directories a private /tmp or /run would hide.

    Namespace harnesses mount fresh directories over /tmp and /run; a checkout or virtualenv
    living below them (e.g. a CI clone in /tmp) must stay visible inside.
    """
    import sys

    wanted = {REPO_ROOT, sys.prefix, sys.base_prefix,
              os.path.dirname(os.path.realpath(sys.executable))}
    under = sorted(p for p in wanted if any(p == c or p.startswith(c + "/") for c in covered))
    # Drop paths already inside another kept path.
    return [p for p in under if not any(p != q and p.startswith(q + "/") for q in under)]


def keep_visible(stage: str, covered: tuple = ("/tmp", "/run")) -> tuple:
    """Bash snippets (before, after) to run around covering /tmp and /run in a private mount
    namespace: ``before`` binds each hidden path into ``stage`` (a directory that stays
    visible), ``after`` binds it back at its original place."""
    import shlex

    before, after = [], []
    for i, path in enumerate(hidden_paths(covered)):
        keep = shlex.quote(f"{stage}/keep-{i}")
        before.append(f"mkdir -p {keep} && mount --bind {shlex.quote(path)} {keep}")
        after.append(f"mkdir -p {shlex.quote(path)} && mount --bind {keep} {shlex.quote(path)}")
    return "\n".join(before), "\n".join(after)


class FakeClock:
    """A fake monotonic clock: call it for the time; ``sleep`` advances it and records delays."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run(argv: list[str], env: dict[str, str], timeout: float = 180
        ) -> subprocess.CompletedProcess:
    """Run a command as a user would, with text output captured and no stdin."""
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def sm_ssh(*args: str) -> list[str]:
    """argv of ``sm-ssh <args>`` with this interpreter."""
    return [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args]


def wait_until(check: Any, proc: subprocess.Popen, what: str, timeout: float = 60) -> Any:
    """Poll ``check()`` (OSError/AssertionError mean "not yet") while ``proc`` keeps running."""
    deadline, delay, last = time.monotonic() + timeout, 0.05, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: the command exited early ({proc.returncode})"
        try:
            return check()
        except (OSError, AssertionError) as e:
            last = e
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise AssertionError(f"{what}: not ready after {timeout} s: {last}")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sandbox_e2e_marks() -> list:
    from sagemaker_ssh_sandbox import requirements_problem

    problem = requirements_problem()
    return [pytest.mark.e2e,
            pytest.mark.skipif(problem is not None, reason=f"sandbox requirements: {problem}")]


# `pytestmark = SANDBOX_E2E` in modules that start the offline sandbox.
SANDBOX_E2E = _sandbox_e2e_marks()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto server on loopback for the module; its endpoint URL."""
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def allow_team_owner(sandbox: Any, owner: str) -> None:
    """What IAM_SSM_Setup.md tells teams that launch with ``local_user_id=owner``: give the
    users a copy of the client policy that compares SSHOwner with that value (the sandbox
    enforces IAM on SSM calls, and its user's own ID is not ``owner``)."""
    import json as _json

    from sagemaker_ssh_helper.cdk import policies
    from sagemaker_ssh_sandbox.iam.account import USER_NAME

    iam = sandbox.client("iam")
    document = policies.client_policy(policies.Target(account=sandbox.state["account"]), owner)
    arn = iam.create_policy(PolicyName=f"SSHClientPolicy-{owner}",
                            PolicyDocument=_json.dumps(document))["Policy"]["Arn"]
    iam.attach_user_policy(UserName=USER_NAME, PolicyArn=arn)


def moto_address(url: str) -> tuple[str, int]:
    """(host, port) of the moto server at ``url`` (``moto_url``): where a sandbox Gateway
    forwards what it does not answer itself."""
    host, port = url[len("http://"):].rsplit(":", 1)
    return host, int(port)


class RecordingRunner:
    """Stands in for the sandbox's container runner: keeps the jobs it is given, runs nothing."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def __call__(self, job: Any) -> None:
        self.jobs.append(job)


@pytest.fixture
def ssm_stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The sandbox's SSM stand-in on a free loopback port, with AWS_ENDPOINT_URL_SSM set to
    it."""
    from sagemaker_ssh_sandbox.ssm.service import start_ssm_server

    server = start_ssm_server(port=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    yield server
    server.shutdown()


def create_training_job(name: str, sm: Any = None, instance_count: int = 1,
                        max_runtime: int = 60) -> None:
    """A training job as moto keeps it (``sm``: a SageMaker client, the default one if None)."""
    import boto3

    (sm or boto3.client("sagemaker")).create_training_job(
        TrainingJobName=name, RoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://b/o"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": instance_count,
                        "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": max_runtime})


def create_transform_job(sm: Any, name: str, model: str, environment: dict[str, str]) -> None:
    """A one-instance batch transform job of ``model`` over s3://b/in, with ``environment``."""
    sm.create_transform_job(
        TransformJobName=name, ModelName=model,
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                        "S3Uri": "s3://b/in"}}},
        TransformOutput={"S3OutputPath": "s3://b/out"},
        TransformResources={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        Environment=environment)
