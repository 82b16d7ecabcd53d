"""The few file operations that differ between POSIX and Windows (stdlib only: every side)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


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
