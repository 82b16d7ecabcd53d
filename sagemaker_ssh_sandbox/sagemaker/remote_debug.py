"""SageMaker's remote debugging of training jobs, as the sandbox emulates it.

* ``RemoteDebugConfig`` ({"EnableRemoteDebug": bool}) is taken by CreateTrainingJob and shown
  by DescribeTrainingJob; UpdateTrainingJob changes it only while the job's secondary status is
  Downloading or Training (ValidationException otherwise), as AWS documents.
* A training container with remote debugging on runs SageMaker's own SSM agent (the agent
  stand-in as a platform sidecar, its output in ``AGENT_LOG`` inside the container, not in the
  job's log) under the target ``sagemaker-training-job:<job>_<host>``. In a job that starts
  with it off, the sidecar is a shell blocked on a FIFO (no CPU, no agent); turning remote
  debugging on with UpdateTrainingJob writes to the FIFO and the agent starts then. The target
  is no managed instance: it is not listed and takes no commands (SendCommand refuses the ID);
  it takes sessions only while the job has remote debugging on and is Training
  (``TargetNotConnected`` otherwise).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any, Callable

TARGET_PREFIX = "sagemaker-training-job:"
AGENT_STATE_DIR = "/var/lib/amazon/ssm-sagemaker"
AGENT_LOG = "/var/log/amazon/ssm/sagemaker-remote-debug.log"
UPDATABLE_IN = ("Downloading", "Training")
CONTROL_DIR = "/run/sagemaker-remote-debug"  # in the container; bound from the host
CONTROL_HOST_DIR = "remote-debug"  # under the container's root on the host
START_FIFO = "start"
logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A RemoteDebugConfig AWS would refuse (ValidationException)."""


def check_config(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or set(value) - {"EnableRemoteDebug"} or \
            not isinstance(value.get("EnableRemoteDebug", False), bool):
        raise ConfigError("1 validation error detected: Value at 'remoteDebugConfig' failed to "
                          "satisfy constraint: it takes EnableRemoteDebug (a boolean) only")


def enabled(request: dict[str, Any]) -> bool:
    return bool(dict(request.get("RemoteDebugConfig") or {}).get("EnableRemoteDebug"))


def target(job_name: str, host: str) -> str:
    return f"{TARGET_PREFIX}{job_name}_{host}"


def parse_target(text: str) -> tuple[str, str] | None:
    if not text.startswith(TARGET_PREFIX) or "_" not in text:
        return None
    job, _, host = text[len(TARGET_PREFIX):].rpartition("_")
    return (job, host) if job and host else None


def agent_sidecar(target_id: str, region: str, env: dict[str, str],
                  wait_for_start: bool = False) -> dict[str, Any]:
    """The agent stand-in, registered under ``target_id`` (SageMaker registers its agent;
    no activation is involved); with ``wait_for_start``, only once the start FIFO is written."""
    registration = json.dumps({"ManagedInstanceID": target_id, "Region": region})
    wait = f"read _ < {CONTROL_DIR}/{START_FIFO} && " if wait_for_start else ""
    script = (f"{wait}mkdir -p {AGENT_STATE_DIR} && umask 077 && "
              f"printf '%s' {shlex.quote(registration)} > {AGENT_STATE_DIR}/registration && "
              "exec amazon-ssm-agent")
    keep = ("PATH", "LANG", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_SSM", "SM_SSH_PYTHON")
    agent_env = {k: env[k] for k in keep if k in env}
    agent_env["SSM_AGENT_STATE_DIR"] = AGENT_STATE_DIR
    return {"argv": ["/bin/sh", "-c", script], "env": agent_env, "log": AGENT_LOG}


class RemoteDebug:
    """Joins the job records (``job_lookup``) and the SSM stand-in (``backend``)."""

    def __init__(self, backend: Any, job_lookup: Callable[[str], Any]) -> None:
        self.backend = backend
        self.job_lookup = job_lookup  # training job name -> Job (raises if none)

    def sidecar(self, job: Any, host: str, region: str, env: dict[str, str],
                container_root: Path) -> tuple[dict[str, Any], tuple[str, str]]:
        """The agent sidecar of one container and the bind mount of its start FIFO."""
        target_id = target(job.name, host)
        self.backend.register_sagemaker_target(target_id, host)
        control = container_root / CONTROL_HOST_DIR
        control.mkdir(parents=True, exist_ok=True)
        fifo = control / START_FIFO
        if not fifo.exists():
            os.mkfifo(fifo, 0o600)
        return (agent_sidecar(target_id, region, env, wait_for_start=not enabled(job.request)),
                (str(control), CONTROL_DIR))

    def turned_on(self, job: Any) -> None:
        """UpdateTrainingJob turned remote debugging on: start the agents still waiting."""
        for container in list(job.containers):
            fifo = Path(container.config.root) / CONTROL_HOST_DIR / START_FIFO
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:  # ENXIO: nobody waits (the agent runs already)
                if e.errno not in (errno.ENXIO, errno.ENOENT):
                    logger.warning("cannot start the agent of %s: %s", container.name, e)
                continue
            try:
                os.write(fd, b"start\n")
            finally:
                os.close(fd)

    def refusal(self, target_id: str) -> str | None:
        """Why SageMaker opens no session to ``target_id`` now; None when it does."""
        parsed = parse_target(target_id)
        if parsed is None:
            return "not a training job target"
        try:
            job = self.job_lookup(parsed[0])
        except Exception:
            return "no such training job"
        with job.lock:
            if not enabled(job.request):
                return "remote debugging is off"
            if job.status != "InProgress" or job.secondary != "Training":
                return f"the job is {job.status}/{job.secondary}"
            hosts = {c.config.hostname for c in job.containers}
        return None if parsed[1] in hosts else f"the job has no host {parsed[1]}"
