"""`sm-ssh-deregister-instances` against the SSM stand-in: which instances go, which never do,
how it asks, how it copes with throttling and bad input, and how many API calls it makes."""
from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sagemaker_ssh_helper import deregister_old_instances_from_ssm as dereg

ssm_service = pytest.importorskip("sagemaker_ssh_sandbox.ssm.service")

ACCOUNT = "123456789012"
DAY = 86400.0
CLI = shutil.which("sm-ssh-deregister-instances")


def ssh_tags(name: str, ts: float) -> dict[str, str]:
    return {"SSHResourceName": name, "SSHOwner": "AROAEXAMPLE:alice",
            "SSHResourceArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/{name}",
            "SSHTimestamp": str(int(ts))}


@dataclass
class Fleet:
    """Instance ids by what the command must do with them."""

    to_remove: list[str] = field(default_factory=list)
    to_keep: list[str] = field(default_factory=list)


def age(backend: Any, ids: list[str], days: float, online: bool = False) -> None:
    """Backdate registration (and, unless ``online``, the last ping) by ``days``."""
    now = time.time()
    with backend.lock:
        for instance_id in ids:
            inst = backend.instances[instance_id]
            inst.registered = now - days * DAY - 3600
            inst.last_ping = now if online else now - days * DAY


def add(backend: Any, n: int, tags: Any, status: str, days: float, name: str = "") -> list[str]:
    ids = backend.add_fake_instances(n, tags=tags, ping_status=status)
    age(backend, ids, days, online=status == "Online")
    if name:
        with backend.lock:
            for i, instance_id in enumerate(ids):
                backend.instances[instance_id].name = f"{name}{i}"
    return list(ids)


def populate(backend: Any) -> Fleet:
    fleet = Fleet()
    now = time.time()
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/old-job-"
    # 55 + 2 + 1 stale SSH Helper instances: more than one page of DescribeInstanceInformation
    fleet.to_remove += add(backend, 55, lambda i: ssh_tags(f"old-job-{i}", now - 10 * DAY),
                           "ConnectionLost", 10, name=arn)
    fleet.to_remove += add(backend, 2, lambda i: ssh_tags(f"older-{i}", now - 40 * DAY),
                           "Inactive", 40)
    fleet.to_remove += add(backend, 1, {"SSHTimestamp": str(int(now - 5 * DAY))},
                           "ConnectionLost", 5)
    # SSH Helper instances that stay: offline but recent, or online though registered long ago
    fleet.to_keep += add(backend, 3, lambda i: ssh_tags(f"new-{i}", now - 3600),
                         "ConnectionLost", 0.05)
    fleet.to_keep += add(backend, 3, lambda i: ssh_tags(f"long-job-{i}", now - 30 * DAY),
                         "Online", 30)
    # foreign instances: never touched, however old and offline
    fleet.to_keep += add(backend, 4, None, "ConnectionLost", 90)
    fleet.to_keep += add(backend, 2, {"Name": "build-box", "SSHOwnerX": "x"}, "Inactive", 90)
    return fleet


def deregistered(backend: Any, ids: list[str]) -> list[str]:
    return [i for i in ids if backend.instance(i)["Deregistered"]]


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = ssm_service.start_ssm_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    monkeypatch.delenv("SM_SSH_DEBUG", raising=False)
    yield server
    server.shutdown()


@pytest.fixture
def fleet(ssm: Any) -> Fleet:
    result = populate(ssm.backend)
    ssm.backend.reset_call_counts()
    return result


class Terminal(io.StringIO):
    """A stdin that says it is a terminal; ``on_read`` runs when the answer is read."""

    def __init__(self, answer: str, on_read: Any = None) -> None:
        super().__init__(answer)
        self.on_read = on_read

    def isatty(self) -> bool:
        return True

    def readline(self, *args: Any) -> str:  # type: ignore[override]
        if self.on_read:
            self.on_read()
        return super().readline(*args)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def run_in_process(argv: list[str], stdin: Any = None, sleep: Any = None
                   ) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    args = dereg.build_parser().parse_args(argv)
    code = dereg.run(args, stdin if stdin is not None else io.StringIO(""), out, err,
                     sleep=sleep or Sleeps())
    return code, out.getvalue(), err.getvalue()


def run_cli(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    assert CLI, "sm-ssh-deregister-instances is not installed (pip install -e .)"
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([CLI] + argv, capture_output=True, text=True, timeout=60,
                          env=kwargs.pop("env", dict(os.environ)), **kwargs)


def test_preapproved_removes_only_stale_ssh_helper_instances(ssm: Any, fleet: Fleet) -> None:
    done = run_cli(["--preapproving-deregistration", "--delete-older-than-n-days", "2"])
    assert done.returncode == 0, done.stderr
    backend = ssm.backend
    assert sorted(deregistered(backend, fleet.to_remove)) == sorted(fleet.to_remove)
    assert deregistered(backend, fleet.to_keep) == []
    assert f"Deregistered {len(fleet.to_remove)}, already gone 0, failed 0" in done.stdout
    for instance_id in fleet.to_remove:
        assert instance_id in done.stdout
    assert "training-job/old-job-0" in done.stdout  # the resource, from the instance's Name
    assert done.stderr == ""
    # One filtered scan (61 offline SSH Helper instances = 2 pages), no tag reads, and one
    # deregistration per stale instance: nothing grows with the account's other instances.
    calls = backend.stats()["CallCounts"]
    assert calls == {"DescribeInstanceInformation": 2,
                     "DeregisterManagedInstance": len(fleet.to_remove)}


def test_days_threshold_decides(ssm: Any, fleet: Fleet) -> None:
    code, out, _ = run_in_process(["--preapproving-deregistration",
                                   "--delete-older-than-n-days", "20"])
    assert code == 0
    backend = ssm.backend
    assert sorted(deregistered(backend, fleet.to_remove)) == sorted(fleet.to_remove[55:57])
    code, out, _ = run_in_process(["--preapproving-deregistration",
                                   "--delete-older-than-n-days", "0"])
    assert code == 0
    recent = fleet.to_keep[:3]  # offline for about an hour: 0 days means "any offline"
    assert sorted(deregistered(backend, fleet.to_remove + recent)) == sorted(
        fleet.to_remove + recent)
    assert deregistered(backend, fleet.to_keep[3:]) == []


def test_dry_run_lists_and_changes_nothing(ssm: Any, fleet: Fleet) -> None:
    done = run_cli(["--dry-run", "--delete-older-than-n-days", "2"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "ID", "STATUS", "LAST", "SEEN", "(UTC)", "DAYS",
                                "HOST", "RESOURCE"]
    rows = [line.split()[0] for line in lines[1:-1]]
    assert sorted(rows) == sorted(fleet.to_remove)
    assert sorted(rows[:2]) == sorted(fleet.to_remove[55:57])  # oldest first
    assert lines[-1] == f"Dry run: would deregister {len(fleet.to_remove)} instance(s)."
    assert deregistered(ssm.backend, fleet.to_remove + fleet.to_keep) == []
    assert "DeregisterManagedInstance" not in ssm.backend.stats()["CallCounts"]


def test_refuses_without_a_terminal_or_approval(ssm: Any, fleet: Fleet) -> None:
    done = run_cli(["--delete-older-than-n-days", "2"])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "stdin is not a terminal" in done.stderr
    assert "--preapproving-deregistration" in done.stderr
    assert deregistered(ssm.backend, fleet.to_remove) == []


@pytest.mark.parametrize("answer, code", [("y\n", 0), ("yes\n", 0), ("n\n", 1), ("\n", 1)])
def test_asks_on_a_terminal(ssm: Any, fleet: Fleet, answer: str, code: int) -> None:
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen([str(CLI), "--delete-older-than-n-days", "2"], stdin=secondary,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(secondary)
        os.write(primary, answer.encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(primary)
    assert proc.returncode == code, err
    assert f"Deregister these {len(fleet.to_remove)} instances from SSM? [y/N]" in err
    removed = deregistered(ssm.backend, fleet.to_remove)
    if code == 0:
        assert sorted(removed) == sorted(fleet.to_remove)
    else:
        assert removed == [] and out.splitlines()[-1] == "Nothing deregistered."


def test_throttling_is_retried_with_jittered_backoff(ssm: Any, fleet: Fleet) -> None:
    ssm.backend.inject_fault("DeregisterManagedInstance", "ThrottlingException", 4)
    ssm.backend.inject_fault("DescribeInstanceInformation", "ThrottlingException", 1)
    sleeps = Sleeps()
    code, out, err = run_in_process(["--preapproving-deregistration"], sleep=sleeps)
    assert code == 0, err
    assert sorted(deregistered(ssm.backend, fleet.to_remove)) == sorted(fleet.to_remove)
    # our backoff (botocore retried the listing on its own): equal jitter, growing
    assert len(sleeps.delays) == 4
    for attempt, delay in enumerate(sleeps.delays):
        ceiling = 2.0 ** attempt
        assert ceiling / 2 <= delay <= ceiling
    calls = ssm.backend.stats()["CallCounts"]
    assert calls["DeregisterManagedInstance"] == len(fleet.to_remove) + 4
    assert f"Deregistered {len(fleet.to_remove)}, already gone 0, failed 0 " \
        f"(of {len(fleet.to_remove)}); 4 throttled call(s) retried." in out


def test_backoff_gives_up_after_max_attempts(ssm: Any, fleet: Fleet) -> None:
    ssm.backend.inject_fault("DeregisterManagedInstance", "ThrottlingException",
                             dereg.MAX_ATTEMPTS)
    code, out, err = run_in_process(["--preapproving-deregistration"])
    assert code == 1
    assert err.count("\n") == 1 and "throttled" in err
    assert f"Deregistered {len(fleet.to_remove) - 1}, already gone 0, failed 1" in out


def test_instance_gone_meanwhile_counts_as_done(ssm: Any, fleet: Fleet) -> None:
    victim = fleet.to_remove[0]

    def someone_else_deregisters() -> None:
        ssm.backend.handle("DeregisterManagedInstance", {"InstanceId": victim}, "other")

    code, out, err = run_in_process([], stdin=Terminal("y\n", someone_else_deregisters))
    assert code == 0, err
    assert f"Deregistered {len(fleet.to_remove) - 1}, already gone 1, failed 0" in out
    assert err.startswith("Deregister these")


def test_access_denied_stops_at_once(ssm: Any, fleet: Fleet) -> None:
    ssm.backend.inject_fault("DeregisterManagedInstance", "AccessDeniedException", 1)
    code, out, err = run_in_process(["--preapproving-deregistration"])
    assert code == 1
    assert err.count("\n") == 1 and "access denied" in err and "IAM_SSM_Setup.md" in err
    assert ssm.backend.stats()["CallCounts"]["DeregisterManagedInstance"] == 1
    assert f"failed {len(fleet.to_remove)} (of {len(fleet.to_remove)})" in out


def test_nothing_to_do(ssm: Any) -> None:
    add(ssm.backend, 2, None, "ConnectionLost", 30)  # foreign only
    done = run_cli([])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("No offline SSH Helper instances older than 1 day(s) "
                                   "in us-east-1.")


@pytest.mark.parametrize("argv, needle", [
    (["--delete-older-than-n-days", "-1"], "expected a number of days >= 0"),
    (["--delete-older-than-n-days", "soon"], "expected a number of days >= 0"),
    (["--delete-older-than-n-days", "nan"], "expected a number of days >= 0"),
    (["--preapprove"], "unrecognized arguments"),
    (["extra"], "unrecognized arguments"),
])
def test_bad_arguments(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert dereg.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_aws_setup_errors_are_one_line(ssm: Any) -> None:
    env = dict(os.environ)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        env.pop(name)
    done = run_cli([], env=env)
    assert (done.returncode, done.stderr.count("\n")) == (4, 1)
    assert "no AWS region configured" in done.stderr
    done = run_cli(["--profile", "no-such-profile"])
    assert (done.returncode, done.stderr.count("\n")) == (4, 1)
    assert "no-such-profile" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv, env, needle", [
    (["--region", "us east"], {}, "'us east' is not an AWS region name: pass one like "
                                  "us-east-1 with --region or AWS_REGION"),
    ([], {"AWS_ENDPOINT_URL_SSM": "not a url"}, "Invalid endpoint: not a url: check "
                                                "AWS_ENDPOINT_URL"),
    ([], {"AWS_ENDPOINT_URL_SSM": "http://127.0.0.1:9"}, "cannot reach the AWS endpoint for "
                                                         "ssm:DescribeInstanceInformation"),
])
def test_a_bad_region_or_endpoint_is_one_line(argv: list[str], env: dict[str, str],
                                              needle: str) -> None:
    done = run_cli(["--dry-run", *argv], env=dict(os.environ, **env))
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (4, "", 1), done.stderr
    assert done.stderr.startswith("sm-ssh-deregister-instances: ") and needle in done.stderr


def test_days_parser_accepts_fractions() -> None:
    assert dereg._days("0.5") == 0.5
    assert math.isclose(dereg._days("2"), 2.0)


def test_module_runs_with_python_m(ssm: Any, fleet: Fleet) -> None:
    done = subprocess.run([sys.executable, "-m",
                           "sagemaker_ssh_helper.deregister_old_instances_from_ssm", "--dry-run"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "Dry run: would deregister" in done.stdout
