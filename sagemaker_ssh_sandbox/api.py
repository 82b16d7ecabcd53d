"""Python API for scripts and test fixtures: one :class:`Sandbox` per state directory.

::

    from sagemaker_ssh_sandbox import Sandbox

    with Sandbox(tmp_path / "sandbox") as sandbox:      # `up` on enter, `down` on exit
                                                        # (or when this process ends)
        env = sandbox.env                               # AWS_ENDPOINT_URL, credentials, ...
        subprocess.run([...], env={**os.environ, **env})
        with sandbox.activated():                       # os.environ patched for in-process code
            ...
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox.control import (
    CREDENTIALS,
    DEFAULT_REGION,
    UNSET_VARS,
    DownReport,
    SandboxError,
    StateDir,
    default_state_dir,
    http_json,
    running_state,
    sandbox_env,
    start,
    stop,
)


class Sandbox:
    """Fixture-friendly handle on one sandbox (one state directory)."""

    def __init__(self, state_dir: str | Path | None = None, region: str = DEFAULT_REGION,
                 port: int = 0, stop_grace: float = 10.0, heartbeat_timeout: float = 10.0,
                 startup_timeout: float = 60.0, iam: bool = True,
                 stop_with_caller: bool = True) -> None:
        self.state_dir = StateDir(Path(state_dir) if state_dir else default_state_dir())
        self.region = region
        self.port = port
        self.stop_grace = stop_grace
        self.heartbeat_timeout = heartbeat_timeout
        self.startup_timeout = startup_timeout
        self.iam = iam  # the SSM stand-in enforces the generated IAM policies
        # A daemon started here stops by itself once this process has ended (even SIGKILLed),
        # so a killed test run leaves nothing running; False: it runs until down().
        self.stop_with_caller = stop_with_caller
        self._state: dict[str, Any] | None = None

    def up(self) -> dict[str, str]:
        """Start (or reuse) the daemon; returns the environment to use it."""
        self._state = start(self.state_dir.root, self.region, self.port, self.stop_grace,
                            self.heartbeat_timeout, self.startup_timeout, self.iam,
                            stop_with=os.getpid() if self.stop_with_caller else None)
        return self.env

    def down(self) -> DownReport:
        self._state = None
        return stop(self.state_dir.root, timeout=self.stop_grace + 20)

    def __enter__(self) -> Sandbox:
        self.up()  # a start that fails half way stops what it started (control.start)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = running_state(self.state_dir)
            if self._state is None:
                raise SandboxError(f"the sandbox in {self.state_dir.root} is not running")
        return self._state

    @property
    def env(self) -> dict[str, str]:
        return sandbox_env(self.state)

    @property
    def endpoint_url(self) -> str:
        return str(self.state["endpoint_url"])

    @property
    def role_arn(self) -> str:
        return str(self.state["role_arn"])

    @contextmanager
    def activated(self) -> Iterator[dict[str, str]]:
        """Patch os.environ with :attr:`env` (and drop AWS_PROFILE & co) for the block."""
        saved = dict(os.environ)
        env = self.env
        for name in UNSET_VARS:
            os.environ.pop(name, None)
        os.environ.update(env)
        try:
            yield env
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def client(self, service: str) -> Any:
        import boto3

        endpoint = self.state["ssm_endpoint_url"] if service == "ssm" else self.endpoint_url
        return boto3.client(service, region_name=self.region, endpoint_url=endpoint,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"])

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.endpoint_url}/_sandbox/status")
        return result

    def set_rule_status(self, job: str, rule: str, status: str,
                        details: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.endpoint_url}/_sandbox/rule-status",
                                           {"job": job, "rule": rule, "status": status,
                                            "details": details})
        return result

    def container_dir(self, job: str, host: str = "algo-1", kind: str = "training") -> Path:
        return self.state_dir.jobs_dir / kind / job / host

    def container_log(self, job: str, host: str = "algo-1", kind: str = "training") -> str:
        path = self.container_dir(job, host, kind) / "output.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def endpoint_log(self, name: str) -> str:
        """The output of every container the endpoint ``name`` has had, one after the other."""
        root = self.state_dir.jobs_dir / "endpoint" / name
        logs = sorted(root.glob("*/output.log"), key=lambda p: p.stat().st_mtime)
        return "".join(path.read_text(errors="replace") for path in logs)

    def wait_for_endpoint(self, name: str, timeout: float = 120.0,
                          until: tuple = ("InService", "Failed")) -> dict[str, Any]:
        """Poll DescribeEndpoint (with backoff, against a deadline) until its status is in
        ``until``; returns ``{"EndpointStatus": "NotFound"}`` once the endpoint is gone."""
        sagemaker = self.client("sagemaker")
        deadline, delay = time.monotonic() + timeout, 0.05
        while True:
            try:
                result: dict[str, Any] = sagemaker.describe_endpoint(EndpointName=name)
            except sagemaker.exceptions.ClientError as e:
                if "Could not find endpoint" not in str(e):
                    raise
                result = {"EndpointName": name, "EndpointStatus": "NotFound"}
            if result["EndpointStatus"] in until + ("NotFound",) \
                    or time.monotonic() > deadline:
                return result
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def wait_for_job(self, name: str, kind: str = "training", timeout: float = 120.0,
                     until: tuple = ("Completed", "Failed", "Stopped")) -> dict[str, Any]:
        """Poll Describe*Job (with backoff, against a deadline) until its status is in ``until``."""
        noun = {"training": "TrainingJob", "processing": "ProcessingJob",
                "transform": "TransformJob"}[kind]
        sagemaker = self.client("sagemaker")
        describe = getattr(sagemaker, f"describe_{kind}_job")
        deadline, delay = time.monotonic() + timeout, 0.05
        while True:
            result: dict[str, Any] = describe(**{f"{noun}Name": name})
            if result[f"{noun}Status"] in until or time.monotonic() > deadline:
                return result
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
