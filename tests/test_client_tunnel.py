"""``sm-ssh tunnel`` and ``connect -N --keep-alive`` without AWS: what ssh is told, the
backoff, and the usage errors (all before anything is resolved). The tunnel coming back after
drops is tested end to end in test_client_sandbox_e2e.py."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sagemaker_ssh_helper import connect, sm_ssh, tunnel
from sagemaker_ssh_helper.errors import UsageError

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh not installed")


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ssh and a session-manager-plugin on PATH, nothing reachable (no call may be made)."""
    plugin = tmp_path / "bin" / "session-manager-plugin"
    plugin.parent.mkdir()
    plugin.write_text("#!/bin/sh\nexit 1\n")
    plugin.chmod(0o755)
    monkeypatch.setenv("PATH", f"{plugin.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.strip()


@needs_ssh
def test_ssh_says_which_forwards_and_whether_a_command_runs() -> None:
    plan = connect.plan_ssh(["-F", "/dev/null", "-NL", "8888:localhost:80", "-R",
                             "9999:localhost:22", "-D", "1080"], "x")
    assert plan.forwards == 3
    assert tunnel.no_session(plan, ["-NL", "8888:localhost:80"])
    plain = connect.plan_ssh(["-F", "/dev/null"], "x")
    assert plain.forwards == 0 and not tunnel.no_session(plain, [])
    # An ssh too old to print "sessiontype": the flags tell.
    old = connect.SshPlan(22, (), 1)
    assert tunnel.no_session(old, ["-o", "ServerAliveInterval=1", "-gN"])
    assert not tunnel.no_session(old, ["-L", "1:h:N"])  # N here is -L's value
    with pytest.raises(UsageError, match="ssh -f cannot be watched"):
        tunnel.not_in_background(old, ["-NfL", "1:h:2"])
    tunnel.not_in_background(old, ["-L", "1:f:2", "-N"])


def test_backoff_grows_to_a_cap_with_jitter() -> None:
    low = list(itertools.islice(tunnel.backoff_delays(lambda: 0.0), 9))
    assert low == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 15.0]
    high = list(itertools.islice(tunnel.backoff_delays(lambda: 1.0), 7))
    assert high == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])


@needs_ssh
def test_keep_alive_options_win_over_ssh_config_but_not_over_the_user(tmp_path: Path) -> None:
    """ssh -G with an ssh_config that multiplexes and keeps idle sessions for minutes: ours
    win over the file (a dead session noticed in 15-20 s, no ControlMaster the loop cannot
    watch); the user's own -o options win over ours."""
    config = tmp_path / "config"
    config.write_text("Host *\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n"
                      "  ControlPersist 10m\n  ServerAliveInterval 60\n")

    def resolved(*options: str) -> dict[str, str]:
        done = subprocess.run(["ssh", "-G", "-F", str(config), *options, "x"],
                              capture_output=True, text=True, check=True)
        return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)

    assert "controlpath" in resolved() and resolved()["serveraliveinterval"] == "60"
    ours = resolved(*tunnel.KEEP_ALIVE_OPTIONS)
    assert int(ours["serveraliveinterval"]) * int(ours["serveralivecountmax"]) <= 20
    assert ours["exitonforwardfailure"] == "yes" and "controlpath" not in ours
    users = resolved("-o", "ServerAliveInterval=30", *tunnel.KEEP_ALIVE_OPTIONS)
    assert users["serveraliveinterval"] == "30"


@needs_ssh
@pytest.mark.parametrize("argv, needle", [
    (["tunnel"], "tunnel needs a target"),
    (["tunnel", "job.training.sagemaker"], "a tunnel needs a forward: add -L"),
    (["tunnel", "job.training.sagemaker", "-L", "8080:localhost:8080", "hostname"],
     "a tunnel runs no remote command, got 'hostname'"),
    (["tunnel", "job.training.sagemaker", "-L", "8080:localhost:8080", "--", "hostname"],
     "'--' and a remote command only apply to connect and exec, not tunnel"),
    (["connect", "job.training.sagemaker", "--keep-alive", "-L", "8080:localhost:8080"],
     "--keep-alive re-establishes forwards, not commands: use it with -N"),
    (["connect", "--keep-alive", "job.training.sagemaker", "-N", "-L", "8080:localhost:8080",
      "--", "hostname"], "--keep-alive re-establishes forwards, not commands"),
    (["tunnel", "job.training.sagemaker", "-L", "99999:localhost:8080"], "ssh rejects"),
    (["tunnel", "job.training.sagemaker", "-fNL", "8080:localhost:8080"], "ssh -f cannot be"),
    (["connect", "job.training.sagemaker", "--keep-alive", "-N", "-o",
      "ForkAfterAuthentication=yes", "-L", "8080:localhost:8080"], "ssh -f cannot be watched"),
])
def test_usage_errors_are_one_line_before_any_call(tools: None, argv: list[str], needle: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert sm_ssh.main(argv) == 2
    assert needle in one_line(capsys)
