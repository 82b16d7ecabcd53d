"""The agent works from its own network namespace, reaching the service through a unix-socket
bridge that keeps the port number (as job containers do): nothing depends on peer addresses."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_sandbox_ssm_support import (
    AGENT,
    PLUGIN,
    agent_env,
    ping_status,
    register,
    ssm_client,
    wait_for,
)

from sagemaker_ssh_sandbox.ssm.channel import StreamEnd, relay
from sagemaker_ssh_sandbox.ssm.service import SSMServer, start_ssm_server

pytestmark = pytest.mark.skipif(
    not (os.name == "posix" and os.geteuid() == 0 and shutil.which("unshare")
         and shutil.which("ip")), reason="needs root, unshare and ip")

# Runs inside `unshare --net --uts --pid` (so the agent dies with it): loopback up, hostname
# algo-1, 127.0.0.1:<port> -> unix socket, an echo server on 127.0.0.1:<echo port>, then the
# agent in the foreground.
_INSIDE = r"""
import socket, subprocess, sys, threading
from sagemaker_ssh_sandbox.ssm.channel import StreamEnd, relay
port, path, echo_port, agent = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
socket.sethostname("algo-1")

def serve(listener, handle):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()

def bridge(conn):
    up = socket.socket(socket.AF_UNIX)
    up.connect(path)
    relay(StreamEnd(conn), StreamEnd(up))
    conn.close(); up.close()

def echo(conn):
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.close()

for p, handler in ((port, bridge), (echo_port, echo)):
    listener = socket.create_server(("127.0.0.1", p))
    threading.Thread(target=serve, args=(listener, handler), daemon=True).start()
sys.exit(subprocess.call([agent]))
"""


@contextmanager
def _unix_bridge(path: Path, port: int) -> Iterator[None]:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(64)

    def forward(conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", port))
        relay(StreamEnd(conn), StreamEnd(up))
        conn.close()
        up.close()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=forward, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield
    finally:
        listener.close()


def test_agent_in_network_namespace_behind_unix_bridge(tmp_path: Path) -> None:
    server = start_ssm_server()
    try:
        with _unix_bridge(tmp_path / "ssm.sock", server.port):
            _run_agent_in_namespace(server, tmp_path)
    finally:
        server.shutdown()


def _run_agent_in_namespace(server: SSMServer, tmp_path: Path) -> None:
    ssm = ssm_client(server)
    env = agent_env(server, tmp_path / "state")
    mi, _ = register(ssm, env)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # for the bridge code only
    echo_port = 22022  # free for sure: the namespace has its own loopback
    proc = subprocess.Popen(
        ["unshare", "--net", "--uts", "--pid", "--mount", "--mount-proc", "--fork", "--kill-child",
         sys.executable, "-c", _INSIDE,
         str(server.port), str(tmp_path / "ssm.sock"), str(echo_port), str(AGENT)],
        env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ping_status(ssm, mi) == "Online", what="agent Online")
        info = ssm.describe_instance_information()["InstanceInformationList"][0]
        assert info["ComputerName"] == "algo-1" and info["IPAddress"] == "127.0.0.1"
        session = ssm.start_session(Target=mi, DocumentName="AWS-StartSSHSession",
                                    Parameters={"portNumber": [str(echo_port)]})
        response = json.dumps({k: session[k] for k in ("SessionId", "TokenValue", "StreamUrl")})
        plugin = subprocess.run(
            [str(PLUGIN), response, "us-east-1", "StartSession", "",
             json.dumps({"Target": mi, "DocumentName": "AWS-StartSSHSession"}), server.url],
            input=b"inside the namespace\n", capture_output=True, env=env, timeout=30)
        assert plugin.returncode == 0, plugin.stderr
        assert plugin.stdout == b"inside the namespace\n"
        ssm.deregister_managed_instance(InstanceId=mi)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
