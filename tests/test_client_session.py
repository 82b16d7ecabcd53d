"""session.py against the SSM stand-in, with a recording stand-in for the plugin binary."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagemaker_ssh_helper import session
from sagemaker_ssh_helper.errors import SSHHelperError

ssm_service = pytest.importorskip("sagemaker_ssh_sandbox.ssm.service")

RECORDING_PLUGIN = """#!/usr/bin/env bash
set -euo pipefail
if [ "$1" = --version ]; then echo run >> "$RECORD_DIR/version-runs"; echo 1.2.707.0; exit; fi
printf '%s\\n' "$@" > "$RECORD_DIR/argv"
printf '%s' "${AWS_SSM_START_SESSION_RESPONSE:-}" > "$RECORD_DIR/response"
exit "${PLUGIN_EXIT:-0}"
"""


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    server = ssm_service.start_ssm_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "session-manager-plugin"
    plugin.write_text(RECORDING_PLUGIN)
    plugin.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("RECORD_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # the plugin's version is remembered in ~/.ssh
    yield server
    server.shutdown()


def test_plugin_gets_the_response_in_the_environment_only(ssm: Any, tmp_path: Path) -> None:
    mi = ssm.backend.add_fake_instances(1)[0]
    before = signal.getsignal(signal.SIGINT)
    assert session.start_ssh_session(mi, 2222, region="us-east-1") == 0
    assert signal.getsignal(signal.SIGINT) is before
    argv = (tmp_path / "argv").read_text().splitlines()
    response = json.loads((tmp_path / "response").read_text())
    assert argv[:4] == ["AWS_SSM_START_SESSION_RESPONSE", "us-east-1", "StartSession", ""]
    assert json.loads(argv[4]) == {"Target": mi, "DocumentName": "AWS-StartSSHSession",
                                   "Parameters": {"portNumber": ["2222"]}}
    assert argv[5] == ssm.url
    assert set(response) == {"SessionId", "TokenValue", "StreamUrl"}
    assert response["TokenValue"] not in "\n".join(argv)
    assert ssm.backend.stats()["CallCounts"].get("TerminateSession") is None


def test_failed_plugin_terminates_the_session(ssm: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    mi = ssm.backend.add_fake_instances(1)[0]
    monkeypatch.setenv("PLUGIN_EXIT", "5")
    assert session.start_ssh_session(mi, region="us-east-1", profile="") == 5
    assert ssm.backend.stats()["CallCounts"]["TerminateSession"] == 1


def test_the_plugin_version_is_asked_once_per_binary(ssm: Any, tmp_path: Path) -> None:
    """Checked before the plugin's first run and remembered (path, size, mtime) under
    ~/.ssh/sm-ssh: the next session spawns no ``--version``; a changed binary is asked again."""
    mi = ssm.backend.add_fake_instances(1)[0]
    runs = tmp_path / "version-runs"
    assert session.start_ssh_session(mi, region="us-east-1") == 0
    assert runs.read_text() == "run\n"
    assert session.start_ssh_session(mi, region="us-east-1") == 0
    assert runs.read_text() == "run\n"
    assert (tmp_path / "argv").read_text().splitlines()[0] == session.RESPONSE_ENV
    cache = tmp_path / ".ssh" / "sm-ssh" / session.PLUGIN_CACHE
    assert json.loads(cache.read_text())[str(tmp_path / "bin" / "session-manager-plugin")][
        "version"] == "1.2.707.0"
    plugin = tmp_path / "bin" / "session-manager-plugin"
    plugin.write_text(RECORDING_PLUGIN.replace("1.2.707.0", "1.2.779.0") + "\n")  # an update
    assert session.start_ssh_session(mi, region="us-east-1") == 0
    assert runs.read_text() == "run\nrun\n"


@pytest.mark.parametrize("version", ["1.2.497.0", "1.1.61.0", "unknown"])
def test_a_plugin_too_old_for_the_env_var_gets_the_response_as_argument(
        ssm: Any, tmp_path: Path, version: str) -> None:
    """As aws-cli: a plugin not newer than 1.2.497.0 (or of unknown version) reads the
    StartSession response from its first argument, not from the env var."""
    mi = ssm.backend.add_fake_instances(1)[0]
    plugin = tmp_path / "bin" / "session-manager-plugin"
    plugin.write_text(RECORDING_PLUGIN.replace("1.2.707.0", version))
    assert session.start_ssh_session(mi, 2222, region="us-east-1") == 0
    argv = (tmp_path / "argv").read_text().splitlines()
    assert set(json.loads(argv[0])) == {"SessionId", "TokenValue", "StreamUrl"}
    assert argv[1:4] == ["us-east-1", "StartSession", ""]
    assert json.loads(argv[4])["Parameters"] == {"portNumber": ["2222"]}


def test_missing_plugin_starts_no_session(ssm: Any, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    mi = ssm.backend.add_fake_instances(1)[0]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(session.PluginMissing, match="session-manager-plugin not found"):
        session.start_ssh_session(mi, region="us-east-1")
    assert "StartSession" not in ssm.backend.stats()["CallCounts"]


def test_offline_target_is_one_line(ssm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    mi = ssm.backend.add_fake_instances(1, ping_status="ConnectionLost")[0]
    with pytest.raises(SSHHelperError, match="not connected to SSM"):
        session.start_ssh_session(mi, region="us-east-1")
    assert session.main([mi, "--region", "us-east-1"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "ConnectionLost" in err


def test_denied_names_the_action(ssm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    mi = ssm.backend.add_fake_instances(1)[0]
    ssm.backend.inject_fault("StartSession", "AccessDeniedException", 1)
    assert session.main([mi]) == 4
    assert "access denied for ssm:StartSession" in capsys.readouterr().err


SLEEPING_PLUGIN = """#!/usr/bin/env bash
[ "$1" = --version ] && { echo 1.2.707.0; exit; }
echo started > "$RECORD_DIR/started"
exec sleep 60
"""


def test_hangup_from_ssh_reaches_the_plugin_and_closes_the_session(
        ssm: Any, tmp_path: Path) -> None:
    """ssh sends SIGHUP to its ProxyCommand on exit: the plugin must go, the session too."""
    plugin = tmp_path / "bin" / "session-manager-plugin"
    plugin.write_text(SLEEPING_PLUGIN)
    mi = ssm.backend.add_fake_instances(1)[0]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "sagemaker_ssh_helper.session", mi,
                             "--region", "us-east-1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0 and out == b""
    assert ssm.backend.stats()["CallCounts"]["TerminateSession"] == 1
