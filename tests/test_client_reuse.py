"""Shared connections without AWS: ``SM_SSH_REUSE``, where the masters' sockets live, telling a
live master from a dead or hung one over its socket, and which ssh runs may share one (as
``ssh -G`` reads the user's options). The journey through real masters to a job is in
test_client_sandbox_e2e.py."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from sagemaker_ssh_helper import mux, reuse
from sagemaker_ssh_helper.errors import UsageError
from sagemaker_ssh_helper.sshrun import plan_ssh

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose sockets' paths stay short (pytest's tmp_path may be too long)."""
    path = Path(tempfile.mkdtemp(prefix="m", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("value, seconds", [
    ("", mux.DEFAULT_PERSIST), ("on", mux.DEFAULT_PERSIST), ("60", 60), ("off", None),
    ("no", None), ("0", None), ("FALSE", None)])
def test_reuse_setting(value: str, seconds: object) -> None:
    assert mux.persist_seconds({mux.ENV: value}) == seconds


def test_a_bad_reuse_setting_is_one_line_that_says_what_to_write() -> None:
    with pytest.raises(UsageError, match="expected a number of seconds .* or off"):
        mux.persist_seconds({mux.ENV: "5m"})


def test_sockets_go_to_a_private_directory_whose_paths_fit(short_dir: Path) -> None:
    ssh_dir = short_dir / ".ssh"
    found = mux.control_dir(ssh_dir, environ={})
    assert found == ssh_dir / "sm-ssh" / "cm"
    assert oct(found.stat().st_mode & 0o777) == "0o700"
    # A home too deep for a Unix socket path: the user's runtime directory, else /tmp.
    deep = short_dir / ("d" * 80) / ".ssh"
    runtime = short_dir / "run"
    runtime.mkdir(mode=0o700)
    assert mux.control_dir(deep, environ={"XDG_RUNTIME_DIR": str(runtime)}) == runtime / "sm-ssh"
    assert mux.control_dir(deep, environ={}) == \
        Path(tempfile.gettempdir()) / f"sm-ssh-{os.geteuid()}"
    # ... but never /tmp for the ssh config (ssh would use a socket nobody checked).
    assert mux.control_dir(deep, for_config=True, environ={}) is None


def test_a_symlinked_socket_directory_is_not_used(short_dir: Path) -> None:
    ssh_dir = short_dir / ".ssh"
    (ssh_dir / "sm-ssh").mkdir(parents=True)
    elsewhere = short_dir / "elsewhere"
    elsewhere.mkdir()
    (ssh_dir / "sm-ssh" / "cm").symlink_to(elsewhere)
    assert mux.control_dir(ssh_dir, environ={}) != ssh_dir / "sm-ssh" / "cm"


def test_a_dead_masters_socket_is_removed(short_dir: Path) -> None:
    path = short_dir / "dead"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the file stays, nobody listens: a killed master
    assert path.exists()
    assert mux.probe(path) is None
    assert not path.exists()
    assert mux.probe(short_dir / "never") is None


def test_a_master_that_does_not_answer_is_set_aside_in_time(short_dir: Path) -> None:
    path = short_dir / "hung"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)  # accepts, never answers: a stopped master
    try:
        assert mux.probe(path, timeout=0.3) is None
        assert not path.exists()  # a new master may take the path
    finally:
        server.close()


def test_the_alive_check_speaks_sshs_multiplexing_protocol(short_dir: Path) -> None:
    """A stand-in master answering as PROTOCOL.mux says: hello, then the alive check's PID."""
    path = short_dir / "live"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    seen: List[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(12))
            conn.sendall(b"\0\0\0\x08" + b"\0\0\0\x01" + b"\0\0\0\x04")  # hello, version 4
            request = conn.recv(12)
            seen.append(request)
            conn.sendall(b"\0\0\0\x0c" + b"\x80\0\0\x05" + request[8:12] + b"\0\0\x30\x39")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert mux.probe(path) == 12345
    finally:
        thread.join(5)
        server.close()
    assert seen[0] == b"\0\0\0\x08\0\0\0\x01\0\0\0\x04"
    assert seen[1][4:8] == b"\x10\0\0\x04"  # MUX_C_ALIVE_CHECK


@needs_ssh
@pytest.mark.parametrize("options, reason", [
    ([], None),
    (["-o", "LogLevel=ERROR", "-t"], None),
    (["-L", "8888:localhost:8888"], "forwarding"),
    (["-o", "LocalForward=8888 localhost:8888"], "forwarding"),
    (["-R", "9999:localhost:22"], "forwarding"),
    (["-N"], "no session (-N)"),
    (["-J", "jump.example.com"], "-f or -J"),
    (["-o", "ControlMaster=no"], "the option -o ControlMaster=no"),
    (["-o", "ProxyCommand=nc %h %p"], "the option -o ProxyCommand=nc %h %p"),
])
def test_only_plain_sessions_share_a_connection(options: List[str], reason: object) -> None:
    plan = plan_ssh(options, "job.training.sagemaker")
    assert reuse.solo_reason(options, plan) == reason


def test_a_master_gets_the_connections_options_not_the_sessions() -> None:
    assert reuse.master_options(["-t", "-o", "LogLevel=ERROR", "-p", "2222",
                                 "-o", "ServerAliveInterval=5", "-A"]) == \
        ["-p", "2222", "-o", "ServerAliveInterval=5"]


def test_another_home_key_user_or_account_never_shares_a_master(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sagemaker_ssh_helper.connect import Choice, Context
    from sagemaker_ssh_helper.sshrun import SshPlan

    def key(home: str = "a", user: str = "root", choice: Optional[Choice] = None,
            **env: str) -> str:
        monkeypatch.setenv("HOME", str(tmp_path / home))
        for name in ("SSH_KEY", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return reuse.spec_key(Context(None, "eu-west-1"), "job.training.sagemaker",
                              choice or Choice(), SshPlan(22, (), settings=(("user", user),)))

    first = key()
    assert key() == first
    assert len({first, key("b"), key(SSH_KEY=str(tmp_path / "k")),
                key(AWS_PROFILE="other"), key(AWS_ACCESS_KEY_ID="AKIAOTHER"),
                key(user="ubuntu"), key(choice=Choice(node="algo-2"))}) == 7
