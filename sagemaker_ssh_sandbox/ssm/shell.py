"""Shell sessions of the agent stand-in (``aws ssm start-session --target mi-...``).

Like the real agent on Linux, a session without a document runs ``sh`` on a pseudo-terminal
as ``ssm-user`` (created on first use, with passwordless sudo, where ``useradd`` exists; else as
root), in ``/usr/bin``. The terminal's bytes travel on the session's data stream. When the
client's input ends, the terminal gets an end-of-file (Ctrl-D); when the shell exits, the
stream ends. Standard library only (runs inside job containers).
"""
from __future__ import annotations

import logging
import os
import pty
import shutil
import signal
import subprocess
import threading

from sagemaker_ssh_sandbox.ssm.channel import BUFFER_SIZE, StreamEnd

logger = logging.getLogger("amazon-ssm-agent")

SESSION_USER = "ssm-user"
SUDOERS = "/etc/sudoers.d/ssm-agent-users"
START_DIR = "/usr/bin"
EOT = b"\x04"


def session_user() -> str:
    """``ssm-user``, created (with a sudoers entry) if missing; root where that fails.
    ``SM_SSH_SANDBOX_SHELL_USER`` names another existing user (tests that run the agent on
    the machine itself use it, so that no user is created there)."""
    chosen = os.environ.get("SM_SSH_SANDBOX_SHELL_USER")
    if chosen:
        return chosen
    if subprocess.run(["id", "-u", SESSION_USER], capture_output=True,
                      check=False).returncode == 0:
        return SESSION_USER
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    done = subprocess.run([useradd, "-m", "-s", "/bin/sh", SESSION_USER], capture_output=True,
                          text=True, check=False) if os.path.exists(useradd) else None
    if done is None or done.returncode != 0:
        logger.warning("cannot create %s (%s): shell sessions run as root", SESSION_USER,
                       done.stderr.strip() if done else "no useradd")
        return "root"
    try:
        os.makedirs(os.path.dirname(SUDOERS), exist_ok=True)
        with open(SUDOERS, "w") as f:
            f.write(f"{SESSION_USER} ALL=(ALL) NOPASSWD:ALL\n")
        os.chmod(SUDOERS, 0o440)
    except OSError as e:
        logger.warning("cannot write %s: %s", SUDOERS, e)
    return SESSION_USER


def shell_argv(user: str) -> list[str]:
    if user == "root":
        return ["sh"]
    return ["runuser", "-u", user, "--", "sh"]


def _exec_shell(user: str) -> None:
    """In the forked child: become the shell, in the session's start directory."""
    try:
        os.chdir(START_DIR)
    except OSError:
        os.chdir("/")
    env = dict(os.environ, TERM=os.environ.get("TERM", "xterm"))
    if user != "root":
        env.update(HOME=os.path.expanduser(f"~{user}"), USER=user, LOGNAME=user)
    argv = shell_argv(user)
    try:
        os.execvpe(argv[0], argv, env)
    finally:
        os._exit(127)


def run_shell(remote: StreamEnd, user: str) -> int:
    """Relay a new ``sh`` on a pseudo-terminal over ``remote`` until the shell exits."""
    pid, master = pty.fork()
    if pid == 0:
        _exec_shell(user)

    def upstream() -> None:  # client -> terminal; the client's EOF is a Ctrl-D
        while True:
            try:
                data = remote.recv(BUFFER_SIZE)
            except OSError:
                data = b""
            try:
                os.write(master, data or EOT)
            except OSError:
                return
            if not data:
                return

    threading.Thread(target=upstream, daemon=True, name="shell-input").start()
    while True:  # terminal -> client, until the shell (and the terminal) end
        try:
            data = os.read(master, BUFFER_SIZE)
        except OSError:  # EIO: the shell exited
            data = b""
        if not data:
            break
        try:
            remote.sendall(data)
        except OSError:
            os.kill(pid, signal.SIGHUP)
            break
    _, status = os.waitpid(pid, 0)
    os.close(master)
    remote.shutdown_write()
    return os.waitstatus_to_exitcode(status)
