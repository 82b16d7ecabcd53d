"""``sm-wait <seconds>|stop|list``: hold a job until the user has connected, or time runs out.

``sm-wait N`` returns after N seconds or as soon as ``/tmp/sm-wait-stopped`` exists, printing a
progress line every 10 seconds that says how far the SSM agent has got. ``sm-wait stop`` creates
the file (locally, or remotely over SSH / SSM), which releases every waiting ``sm-wait`` in the
container. ``sm-wait list`` shows the waiting ``sm-wait`` processes and their time left; it finds
them by their command line, so there is no state to clean up.

When the SSH setup failed (``sm-setup-ssh`` wrote the reason to ``setup-failed`` in the state
directory), nobody can connect: ``sm-wait N`` says "SSH setup failed: <reason>" and returns
after ``FAILED_GRACE`` seconds instead of holding the job for the whole wait.
"""
from __future__ import annotations

import os
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sagemaker_ssh_helper import contract
from sagemaker_ssh_helper.env import (
    SETUP_FAILED_FILE,
    agent_running,
    iter_processes,
    registered_instance_id,
)

STOP_FILE = Path("/tmp/sm-wait-stopped")
FAILED_GRACE = 30.0  # seconds the job still waits after the setup failed (to read the log)
PROGRESS_INTERVAL = 10.0
POLL_INTERVAL = 1.0
USAGE = "usage: sm-wait <seconds>|stop|list"
_MODULE = "sagemaker_ssh_helper.wait"


def agent_status(native: bool | None = None) -> str:
    """One phrase on how far the SSM agent has got in this container (``native``: the
    transport, else read from the environment)."""
    if native is None:
        native = contract.read(os.environ).native
    if native:
        return "native transport: SageMaker's SSM agent (remote debugging) carries SSH"
    instance_id = registered_instance_id()
    running = agent_running()
    if running and instance_id:
        return f"SSM agent running, registered as {instance_id}"
    if running:
        return "SSM agent started, registration not saved yet"
    if instance_id:
        return f"SSM agent registered as {instance_id} but not running"
    return "SSM agent not started yet"


def setup_failure(path: Path = SETUP_FAILED_FILE) -> str | None:
    """Why the SSH setup failed, if it did."""
    try:
        reason = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return " ".join(reason.split()) or None


def wait(seconds: float, stop_file: Path = STOP_FILE,
         clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep,
         status: Callable[[], str] = agent_status,
         out: Callable[[str], None] = print,
         failure: Callable[[], str | None] = setup_failure) -> str:
    """Block until ``seconds`` pass or ``stop_file`` exists; return "timeout" or "stopped",
    or "failed" when the setup failed (after ``FAILED_GRACE`` seconds)."""
    if seconds <= 0:
        return "timeout"
    deadline = clock() + seconds
    next_progress = clock()
    failed = False
    while True:
        if requested(stop_file):
            out(f"sm-wait: {stop_file} exists, continuing")
            return "stopped"
        now = clock()
        if not failed:
            reason = failure()
            if reason is not None:
                failed = True
                deadline = min(deadline, now + FAILED_GRACE)
                out(f"sm-wait: SSH setup failed: {reason}; nobody can connect, so the job "
                    f"continues in {deadline - now:.0f} s")
        remaining = deadline - now
        if remaining <= 0:
            if failed:
                out("sm-wait: SSH setup failed, continuing")
                return "failed"
            out(f"sm-wait: waited {seconds:g} s, continuing")
            return "timeout"
        if failed:
            sleep(min(POLL_INTERVAL, remaining))
            continue
        if now >= next_progress:
            out(f"sm-wait: {remaining:.0f} s left; {status()}; run `sm-wait stop` to continue now")
            next_progress = now + PROGRESS_INTERVAL
        sleep(max(0.0, min(POLL_INTERVAL, remaining, next_progress - now)))


def requested(stop_file: Path = STOP_FILE) -> bool:
    """Whether anything is at ``stop_file`` (never followed: a symlink counts as itself)."""
    return os.path.lexists(stop_file)


def stop(stop_file: Path = STOP_FILE) -> None:
    """Create ``stop_file`` as a new regular file, safely in a world-writable /tmp: a symlink
    or other non-regular file found there is removed (not followed), then the file is created
    with O_EXCL|O_NOFOLLOW, so nothing is ever written through a link."""
    try:
        st: os.stat_result | None = os.lstat(stop_file)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return  # already requested
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(stop_file)  # a symlink (dangling or not), a fifo ...: unlink never follows
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(stop_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.close(fd)


@dataclass(frozen=True)
class Waiter:
    pid: int
    seconds: int
    remaining: float


def _waited_seconds(cmdline: list[str]) -> int | None:
    """N if ``cmdline`` runs ``python -m sagemaker_ssh_helper.wait N``, else None."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == _MODULE and cmdline[i + 1].isdigit():
            return int(cmdline[i + 1])
    return None


def waiters(now: Callable[[], float] = time.time) -> list[Waiter]:
    """The other ``sm-wait N`` processes in this container, oldest first."""
    found = []
    for proc in iter_processes():
        seconds = _waited_seconds(proc.cmdline)
        if seconds is None or proc.pid == os.getpid():
            continue
        remaining = max(0.0, proc.create_time + seconds - now())
        found.append(Waiter(proc.pid, seconds, remaining))
    return sorted(found, key=lambda w: w.pid)


def list_lines(stop_file: Path = STOP_FILE) -> list[str]:
    lines = [f"PID {w.pid}: {w.remaining:.0f} s left of {w.seconds} s" for w in waiters()]
    if not lines:
        lines.append("no sm-wait is waiting")
    if requested(stop_file):
        lines.append(f"stop requested: {stop_file} exists")
    return lines


def _say(line: str) -> None:
    """Print a line; if the reader went away (``sm-wait 600 | head -1``), keep waiting quietly."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:

    from sagemaker_ssh_helper import cli
    from sagemaker_ssh_helper.errors import UsageError

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(prog="sm-wait", add_help=False)
        parser.add_argument("-h", "--help", action="store_true")
        cli.add_general_options(parser, aws=False)
        parser.add_argument("what", nargs="*")  # seconds (`-5` too: reported below), stop, list
        try:
            args = command.parse(parser, cli.argv_or_sys(argv))
        except UsageError as e:
            print(f"sm-wait: {e}; {USAGE}", file=sys.stderr)
            return 2
        if args.help:
            print(USAGE)
            return 0
        if len(args.what) != 1:
            print(f"sm-wait: expected one argument; {USAGE}", file=sys.stderr)
            return 2
        arg = args.what[0]
        if arg == "stop":
            try:
                stop()
            except OSError as e:
                print(f"sm-wait: cannot create {STOP_FILE}: {e.strerror or e} (remove what is "
                      "there and retry)", file=sys.stderr)
                return 1
            _say(f"sm-wait: created {STOP_FILE}; waiting sm-wait processes will continue")
            return 0
        if arg == "list":
            for line in list_lines():
                _say(line)
            return 0
        if not arg.isdigit():
            print(f"sm-wait: {arg!r} is not a whole number of seconds; {USAGE}", file=sys.stderr)
            return 2
        _name_process("sm-wait")
        signal.signal(signal.SIGTERM, _released_by_signal)
        try:
            native = contract.read(os.environ).native
            wait(int(arg), out=_say, status=lambda: agent_status(native))
        except _Released:
            _say("sm-wait: stopped by a signal (e.g. `pkill sm-wait`), continuing")
        return 0

    return cli.guarded_main("sm-wait", body, debug_log=False, fmt="sm-wait: %(message)s")


class _Released(Exception):
    """SIGTERM (``pkill sm-wait``, as the seed documents): release the job like ``stop``."""


def _released_by_signal(signum: int, frame: object) -> None:
    # `pkill sm-wait` signals the launcher script too, which passes the signal on: one is enough.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Released()


def _name_process(name: str) -> None:
    """Show as ``name`` in ``ps -e``/``top`` and for ``pkill name`` (Linux; best effort)."""
    try:
        with open(f"/proc/{os.getpid()}/comm", "w") as f:
            f.write(name)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
