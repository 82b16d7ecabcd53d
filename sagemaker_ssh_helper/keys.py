"""Per-target SSH keys, key push over SSM, and host-key pinning.

- The client key for ``<fqdn>`` is ``~/.ssh/<fqdn>`` (lowercased like ssh's ``%h``; ``SSH_KEY``
  overrides the path): ED25519, created once with mode 0600, never regenerated.
- The public key is pushed with SendCommand (``AWS-RunShellScript``) into the container's
  ``/etc/ssh/authorized_keys``. Each line we write ends with a marker naming this client
  (user, host and key path); a push replaces the line with the same marker or key and keeps
  every other line, so several users can connect at the same time. The file is rewritten
  atomically (temp file + ``mv``) under a lock.
- The same command prints the container's SSH host keys; they are pinned in
  ``~/.ssh/sm-ssh-known_hosts`` under the FQDN (used as ``HostKeyAlias``), so ``ssh`` runs with
  ``StrictHostKeyChecking=yes``.
"""
from __future__ import annotations

import getpass
import hashlib
import logging
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

from sagemaker_ssh_helper import aws, portable
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError

logger = logging.getLogger(__name__)

AUTHORIZED_KEYS = "/etc/ssh/authorized_keys"
HOST_KEYS_GLOB = "/etc/ssh/ssh_host_*_key.pub"
KNOWN_HOSTS_NAME = "sm-ssh-known_hosts"
MARKER_PREFIX = "sm-ssh:"
HOST_KEYS_BEGIN = "--- sm-ssh host keys ---"
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


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise SSHHelperError(f"{tool} not found on PATH: install the OpenSSH client "
                             "(e.g. `apt-get install openssh-client`)", 127)
    return path


def ensure_key(path: Path, comment: str = "sm-ssh") -> str:
    """Create the ED25519 key at ``path`` unless it exists; return its public key line.

    Concurrent callers race safely: the key is generated aside and hard-linked into place,
    so exactly one key wins and nobody overwrites it.
    """
    keygen = _require("ssh-keygen")
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".sm-ssh-key-") as tmp:
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
    """The public key line (``<type> <base64>``): from ``<path>.pub`` if present, else derived
    from the private key (and ``<path>.pub`` written for next time)."""
    pub = Path(f"{path}.pub")
    if pub.exists():
        fields = pub.read_text().split()
        if len(fields) >= 2:
            return f"{fields[0]} {fields[1]}"
    done = subprocess.run([_require("ssh-keygen"), "-y", "-f", str(path)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0 or len(done.stdout.split()) < 2:
        raise SSHHelperError(f"cannot read SSH key {path}: {done.stderr.strip() or 'no key'} "
                             "(remove it to create a new one, or set SSH_KEY)")
    key_type, blob = done.stdout.split()[:2]
    with _open_new(pub, 0o644) as f:
        f.write(f"{key_type} {blob} {path.name}\n")
    return f"{key_type} {blob}"


@contextmanager
def _open_new(path: Path, mode: int) -> Iterator[Any]:
    """Write ``path`` atomically with ``mode`` set at open time (never world-readable first)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        portable.set_mode(fd, tmp, mode)
        with os.fdopen(fd, "w") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def client_marker(path: Path) -> str:
    """A stable tag for this client's line in authorized_keys: user, host and key path."""
    who = f"{getpass.getuser()}@{socket.gethostname()}:{path.resolve()}"
    return MARKER_PREFIX + hashlib.sha256(who.encode()).hexdigest()[:16]


def authorized_keys_script(key_line: str, marker: str, path: str = AUTHORIZED_KEYS,
                           host_keys_glob: str = HOST_KEYS_GLOB) -> str:
    """POSIX sh run in the container: put ``key_line`` into ``path`` replacing our previous
    line (same marker or same key), keep the rest, then print the host public keys."""
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
        f"echo {q(HOST_KEYS_BEGIN)}",
        f"cat {host_keys_glob} 2>/dev/null || true",
    ]) + "\n"


def parse_host_keys(output: str) -> List[Tuple[str, str]]:
    """``(type, base64)`` pairs printed after the host-keys marker."""
    _, _, tail = output.partition(HOST_KEYS_BEGIN)
    keys = []
    for line in tail.splitlines():
        fields = line.split()
        if len(fields) >= 2 and (fields[0].startswith(("ssh-", "ecdsa-", "sk-"))):
            keys.append((fields[0], fields[1]))
    return keys


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock, portable.exclusive(lock):
        yield


def pin_host_keys(alias: str, host_keys: List[Tuple[str, str]],
                  path: Optional[Path] = None) -> Path:
    """Make ``alias``'s entries in our known_hosts file exactly ``host_keys``."""
    path = path or known_hosts_path()
    with _locked(path):
        kept = []
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.split(" ", 1)[0] != alias]
        with _open_new(path, 0o600) as f:
            for line in kept + [f"{alias} {t} {b}" for t, b in host_keys]:
                f.write(line + "\n")
    return path


def _send_command(ssm: Any, instance_id: str, script: str, timeout: float, comment: str,
                  clock: Callable[[], float], sleep: Callable[[float], None]) -> Any:
    """SendCommand; an instance that registered a moment ago may need a few seconds before
    it accepts commands (InvalidInstanceId), so that error is retried briefly."""
    deadline = clock() + NOT_YET_ONLINE_GRACE
    delay = 0.2
    while True:
        try:
            return ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunShellScript",
                                    Parameters={"commands": [script]}, Comment=comment,
                                    TimeoutSeconds=max(30, int(timeout)))
        except Exception as e:
            if aws.error_code(e) != "InvalidInstanceId":
                raise aws.explain(e, "ssm:SendCommand") from e
            if clock() >= deadline:
                raise ResolutionError(f"{instance_id} cannot run commands (not Online, or not "
                                      "registered in this region)") from e
        sleep(delay)
        delay = min(delay * 1.5, 2.0)


def run_shell_command(ssm: Any, instance_id: str, script: str, *, timeout: float = 90,
                      comment: str = "sm-ssh",
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> str:
    """Run ``script`` with AWS-RunShellScript and wait for it against a deadline; return its
    stdout. Raises ``SSHHelperError`` when it fails, times out or is cancelled."""
    sent = _send_command(ssm, instance_id, script, timeout, comment, clock, sleep)
    command_id = sent["Command"]["CommandId"]
    deadline = clock() + timeout
    delay, status, result = 0.1, "Pending", {}
    while True:
        try:
            result = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            status = result.get("Status", "Pending")
        except Exception as e:  # briefly InvocationDoesNotExist right after SendCommand
            if aws.error_code(e) != "InvocationDoesNotExist":
                raise aws.explain(e, "ssm:GetCommandInvocation") from e
        if status not in _PENDING:
            break
        if clock() >= deadline:
            raise SSHHelperError(f"command {command_id} on {instance_id} still {status} after "
                                 f"{timeout:.0f} s: is the SSM agent in the container busy?")
        sleep(min(delay, max(0.0, deadline - clock())))
        delay = min(delay * 1.5, 1.0)
    if status != "Success":
        err = (result.get("StandardErrorContent") or "").strip().splitlines()[-1:]
        raise SSHHelperError(f"command on {instance_id} ended {status}"
                             + (f": {err[0]}" if err else ""))
    return str(result.get("StandardOutputContent", ""))


def upload_public_key(session: Any, key_line: str, marker: str) -> Optional[str]:
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


def authorize(ssm: Any, session: Any, instance_id: str, fqdn: str,
              host_key_alias: Optional[str] = None, *,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> Authorized:
    """Ensure the key, push it into the container and pin the container's host keys."""
    path = key_path(fqdn)
    line = ensure_key(path, comment=f"sm-ssh {fqdn}")
    marker = client_marker(path)
    upload_public_key(session, line, marker)
    output = run_shell_command(ssm, instance_id, authorized_keys_script(line, marker),
                               comment=f"sm-ssh: authorize a key for {fqdn}"[:100],
                               clock=clock, sleep=sleep)
    host_keys = parse_host_keys(output)
    if not host_keys:
        raise ResolutionError(f"{instance_id} reported no SSH host keys ({HOST_KEYS_GLOB}): "
                              "is sshd set up in the container (sm-setup-ssh)?")
    alias = (host_key_alias or fqdn).lower()
    return Authorized(path, pin_host_keys(alias, host_keys), alias)
