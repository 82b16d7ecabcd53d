"""Client pieces that need no AWS: argv building, CLI parsing and errors, keys, known_hosts,
and the authorized_keys merge script (run for real with sh on temporary files)."""
from __future__ import annotations

import dataclasses
import io
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sagemaker_ssh_helper import connect, fqdn, keys, proxy, session, sm_local, sm_ssh
from sagemaker_ssh_helper.errors import ResolutionError, UsageError
from sagemaker_ssh_helper.manager import ManagedInstance, matches, newest_first

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                      reason="ssh-keygen not installed")


# -- the ssh command line ----------------------------------------------------------------------
def test_proxy_command_quotes_for_sh_and_escapes_percent() -> None:
    cmd = proxy.proxy_command("mi-0123456789abcdef0", "eu-west-1", profile="my 100%",
                              python="/opt/py thon/bin/python3")
    assert cmd == ("'/opt/py thon/bin/python3' -m sagemaker_ssh_helper.session "
                   "mi-0123456789abcdef0 --port %p --region eu-west-1 --profile 'my 100%%'")
    # After ssh expands %p and %%, /bin/sh sees exactly our argv.
    expanded = cmd.replace("%p", "2222").replace("%%", "%")
    assert shlex.split(expanded) == ["/opt/py thon/bin/python3", "-m",
                                     "sagemaker_ssh_helper.session", "mi-0123456789abcdef0",
                                     "--port", "2222", "--region", "eu-west-1",
                                     "--profile", "my 100%"]


def test_proxy_command_without_profile_uses_this_interpreter() -> None:
    cmd = proxy.proxy_command("mi-1", "us-east-1")
    assert cmd == (f"{shlex.quote(sys.executable)} -m sagemaker_ssh_helper.session mi-1 "
                   "--port %p --region us-east-1")


def test_connect_argv_is_complete_and_user_options_come_first(tmp_path: Path) -> None:
    """ssh keeps the FIRST value of an option: the user's -o/-l/-i go before ours."""
    auth = keys.Authorized(tmp_path / "k 1", tmp_path / "known_hosts", "job.training.sagemaker")
    ctx = connect.Context(profile=None, region="us-east-1")
    prepared = connect.Prepared("mi-0123456789abcdef0", "job.training.sagemaker", "root", auth)
    user = ["-o", "StrictHostKeyChecking=no", "-l", "ubuntu", "-L", "8080:localhost:80",
            "-p", "2222"]
    argv = connect.ssh_argv(ctx, prepared, user, ["echo", "hi"], tmp_path / "ssh.log")
    assert argv == [
        shutil.which("ssh"),
        "-o", "StrictHostKeyChecking=no", "-l", "ubuntu", "-L", "8080:localhost:80",
        "-p", "2222",
        "-E", f"{tmp_path}/ssh.log",
        "-o", f'IdentityFile="{tmp_path}/k 1"',
        "-o", "IdentitiesOnly=yes",
        "-o", "User=root",
        "-o", "HostKeyAlias=job.training.sagemaker",
        "-o", f"UserKnownHostsFile={tmp_path}/known_hosts",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "ProxyCommand=" + proxy.proxy_command("mi-0123456789abcdef0", "us-east-1"),
        "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "job.training.sagemaker",
        "--", "echo", "hi",
    ]
    if shutil.which("ssh") is None:
        return
    # What ssh makes of it: the user's values win over ours.
    shown = subprocess.run(["ssh", "-G", "-F", "none", *argv[1:-3]], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert {"stricthostkeychecking false", "user ubuntu", "port 2222"} <= set(shown)
    assert connect.ssh_port(user, "job.training.sagemaker") == 2222
    assert connect.ssh_port(["-oPort=2200"], "job.training.sagemaker") == 2200
    assert connect.ssh_port([], "job.training.sagemaker") == 22


def test_plugin_as_proxy_command_survives_sh_and_ssh() -> None:
    argv = session.plugin_argv("/opt/sm plugin/session-manager-plugin", "us-east-1", None,
                               {"Target": "mi-1", "Parameters": {"portNumber": ["22"]}},
                               "http://127.0.0.1:5%/")
    command = proxy.shell_command(argv)
    assert shlex.split(command.replace("%%", "%")) == argv


def test_instance_ids_and_names_that_look_like_them() -> None:
    assert connect.is_instance_id("mi-0123456789abcdef0")
    assert not connect.is_instance_id("mi-job.training.sagemaker")
    with pytest.raises(UsageError, match="is not a managed instance ID"):
        connect.check_instance_id("mi-xyz")


def test_users_per_kind() -> None:
    assert connect.user_for(fqdn.parse_resource("default.studio.sagemaker")) == "sagemaker-user"
    assert connect.user_for(fqdn.parse_resource("Job.training.sagemaker")) == "root"


@pytest.mark.parametrize("args, options, command", [
    (["-A", "hostname"], ["-A"], ["hostname"]),
    (["-L", "1:h:2", "-p2222", "-N"], ["-L", "1:h:2", "-p2222", "-N"], []),
    (["-vAL", "1:h:2", "ls", "-l", "--node", "x"], ["-vAL", "1:h:2"], ["ls", "-l", "--node", "x"]),
    (["-o", "User=me", "--", "-weird"], ["-o", "User=me"], ["-weird"]),
    (["-Nv", "python", "train.py"], ["-Nv"], ["python", "train.py"]),
])
def test_ssh_args_split_like_ssh(args: list[str], options: list[str],
                                 command: list[str]) -> None:
    assert connect.split_connect_args(args, connect.Choice())[:2] == (options, command)


def test_ssh_options_accepted_by_real_ssh(tmp_path: Path) -> None:
    """``ssh -G`` parses our options without connecting: the list is valid OpenSSH syntax."""
    if shutil.which("ssh") is None:
        pytest.skip("ssh not installed")
    options = proxy.ssh_options(identity_file=tmp_path / "my key", known_hosts=tmp_path / "kh",
                                host_key_alias="job.training.sagemaker", user="root",
                                proxy_cmd=proxy.proxy_command("mi-1", "us-east-1"))
    done = subprocess.run(["ssh", "-G", "-F", "none", *options, "-p", "2222",
                           "job.training.sagemaker"], capture_output=True, text=True, check=True)
    config = done.stdout.lower()
    assert f"identityfile {tmp_path}/my key".lower() in config
    assert "stricthostkeychecking true" in config
    assert "hostkeyalias job.training.sagemaker" in config
    assert "sagemaker_ssh_helper.session mi-1 --port %p --region us-east-1" in config
    assert "port 2222" in config.splitlines()


# -- command-line parsing and one-line errors ----------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["connect", "foo"], "malformed name 'foo'"),
    (["connect", "training.sagemaker"], "names a list"),
    (["connect"], "connect needs a target"),
    (["connect", "a.training.sagemaker", "--index", "1", "--node", "x"], "either --index"),
    (["connect", "a.training.sagemaker", "--index", "one"], "--index needs a number"),
    (["list", "x.bogus.sagemaker"], "unknown kind"),
    (["start-proxy", "a.training.sagemaker", "--", "ls"], "only apply to connect"),
    (["frobnicate"], "invalid choice"),
    (["connect", "--wait", "-5", "a.training.sagemaker"],
     "argument --wait: expected a number of seconds >= 0, got '-5'"),
    (["connect", "a.training.sagemaker", "--wait", "nan"],
     "--wait: expected a number of seconds >= 0, got 'nan'"),
    (["connect", "a.training.sagemaker", "--wait=inf", "--", "true"],
     "--wait: expected a number of seconds >= 0, got 'inf'"),
    (["stop-waiting", "a.training.sagemaker", "--wait", "-1"], "expected a number of seconds"),
    (["list", "--days", "-1"], "argument --days: expected a whole number of days (>= 0), "
                               "got '-1'"),
    (["start-proxy", "a.training.sagemaker", "--port", "70000"],
     "argument -p/--port: expected a port number (1..65535), got '70000'"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], needle: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert sm_ssh.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sm-ssh: ") and needle in err
    assert "Traceback" not in err


def test_split_helpers() -> None:
    assert sm_ssh.split_command(["-N", "--", "ls", "--", "-l"]) == (["-N"], ["ls", "--", "-l"])
    assert sm_ssh.split_sandbox(["--region", "x", "-v", "sandbox", "up", "-h"]) == (
        ["--region", "x", "-v"], ["up", "-h"])
    assert sm_ssh.split_sandbox(["connect", "sandbox.training.sagemaker"]) is None


def test_choice_options_after_the_fqdn_are_ours() -> None:
    args = sm_ssh.build_parser().parse_args(
        ["connect", "j.training.sagemaker", "-A", "--node", "algo-2", "--wait=5", "-p", "22"])
    choice = connect.Choice(args.index, args.node, args.wait)
    extra = (dataclasses.replace(sm_local.LOCAL_PORT, default=11022), sm_local.SSH_ONLY)
    options, command, ours = connect.split_connect_args(
        [*args.ssh_args, "--ssh-only", "--local-port=7"], choice, extra)
    assert (options, command) == (["-A", "-p", "22"], [])
    assert (choice.node, choice.wait, ours.number("--local-port"), ours.flag("--ssh-only")) == (
        "algo-2", 5.0, 7, True)
    _, _, defaults = connect.split_connect_args(["-A"], connect.Choice(), extra)
    assert (defaults.number("--local-port"), defaults.flag("--ssh-only")) == (11022, False)


def test_sandbox_gets_every_remaining_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 7

    fake = types.ModuleType("sagemaker_ssh_sandbox.cli")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sagemaker_ssh_sandbox.cli", fake)
    assert sm_ssh.main(["-v", "sandbox", "up", "--state-dir", "/x", "-h", "--", "y"]) == 7
    assert seen == [["up", "--state-dir", "/x", "-h", "--", "y"]]


def test_sandbox_missing_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "sagemaker_ssh_sandbox.cli", None)
    assert sm_ssh.main(["sandbox", "status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sandbox is not available" in err


def test_missing_plugin_fails_before_any_aws_call(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sm_ssh.main(["connect", "j.training.sagemaker"]) == 127
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "session-manager-plugin not found" in err
    assert session.main(["mi-0123456789abcdef0"]) == 127


needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh not installed")
PLUGIN_DIR = Path(__file__).resolve().parents[1] / "sagemaker_ssh_sandbox" / "ssm" / "bin"


@needs_ssh
def test_every_forward_spelling_is_a_local_listener() -> None:
    """ssh -G reads the options as ssh will: grouped flags, -o Local/DynamicForward, brackets;
    remote forwards and unix sockets open no local port."""
    plan = connect.plan_ssh(["-F", "/dev/null", "-NL", "8888:localhost:80",
                             "-o", "LocalForward=9999 h:1", "-oDynamicForward=1080",
                             "-D", "[::1]:1081", "-L", "*:7000:h:1", "-L", "0.0.0.0:7001:h:2",
                             "-L127.0.0.1:7003:h:1", "-L", "/tmp/s:h:3", "-R", "5:h:6",
                             "-o", "RemoteForward 6 h:7", "-p", "2222"], "x.training.sagemaker")
    assert plan.port == 2222
    assert sorted(plan.listeners) == sorted([
        ("localhost", 8888), ("localhost", 9999), ("localhost", 1080), ("::1", 1081),
        ("*", 7000), ("0.0.0.0", 7001), ("127.0.0.1", 7003)])
    gateway = connect.plan_ssh(["-F", "/dev/null", "-g", "-L", "8888:h:1"], "x")
    assert gateway.listeners == (("*", 8888),)


@needs_ssh
@pytest.mark.parametrize("options, needle", [
    (["-p", "99999"], "Bad port '99999'"),
    (["-L", "99999:h:1"], "Bad local forwarding specification '99999:h:1'"),
    (["-o", "LocalForward=8888:h:1"], "Missing target argument"),
])
def test_options_ssh_rejects_fail_before_any_aws_call(
        options: list[str], needle: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", f"{PLUGIN_DIR}:{os.environ['PATH']}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # any AWS call would fail
    assert sm_ssh.main(["connect", "j.training.sagemaker", *options, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sm-ssh: ssh rejects the options " in err and needle in err


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@needs_ssh
@pytest.mark.parametrize("family, address", [
    (socket.AF_INET, "127.0.0.1"),
    pytest.param(socket.AF_INET6, "::1", marks=pytest.mark.skipif(
        not _ipv6_loopback(), reason="no IPv6 loopback")),
])
@pytest.mark.parametrize("spelling", [["-NL", "{port}:localhost:80"],
                                      ["-o", "LocalForward={port} localhost:80"],
                                      ["-D", "localhost:{port}"]])
def test_busy_local_port_is_refused_before_anything_else(
        family: int, address: str, spelling: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Either loopback family taken is refused: ssh would listen on the other one only and
    localhost:<port> would reach the squatter."""
    monkeypatch.setenv("PATH", f"{PLUGIN_DIR}:{os.environ['PATH']}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # any AWS call would fail
    with socket.socket(family) as busy:
        if family == socket.AF_INET6:
            busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        busy.bind((address, 0))
        busy.listen()
        port = busy.getsockname()[1]
        options = [arg.format(port=port) for arg in spelling]
        assert sm_ssh.main(["connect", "j.training.sagemaker", "-F", "/dev/null", *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"local port {port} ({address}) is not available" in err


def test_log_echo_shows_lines_while_ssh_runs_and_holds_the_last_ones(tmp_path: Path) -> None:
    log = tmp_path / "ssh.log"
    log.write_text("")
    out = io.StringIO()
    echo = connect.LogEcho(log, out=out, hold=0.2, interval=0.05)
    with open(log, "a") as f:
        f.write("channel 2: open failed: connect failed: Connection refused\n")
        f.flush()
        deadline = time.monotonic() + 10
        while "open failed" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.getvalue() == "channel 2: open failed: connect failed: Connection refused\n"
        f.write("root@x: Permission denied (publickey).\npartial")
    assert echo.stop() == "root@x: Permission denied (publickey).\npartial\n"
    assert "Permission denied" not in out.getvalue()


# -- picking one instance --------------------------------------------------------------------------
def _inst(mi: str, host: str, ping: str = "Online", ts: int = 100) -> ManagedInstance:
    return ManagedInstance(mi, ping, computer_name=host, tags={
        "SSHResourceName": "job", "SSHTimestamp": str(ts),
        "SSHResourceArn": "arn:aws:sagemaker:us-east-1:1:training-job/job"},
        last_ping=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))


TARGET = fqdn.parse_resource("job.training.sagemaker")


def test_choose_by_node_index_and_refuse_ambiguity() -> None:
    found = newest_first([_inst("mi-2", "algo-2", ts=5), _inst("mi-1", "algo-1", ts=6),
                          _inst("mi-0", "algo-1", ping="ConnectionLost", ts=1)])
    assert connect.choose(found, TARGET.fqdn, None, "algo-2").instance_id == "mi-2"
    assert connect.choose(found, TARGET.fqdn, None, "mi-1").instance_id == "mi-1"
    assert connect.choose(found, TARGET.fqdn, 1, None).instance_id == "mi-2"
    with pytest.raises(UsageError, match="2 online instances: algo-1 .mi-1., algo-2 .mi-2.; "
                                         "choose one with --node NAME or --index N"):
        connect.choose(found, TARGET.fqdn, None, None)
    with pytest.raises(UsageError, match="out of range"):
        connect.choose(found, TARGET.fqdn, 2, None)
    with pytest.raises(UsageError, match="no online node 'algo-3'"):
        connect.choose(found, TARGET.fqdn, None, "algo-3")


def test_choose_reports_connection_lost() -> None:
    with pytest.raises(ResolutionError, match="mi-0.* is ConnectionLost since 2026-01-02"):
        connect.choose([_inst("mi-0", "algo-1", ping="ConnectionLost")], TARGET.fqdn, None,
                       None)


def test_matching_rule() -> None:
    inst = _inst("mi-1", "algo-1")
    assert matches(inst, TARGET)
    assert not matches(inst, fqdn.parse_resource("job.processing.sagemaker"))
    assert not matches(inst, fqdn.parse_resource("JOB.training.sagemaker"))
    assert matches(inst, fqdn.parse_resource("JOB.training.sagemaker"), ignore_case=True)
    app = ManagedInstance("mi-9", "Online", tags={
        "SSHResourceName": "default",
        "SSHResourceArn": "arn:aws:sagemaker:us-east-1:1:app/d-abc/alice/KernelGateway/default"})
    assert matches(app, fqdn.parse_resource("default.studio.sagemaker"))
    assert matches(app, fqdn.parse_resource("default.alice.d-abc.studio.sagemaker"))
    assert not matches(app, fqdn.parse_resource("default.bob.d-abc.studio.sagemaker"))


# -- ssh errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("stderr, needle", [
    ("root@127.0.0.1: Permission denied (publickey).", "refused the key"),
    ("Host key verification failed.", "host key does not match"),
    ("bind [127.0.0.1]:8080: Address already in use\nchannel_setup_fwd_listener_tcpip: "
     "cannot listen to port: 8080\nCould not request local forwarding.", "already in use"),
    ("kex_exchange_identification: Connection closed by remote host", "is sshd running"),
    ("something new", "failed: something new"),
])
def test_ssh_error_from_real_messages(stderr: str, needle: str) -> None:
    assert needle in str(proxy.ssh_error(stderr, "ssh to mi-1"))


# -- keys ------------------------------------------------------------------------------------------
@needs_ssh_keygen
def test_key_created_once_with_private_mode(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_KEY", raising=False)
    path = keys.key_path("Job.Training.sagemaker")
    assert path == tmp_path / ".ssh" / "job.training.sagemaker"
    first = keys.ensure_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / ".ssh").stat().st_mode) == 0o700
    assert first.startswith("ssh-ed25519 ")
    inode = path.stat().st_ino
    assert keys.ensure_key(path) == first and path.stat().st_ino == inode
    Path(f"{path}.pub").unlink()  # derived again from the private key, not regenerated
    assert keys.ensure_key(path) == first
    assert stat.S_IMODE(Path(f"{path}.pub").stat().st_mode) == 0o644
    path.unlink()  # a new key never pairs with a stale .pub
    second = keys.ensure_key(path)
    assert second != first and Path(f"{path}.pub").read_text().startswith(second)


@needs_ssh_keygen
def test_ssh_key_env_overrides_and_concurrent_creation_keeps_one_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_KEY", str(tmp_path / "mine"))
    path = keys.key_path("anything.training.sagemaker")
    assert path == tmp_path / "mine"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(keys.ensure_key(path)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mine.pub"]


def test_client_marker_is_stable_per_key_path(tmp_path: Path) -> None:
    a = keys.client_marker(tmp_path / "a")
    assert a == keys.client_marker(tmp_path / "a") != keys.client_marker(tmp_path / "b")
    assert a.startswith("sm-ssh:") and len(a) == len("sm-ssh:") + 16


# -- the authorized_keys script, run with sh on a temporary file --------------------------------
def _push(tmp_path: Path, key: str, marker: str) -> str:
    script = keys.authorized_keys_script(key, marker, path=str(tmp_path / "etc" / "ak"),
                                         host_keys_glob=f"{tmp_path}/host_*_key.pub",
                                         sshd_pid_file=f"{tmp_path}/none.pid",
                                         configured=f"{tmp_path}/not-configured")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout


def test_authorized_keys_replaced_not_accumulated_and_others_kept(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    ak = tmp_path / "etc" / "ak"
    ak.write_text("ssh-rsa AAAAother admin@laptop\n")
    (tmp_path / "host_ed25519_key.pub").write_text("ssh-ed25519 AAAAhost root@algo-1\n")
    out = _push(tmp_path, "ssh-ed25519 AAAAone", "sm-ssh:alice")
    assert keys.parse_host_keys(out) == [("ssh-ed25519", "AAAAhost")]
    _push(tmp_path, "ssh-ed25519 AAAAone", "sm-ssh:alice")          # same key again
    _push(tmp_path, "ssh-ed25519 AAAAbob", "sm-ssh:bob")            # another client
    _push(tmp_path, "ssh-ed25519 AAAAtwo", "sm-ssh:alice")          # alice's new key
    assert ak.read_text().splitlines() == [
        "ssh-rsa AAAAother admin@laptop",
        "ssh-ed25519 AAAAbob sm-ssh:bob",
        "ssh-ed25519 AAAAtwo sm-ssh:alice",
    ]
    assert stat.S_IMODE(ak.stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["ak"]  # no temp/lock left


def test_authorized_keys_concurrent_pushes_lose_nobody(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    procs = [subprocess.Popen(["sh", "-c", keys.authorized_keys_script(
        f"ssh-ed25519 AAAA{i}", f"sm-ssh:c{i}", path=str(tmp_path / "etc" / "ak"),
        host_keys_glob=f"{tmp_path}/none*", sshd_pid_file=f"{tmp_path}/none.pid",
        configured=f"{tmp_path}/not-configured")], stdout=subprocess.DEVNULL) for i in range(8)]
    assert [p.wait() for p in procs] == [0] * 8
    lines = (tmp_path / "etc" / "ak").read_text().splitlines()
    assert sorted(lines) == sorted(f"ssh-ed25519 AAAA{i} sm-ssh:c{i}" for i in range(8))


def test_pin_host_keys_replaces_only_the_alias(tmp_path: Path) -> None:
    kh = tmp_path / "ssh" / "known"
    keys.pin_host_keys("a.training.sagemaker", [("ssh-ed25519", "AAAA1")], kh)
    keys.pin_host_keys("b.training.sagemaker", [("ssh-ed25519", "AAAA2")], kh)
    keys.pin_host_keys("a.training.sagemaker", [("ssh-ed25519", "AAAA3"),
                                                ("ecdsa-sha2-nistp256", "AAAA4")], kh)
    assert kh.read_text().splitlines() == [
        "b.training.sagemaker ssh-ed25519 AAAA2",
        "a.training.sagemaker ssh-ed25519 AAAA3",
        "a.training.sagemaker ecdsa-sha2-nistp256 AAAA4",
    ]
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600


def test_session_plugin_argv_keeps_the_token_out() -> None:
    argv = session.plugin_argv("/bin/plugin", "us-east-1", None,
                               {"Target": "mi-1", "DocumentName": "AWS-StartSSHSession",
                                "Parameters": {"portNumber": ["22"]}}, "https://ssm")
    assert argv[:5] == ["/bin/plugin", "AWS_SSM_START_SESSION_RESPONSE", "us-east-1",
                        "StartSession", ""]
    assert '"Target": "mi-1"' in argv[5] and argv[6] == "https://ssm"
    assert not any("Token" in a for a in argv)


def test_no_stdout_from_session_module_on_error(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path), PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.session", "mi-1"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 127 and done.stdout == ""
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("module, argv, prog, needle", [
    ("sagemaker_ssh_helper.session", [], "sm-ssh session",
     "the following arguments are required: instance_id"),
    ("sagemaker_ssh_helper.session", ["mi-1", "--port", "x"], "sm-ssh session",
     "argument --port: invalid int value: 'x'"),
    ("sagemaker_ssh_helper.dist", ["frobnicate"], "sagemaker_ssh_helper.dist",
     "invalid choice: 'frobnicate'"),
    ("sagemaker_ssh_helper.cdk.policies", [], "policies",
     "name a policy or pass --update-doc FILE"),
    ("sagemaker_ssh_helper.cdk.policies", ["nope"], "policies", "invalid choice: 'nope'"),
    ("sagemaker_ssh_sandbox.cli", ["up", "--port", "x"], "sm-ssh sandbox up",
     "argument --port: invalid int value: 'x'"),
    ("sagemaker_ssh_sandbox.cli", ["frobnicate"], "sm-ssh sandbox",
     "invalid choice: 'frobnicate'"),
])
def test_every_command_says_bad_usage_in_one_line(module: str, argv: list[str], prog: str,
                                                  needle: str) -> None:
    """Each entry point runs in the one frame (sagemaker_ssh_helper.cli): usage errors are one
    line on stderr naming the command, exit 2, nothing on stdout."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                          text=True, env=env, check=False, timeout=60)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"{prog}: "), done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_config_is_idempotent_and_keeps_the_users_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sagemaker_ssh_helper import sshconfig

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_KEY", raising=False)
    (tmp_path / ".ssh").mkdir(mode=0o700)
    user = tmp_path / ".ssh" / "config"
    user.write_text("Host box\n    User me\n")
    user.chmod(0o644)
    ours, added = sshconfig.install(region="eu-west-1")
    assert added and ours == tmp_path / ".ssh" / "sm-ssh" / "config"
    assert sshconfig.install(region="eu-west-1") == (ours, False)
    assert user.read_text() == f"Include {ours}\n\nHost box\n    User me\n"
    assert stat.S_IMODE(user.stat().st_mode) == 0o644
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600
    text = ours.read_text()
    assert f"IdentityFile {tmp_path}/.ssh/%h" in text
    assert "start-proxy %h --port %p" in text and "--region eu-west-1" in text
    done = subprocess.run(["ssh", "-G", "-F", str(user), "Job.training.sagemaker"],
                          capture_output=True, text=True, check=True)
    assert "user root" in done.stdout.splitlines()
    assert f"identityfile {tmp_path}/.ssh/%h" in done.stdout  # expanded when used
    studio = subprocess.run(["ssh", "-G", "-F", str(user), "app.studio.sagemaker"],
                            capture_output=True, text=True, check=True)
    assert "user sagemaker-user" in studio.stdout.splitlines()


def test_sm_ssh_debug_appends_to_a_private_log_file(tmp_path: Path) -> None:
    """SM_SSH_DEBUG=true keeps a debug log (for ProxyCommands, whose stderr nobody sees)."""
    env = dict(os.environ, HOME=str(tmp_path), SM_SSH_DEBUG="true")
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "connect",
                               "not-an-fqdn"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 2
        assert "malformed name 'not-an-fqdn'" in done.stderr.splitlines()[-1]
    log = tmp_path / ".sm-ssh" / "debug.log"
    assert log.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / ".sm-ssh").stat().st_mode & 0o777 == 0o700
    text = log.read_text()
    assert text.count("malformed name 'not-an-fqdn'") >= 2  # appended, one per run
    assert "Traceback" in text
    without = dict(env, HOME=str(tmp_path / "quiet"))
    without.pop("SM_SSH_DEBUG")
    subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "connect", "x"],
                   env=without, capture_output=True, timeout=60, check=False)
    assert not (tmp_path / "quiet" / ".sm-ssh").exists()


@needs_ssh
def test_our_ssh_runs_share_no_connection_the_users_config_asks_for(tmp_path: Path) -> None:
    """`sm-ssh config` writes ControlMaster auto with a %C path, which is the same for every node
    of a job (same name, port and user): an ssh of ours (exec, cp, SSMProxy, sm-local-*) that
    inherited it would run algo-2's command on algo-1's master. Ours say none, unless given."""
    config = tmp_path / "config"
    config.write_text("Host *\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n"
                      "  ControlPersist 300\n")

    def resolved(options: list[str]) -> str:
        done = subprocess.run(["ssh", "-G", "-F", str(config), *options, "x"],
                              capture_output=True, text=True, check=True)
        return done.stdout

    common = dict(identity_file=tmp_path / "key", known_hosts=tmp_path / "known_hosts",
                  host_key_alias="j.training.sagemaker", user="root", proxy_cmd=None)
    assert "controlpath " in resolved([])  # the file alone would share
    ours = resolved(proxy.ssh_options(**common))  # type: ignore[arg-type]
    assert "controlmaster false" in ours and "controlpath " not in ours
    master = resolved(proxy.ssh_options(**common, control=proxy.control_options(  # type: ignore[arg-type]
        "master", tmp_path / "cm", 60)))
    assert "controlmaster true" in master and f"controlpath {tmp_path / 'cm'}" in master
