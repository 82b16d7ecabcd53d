"""The client's key files and pinned host keys, with real ssh-keygen, sh and file systems:
what ssh would refuse is named, the pushed key is the one the client holds, clients sharing
user@host:path do not evict each other, and a pinned host key that changes on the same
instance is refused."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import REPO_ROOT, is_root_linux

from sagemaker_ssh_helper import hostkeys, keyfile, keys
from sagemaker_ssh_helper.errors import SSHHelperError

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                reason="ssh-keygen not installed")


def keygen(path: Path, *args: str) -> str:
    """A key made by ssh-keygen; returns its public key line as ssh-keygen writes it."""
    subprocess.run(["ssh-keygen", "-q", "-f", str(path), *args], check=True,
                   stdin=subprocess.DEVNULL)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_KEY", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


# -- reading the private key (item: local key problems) -------------------------------------------
@pytest.mark.parametrize("args", [
    ["-t", "ed25519", "-N", ""],
    ["-t", "ecdsa", "-N", ""],
    ["-t", "rsa", "-b", "2048", "-N", ""],
    ["-t", "rsa", "-b", "2048", "-N", "", "-m", "PEM"],
])
def test_public_key_is_derived_from_the_private_key(tmp_path: Path, args: list[str]) -> None:
    expected = keygen(tmp_path / "k", *args)
    Path(f"{tmp_path / 'k'}.pub").unlink()
    key = keyfile.read_key(tmp_path / "k")
    assert (key.public, key.encrypted) == (expected, False)
    assert Path(f"{tmp_path / 'k'}.pub").read_text().startswith(expected + " ")


@pytest.mark.parametrize("fmt", [[], ["-m", "PEM"]])
def test_a_key_with_a_passphrase_is_recognised(tmp_path: Path, fmt: list[str]) -> None:
    expected = keygen(tmp_path / "k", "-t", "ecdsa", "-N", "secret words", *fmt)
    key = keyfile.read_key(tmp_path / "k")
    assert (key.public, key.encrypted) == (expected, True)
    hint = keyfile.refusal_hint(tmp_path / "k", "root@x: Permission denied (publickey).")
    assert hint is not None and "is protected by a passphrase and ssh could not use it" in hint
    assert f"ssh-add {tmp_path / 'k'}" in hint
    assert keyfile.refusal_hint(tmp_path / "k", "read_passphrase: can't open /dev/tty") == hint


def test_a_stale_pub_file_is_not_pushed_and_is_rewritten(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = keys.key_path("job.training.sagemaker")
    real = keys.ensure_key(path)
    other = keygen(home / "other", "-t", "ed25519", "-N", "")
    Path(f"{path}.pub").write_text(f"{other} left-over\n")  # the key was replaced, not its .pub
    assert keys.public_key(path) == real
    assert Path(f"{path}.pub").read_text().split()[:2] == real.split()
    assert "did not match" in caplog.text


def test_a_key_other_users_can_read_is_refused_with_the_fix(home: Path) -> None:
    path = keys.key_path("job.training.sagemaker")
    keys.ensure_key(path)
    path.chmod(0o644)
    with pytest.raises(SSHHelperError, match=r"is accessible by other users \(mode 0644\), so "
                                             rf"ssh would refuse it: run `chmod 600 {path}`"):
        keys.ensure_key(path)
    assert keyfile.refusal_hint(path, "UNPROTECTED PRIVATE KEY FILE!") == \
        f"SSH key {path} is accessible by other users (mode 0644), so ssh would refuse it: " \
        f"run `chmod 600 {path}`"
    path.chmod(0o600)
    assert keyfile.refusal_hint(path, "Permission denied (publickey).") is None


def test_garbage_or_a_directory_as_the_key_is_one_line(home: Path) -> None:
    path = keys.key_path("job.training.sagemaker")
    path.parent.mkdir(mode=0o700)
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64!\n")
    path.chmod(0o600)
    with pytest.raises(SSHHelperError, match="is not a valid OpenSSH private key"):
        keys.ensure_key(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(SSHHelperError, match=f"SSH key {path} is a directory"):
        keys.ensure_key(path)


# -- file-system problems (item: raw errno messages) ----------------------------------------------
def test_a_file_at_dot_ssh_is_one_line(home: Path) -> None:
    (home / ".ssh").write_text("not a directory")
    with pytest.raises(SSHHelperError) as raised:
        keys.ensure_key(keys.key_path("job.training.sagemaker"))
    assert str(raised.value) == (f"{home / '.ssh'} is a file, not a directory: move it away so "
                                 "that sm-ssh can keep its keys there")


def test_a_directory_at_the_known_hosts_path_is_one_line(home: Path) -> None:
    keys.known_hosts_path().mkdir(parents=True)
    with pytest.raises(SSHHelperError) as raised:
        hostkeys.pin_host_keys("a.training.sagemaker", [("ssh-ed25519", "AAAA1")],
                               instance_id="mi-1")
    assert str(raised.value) == (f"{keys.known_hosts_path()} is a directory, not a file: "
                                 "remove it (sm-ssh writes this file)")


@pytest.mark.skipif(not is_root_linux() or shutil.which("unshare") is None,
                    reason="needs root for a read-only bind mount")
def test_a_read_only_home_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "ro-home"
    home.mkdir()
    code = ("from sagemaker_ssh_helper import keys\n"
            "try:\n"
            "    keys.ensure_key(keys.key_path('job.training.sagemaker'))\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    script = (f'mount --bind "$HOME" "$HOME" && mount -o remount,bind,ro "$HOME" && '
              f'exec {sys.executable} -c "$0"')
    done = subprocess.run(["unshare", "--mount", "bash", "-c", script, code],
                          env=dict(os.environ, HOME=str(home), PYTHONPATH=REPO_ROOT),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout == (f"SSHHelperError cannot create the directory {home / '.ssh'}: the "
                           "file system is read-only; sm-ssh keeps keys and pinned host keys "
                           "under ~/.ssh: make HOME writable\n"), done.stderr


# -- the client marker (item: key eviction between clients) ---------------------------------------
def _push(tmp_path: Path, key: str, marker: str, configured: str = "not-configured") -> str:
    script = keys.authorized_keys_script(key, marker, path=str(tmp_path / "etc" / "ak"),
                                         host_keys_glob=f"{tmp_path}/none*",
                                         sshd_pid_file=f"{tmp_path}/none.pid",
                                         configured=str(tmp_path / configured))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin"))
    return done.stdout


def test_the_key_push_starts_sshd_only_where_ssh_helper_set_it_up(tmp_path: Path) -> None:
    """Never a machine's own sshd: without configure's marker, sm-setup-ssh is not run."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "sm-setup-ssh"
    fake.write_text(f'#!/bin/sh\necho "$@" >>{tmp_path / "calls"}\n')
    fake.chmod(0o755)
    out = _push(tmp_path, "ssh-ed25519 AAAA1", "sm-ssh:a")
    assert keys.SSHD_STARTED not in out and not (tmp_path / "calls").exists()
    (tmp_path / "configured").touch()
    out = _push(tmp_path, "ssh-ed25519 AAAA1", "sm-ssh:a", configured="configured")
    assert keys.SSHD_STARTED in out and (tmp_path / "calls").read_text() == "start-sshd\n"


def test_clients_sharing_user_host_and_key_path_keep_their_own_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Studio users: same user name, host name and key path, different homes and keys."""
    shared_path = tmp_path / "key"  # the same path in both users' file systems
    lines = []
    for user in ("alice", "bob"):
        monkeypatch.setenv("HOME", str(tmp_path / user))
        marker = keys.client_marker(shared_path)
        assert keys.client_marker(shared_path) == marker  # stable for this client
        key = keygen(tmp_path / f"{user}-key", "-t", "ed25519", "-N", "")
        _push(tmp_path, key, marker)
        lines.append(f"{key} {marker}")
        client_id = tmp_path / user / ".ssh" / "sm-ssh" / "client-id"
        assert stat.S_IMODE(client_id.stat().st_mode) == 0o600
    assert lines[0].split()[2] != lines[1].split()[2]
    assert (tmp_path / "etc" / "ak").read_text().splitlines() == lines

    # alice's key is recreated: her old line is replaced, bob's is kept
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    new = keygen(tmp_path / "alice-new", "-t", "ed25519", "-N", "")
    _push(tmp_path, new, keys.client_marker(shared_path))
    assert (tmp_path / "etc" / "ak").read_text().splitlines() == [
        lines[1], f"{new} {lines[0].split()[2]}"]


def test_without_a_writable_home_the_key_makes_the_marker_unique(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "missing" / "x"))
    (tmp_path / "missing").write_text("a file where a directory should be")
    assert keys.client_id() == ""
    a = keys.client_marker(tmp_path / "k", "ssh-ed25519 AAAAone")
    b = keys.client_marker(tmp_path / "k", "ssh-ed25519 AAAAtwo")
    assert a != b and a == keys.client_marker(tmp_path / "k", "ssh-ed25519 AAAAone")


# -- pinned host keys (item: host keys) -----------------------------------------------------------
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 22, 11, 30, tzinfo=timezone.utc)


def test_a_new_instance_under_the_same_name_replaces_the_keys_silently(tmp_path: Path) -> None:
    """A new job (or endpoint, app) reusing a name has new host keys: that is expected."""
    kh = tmp_path / "known"
    hostkeys.pin_host_keys("a.training.sagemaker", [("ssh-ed25519", "AAAA1")], kh, "mi-1", T0)
    hostkeys.pin_host_keys("b.training.sagemaker", [("ssh-ed25519", "AAAAb")], kh, "mi-b", T0)
    hostkeys.pin_host_keys("a.training.sagemaker", [("ssh-ed25519", "AAAA2")], kh, "mi-2", T1)
    assert kh.read_text().splitlines() == [
        "b.training.sagemaker ssh-ed25519 AAAAb sm-ssh:mi-b@2026-11-21T10:00:00Z",
        "a.training.sagemaker ssh-ed25519 AAAA2 sm-ssh:mi-2@2026-11-22T11:30:00Z",
    ]
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600


def test_changed_keys_on_the_same_instance_are_refused_until_removed(tmp_path: Path) -> None:
    kh = tmp_path / "known"
    alias = "a.training.sagemaker"
    hostkeys.pin_host_keys(alias, [("ssh-ed25519", "AAAA1")], kh, "mi-1", T0)
    before = kh.read_text()
    hostkeys.pin_host_keys(alias, [("ssh-ed25519", "AAAA1")], kh, "mi-1", T1)  # unchanged
    assert kh.read_text() == before
    with pytest.raises(hostkeys.HostKeyChanged) as raised:
        hostkeys.pin_host_keys(alias, [("ssh-ed25519", "AAAA9")], kh, "mi-1", T1)
    message = str(raised.value)
    assert message.startswith(f"host key for {alias} changed since 2026-11-21 10:00 UTC on the "
                              "same instance mi-1: ")
    assert kh.read_text() == before
    # a key type added (none changed) is pinned next to the old one, keeping its date
    hostkeys.pin_host_keys(alias, [("ssh-ed25519", "AAAA1"), ("ecdsa-sha2-nistp256", "AAAAe")],
                           kh, "mi-1", T1)
    assert kh.read_text().splitlines() == [
        f"{alias} ssh-ed25519 AAAA1 sm-ssh:mi-1@2026-11-21T10:00:00Z",
        f"{alias} ecdsa-sha2-nistp256 AAAAe sm-ssh:mi-1@2026-11-21T10:00:00Z"]
    # the command the message suggests works, and then the new keys are pinned
    command = message.split("`")[1].split()
    subprocess.run(command, check=True, capture_output=True)
    hostkeys.pin_host_keys(alias, [("ssh-ed25519", "AAAA9")], kh, "mi-1", T1)
    assert kh.read_text().splitlines() == [
        f"{alias} ssh-ed25519 AAAA9 sm-ssh:mi-1@2026-11-22T11:30:00Z"]


def test_lines_of_older_versions_are_replaced(tmp_path: Path) -> None:
    kh = tmp_path / "known"
    kh.write_text("a.training.sagemaker ssh-ed25519 AAAAold\n")
    hostkeys.pin_host_keys("a.training.sagemaker", [("ssh-ed25519", "AAAAnew")], kh, "mi-1", T0)
    assert kh.read_text() == \
        "a.training.sagemaker ssh-ed25519 AAAAnew sm-ssh:mi-1@2026-11-21T10:00:00Z\n"


def test_ssh_accepts_the_pinned_lines(tmp_path: Path) -> None:
    """The comment we add is a known_hosts comment to ssh: ssh-keygen -F finds the key."""
    kh = tmp_path / "known"
    public = keygen(tmp_path / "host", "-t", "ed25519", "-N", "")
    key_type, blob = public.split()
    hostkeys.pin_host_keys("a.training.sagemaker", [(key_type, blob)], kh, "mi-1", T0)
    found = subprocess.run(["ssh-keygen", "-F", "a.training.sagemaker", "-f", str(kh)],
                           capture_output=True, text=True, check=True)
    assert f"{key_type} {blob}" in found.stdout


def test_the_folders_sm_ssh_creates_are_all_private(tmp_path: Path) -> None:
    from sagemaker_ssh_helper import mux

    old = os.umask(0o022)
    try:
        keyfile.ensure_dir(tmp_path / "a" / ".ssh" / "sub")
        assert mux._private(tmp_path / "b" / ".ssh" / "sm-ssh" / "cm", create=True)
    finally:
        os.umask(old)
    for created in ("a", "a/.ssh", "a/.ssh/sub", "b", "b/.ssh", "b/.ssh/sm-ssh",
                    "b/.ssh/sm-ssh/cm"):
        assert stat.S_IMODE((tmp_path / created).stat().st_mode) == 0o700, created
