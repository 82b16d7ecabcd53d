"""Tunnels that come back: ``sm-ssh tunnel`` and ``sm-ssh connect -N --keep-alive``.

SSM recycles a session's websocket about once an hour and drops it when the laptop's network
changes; ssh then exits and its forwards die. Here ssh runs in a loop:

1. the first connection is made as ``sm-ssh connect`` makes it (resolve, push the key, start
   the session, run ssh); a failure before the tunnel was ever up is explained and ends the
   command, as a wrong option or a refused key will not fix itself;
2. once up, any end of ssh that the user did not ask for is a drop: it is said on stderr and
   the tunnel is re-established with the common jittered exponential backoff (``retry``), resolving
   the resource again each time (a restarted container registers a new managed instance: the
   key is pushed to it and the change is said), for up to ``--wait`` seconds after the drop;
3. ssh's keep-alive is tightened (``KEEP_ALIVE_OPTIONS``) so that a session that hangs
   without closing is noticed within seconds, not minutes;
4. Ctrl-C (or SIGTERM/SIGHUP) ends ssh, which ends its ProxyCommand (the plugin); every
   session started is terminated on the service side too, so nothing is left running.

"Up" is known from ssh itself: it runs ``LocalCommand`` (a marker file) once the connection
and its forwards are set up; should the user's own ``LocalCommand`` win, ssh still running
after ``UP_AFTER`` seconds counts as up.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_helper import cli, retry
from sagemaker_ssh_helper.connect import (
    Choice,
    Context,
    Prepared,
    explain_failure,
    prepare,
    ssh_argv,
)
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError, UsageError
from sagemaker_ssh_helper.sshrun import (
    SSH_FAILED,
    SSH_FLAGS_WITH_VALUE,
    LogEcho,
    SshPlan,
    wants_own_log,
)

logger = logging.getLogger(__name__)

# Passed after the user's options (theirs win) and before ours: a silent session is declared
# dead after 3 unanswered keep-alives 5 s apart (SSM relays them like any data), 15-20 s.
# A ControlMaster from ssh_config would run the forwards in a master this loop cannot watch
# (or one left by another command): no multiplexing, unless asked for on the command line.
KEEP_ALIVE_OPTIONS = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                      "-o", "ExitOnForwardFailure=yes", "-o", "ControlPath=none")
BACKOFF_BASE = 1.0  # the first reconnection waits 0.5-1 s, each next one up to twice as long
BACKOFF_CAP = 30.0  # ... up to 15-30 s (equal jitter, so clients do not stampede)
STABLE_AFTER = 10.0  # a tunnel up this long starts the backoff afresh after its next drop
UP_AFTER = 10.0  # without our LocalCommand marker: ssh still running this long counts as up
POLL = 0.1


def needs_forward(plan: SshPlan) -> None:
    """A tunnel without -L/-R/-D forwards nothing: say so before anything is pushed."""
    if not plan.forwards:
        raise UsageError("a tunnel needs a forward: add -L LOCAL_PORT:HOST:PORT (or -R, -D), "
                         "e.g. -L 8080:localhost:8080")


def not_in_background(plan: SshPlan, options: Sequence[str]) -> None:
    """ssh -f would leave the loop at once with its tunnel running on its own, never watched."""
    if plan.background or _has_flag(options, "f"):
        raise UsageError("ssh -f cannot be watched: leave it out and run the tunnel itself in "
                         "the background (e.g. `sm-ssh tunnel ... &`)")


def _has_flag(options: Sequence[str], letter: str) -> bool:
    for opt in options:
        if opt.startswith("-") and not opt.startswith("--"):
            for flag in opt[1:]:
                if flag == letter:
                    return True
                if flag in SSH_FLAGS_WITH_VALUE:
                    break
    return False


def no_session(plan: SshPlan, options: Sequence[str]) -> bool:
    """ssh runs no remote command or shell (``-N``), as ``ssh -G`` or the flags say."""
    if plan.session_type is not None:
        return bool(plan.session_type == "none")
    return _has_flag(options, "N")


def backoff_delays(rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Seconds to wait before each reconnection attempt: ``retry.backoff_delay`` from
    BACKOFF_BASE up to BACKOFF_CAP."""
    attempt = 0
    while True:
        yield retry.backoff_delay(attempt, rng, base=BACKOFF_BASE, cap=BACKOFF_CAP)
        attempt += 1


@dataclass
class Attempt:
    """How one run of ssh ended."""

    returncode: int
    was_up: bool
    up_seconds: float  # how long the tunnel was up (0 if never)
    log_text: str  # ssh's -E log, for the explanation of a failure


class Stopper:
    """Ctrl-C, SIGTERM or SIGHUP while the tunnel runs: remember it and end the current ssh
    (a terminal's Ctrl-C reaches ssh and the plugin by itself; a signal sent to this process
    alone is passed on)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = 0
        self.child: subprocess.Popen[Any] | None = None

    def handle(self, signum: int, _frame: Any) -> None:
        self.signum = self.signum or signum
        self.event.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    @contextmanager
    def installed(self) -> Iterator[Stopper]:
        """Our handlers while ssh runs or a reconnection waits; elsewhere (resolving, pushing
        the key: no session is open) Ctrl-C interrupts as in every command."""
        names = ("SIGINT", "SIGTERM", "SIGHUP")
        signums = [getattr(signal, n) for n in names if hasattr(signal, n)]
        previous = {s: signal.getsignal(s) for s in signums}
        try:
            for s in signums:
                signal.signal(s, self.handle)
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def marker_command(path: Path) -> str:
    """ssh's ``LocalCommand`` that creates ``path`` (run by ssh once the tunnel is set up)."""
    from sagemaker_ssh_helper.proxy import shell_command

    return shell_command([sys.executable, "-S", "-c",
                          "import sys; open(sys.argv[1], 'w').close()", str(path)])


def run_once(ctx: Context, prepared: Prepared, user_options: Sequence[str], port: int,
             stopper: Stopper, on_up: Callable[[], None]) -> Attempt:
    """One run of ssh over a new session, until it ends or ``stopper`` fires; the session is
    always terminated afterwards (best effort)."""
    from sagemaker_ssh_helper import proxy, session

    ssm = ctx.manager().ssm
    started = session.open_session(ssm, prepared.instance_id, port, ctx.profile)
    env = dict(os.environ, **{session.RESPONSE_ENV: started.response_env})
    returncode, up_at, text = SSH_FAILED, None, ""
    try:
        with tempfile.TemporaryDirectory(prefix="sm-ssh-tunnel-") as tmp:
            marker = Path(tmp) / "up"
            log = None if wants_own_log(user_options) else Path(tmp) / "ssh.log"
            ours = [*KEEP_ALIVE_OPTIONS, "-o", "PermitLocalCommand=yes",
                    "-o", f"LocalCommand={marker_command(marker)}"]
            argv = ssh_argv(ctx, prepared, [*user_options, *ours], [], log,
                            proxy.shell_command(started.plugin_argv))
            logger.debug("running %s", argv)
            sys.stdout.flush()
            sys.stderr.flush()
            echo = LogEcho(log) if log is not None else None
            began = time.monotonic()
            try:
                with stopper.installed():
                    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
                    stopper.child = child
                    if stopper.stopped:  # the signal came before the child was known
                        child.send_signal(signal.SIGTERM)
                    while child.poll() is None:
                        if stopper.stopped:
                            _end(child)
                            break
                        stopper.event.wait(POLL)
                        now = time.monotonic()
                        if up_at is None and (marker.exists() or now - began >= UP_AFTER):
                            up_at = now
                            on_up()
                    returncode = child.wait()
            finally:
                stopper.child = None
                if echo is not None:  # how ssh said it ended is in the drop's message
                    echo.stop()
            text = log.read_text(errors="replace") if log is not None and log.exists() else ""
            if up_at is None and marker.exists():  # up, then dropped between two polls
                up_at = time.monotonic()
                on_up()
    finally:
        session.terminate_session(ssm, started.session_id)
    returncode = 128 - returncode if returncode < 0 else returncode
    return Attempt(returncode, up_at is not None,
                   time.monotonic() - up_at if up_at is not None else 0.0, text)


def _end(child: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """ssh was told to stop: give it ``grace`` seconds to close its session, then kill it."""
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        child.kill()


def reason(attempt: Attempt) -> str:
    """Why ssh ended, in its own last words."""
    lines = [line.strip() for line in attempt.log_text.splitlines() if line.strip()]
    if lines:
        return lines[-1]
    return "the session closed" if attempt.returncode == SSH_FAILED else \
        f"ssh exited with {attempt.returncode}"


class Tunnel:
    """The loop of ``keep_alive``: its state between two runs of ssh."""

    def __init__(self, ctx: Context, target_text: str, choice: Choice,
                 user_options: Sequence[str], port: int, say: Callable[[str], None],
                 clock: Callable[[], float]) -> None:
        self.ctx, self.target_text, self.choice = ctx, target_text, choice
        self.user_options, self.port, self.say, self.clock = user_options, port, say, clock
        self.stopper = Stopper()
        self.prepared: Prepared | None = None
        self.dropped_at: float | None = None  # None until the first drop
        self.delays = backoff_delays()
        self.last_error: SSHHelperError | None = None

    @property
    def where(self) -> str:
        assert self.prepared is not None
        return f"{self.prepared.destination} ({self.prepared.instance_id})"

    def on_up(self) -> None:
        if self.dropped_at is None:
            self.say(f"tunnel to {self.where} is up; Ctrl-C closes it")
        else:
            self.say(f"tunnel to {self.where} is back after "
                     f"{self.clock() - self.dropped_at:.1f} s")

    def closed(self) -> int:
        self.say(f"tunnel to {self.where} closed")
        return 128 + self.stopper.signum

    def run(self) -> int:
        self.prepared = prepare(self.ctx, self.target_text, self.choice)
        while True:
            attempt = self.attempt()
            if self.stopper.stopped:
                return self.closed()
            if self.dropped_at is None and not attempt.was_up:  # the first connection
                if attempt.returncode == SSH_FAILED and attempt.log_text.strip():
                    raise explain_failure(attempt.log_text, self.prepared)
                return attempt.returncode  # ssh ended by itself before it was up
            if attempt.was_up:
                if attempt.up_seconds >= STABLE_AFTER:
                    self.delays = backoff_delays()
                self.dropped_at = self.clock()
                self.say(f"tunnel to {self.where} dropped ({reason(attempt)}); reconnecting")
            elif attempt.returncode == SSH_FAILED and attempt.log_text.strip():
                self.last_error = explain_failure(attempt.log_text, self.prepared)
                self.say(f"cannot reconnect yet: {cli.one_line(self.last_error)}")
            if not self.reconnect():
                return self.closed()

    def attempt(self) -> Attempt:
        assert self.prepared is not None
        try:
            return run_once(self.ctx, self.prepared, self.user_options, self.port,
                            self.stopper, self.on_up)
        except SSHHelperError as e:  # the session could not start (AWS, the instance)
            if self.dropped_at is None or isinstance(e, UsageError):
                raise
            self.say(f"cannot reconnect yet: {cli.one_line(e)}")
            self.last_error = e
            return Attempt(SSH_FAILED, False, 0.0, "")

    def reconnect(self) -> bool:
        """Wait the next delay, then resolve the target again (False: stopped meanwhile).
        Gives up with the last error ``choice.wait`` seconds after the drop."""
        previous, dropped_at = self.prepared, self.dropped_at
        assert previous is not None and dropped_at is not None
        while True:
            delay = next(self.delays)
            left = dropped_at + self.choice.wait - self.clock()
            if left <= 0:
                why = f": {self.last_error}" if self.last_error is not None else ""
                raise SSHHelperError(f"the tunnel to {previous.destination} could not be "
                                     f"re-established within {self.choice.wait:.0f} s{why}")
            with self.stopper.installed():
                if self.stopper.event.wait(min(delay, left)):
                    return False
            try:
                self.prepared = prepare(
                    self.ctx, self.target_text,
                    dataclasses.replace(self.choice, wait=max(left - delay, 0.0)),
                    reuse=previous)
            except ResolutionError:
                raise  # the resource ended, or no instance came back online within --wait
            except SSHHelperError as e:  # AWS unreachable or throttled (network change)
                self.say(f"cannot reconnect yet: {cli.one_line(e)}")
                self.last_error = e
                continue
            if self.prepared.instance_id != previous.instance_id:
                self.say(f"{self.prepared.destination} is now on {self.prepared.instance_id} "
                         f"(was {previous.instance_id})")
            return True


def keep_alive(ctx: Context, target_text: str, choice: Choice, user_options: Sequence[str],
               port: int, say: Callable[[str], None],
               clock: Callable[[], float] = time.monotonic) -> int:
    """Run the tunnel until the user stops it (exit code 128 + the signal), or until it cannot
    be re-established within ``choice.wait`` seconds of a drop (the last error is raised)."""
    return Tunnel(ctx, target_text, choice, user_options, port, say, clock).run()
