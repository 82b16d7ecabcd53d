"""The client's private key file, as ssh will see it: its public key and what ssh would refuse.

- The public key we push is derived from the private key itself, never taken from ``<key>.pub``
  on trust: a stale ``.pub`` (left from an older key) would push a key the client cannot use.
  Because ssh offers ``<key>.pub`` when it exists, a stale one is rewritten from the key.
- ssh ignores a private key that other users can access (``UNPROTECTED PRIVATE KEY FILE``);
  that is checked before anything is pushed and named in one line with the ``chmod`` to run.
- A key protected by a passphrase works when ssh can ask for it (a terminal) or an agent holds
  it; when ssh could not use it, the failure names the passphrase instead of the container.
- File-system problems (read-only HOME, a file where ``~/.ssh`` should be, a directory where a
  file should be) become one line that says what to fix, not an errno.

OpenSSH's own key format keeps the public key unencrypted in the file, so reading it costs no
process; older PEM keys are read with ``ssh-keygen -y``.
"""
from __future__ import annotations

import base64
import errno
import logging
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import portable
from sagemaker_ssh_helper.errors import SSHHelperError, ToolMissing

logger = logging.getLogger(__name__)

_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_END = "-----END OPENSSH PRIVATE KEY-----"
_MAGIC = b"openssh-key-v1\0"
_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory",
    errno.EEXIST: "a file is in the way",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


def fs_error(e: OSError, action: str, path: Path, advice: str = "") -> SSHHelperError:
    """``cannot <action> <path>: <reason>[; <advice>]`` for an OSError, without the errno."""
    reason = _REASONS.get(e.errno or 0) or (e.strerror or str(e)).lower()
    if not advice and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC,
                                  errno.EDQUOT):
        advice = "sm-ssh keeps keys and pinned host keys under ~/.ssh: make HOME writable"
    return SSHHelperError(f"cannot {action} {path}: {reason}" + (f"; {advice}" if advice else ""))


def ensure_dir(path: Path) -> None:
    """Create directory ``path`` (0700) and its parents, or say in one line why it cannot be."""
    if path.is_dir():
        return
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise SSHHelperError(f"{parent} is a file, not a directory: move it away so that "
                                 "sm-ssh can keep its keys there")
    try:
        portable.private_dirs(path)
    except OSError as e:
        raise fs_error(e, "create the directory", path) from None


@contextmanager
def file_errors(action: str, path: Path, advice: str = "") -> Iterator[None]:
    """Turn an OSError raised inside the block into a one-line error about ``path``."""
    try:
        yield
    except IsADirectoryError:
        raise SSHHelperError(f"{path} is a directory, not a file: remove it (sm-ssh writes "
                             "this file)") from None
    except OSError as e:
        raise fs_error(e, action, path, advice) from None


def refuse_directory(path: Path) -> None:
    """One line when a directory sits where sm-ssh writes a file."""
    if path.is_dir():
        raise SSHHelperError(f"{path} is a directory, not a file: remove it (sm-ssh writes "
                             "this file)")


@contextmanager
def open_new(path: Path, mode: int) -> Iterator[Any]:
    """Write ``path`` atomically with ``mode`` set at open time (never world-readable first)."""
    refuse_directory(path)
    with file_errors("write", path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        portable.set_mode(fd, tmp, mode)
        with os.fdopen(fd, "w") as f:
            yield f
        with file_errors("write", path):
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class LocalKey:
    path: Path
    public: str       # "<type> <base64>"
    encrypted: bool   # protected by a passphrase


def check_mode(path: Path) -> None:
    """Refuse, as ssh would, a private key that other users can access."""
    with file_errors("read the SSH key", path):
        st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise SSHHelperError(f"SSH key {path} is a directory: remove it (sm-ssh creates the "
                             "key there), or set SSH_KEY to a key file")
    if os.name != "nt" and st.st_uid == os.getuid() and st.st_mode & 0o077:
        raise SSHHelperError(f"SSH key {path} is accessible by other users (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}), so ssh would refuse it: run "
                             f"`chmod 600 {path}`")


def _take(buf: bytes) -> tuple[bytes, bytes]:
    if len(buf) < 4:
        raise ValueError("truncated")
    (n,) = struct.unpack(">I", buf[:4])
    if len(buf) < 4 + n:
        raise ValueError("truncated")
    return buf[4:4 + n], buf[4 + n:]


def openssh_public(text: str) -> tuple[str, bool] | None:
    """(public key line, encrypted) of an ``OPENSSH PRIVATE KEY``; None for other formats."""
    if _BEGIN not in text:
        return None
    body = text.split(_BEGIN, 1)[1].split(_END, 1)[0]
    data = base64.b64decode("".join(body.split()), validate=True)
    if not data.startswith(_MAGIC):
        raise ValueError("not an openssh-key-v1 key")
    cipher, rest = _take(data[len(_MAGIC):])
    _kdf, rest = _take(rest)
    _options, rest = _take(rest)
    blob, _ = _take(rest[4:])
    key_type, _ = _take(blob)
    return f"{key_type.decode()} {base64.b64encode(blob).decode()}", cipher != b"none"


def _pub_file(path: Path) -> str | None:
    pub = Path(f"{path}.pub")
    try:
        fields = pub.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return f"{fields[0]} {fields[1]}" if len(fields) >= 2 else None


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise ToolMissing(f"{tool} not found on PATH: install the OpenSSH client "
                          "(e.g. `apt-get install openssh-client`)")
    return path


def _pem_public(path: Path, text: str) -> tuple[str, bool]:
    """Older key formats: ``ssh-keygen -y`` with an empty passphrase (never a prompt)."""
    done = subprocess.run([require_tool("ssh-keygen"), "-y", "-P", "", "-f", str(path)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    fields = done.stdout.split()
    if done.returncode == 0 and len(fields) >= 2:
        return f"{fields[0]} {fields[1]}", False
    if "ENCRYPTED" in text or "passphrase" in done.stderr:
        public = _pub_file(path)
        if public is None:
            raise SSHHelperError(f"SSH key {path} is protected by a passphrase and has no "
                                 f"{path.name}.pub to read its public key from: create it with "
                                 f"`ssh-keygen -y -f {path} > {path}.pub`")
        return public, True
    raise SSHHelperError(f"cannot read SSH key {path}: {done.stderr.strip() or 'not a key'} "
                         "(remove it to have a new one created, or set SSH_KEY)")


def read_key(path: Path) -> LocalKey:
    """The key at ``path``: permissions checked, public key derived from the private key."""
    check_mode(path)
    with file_errors("read the SSH key", path):
        text = path.read_text(errors="replace")
    try:
        parsed = openssh_public(text)
    except ValueError:
        raise SSHHelperError(f"cannot read SSH key {path}: it is not a valid OpenSSH private "
                             "key (remove it to have a new one created, or set SSH_KEY)"
                             ) from None
    public, encrypted = parsed if parsed is not None else _pem_public(path, text)
    key = LocalKey(path, public, encrypted)
    sync_pub(key)
    return key


def sync_pub(key: LocalKey) -> None:
    """Make ``<key>.pub`` hold the key's public key: ssh offers that file when it exists."""
    pub = Path(f"{key.path}.pub")
    current = _pub_file(key.path)
    if current == key.public:
        return
    if current is not None or pub.exists():
        logger.warning("%s did not match %s (left from an older key?): rewriting it from "
                       "the private key", pub, key.path)
    try:
        with open_new(pub, 0o644) as f:
            f.write(f"{key.public} {key.path.name}\n")
    except SSHHelperError as e:
        if current is None and not pub.exists():
            logger.debug("not writing %s: %s", pub, e)  # ssh reads the private key instead
            return
        raise SSHHelperError(f"{pub} does not match {key.path} and cannot be rewritten ({e}): "
                             "remove it") from None


def in_agent(public: str) -> bool:
    """Whether a running ssh-agent holds this key."""
    if not os.environ.get("SSH_AUTH_SOCK") or not shutil.which("ssh-add"):
        return False
    done = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=10)
    blob = public.split()[1]
    return any(line.split()[1:2] == [blob] for line in done.stdout.splitlines())


def refusal_hint(path: Path, ssh_log: str) -> str | None:
    """Why ssh could not authenticate with the key at ``path``, when the cause is local."""
    try:
        key = read_key(path)
    except SSHHelperError as e:
        return str(e)
    if key.encrypted and ("read_passphrase" in ssh_log or not in_agent(key.public)):
        return (f"SSH key {path} is protected by a passphrase and ssh could not use it (no "
                f"terminal to ask for it, or a wrong passphrase): add it to your agent with "
                f"`ssh-add {path}`, or set SSH_KEY to a key without a passphrase")
    return None
