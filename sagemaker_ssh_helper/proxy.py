"""The ``ssh`` command line we run, and ``SSMProxy``: an SSH tunnel for automation and tests.

``ssh_options`` is the single list of ``-o`` options every ssh invocation of this package uses;
``proxy_command`` is the ProxyCommand that carries ssh over an SSM session.
"""
from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Union

from sagemaker_ssh_helper import aws, keys, retry
from sagemaker_ssh_helper.errors import SSHHelperError, ToolMissing

logger = logging.getLogger(__name__)

SSH_HELP = ("ssh not found on PATH: install the OpenSSH client "
            "(e.g. `apt-get install openssh-client`)")
# Without sm-wait on PATH: create the file with noclobber (O_EXCL: a planted symlink is never
# followed), after removing a symlink found there.
STOP_WAITING = ("if command -v sm-wait >/dev/null 2>&1; then sm-wait stop; "
                "else f=/tmp/sm-wait-stopped; if [ -L \"$f\" ]; then rm -f \"$f\"; fi; "
                "[ -f \"$f\" ] || (set -C; : >\"$f\"); fi")


def find_ssh() -> str:
    path = shutil.which("ssh")
    if not path:
        raise ToolMissing(SSH_HELP)
    return path


def _escape(value: str) -> str:
    """A literal for ssh's config parser: ``%`` escaped, quoted if it holds blanks."""
    value = value.replace("%", "%%")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def proxy_command(instance_id: str, region: str, profile: str | None = None,
                  python: str | None = None) -> str:
    """``<python> -m sagemaker_ssh_helper.session <mi> --port %p --region R [--profile P]``.

    Quoted for ``/bin/sh`` and with literal ``%`` doubled; ``%p`` stays ssh's port token, so
    the session's portNumber follows ``ssh -p``.
    """
    parts = [python or sys.executable, "-m", "sagemaker_ssh_helper.session", instance_id,
             "--port", None, "--region", region]
    if profile:
        parts += ["--profile", profile]
    return " ".join("%p" if p is None else shlex.quote(p).replace("%", "%%") for p in parts)


def ssh_options(*, identity_file: Path, known_hosts: Path, host_key_alias: str, user: str,
                proxy_cmd: str | None, control: Sequence[str] = ()) -> list[str]:
    """Every ``-o`` option we pass to ssh, in one place (no ProxyCommand if ``proxy_cmd`` is
    None: for a tunnel that already leads to the container's sshd). ``control``: the
    connection-sharing options (``control_options``); by default none, whatever the user's
    ssh_config says (``sm-ssh config`` writes ``ControlMaster auto`` with a ``%C`` path, the
    same for every node of a job: a command meant for algo-2 would ride algo-1's master)."""
    options = [
        # Offer only the per-target key: an agent holding many keys would trip MaxAuthTries.
        "-o", f"IdentityFile={_escape(str(identity_file))}",
        "-o", "IdentitiesOnly=yes",
        # SageMaker containers run as root; Studio apps as sagemaker-user.
        "-o", f"User={user}",
        # Host keys arrive over SSM (authenticated by IAM) and are pinned under the target's
        # name in a file of ours; unknown or changed keys are refused.
        "-o", f"HostKeyAlias={host_key_alias}",
        "-o", f"UserKnownHostsFile={_escape(str(known_hosts))}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        # Keep idle sessions alive through SSM and notice a stopped container within a minute.
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        # A requested -L/-R that cannot be set up is an error, not a silent partial tunnel.
        "-o", "ExitOnForwardFailure=yes",
    ]
    if proxy_cmd is not None:
        # The transport: an SSM AWS-StartSSHSession session to the container's sshd.
        options += ["-o", f"ProxyCommand={proxy_cmd}"]
    return options + (list(control) or control_options("none"))


def control_options(mode: str, path: Path | None = None, persist: int = 0) -> list[str]:
    """Connection sharing (OpenSSH ControlMaster), always explicit so that a ControlMaster in
    the user's ssh_config never applies by accident:

    - ``"master"``: this ssh becomes the shared connection at ``path`` and stays ``persist``
      seconds after its last session;
    - ``"client"``: use the master at ``path``; if it is gone, connect on its own (the
      ProxyCommand still leads to the same instance), never becoming a master;
    - ``"none"``: a connection of its own, shared with nobody.
    """
    if mode == "none" or path is None:
        return ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    where = ["-o", f"ControlPath={_escape(str(path))}"]
    if mode == "master":
        return ["-o", "ControlMaster=yes", *where, "-o", f"ControlPersist={persist}"]
    return ["-o", "ControlMaster=no", *where]


# Known ssh / session messages (from ssh's stderr) -> what the user should do.
_SSH_ERRORS = (
    ("UNPROTECTED PRIVATE KEY FILE", "ssh ignores the SSH key because other users can read it: "
                                     "chmod 600 the key file"),
    ("Permission denied", "the container refused the key: the key push may have been "
                          "overwritten; retry, or check /etc/ssh/authorized_keys in the container"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the container's host key changed: reconnect "
                                               "so sm-ssh fetches the new one"),
    ("Host key verification failed", "the container's host key does not match the pinned one: "
                                     "reconnect so sm-ssh fetches it again"),
    ("remote port forwarding failed", "a port the container should listen on (-R) is taken: "
                                      "choose another remote port (or --ssh-only)"),
    ("Address already in use", "a local forwarding port is already in use: choose another port"),
    ("cannot listen to port", "a local forwarding port is already in use: choose another port"),
    ("TargetNotConnected", "the instance is not connected to SSM (the container stopped?)"),
    ("session-manager-plugin not found", "install session-manager-plugin (sm-local-configure)"),
    ("kex_exchange_identification", "the session closed before sshd answered: is sshd running "
                                    "in the container?"),
    ("Connection closed by", "the session closed before sshd answered: is sshd running in the "
                             "container?"),
)


def shell_command(argv: Sequence[str]) -> str:
    """``argv`` as a ProxyCommand: quoted for ``/bin/sh``, literal ``%`` doubled for ssh."""
    return " ".join(shlex.quote(a).replace("%", "%%") for a in argv)


def ssh_error(stderr_text: str, what: str, exit_code: int | None = None) -> SSHHelperError:
    """A typed, one-line error for a failed ssh run, from the messages ssh printed."""
    for needle, hint in _SSH_ERRORS:
        if needle in stderr_text:
            return SSHHelperError(f"{what} failed: {hint}", exit_code)
    last = [line for line in stderr_text.strip().splitlines() if line.strip()][-1:]
    return SSHHelperError(f"{what} failed" + (f": {last[0]}" if last else ""), exit_code)


Command = Union[str, Sequence[str]]


class SSMProxy:
    """An SSH master connection to a container over SSM, forwarding
    ``localhost:<ssh_listen_port>`` to the container's sshd (plus ``extra_args``, e.g.
    ``"-L 8080:localhost:8080"``). ``remote_port`` is the sshd port in the container.

    Commands go through the master's control socket. Use as a context manager, or call
    ``disconnect()``; every path cleans up the ssh process and its temporary files.
    ``cloudwatch_url`` (the container's logs) is named in connection errors;
    ``fetch_proxy_output()`` returns what ssh printed since the last call.

    The constructor is the one of SSH Helper v2 (``ssh_listen_port, extra_args='',
    region_name=None, cloudwatch_url=None``) with optional extras after it.
    """

    def __init__(self, ssh_listen_port: int, extra_args: str = "",
                 region_name: str | None = None, cloudwatch_url: str | None = None,
                 session: Any = None, *, user: str = "root", name: str | None = None,
                 remote_port: int = 22, connect_timeout: float = 120) -> None:
        self.ssh_listen_port = int(ssh_listen_port)
        self.extra_args = extra_args
        self.cloudwatch_url = cloudwatch_url
        self.session = session or aws.boto_session(region=region_name)
        self.region_name = region_name or aws.session_region(self.session)
        self._output_offset = 0
        self.user = user
        self.name = name
        self.remote_port = int(remote_port)
        self.connect_timeout = connect_timeout
        self.instance_id: str | None = None
        self.master: subprocess.Popen[Any] | None = None
        self._tmp: Path | None = None
        self._options: list[str] = []
        self._alias = ""

    def __enter__(self) -> SSMProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()

    @property
    def _control(self) -> Path:
        assert self._tmp is not None, "not connected"
        return self._tmp / "ctl"

    def connect_to_ssm_instance(self, instance_id: str) -> subprocess.Popen[Any]:
        """Push a key, pin host keys, start the master; return once the tunnel is up."""
        if self.master is not None:
            raise SSHHelperError("SSMProxy is already connected: call disconnect() first")
        ssh = find_ssh()
        ssm = aws.client(self.session, "ssm", self.region_name)
        if instance_id.startswith("sagemaker-"):  # SageMaker's own target (native transport)
            from sagemaker_ssh_helper import native

            auth = native.authorize_target(self.session, self.region_name, instance_id,
                                           self.name, self.connect_timeout)
        else:
            auth = keys.authorize(ssm, self.session, instance_id, self.name or instance_id)
        self.instance_id, self._alias = instance_id, auth.host_key_alias
        profile = self.session.profile_name if self.session.profile_name != "default" else None
        self._options = ssh_options(
            identity_file=auth.key_path, known_hosts=auth.known_hosts,
            host_key_alias=auth.host_key_alias, user=self.user,
            proxy_cmd=proxy_command(instance_id, self.region_name, profile))
        self._tmp = Path(tempfile.mkdtemp(prefix="sm-ssh-"))
        log = self._tmp / "ssh.log"
        # The caller's extra arguments come first: ssh keeps the first value of an option.
        argv = [ssh, *shlex.split(self.extra_args), "-N", "-M", "-S", str(self._control),
                "-E", str(log), *self._options, "-p", str(self.remote_port),
                "-L", f"127.0.0.1:{self.ssh_listen_port}:localhost:{self.remote_port}",
                self._alias]
        logger.info("connecting to %s, sshd on localhost:%d", instance_id, self.ssh_listen_port)
        try:
            with open(log, "ab") as err:
                self.master = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=err)
            self._wait_ready(log)
        except BaseException:
            self.disconnect()
            raise
        return self.master

    def _wait_ready(self, log: Path) -> None:
        poll = retry.Poll(self.connect_timeout, first=0.05, cap=0.5, clip=False)
        while True:
            assert self.master is not None
            if self.master.poll() is not None:
                error = ssh_error(log.read_text(errors="replace"),
                                  f"ssh to {self.instance_id} (exit {self.master.returncode})")
                if self.cloudwatch_url:
                    error = SSHHelperError(f"{error}; container logs: {self.cloudwatch_url}",
                                           error.exit_code)
                raise error
            if self._control.exists() and self._check():
                return
            if poll.expired():
                raise SSHHelperError(f"ssh to {self.instance_id} not ready after "
                                     f"{self.connect_timeout:.0f} s")
            poll.wait()

    def _check(self) -> bool:
        done = subprocess.run([find_ssh(), "-S", str(self._control), "-O", "check", self._alias],
                              capture_output=True, check=False, timeout=30)
        return done.returncode == 0

    def _command_argv(self, command: Command) -> list[str]:
        if self.master is None:
            raise SSHHelperError("SSMProxy is not connected: call connect_to_ssm_instance()")
        remote = command if isinstance(command, str) else shlex.join(command)
        return [find_ssh(), "-S", str(self._control), *self._options, "-p", str(self.remote_port),
                self._alias, remote]

    def start_command(self, command: Command, **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``command`` in the container (a string for the remote shell, or an argv)
        and return the local ``ssh`` process without waiting."""
        return subprocess.Popen(self._command_argv(command), **popen_kwargs)

    def run_command(self, command: Command, timeout: float | None = None) -> int:
        """Run ``command`` in the container, its output going to this process's stdout and
        stderr; return its exit code (as in SSH Helper v2)."""
        done = subprocess.run(self._command_argv(command), stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
        return int(done.returncode)

    def fetch_proxy_output(self) -> str:
        """What the ssh master wrote (its ``-E`` log: warnings, forwarding errors) since the
        previous call; empty when not connected."""
        if self._tmp is None:
            return ""
        try:
            with open(self._tmp / "ssh.log", "rb") as f:
                f.seek(self._output_offset)
                data = f.read()
        except OSError:
            return ""
        self._output_offset += len(data)
        return data.decode("latin1")

    def run_command_with_output(self, command: Command, timeout: float | None = None
                                ) -> bytes:
        """Run ``command`` in the container and return its stdout; raises
        ``subprocess.CalledProcessError`` on a non-zero exit."""
        done = subprocess.run(self._command_argv(command), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr.decode(errors="replace"))
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout,
                                                done.stderr)
        return bytes(done.stdout)

    def terminate_waiting_loop(self) -> None:
        """Release the container's ``sm-wait`` loop so the job goes on."""
        logger.info("releasing the wait loop on %s", self.instance_id)
        self.run_command_with_output(STOP_WAITING, timeout=120)

    def disconnect(self) -> None:
        """Stop the master ssh (which closes the SSM session) and remove temporary files."""
        master, self.master = self.master, None
        if master is not None and master.poll() is None:
            with suppress(OSError, SSHHelperError, subprocess.SubprocessError):
                subprocess.run([find_ssh(), "-S", str(self._control), "-O", "exit", self._alias],
                               capture_output=True, check=False, timeout=10)
            try:
                master.wait(timeout=10)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._output_offset = 0

