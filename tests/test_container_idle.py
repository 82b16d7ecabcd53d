"""is_last_session_timeout() and is_profiler_issues_found()."""
from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from sagemaker_ssh_helper import idle
from sagemaker_ssh_helper.env import ProcessInfo, iter_processes

JOB_ARN = "arn:aws:sagemaker:eu-west-1:123456789012:training-job/train-42"


class Sessions:
    def __init__(self) -> None:
        self.now = 0.0
        self.count = 0

    def clock(self) -> float:
        return self.now

    def counter(self) -> int:
        return self.count


def test_timeout_counts_from_the_last_session_seen() -> None:
    s = Sessions()
    tracker = idle.SessionIdleTracker(clock=s.clock, counter=s.counter)
    limit = timedelta(minutes=30)
    assert not tracker.is_timeout(limit)          # nothing seen yet: start counting now
    s.now = 29 * 60
    assert not tracker.is_timeout(limit)
    s.now, s.count = 30 * 60 - 1, 1               # a session opens just in time
    assert not tracker.is_timeout(limit)
    s.now, s.count = 50 * 60, 0                   # ...and is gone 20 minutes later
    assert not tracker.is_timeout(limit)
    s.now = 60 * 60 - 2
    assert not tracker.is_timeout(limit)
    s.now = 60 * 60 - 1
    assert tracker.is_timeout(limit)


def test_timeout_takes_a_timedelta() -> None:
    with pytest.raises(TypeError, match="datetime.timedelta"):
        idle.is_last_session_timeout(1800)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, cmdline, expected", [
    ("ssm-session-worker", ["/usr/bin/ssm-session-worker", "sess-1", "i-1"], True),
    ("sshd", ["sshd: root@pts/0"], True),
    ("sshd", ["sshd:", "root@notty"], True),                       # psutil split the title
    ("sshd-session", ["sshd-session: ubuntu@pts/1"], True),        # OpenSSH >= 9.8
    ("sshd", ["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"], False),
    ("sshd", ["/usr/sbin/sshd", "-D"], False),
    ("sshd", ["sshd: root [priv]"], False),                        # not logged in yet
    ("python3", ["python3", "train.py", "user@host"], False),
])
def test_session_processes(name: str, cmdline: list[str], expected: bool) -> None:
    assert idle.is_session_process(ProcessInfo(1, name, cmdline, 0.0)) is expected
    assert idle.count_sessions([ProcessInfo(1, name, cmdline, 0.0)]) == int(expected)


def test_a_running_session_worker_is_counted(tmp_path: Path) -> None:
    worker = tmp_path / "ssm-session-worker"  # longer than the 15 characters Linux keeps
    shutil.copy("/bin/sleep", worker)
    proc = subprocess.Popen([str(worker), "30"])
    try:
        [mine] = [p for p in iter_processes() if p.pid == proc.pid]
        assert idle.is_session_process(mine)
    finally:
        proc.kill()
        proc.wait()


def stubbed_sagemaker(response: dict[str, Any]) -> Any:
    client = boto3.client("sagemaker", region_name="eu-west-1")
    stubber = Stubber(client)
    base = {"TrainingJobName": "train-42", "TrainingJobArn": JOB_ARN,
            "ModelArtifacts": {"S3ModelArtifacts": ""}, "TrainingJobStatus": "InProgress",
            "SecondaryStatus": "Training", "AlgorithmSpecification": {"TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {}, "CreationTime": 0}
    stubber.add_response("describe_training_job", {**base, **response},
                         {"TrainingJobName": "train-42"})
    stubber.activate()
    return client


def rules(*statuses: str) -> list[dict[str, str]]:
    return [{"RuleConfigurationName": f"rule-{i}", "RuleEvaluationStatus": s}
            for i, s in enumerate(statuses)]


@pytest.mark.parametrize("response, expected", [
    ({}, False),
    ({"ProfilerRuleEvaluationStatuses": rules("InProgress", "NoIssuesFound")}, False),
    ({"ProfilerRuleEvaluationStatuses": rules("NoIssuesFound", "IssuesFound")}, True),
    ({"DebugRuleEvaluationStatuses": rules("IssuesFound")}, True),
    ({"DebugRuleEvaluationStatuses": rules("Error", "Stopping")}, False),
])
def test_profiler_issues(response: dict[str, Any], expected: bool) -> None:
    client = stubbed_sagemaker(response)
    environ = {"TRAINING_JOB_ARN": JOB_ARN}
    assert idle.is_profiler_issues_found(environ, sagemaker_client=client) is expected


def test_profiler_issues_outside_a_training_job() -> None:
    with pytest.raises(ValueError, match="only inside a SageMaker training job"):
        idle.is_profiler_issues_found({})
