"""Per-target SSH keys, key push over SSM, and host-key pinning.

- The client key for ``<fqdn>`` is ``~/.ssh/<fqdn>`` (lowercased like ssh's ``%h``; ``SSH_KEY``
  overrides the path): ED25519, created once with mode 0600, never regenerated. Its public key
  is derived from the private key and checked as ssh would (``keyfile``).
- The public key is pushed with SendCommand (``AWS-RunShellScript``) into the container's
  ``/etc/ssh/authorized_keys``. Each line we write ends with a marker naming this client (a
  random ID kept in ``~/.ssh/sm-ssh/client-id``, user, host and key path); a push replaces the
  line with the same marker or key and keeps every other line, so several users can connect
  at the same time, even when they share user@host:path. The file is rewritten atomically
  (temp file + ``mv``) under a lock. The same command starts sshd if it is not running.
- The same command prints the container's SSH host keys; they are pinned in
  ``~/.ssh/sm-ssh-known_hosts`` under the FQDN (used as ``HostKeyAlias``), per managed
  instance (``hostkeys``), so ``ssh`` runs with ``StrictHostKeyChecking=yes``.
- Each successful push is recorded in ``~/.ssh/sm-ssh/pushed/`` (a hash of the instance, the
  key and this client's marker). ``authorized_before`` lets a connection skip the push when
  this key went to this instance before and its host keys are pinned for it: the caller
  tries ssh first and pushes only if the container refuses the key (see ``reuse``).
"""
from __future__ import annotations

import getpass
import hashlib
import logging
import os
import secrets
import shlex
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_helper import aws, keyfile, retry
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError
from sagemaker_ssh_helper.hostkeys import (  # noqa: F401 (part of this module's API)
    HOST_KEYS_BEGIN,
    HostKeyChanged,
    parse_host_keys,
    pin_host_keys,
    pinned_instance,
)

logger = logging.getLogger(__name__)

AUTHORIZED_KEYS = "/etc/ssh/authorized_keys"
HOST_KEYS_GLOB = "/etc/ssh/ssh_host_*_key.pub"
KNOWN_HOSTS_NAME = "sm-ssh-known_hosts"
MARKER_PREFIX = "sm-ssh:"
CLIENT_ID_NAME = "client-id"
PUSHED_DIR_NAME = "pushed"
PUSH_RECORD_DAYS = 30  # records older than this are removed (containers live for days at most)
SSHD_PID_FILE = "/run/sshd.pid"
CONFIGURED_MARKER = "/opt/sagemaker-ssh-helper/.ssh-configured"  # written by sm-setup-ssh
SSHD_STARTED = "--- sm-ssh started sshd ---"
_PENDING = {"Pending", "InProgress", "Delayed"}
NOT_YET_ONLINE_GRACE = 20.0


def ssh_dir() -> Path:
    return Path.home() / ".ssh"


def key_path(fqdn: str) -> Path:
    """``$SSH_KEY`` if set, else ``~/.ssh/<fqdn>`` (lowercased, as ssh's ``%h``)."""
    override = os.environ.get("SSH_KEY")
    if override:
        return Path(override).expanduser()
    return ssh_dir() / fqdn.lower()


def known_hosts_path() -> Path:
    return ssh_dir() / KNOWN_HOSTS_NAME


def ensure_key(path: Path, comment: str = "sm-ssh") -> str:
    """Create the ED25519 key at ``path`` unless it exists; return its public key line.

    Concurrent callers race safely: the key is generated aside and hard-linked into place,
    so exactly one key wins and nobody overwrites it. An existing key is checked as ssh would
    (``keyfile.read_key``), and its public key is derived from it.
    """
    if not path.exists() and not path.is_symlink():
        keygen = keyfile.require_tool("ssh-keygen")
        keyfile.ensure_dir(path.parent)
        with keyfile.file_errors("create the SSH key", path), \
                tempfile.TemporaryDirectory(dir=path.parent, prefix=".sm-ssh-key-") as tmp:
            fresh = Path(tmp) / "key"
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                            "-f", str(fresh)], check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL)
            os.chmod(fresh, 0o600)
            try:
                os.link(fresh, path)
            except FileExistsError:
                logger.debug("another process created %s first", path)
            else:  # ours won: its .pub replaces any stale one left from an older key
                os.chmod(f"{fresh}.pub", 0o644)
                os.replace(f"{fresh}.pub", f"{path}.pub")
                logger.info("created SSH key %s", path)
    return public_key(path)


def public_key(path: Path) -> str:
    """The public key line (``<type> <base64>``), derived from the private key at ``path``
    (``<path>.pub`` is rewritten when it is missing or does not match)."""
    return keyfile.read_key(path).public


def client_id() -> str:
    """A random ID of this client (its home directory), created once in ``~/.ssh/sm-ssh``;
    "" when it cannot be stored (a read-only HOME)."""
    path = ssh_dir() / "sm-ssh" / CLIENT_ID_NAME
    try:
        value = path.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    try:
        keyfile.ensure_dir(path.parent)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".client-id.",
                                         delete=False) as f:
            f.write(secrets.token_hex(16) + "\n")
        try:
            os.link(f.name, path)  # the first writer wins; others read its ID
        except FileExistsError:
            pass
        finally:
            os.unlink(f.name)
        return path.read_text().strip()
    except (OSError, SSHHelperError) as e:
        logger.debug("no client ID in %s: %s", path, e)
        return ""


def client_marker(path: Path, key_line: str = "") -> str:
    """The tag of this client's line in authorized_keys: a hash of this client's random ID,
    user, host and key path. Two clients that share user@host:path (Studio users, whose
    homes differ) get different markers, so neither evicts the other; a client whose key was
    recreated keeps its marker, so its old key is replaced instead of piling up. Without a
    stored ID the key itself makes the marker unique."""
    ident = client_id() or "key:" + (key_line.split()[1] if len(key_line.split()) > 1 else "")
    who = f"{ident}:{getpass.getuser()}@{socket.gethostname()}:{path.resolve()}"
    return MARKER_PREFIX + hashlib.sha256(who.encode()).hexdigest()[:16]


def authorized_keys_script(key_line: str, marker: str, path: str = AUTHORIZED_KEYS,
                           host_keys_glob: str = HOST_KEYS_GLOB,
                           sshd_pid_file: str = SSHD_PID_FILE,
                           configured: str = CONFIGURED_MARKER) -> str:
    """POSIX sh run in the container: put ``key_line`` into ``path`` replacing our previous
    line (same marker or same key), keep the rest; start sshd if it is not running (with
    ``sm-setup-ssh start-sshd``, and only where ``sm-setup-ssh configure`` set sshd up, i.e.
    ``configured`` exists: never a machine's own sshd); then print the host public keys."""
    key_type, blob = key_line.split()[:2]
    q = shlex.quote
    return "\n".join([
        "set -eu",
        f"f={q(path)}",
        f"line={q(f'{key_type} {blob} {marker}')}",
        f"marker={q(marker)}",
        f"blob={q(blob)}",
        'mkdir -p "$(dirname "$f")"',
        # mkdir is atomic everywhere: a portable lock against concurrent pushes.
        'lock="$f.sm-ssh-lock"; n=0',
        'while ! mkdir "$lock" 2>/dev/null; do',
        '  n=$((n + 1)); if [ "$n" -gt 200 ]; then rm -rf "$lock"; n=0; fi',
        "  sleep 0.1",
        "done",
        "trap 'rmdir \"$lock\" 2>/dev/null || true' EXIT",
        'tmp=$(mktemp "$f.XXXXXX")',
        'if [ -f "$f" ]; then',
        '  awk -v m="$marker" -v b="$blob" '
        "'{ for (i = 1; i <= NF; i++) if ($i == m || $i == b) next; print }' \"$f\" > \"$tmp\"",
        "fi",
        'printf "%s\\n" "$line" >> "$tmp"',
        # sshd (StrictModes) refuses group/world-writable key files.
        'chmod 0644 "$tmp"',
        'mv -f "$tmp" "$f"',
        f"pid=$(cat {q(sshd_pid_file)} 2>/dev/null || true)",
        f'if [ -f {q(configured)} ] && {{ [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; }}; then',
        "  if command -v sm-setup-ssh >/dev/null 2>&1 && sm-setup-ssh start-sshd >&2; then",
        f"    echo {q(SSHD_STARTED)}",
        "  fi",
        "fi",
        f"echo {q(HOST_KEYS_BEGIN)}",
        f"cat {host_keys_glob} 2>/dev/null || true",
    ]) + "\n"


def _send_command(ssm: Any, instance_id: str, script: str, timeout: float, comment: str,
                  clock: Callable[[], float], sleep: Callable[[float], None]) -> Any:
    """SendCommand; an instance that registered a moment ago may need a few seconds before
    it accepts commands (InvalidInstanceId), so that error is retried briefly."""
    poll = retry.Poll(NOT_YET_ONLINE_GRACE, first=0.2, cap=2.0, clip=False, clock=clock,
                      sleep=sleep)
    while True:
        try:
            return ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunShellScript",
                                    Parameters={"commands": [script]}, Comment=comment,
                                    TimeoutSeconds=max(30, int(timeout)))
        except Exception as e:
            if aws.error_code(e) != "InvalidInstanceId":
                raise aws.explain(e, "ssm:SendCommand") from e
            if poll.expired():
                raise ResolutionError(f"{instance_id} cannot run commands (not Online, or not "
                                      "registered in this region)") from e
        poll.wait()


def run_shell_command(ssm: Any, instance_id: str, script: str, *, timeout: float = 90,
                      comment: str = "sm-ssh",
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> str:
    """Run ``script`` with AWS-RunShellScript and wait for it against a deadline; return its
    stdout. Raises ``SSHHelperError`` when it fails, times out or is cancelled."""
    sent = _send_command(ssm, instance_id, script, timeout, comment, clock, sleep)
    command_id = sent["Command"]["CommandId"]
    poll = retry.Poll(timeout, first=0.1, cap=1.0, clock=clock, sleep=sleep)
    status, result = "Pending", {}
    while True:
        try:
            result = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            status = result.get("Status", "Pending")
        except Exception as e:  # briefly InvocationDoesNotExist right after SendCommand
            if aws.error_code(e) != "InvocationDoesNotExist":
                raise aws.explain(e, "ssm:GetCommandInvocation") from e
        if status not in _PENDING:
            break
        if poll.expired():
            raise SSHHelperError(f"command {command_id} on {instance_id} still {status} after "
                                 f"{timeout:.0f} s: is the SSM agent in the container busy?")
        poll.wait()
    if status != "Success":
        err = (result.get("StandardErrorContent") or "").strip().splitlines()[-1:]
        raise SSHHelperError(f"command on {instance_id} ended {status}"
                             + (f": {err[0]}" if err else ""))
    return str(result.get("StandardOutputContent", ""))


def upload_public_key(session: Any, key_line: str, marker: str) -> str | None:
    """If ``SSH_AUTHORIZED_KEYS_PATH`` (s3://bucket/prefix/) is set, put the key there too."""
    prefix = os.environ.get("SSH_AUTHORIZED_KEYS_PATH", "")
    if not prefix:
        return None
    if not prefix.startswith("s3://"):
        raise SSHHelperError(f"SSH_AUTHORIZED_KEYS_PATH must be an s3:// prefix, got {prefix!r}",
                             2)
    bucket, _, key_prefix = prefix[len("s3://"):].partition("/")
    if key_prefix and not key_prefix.endswith("/"):
        key_prefix += "/"
    key = f"{key_prefix}{marker[len(MARKER_PREFIX):]}.pub"
    try:
        aws.client(session, "s3").put_object(Bucket=bucket, Key=key,
                                             Body=f"{key_line} {marker}\n".encode())
    except Exception as e:
        raise aws.explain(e, "s3:PutObject") from e
    return f"s3://{bucket}/{key}"


@dataclass(frozen=True)
class Authorized:
    key_path: Path
    known_hosts: Path
    host_key_alias: str
    pushed: bool = True  # False: the key was pushed by an earlier connection (not checked now)


def _push_record(instance_id: str, key_line: str, marker: str) -> Path:
    blob = key_line.split()[1] if len(key_line.split()) > 1 else key_line
    digest = hashlib.sha256(f"{instance_id}\0{blob}\0{marker}".encode()).hexdigest()[:32]
    return ssh_dir() / "sm-ssh" / PUSHED_DIR_NAME / digest


def record_push(instance_id: str, key_line: str, marker: str,
                now: float | None = None) -> None:
    """Remember that ``key_line`` went to ``instance_id`` (best effort; old records go)."""
    record = _push_record(instance_id, key_line, marker)
    now = time.time() if now is None else now
    try:
        keyfile.ensure_dir(record.parent)
        record.touch(mode=0o600)
        os.utime(record, (now, now))
        for old in record.parent.iterdir():
            if old.stat().st_mtime < now - PUSH_RECORD_DAYS * 86400:
                old.unlink()
    except (OSError, SSHHelperError) as e:
        logger.debug("cannot record the key push in %s: %s", record.parent, e)


def forget_push(instance_id: str, key_line: str, marker: str) -> None:
    try:
        _push_record(instance_id, key_line, marker).unlink()
    except OSError:
        pass


def authorized_before(instance_id: str, fqdn: str, host_key_alias: str | None = None
                      ) -> Authorized | None:
    """The key and pinned host keys for ``instance_id`` when this client's key was pushed
    there before and the host keys pinned under the alias are that instance's; else None.
    The key is checked (and created) as for a push: a local problem is named before ssh."""
    path = key_path(fqdn)
    line = ensure_key(path, comment=f"sm-ssh {fqdn}")
    alias = (host_key_alias or fqdn).lower()
    known_hosts = known_hosts_path()
    if not _push_record(instance_id, line, client_marker(path, line)).exists():
        return None
    if pinned_instance(alias, known_hosts) != instance_id:
        return None
    return Authorized(path, known_hosts, alias, pushed=False)


def authorize(ssm: Any, session: Any, instance_id: str, fqdn: str,
              host_key_alias: str | None = None, *,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> Authorized:
    """Ensure the key, push it into the container and pin the container's host keys."""
    path = key_path(fqdn)
    line = ensure_key(path, comment=f"sm-ssh {fqdn}")
    marker = client_marker(path, line)
    known_hosts = known_hosts_path()
    keyfile.ensure_dir(known_hosts.parent)  # fail before the push, not after it
    keyfile.refuse_directory(known_hosts)
    upload_public_key(session, line, marker)
    output = run_shell_command(ssm, instance_id, authorized_keys_script(line, marker),
                               comment=f"sm-ssh: authorize a key for {fqdn}"[:100],
                               clock=clock, sleep=sleep)
    if SSHD_STARTED in output:
        logger.warning("sshd was not running in %s: the key push started it", instance_id)
    host_keys = parse_host_keys(output)
    if not host_keys:
        raise ResolutionError(f"{instance_id} reported no SSH host keys ({HOST_KEYS_GLOB}): "
                              "is sshd set up in the container (sm-setup-ssh)?")
    alias = (host_key_alias or fqdn).lower()
    pinned = pin_host_keys(alias, host_keys, known_hosts, instance_id)
    record_push(instance_id, line, marker)
    return Authorized(path, pinned, alias)
