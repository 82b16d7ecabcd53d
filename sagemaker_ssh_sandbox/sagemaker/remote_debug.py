"""SageMaker's remote debugging of training jobs, as the sandbox emulates it.

* ``RemoteDebugConfig`` ({"EnableRemoteDebug": bool}) is taken by CreateTrainingJob and shown
  by DescribeTrainingJob; UpdateTrainingJob changes it only while the job's secondary status is
  Downloading or Training (ValidationException otherwise), as AWS documents.
* Every training container runs SageMaker's own SSM agent (the agent stand-in as a platform
  sidecar, its output in ``AGENT_LOG`` inside the container, not in the job's log) under the
  target ``sagemaker-training-job:<job>_<host>``. It is no managed instance: it is not listed
  and takes no commands (SendCommand refuses the ID); it takes sessions only while the job has
  remote debugging on and is Training (``TargetNotConnected`` otherwise).
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Callable, Dict, Optional, Tuple

TARGET_PREFIX = "sagemaker-training-job:"
AGENT_STATE_DIR = "/var/lib/amazon/ssm-sagemaker"
AGENT_LOG = "/var/log/amazon/ssm/sagemaker-remote-debug.log"
UPDATABLE_IN = ("Downloading", "Training")


class ConfigError(ValueError):
    """A RemoteDebugConfig AWS would refuse (ValidationException)."""


def check_config(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or set(value) - {"EnableRemoteDebug"} or \
            not isinstance(value.get("EnableRemoteDebug", False), bool):
        raise ConfigError("1 validation error detected: Value at 'remoteDebugConfig' failed to "
                          "satisfy constraint: it takes EnableRemoteDebug (a boolean) only")


def enabled(request: Dict[str, Any]) -> bool:
    return bool(dict(request.get("RemoteDebugConfig") or {}).get("EnableRemoteDebug"))


def target(job_name: str, host: str) -> str:
    return f"{TARGET_PREFIX}{job_name}_{host}"


def parse_target(text: str) -> Optional[Tuple[str, str]]:
    if not text.startswith(TARGET_PREFIX) or "_" not in text:
        return None
    job, _, host = text[len(TARGET_PREFIX):].rpartition("_")
    return (job, host) if job and host else None


def agent_sidecar(target_id: str, region: str, env: Dict[str, str]) -> Dict[str, Any]:
    """The agent stand-in, registered under ``target_id`` (SageMaker registers its agent;
    no activation is involved)."""
    registration = json.dumps({"ManagedInstanceID": target_id, "Region": region})
    script = (f"mkdir -p {AGENT_STATE_DIR} && umask 077 && "
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

    def sidecar(self, job: Any, host: str, region: str, env: Dict[str, str]) -> Dict[str, Any]:
        target_id = target(job.name, host)
        self.backend.register_sagemaker_target(target_id, host)
        return agent_sidecar(target_id, region, env)

    def refusal(self, target_id: str) -> Optional[str]:
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
