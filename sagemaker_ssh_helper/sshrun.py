"""Running ssh: what it will do with the user's options, and showing what it says.

- ``plan_ssh`` asks ``ssh -G`` how it reads the user's options (every spelling: grouped flags
  such as ``-NL``, ``-o LocalForward=...``, ``-o DynamicForward``, ssh_config files), so that
  bad options fail before anything is pushed, and so that every local listener is known.
- ``check_local_ports`` refuses a local forwarding port that is taken on ANY address ssh would
  listen on (both loopback families): ssh itself only warns when one of them is taken, and
  ``localhost:<port>`` then reaches whatever squats it.
- ``run_ssh`` runs ssh in the foreground; ``LogEcho`` shows ssh's own messages (its ``-E``
  log) while the session runs, held back a moment so that a failure, which ends ssh at once,
  is explained in one line instead of printed raw.
"""
from __future__ import annotations

import errno
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sagemaker_ssh_helper.errors import UsageError

logger = logging.getLogger(__name__)

# ssh(1) flags that take a value (OpenSSH's getopt string); every other flag stands alone.
SSH_FLAGS_WITH_VALUE = frozenset("BDEFIJLOPQRSWbceilmopw")
SSH_FAILED = 255  # ssh's own exit code for connection failures


# ``ssh -G`` settings kept in a plan besides the port and listeners: who ssh logs in as and
# with which keys and host keys (what a shared connection must match), and what makes a
# connection more than a session (forwarding, no session, going to the background).
PLAN_SETTINGS = ("user", "identityfile", "userknownhostsfile", "stricthostkeychecking",
                 "remoteforward", "sessiontype", "forkafterauthentication", "tunnel",
                 "proxyjump")


@dataclass(frozen=True)
class SshPlan:
    """What ssh will do with the user's options, as ``ssh -G`` resolves them (command line,
    ``-o`` options and ssh_config alike): the port, the local listeners it will open, and the
    ``PLAN_SETTINGS``."""

    port: int
    listeners: tuple[tuple[str, int], ...]  # (bind address: "localhost", "*" or an address, port)
    forwards: int = 0  # -L, -R and -D forwards in all
    session_type: str | None = None  # "none" with -N (OpenSSH >= 8.7 says; else None)
    background: bool = False  # -f (ForkAfterAuthentication, as OpenSSH >= 8.7 says)
    settings: tuple[tuple[str, str], ...] = ()

    def values(self, key: str) -> list[str]:
        return [value for k, value in self.settings if k == key]


def plan_ssh(user_options: Sequence[str], destination: str,
             defaults: Sequence[str] = ()) -> SshPlan:
    """Run ``ssh -G``: options ssh rejects (a bad port, a malformed -L) fail here in one line,
    before anything is pushed to the container. ``defaults`` (our options) come after the
    user's, as on the command line we run, so the settings are the ones ssh will use."""
    from sagemaker_ssh_helper.proxy import find_ssh

    done = subprocess.run([find_ssh(), "-G", *user_options, *defaults, destination],
                          capture_output=True, text=True, check=False, timeout=30,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        why = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["?"]
        raise UsageError(f"ssh rejects the options {' '.join(user_options) or '(none)'}: "
                         f"{why[0]}")
    return parse_ssh_config(done.stdout)


def parse_ssh_config(text: str) -> SshPlan:
    """The port, local listeners, forwards, session type and ``PLAN_SETTINGS`` in ``ssh -G``
    output."""
    port, gateway, listens, remote, session_type, background = 22, False, [], 0, None, False
    settings = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        key = key.lower()
        if key in PLAN_SETTINGS:
            settings.append((key, value.strip()))
        if key == "remoteforward":
            remote += 1
        elif key == "sessiontype":
            session_type = value.strip()
        elif key == "forkafterauthentication":
            background = value.strip() == "yes"
        elif key == "port" and value.strip().isdigit():
            port = int(value)
        elif key == "gatewayports":
            gateway = value.strip() == "yes"
        elif key in ("localforward", "dynamicforward"):
            listens.append(value.split()[0] if value.split() else "")
    listeners = [bound for bound in (_listener(listen, gateway) for listen in listens) if bound]
    return SshPlan(port, tuple(listeners), len(listens) + remote, session_type, background,
                   tuple(settings))


def _listener(listen: str, gateway: bool) -> tuple[str, int] | None:
    """(bind address, port) of a LocalForward/DynamicForward listen spec; None for a unix
    socket path (nothing to check)."""
    bracketed = re.match(r"^\[(.*)\]:(\d+)$", listen)
    if bracketed:
        return bracketed.group(1) or "*", int(bracketed.group(2))
    if listen.isdigit():  # no bind address: loopback, or every address with GatewayPorts
        return "*" if gateway else "localhost", int(listen)
    if ":" in listen and listen.rsplit(":", 1)[1].isdigit():
        host, number = listen.rsplit(":", 1)
        return host or "*", int(number)
    return None


def ssh_port(user_options: Sequence[str], destination: str) -> int:
    """The port ssh will use (``-p``, ``-o Port``, ssh_config), as ``ssh -G`` resolves it."""
    return plan_ssh(user_options, destination).port


def wants_own_log(user_options: Sequence[str]) -> bool:
    """True when the user asked ssh for its log (-v, -E, -q): then ssh's stderr is left alone."""
    for opt in user_options:
        if opt.startswith("-") and not opt.startswith("--"):
            flags = opt[1:]
            for flag in flags:
                if flag in "vqE":
                    return True
                if flag in SSH_FLAGS_WITH_VALUE:
                    break
    return False


def _bind_addresses(host: str) -> list[tuple[int, str]]:
    """The sockets ssh opens for a listener (it binds every address, IPv6 ones v6-only)."""
    if host == "localhost":
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    if host in ("*", ""):
        return [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []  # ssh itself will say the address is wrong
    return sorted({(int(family), str(sockaddr[0])) for family, _, _, _, sockaddr in infos
                   if family in (socket.AF_INET, socket.AF_INET6)})


def check_local_ports(listeners: Sequence[tuple[str, int]],
                      hint: str = "choose another port for -L/-D") -> None:
    """Fail early, in one line, when a local forwarding port is taken on any address ssh would
    listen on: with one loopback family taken, ssh listens on the other only, and
    ``localhost:<port>`` then reaches whatever holds the port."""
    for host, port in listeners:
        for family, address in _bind_addresses(host):
            try:
                s = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                continue  # no IPv6 here: ssh will not listen there either
            with s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh's listeners do
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((address, port))
                except OSError as e:
                    if e.errno == errno.EADDRNOTAVAIL:
                        continue  # e.g. ::1 on a host without IPv6 loopback
                    raise UsageError(f"local port {port} ({address}) is not available: "
                                     f"{e.strerror or e}; {hint}") from None


def run_ssh(argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ssh in the foreground; Ctrl-C belongs to it, SIGTERM/SIGHUP are passed on."""
    from sagemaker_ssh_helper import session

    sys.stdout.flush()
    sys.stderr.flush()
    with session.user_signals_left_to_child(("SIGINT", "SIGQUIT")):
        child = subprocess.Popen(list(argv), env=env)
        with session.forwarded_termination(child):
            returncode = child.wait()
    return 128 - returncode if returncode < 0 else returncode


class LogEcho:
    """Copy ssh's ``-E`` log to stderr while ssh runs.

    Each line is shown ``hold`` seconds after it was written, if ssh still runs then: warnings
    during a session (a forwarded connection refused, a listener ssh could not open) appear
    when they happen, while the messages of a failure, after which ssh exits at once, are left
    for the one-line explanation. ``stop()`` returns what was not shown.
    """

    def __init__(self, path: Path, out: TextIO | None = None, hold: float = 1.0,
                 interval: float = 0.2, from_end: bool = False) -> None:
        self.path = path
        self.out = out
        self.hold = hold
        self.interval = interval
        self._offset = 0
        if from_end:  # only what is written from now on (a shared connection's log)
            try:
                self._offset = path.stat().st_size
            except OSError:
                pass
        self._partial = ""
        self._pending: list[tuple[float, str]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ssh-log-echo", daemon=True)
        self._thread.start()

    def _read(self, now: float) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk.decode(errors="replace")).split("\n")
        self._pending.extend((now, line) for line in lines)

    def _show(self, now: float) -> None:
        out = self.out or sys.stderr
        due = [line for seen, line in self._pending if seen <= now - self.hold]
        if not due:
            return
        self._pending = self._pending[len(due):]
        end = "\r\n" if out.isatty() else "\n"  # ssh may have the terminal in raw mode
        out.write("".join(line.rstrip("\r") + end for line in due))
        out.flush()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            now = time.monotonic()
            self._read(now)
            self._show(now)

    def stop(self) -> str:
        self._stopped.set()
        self._thread.join()
        self._read(time.monotonic())
        rest = [line for _, line in self._pending] + ([self._partial] if self._partial else [])
        self._pending, self._partial = [], ""
        return "".join(line + "\n" for line in rest)
