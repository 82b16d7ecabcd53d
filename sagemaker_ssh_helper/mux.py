"""OpenSSH connection sharing (ControlMaster) for sm-ssh: where the masters' sockets live, how
long masters stay, and a master's liveness, asked over its socket without starting ssh.

- ``SM_SSH_REUSE`` sets how long a master outlives its last session: a number of seconds
  (default 300), or ``off`` (also ``no``, ``false``, ``0``) for one connection per command.
- Sockets live in a private directory (mode 0700, owned by the user, never a symlink):
  ``~/.ssh/sm-ssh/cm``, else ``$XDG_RUNTIME_DIR/sm-ssh``, else (for ``sm-ssh connect`` only,
  which checks the directory before each use) ``<tmp>/sm-ssh-<uid>``. A Unix socket's path is
  short (104 bytes on macOS), and ssh binds ``<path>.<16 random characters>`` first, so a
  directory is used only when its sockets' paths fit.
- ``probe`` speaks ssh's multiplexing protocol (PROTOCOL.mux: hello, alive check) with a
  timeout: a socket nobody listens on is removed (a killed master), one that does not answer
  in time is set aside (a stopped master), so a new master can take the path.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from sagemaker_ssh_helper import portable
from sagemaker_ssh_helper.errors import UsageError

logger = logging.getLogger(__name__)

ENV = "SM_SSH_REUSE"
DEFAULT_PERSIST = 300  # seconds a master stays after its last session ends
_OFF = ("off", "no", "false", "0")
_ON = ("", "on", "yes", "true")
SOCKET_PATH_MAX = 104    # sizeof(sun_path) on macOS and the BSDs (108 on Linux), with the NUL
BIND_SUFFIX = 17         # ssh binds "<ControlPath>.<16 random characters>", then renames it
NAME_LENGTH = 20         # hex digits of sm-ssh connect's socket names
CONFIG_NAME_LENGTH = 40  # ssh's %C (a SHA-1 in hex), used in the ssh config we write
# PROTOCOL.mux
_HELLO, _ALIVE_CHECK, _TERMINATE = 0x00000001, 0x10000004, 0x10000005
_S_OK, _S_ALIVE = 0x80000001, 0x80000005
_VERSION = 4


def persist_seconds(environ: Mapping[str, str] | None = None) -> int | None:
    """Seconds a master outlives its last session, or None when reuse is off."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if value in _OFF:
        return None
    if value in _ON:
        return DEFAULT_PERSIST
    if value.isdigit():
        return int(value)
    raise UsageError(f"{ENV}={value!r}: expected a number of seconds a connection is kept "
                     "for reuse, or off")


def _fits(directory: Path, name_length: int) -> bool:
    return len(os.fsencode(str(directory))) + 1 + name_length + BIND_SUFFIX < SOCKET_PATH_MAX


def _private(directory: Path, create: bool) -> bool:
    """``directory`` exists (created if asked), is ours, is no symlink and is 0700."""
    try:
        if create and not os.path.lexists(directory):
            portable.private_dirs(directory)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return False
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(directory, 0o700)
        return True
    except OSError as e:
        logger.debug("no sockets in %s: %s", directory, e)
        return False


def _runtime_dir(environ: Mapping[str, str]) -> Path | None:
    """``$XDG_RUNTIME_DIR`` when it is the user's own (logind makes it 0700 per user)."""
    value = environ.get("XDG_RUNTIME_DIR", "")
    if not value or not os.path.isabs(value):
        return None
    try:
        st = os.lstat(value)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    return Path(value)


def candidates(ssh_dir: Path, for_config: bool = False,
               environ: Mapping[str, str] | None = None) -> Sequence[Path]:
    """The directories for sockets, best first. The ssh config (``for_config``) never uses
    the temporary directory: ssh connects to a configured ControlPath before any command of
    ours could check who made it."""
    env = os.environ if environ is None else environ
    found = [ssh_dir / "sm-ssh" / "cm"]
    runtime = _runtime_dir(env)
    if runtime is not None:
        found.append(runtime / "sm-ssh")
    if not for_config:
        found.append(Path(tempfile.gettempdir()) / f"sm-ssh-{os.geteuid()}")
    return found


def control_dir(ssh_dir: Path, for_config: bool = False, create: bool = True,
                environ: Mapping[str, str] | None = None) -> Path | None:
    """The private directory for master sockets, or None (no such place: reuse is off)."""
    if os.name == "nt" or not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows
        return None
    length = CONFIG_NAME_LENGTH if for_config else NAME_LENGTH
    for directory in candidates(ssh_dir, for_config, environ):
        if _fits(directory, length) and _private(directory, create):
            return directory
    return None


def name(*parts: str) -> str:
    """A socket name for a master: a hash of what it was made for."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:NAME_LENGTH]


# -- the multiplexing protocol ----------------------------------------------------------------
def _send(sock: socket.socket, *words: int) -> None:
    body = struct.pack(f">{len(words)}I", *words)
    sock.sendall(struct.pack(">I", len(body)) + body)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the master closed the socket")
        data += chunk
    return data


def _receive(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _exactly(sock, 4))
    if not 4 <= length <= 256 * 1024:
        raise ConnectionError(f"unexpected packet of {length} bytes")
    return _exactly(sock, length)


def _hello(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        _send(sock, _HELLO, _VERSION)
        reply = _receive(sock)
        if struct.unpack(">I", reply[:4])[0] != _HELLO:
            raise ConnectionError("no hello from the master")
        return sock
    except BaseException:
        sock.close()
        raise


def probe(path: Path, timeout: float = 2.0) -> int | None:
    """The PID of the live master at ``path``, or None. A dead master's socket (nobody
    listens) is removed; a master that does not answer within ``timeout`` (stopped, hung) is
    left running but its socket is removed, so it never blocks a new connection."""
    try:
        sock = _hello(path, timeout)
    except FileNotFoundError:
        return None
    except OSError as e:
        if isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED:
            logger.debug("removing the socket of a master that is gone: %s", path)
        else:
            logger.debug("master at %s does not answer (%s): setting it aside", path, e)
        _remove(path)
        return None
    with sock:
        try:
            _send(sock, _ALIVE_CHECK, 1)
            kind, _, pid = struct.unpack(">III", _receive(sock)[:12])
        except (OSError, struct.error) as e:
            logger.debug("master at %s failed its alive check (%s)", path, e)
            _remove(path)
            return None
    return int(pid) if kind == _S_ALIVE else None


def terminate(path: Path, timeout: float = 2.0) -> bool:
    """Ask the master at ``path`` to exit (as ``ssh -O exit``); True if it agreed."""
    try:
        sock = _hello(path, timeout)
    except OSError:
        _remove(path)
        return False
    with sock:
        try:
            _send(sock, _TERMINATE, 1)
            return bool(struct.unpack(">I", _receive(sock)[:4])[0] == _S_OK)
        except (OSError, struct.error):
            return False


def _remove(path: Path) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
