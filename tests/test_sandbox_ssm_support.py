"""Helpers for the SSM stand-in tests (no tests here): servers, agents, echo and sshd servers."""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import boto3
from botocore.config import Config
from conftest import free_port

from sagemaker_ssh_sandbox.ssm.service import SSMServer, start_ssm_server

T = TypeVar("T")
BIN = Path(__file__).resolve().parents[1] / "sagemaker_ssh_sandbox" / "ssm" / "bin"
AGENT = BIN / "amazon-ssm-agent"
PLUGIN = BIN / "session-manager-plugin"
REGISTERED = "Successfully registered the instance with AWS SSM using Managed instance-id: "


def wait_for(predicate: Callable[[], T | None], timeout: float = 15.0,
             interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last value: {last!r})")


def ssm_client(server: SSMServer, retries: int = 1) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": retries})
    return boto3.client("ssm", endpoint_url=server.url, region_name="us-east-1", config=config)


def agent_env(server: SSMServer, state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AWS_ENDPOINT_URL_SSM=server.url, SSM_AGENT_STATE_DIR=str(state_dir),
               SM_SSH_PYTHON=sys.executable, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               SM_SSH_SANDBOX_SHELL_USER=getpass.getuser())  # no ssm-user on this machine
    env.pop("PYTHONPATH", None)  # the shims must find the package on their own
    return env


def register(ssm: Any, env: dict[str, str], tags: dict[str, str] | None = None,
             **activation: Any) -> tuple[str, dict[str, str]]:
    """CreateActivation + ``amazon-ssm-agent -register``; returns (instance id, activation)."""
    act = ssm.create_activation(IamRole="SageMakerRole",
                                Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()],
                                **activation)
    result = subprocess.run(
        [str(AGENT), "-register", "-code", act["ActivationCode"], "-id", act["ActivationId"],
         "-region", "us-east-1", "-y"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(REGISTERED), result.stdout
    return result.stdout.strip()[len(REGISTERED):], act


def agent_log(env: dict[str, str]) -> Path:
    return Path(env["SSM_AGENT_STATE_DIR"]).with_name("agent.log")


@contextmanager
def running_agent(env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """The agent daemon; its log (stderr) goes to ``agent_log(env)``."""
    log = agent_log(env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stderr:
        proc = subprocess.Popen([str(AGENT)], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ping_status(ssm: Any, instance_id: str) -> str:
    found = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])["InstanceInformationList"]
    return str(found[0]["PingStatus"]) if found else ""


@contextmanager
def online_agent(tmp_path: Path, heartbeat_timeout: float = 10.0,
                 tags: dict[str, str] | None = None
                 ) -> Iterator[tuple[SSMServer, Any, str, subprocess.Popen, dict[str, str]]]:
    """A stand-in service with one registered, running and Online agent."""
    server = start_ssm_server(heartbeat_timeout=heartbeat_timeout,
                              invocation_visibility_delay=0.2)
    try:
        ssm = ssm_client(server)
        env = agent_env(server, tmp_path / "agent-state")
        instance_id, _ = register(ssm, env, tags)
        with running_agent(env) as proc:
            wait_for(lambda: ping_status(ssm, instance_id) == "Online", what="agent Online")
            yield server, ssm, instance_id, proc, env
    finally:
        server.shutdown()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)


@contextmanager
def echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()




def sshd_available() -> bool:
    return os.geteuid() == 0 and Path("/usr/sbin/sshd").exists() \
        and shutil.which("unshare") is not None and shutil.which("ssh") is not None


@contextmanager
def started_sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real sshd on a free 127.0.0.1 port with a tmp host key and authorized_keys.

    It runs in a private mount namespace with a tmpfs over /run (privilege-separation
    directory) and an empty root home (no host dotfiles in the sessions), so nothing touches the
    host. Yields (port, client private key).
    """
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}",
        f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "LogLevel ERROR", ""]))
    (d / "home").mkdir()
    home = Path(os.path.expanduser("~root"))  # login shells must not read the host's dotfiles
    script = ("mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && "
              f"mount --bind {d / 'home'} {home} && "
              f"exec /usr/sbin/sshd -D -e -f {d / 'sshd_config'}")
    proc = subprocess.Popen(["unshare", "--mount", "--fork", "--kill-child", "sh", "-c", script],
                            stderr=subprocess.PIPE)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {proc.stderr.read() if proc.stderr else b''!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        wait_for(listening, what="sshd listening")
        yield port, d / "client_key"
    finally:
        proc.kill()  # unshare ignores SIGTERM; --kill-child takes sshd down with it
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
