"""The few file operations that differ between POSIX and Windows (stdlib only: every side)."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def exclusive(lock: IO[Any]) -> Iterator[None]:
    """Hold an exclusive lock on the open file ``lock`` (fcntl on POSIX, msvcrt on Windows)."""
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        lock.seek(0)
        msvcrt.locking(lock.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            lock.seek(0)
            msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        return
    import fcntl

    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def private_dirs(path: Path) -> None:
    """Create directory ``path`` and each missing parent with mode 0700 (``mkdir(parents=True)``
    gives the parents the umask's mode, often 0755)."""
    for directory in reversed([path, *path.parents]):
        if not directory.is_dir():
            directory.mkdir(mode=0o700, exist_ok=True)


@contextmanager
def forwarding(child: subprocess.Popen[Any],
               names: Sequence[str] = ("SIGTERM", "SIGINT", "SIGHUP")) -> Iterator[list[int]]:
    """Pass the signals ``names`` (those the OS has) on to ``child`` while the block runs; yields
    the list of the signals received. As PID 1 (a container's entry point) a signal left to its
    default action is not even delivered. Main thread only: elsewhere, nothing is forwarded."""
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous: dict[int, Any] = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in [getattr(signal, n) for n in names if hasattr(signal, n)]:
                previous[signum] = signal.signal(signum, forward)
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def set_mode(fd: int, path: str, mode: int) -> None:
    """chmod a file we just created, by descriptor where the OS has ``fchmod``."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # pragma: no cover - Windows: only the read-only bit exists
        os.chmod(path, mode)


def write_file(path: Path, text: str, mode: int, parents: bool = False) -> None:
    """Replace ``path`` atomically with ``text``, created with ``mode`` (a private file is
    never readable by others, not even for a moment); ``parents``: create its folder first."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        set_mode(fd, tmp, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
