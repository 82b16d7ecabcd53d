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
from collections.abc import Iterator
from pathlib import Path

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
    seen: list[bytes] = []

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
def test_only_plain_sessions_share_a_connection(options: list[str], reason: object) -> None:
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

    def key(home: str = "a", user: str = "root", choice: Choice | None = None,
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


class _FakeFlow:
    """reuse._connect's collaborators: sessions, masters (alive once started) and rides."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
        from types import SimpleNamespace

        from sagemaker_ssh_helper import session

        self.lock = threading.Lock()
        self.sessions: list[str] = []
        self.terminated: list[str] = []
        self.started: list[Path] = []
        self.rides: list[Path] = []
        self.alive: set = set()
        self.master_entered = threading.Event()
        self.master_release = threading.Event()
        self.master_release.set()
        self.master_error: BaseException | None = None

        def open_session(ssm: object, instance_id: str, port: int, profile: object) -> object:
            with self.lock:
                sid = f"s-{len(self.sessions)}"
                self.sessions.append(sid)
            return SimpleNamespace(session_id=sid, response_env="{}", plugin_argv=["plugin"])

        def start_master(prepared: object, user_options: object, path: Path, persist: int,
                         proxy_cmd: str, env: object) -> tuple:
            self.started.append(path)
            self.master_entered.set()
            assert self.master_release.wait(10)
            if self.master_error is not None:
                raise self.master_error
            self.alive.add(path)
            return 0, ""

        def ride(ctx: object, route: object, path: Path, *args: object) -> int:
            self.rides.append(path)
            return 0

        monkeypatch.setattr(session, "open_session", open_session)
        monkeypatch.setattr(session, "terminate_session",
                            lambda ssm, sid: self.terminated.append(sid))
        monkeypatch.setattr(reuse, "_start_master", start_master)
        monkeypatch.setattr(reuse, "_ride", ride)
        monkeypatch.setattr(reuse, "_needs_terminal", lambda prepared: False)
        monkeypatch.setattr(reuse, "write_route", lambda key, route: None)
        monkeypatch.setattr(reuse, "_socket", lambda key, instance_id, create=True:
                            directory / mux.name(key, instance_id))
        monkeypatch.setattr(mux, "probe", lambda path: 1 if path in self.alive else None)
        self.ctx = SimpleNamespace(manager=lambda: SimpleNamespace(ssm=None), profile=None)

    def connect(self) -> int:
        from types import SimpleNamespace

        from sagemaker_ssh_helper import keys
        from sagemaker_ssh_helper.connect import Prepared

        mi = "mi-0123456789abcdef0"
        auth = keys.Authorized(Path("key"), Path("known_hosts"), "alias", pushed=True)
        prepared = Prepared(mi, "job.training.sagemaker", "root", auth)
        route = reuse.Route(mi, prepared.destination, "root", "alias", "eu-west-1", 0.0)
        return reuse._connect(self.ctx, prepared, "k" * 20, route, [], ["true"],  # type: ignore
                              SimpleNamespace(port=22), 60)  # type: ignore[arg-type]


def test_two_connects_at_once_start_one_master_the_second_rides_it(
        monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    flow = _FakeFlow(monkeypatch, short_dir)
    flow.master_release.clear()
    codes: list[int] = []
    first = threading.Thread(target=lambda: codes.append(flow.connect()))
    first.start()
    assert flow.master_entered.wait(10)  # the first is starting the master ...
    second = threading.Thread(target=lambda: codes.append(flow.connect()))
    second.start()
    second.join(0.5)  # ... while the second one comes: it waits for it
    flow.master_release.set()
    first.join(10)
    second.join(10)
    assert codes == [0, 0]
    assert len(flow.started) == 1, "a second master on the same ControlPath"
    assert flow.rides == [flow.started[0]] * 2
    # the second waited for the master before any session: none of its own, none wasted
    assert (flow.sessions, flow.terminated) == (["s-0"], [])


def test_a_master_start_that_fails_midway_frees_its_session(
        monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    flow = _FakeFlow(monkeypatch, short_dir)
    flow.master_error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        flow.connect()
    assert flow.terminated == ["s-0"]
    flow.master_error = None
    assert flow.connect() == 0  # the lock is free again
    assert flow.terminated == ["s-0"]
