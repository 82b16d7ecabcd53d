"""Helpers a training script polls to decide when to stop waiting for the user.

``is_last_session_timeout(timedelta(minutes=30))`` becomes true once no SSM session and no SSH
session has been open for that long (counted from the first call when none was ever seen), e.g.::

    while not is_last_session_timeout(timedelta(minutes=30)):
        time.sleep(60)

``is_profiler_issues_found()`` asks SageMaker whether Debugger/Profiler rules of the current
training job reported issues, e.g. to keep a job alive for inspection when GPUs sit idle.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Callable

from sagemaker_ssh_helper.aws import parse_arn
from sagemaker_ssh_helper.env import ProcessInfo, iter_processes

SESSION_WORKER = "ssm-session-worker"
SSHD_SESSION = "sshd-session"  # OpenSSH >= 9.8 runs each connection in its own binary


def is_session_process(proc: ProcessInfo) -> bool:
    """An SSM session worker, or an sshd process serving a logged-in user (``sshd: u@pts/0``)."""
    if proc.name == SESSION_WORKER:
        return True
    title = " ".join(proc.cmdline)  # sshd rewrites its argv into a title
    for prefix in ("sshd: ", f"{SSHD_SESSION}: "):
        if title.startswith(prefix) and "@" in title:
            return True
    return False


def count_sessions(processes: Iterable[ProcessInfo] | None = None) -> int:
    return sum(1 for p in (iter_processes() if processes is None else processes)
               if is_session_process(p))


class SessionIdleTracker:
    """Remembers when a session was last seen; ``clock`` and ``counter`` are injectable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 counter: Callable[[], int] = count_sessions) -> None:
        self._clock = clock
        self._counter = counter
        self._last_seen: float | None = None
        self._lock = threading.Lock()

    def is_timeout(self, time_delta: timedelta) -> bool:
        with self._lock:
            now = self._clock()
            if self._counter() > 0 or self._last_seen is None:
                self._last_seen = now
            return now - self._last_seen >= time_delta.total_seconds()


_tracker = SessionIdleTracker()


def is_last_session_timeout(time_delta: timedelta) -> bool:
    """True once no SSM/SSH session has been open for ``time_delta``.

    Sessions are sampled when this is called, and the period counts from the first call if no
    session was seen yet; call it at least as often as the shortest session worth counting.
    """
    if not isinstance(time_delta, timedelta):
        raise TypeError("is_last_session_timeout() takes a datetime.timedelta, "
                        f"not {type(time_delta).__name__}")
    return _tracker.is_timeout(time_delta)


def is_profiler_issues_found(environ: Mapping[str, str] | None = None,
                             sagemaker_client: object = None) -> bool:
    """True if a Debugger or Profiler rule of this training job has status ``IssuesFound``.

    Raises ``ValueError`` outside a SageMaker training job (no ``TRAINING_JOB_ARN``).
    """
    environ = os.environ if environ is None else environ
    arn_text = environ.get("TRAINING_JOB_ARN")
    if not arn_text:
        raise ValueError("is_profiler_issues_found() works only inside a SageMaker training job "
                         "(TRAINING_JOB_ARN is not set)")
    arn = parse_arn(arn_text)
    name = environ.get("TRAINING_JOB_NAME") or arn.resource_id
    client = sagemaker_client
    if client is None:
        import boto3

        client = boto3.client("sagemaker", region_name=arn.region or None)
    job = client.describe_training_job(TrainingJobName=name)  # type: ignore[attr-defined]
    statuses = (job.get("ProfilerRuleEvaluationStatuses") or []) + \
        (job.get("DebugRuleEvaluationStatuses") or [])
    return any(s.get("RuleEvaluationStatus") == "IssuesFound" for s in statuses)
