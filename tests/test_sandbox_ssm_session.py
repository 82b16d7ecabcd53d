"""Session Manager through the stand-ins: plugin <-> service <-> agent <-> a real TCP server."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError
from test_sandbox_ssm_support import (
    PLUGIN,
    echo_server,
    free_port,
    online_agent,
    sshd_available,
    started_sshd,
    wait_for,
)


def _plugin(response: dict[str, Any], params: dict[str, Any], env: dict[str, str],
            **kwargs: Any) -> subprocess.Popen:
    """Start the plugin exactly as aws-cli does (response handed over in the environment)."""
    env = dict(env, AWS_SSM_START_SESSION_RESPONSE=json.dumps(
        {k: response[k] for k in ("SessionId", "TokenValue", "StreamUrl")}))
    argv = [str(PLUGIN), "AWS_SSM_START_SESSION_RESPONSE", "us-east-1", "StartSession", "",
            json.dumps(params), "http://127.0.0.1:1"]
    return subprocess.Popen(argv, env=env, **kwargs)


def _start(ssm: Any, mi: str, document: str, **parameters: list[str]) -> tuple:
    params = {"Target": mi, "DocumentName": document, "Parameters": parameters}
    return ssm.start_session(**params), params


def test_ssh_session_documents_relay_bytes_concurrently(tmp_path: Path) -> None:
    with echo_server() as port, online_agent(tmp_path) as (server, ssm, mi, agent, env):
        plugins = []
        for i in range(4):
            response, params = _start(ssm, mi, "AWS-StartSSHSession", portNumber=[str(port)])
            assert response["StreamUrl"] == (f"ws://127.0.0.1:{server.port}/v1/data-channel/"
                                             f"{response['SessionId']}?role=publish_subscribe")
            proc = _plugin(response, params, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            plugins.append((proc, f"payload {i} ".encode() * 5000))
        for proc, payload in plugins:  # all four sessions are open at the same time
            out, _ = proc.communicate(payload, timeout=30)
            assert proc.returncode == 0 and out == payload
        wait_for(lambda: not ssm.describe_sessions(State="Active")["Sessions"],
                 what="sessions ended")  # the service notices right after the plugins exit
        history = ssm.describe_sessions(State="History", Filters=[
            {"key": "Target", "value": mi}])["Sessions"]
        assert len(history) == 4
        assert {s["Status"] for s in history} == {"Terminated"}
        assert history[0]["DocumentName"] == "AWS-StartSSHSession"
        assert history[0]["SessionId"].startswith("testing-")  # the caller's access key


def test_terminate_session_ends_the_plugin(tmp_path: Path) -> None:
    with echo_server() as port, online_agent(tmp_path) as (server, ssm, mi, agent, env):
        response, params = _start(ssm, mi, "AWS-StartSSHSession", portNumber=[str(port)])
        proc = _plugin(response, params, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin and proc.stdout
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ping\n"
        (session,) = ssm.describe_sessions(State="Active")["Sessions"]
        assert session["Status"] == "Connected" and session["Target"] == mi
        # process names as the real agent's, which idle detection in containers looks for
        agent_process = psutil.Process(agent.pid)
        assert agent_process.name() == "amazon-ssm-agent"
        assert os.path.basename(agent_process.cmdline()[0]) == "amazon-ssm-agent"
        assert [p.name() for p in agent_process.children()] == ["ssm-session-worker"]
        resumed = ssm.resume_session(SessionId=response["SessionId"])
        assert resumed["TokenValue"] != response["TokenValue"]
        ssm.terminate_session(SessionId=response["SessionId"])
        assert proc.wait(15) == 0
        proc.stdin.close()
        proc.stdout.close()
        with pytest.raises(ClientError) as e:
            ssm.resume_session(SessionId=response["SessionId"])
        assert e.value.response["Error"]["Code"] == "DoesNotExistException"


def test_port_forwarding_session_accepts_many_connections(tmp_path: Path) -> None:
    with echo_server() as port, online_agent(tmp_path) as (server, ssm, mi, agent, env):
        local = free_port()
        response, params = _start(ssm, mi, "AWS-StartPortForwardingSession",
                                  portNumber=[str(port)], localPortNumber=[str(local)])
        proc = _plugin(response, params, env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout
        lines = [proc.stdout.readline() for _ in range(4)]
        assert f"Port {local} opened for sessionId {response['SessionId']}.\n" in lines
        for i in range(3):
            with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
                conn.sendall(b"hello %d" % i)
                conn.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := conn.recv(4096):
                    received += chunk
                assert received == b"hello %d" % i
        ssm.terminate_session(SessionId=response["SessionId"])
        assert proc.wait(15) == 0
        assert "Exiting session with sessionId" in proc.stdout.read()
        proc.stdout.close()


def test_plugin_reports_unreachable_port_and_bad_input(tmp_path: Path) -> None:
    with online_agent(tmp_path) as (server, ssm, mi, agent, env):
        response, params = _start(ssm, mi, "AWS-StartSSHSession", portNumber=[str(free_port())])
        failed = _plugin(response, params, env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = failed.communicate(timeout=30)
        assert failed.returncode == 1 and out == ""
        assert err.startswith("Connection to destination port failed") and "refused" in err
    banner = subprocess.run([str(PLUGIN)], capture_output=True, text=True, check=True)
    assert "The Session Manager plugin was installed successfully" in banner.stdout
    version = subprocess.run([str(PLUGIN), "--version"], capture_output=True, text=True)
    assert version.stdout.strip().count(".") == 3
    bad = subprocess.run([str(PLUGIN), "AWS_SSM_START_SESSION_RESPONSE", "us-east-1"],
                         capture_output=True, text=True,
                         env=dict(os.environ, AWS_SSM_START_SESSION_RESPONSE=""))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# What aws-cli's `ssm start-session` does, for machines without aws-cli: StartSession, then
# exec the plugin with the response in AWS_SSM_START_SESSION_RESPONSE.
_LAUNCHER = r"""
import json, os, sys, boto3
target, port = sys.argv[1], sys.argv[2]
params = {"Target": target, "DocumentName": "AWS-StartSSHSession",
          "Parameters": {"portNumber": [port]}}
ssm = boto3.client("ssm")
response = ssm.start_session(**params)
os.environ["AWS_SSM_START_SESSION_RESPONSE"] = json.dumps(
    {k: response[k] for k in ("SessionId", "TokenValue", "StreamUrl")})
os.execvp("session-manager-plugin", ["session-manager-plugin", "AWS_SSM_START_SESSION_RESPONSE",
          ssm.meta.region_name, "StartSession", "", json.dumps(params), ssm.meta.endpoint_url])
"""


@pytest.mark.skipif(not sshd_available(), reason="needs root, sshd, ssh and unshare")
@pytest.mark.parametrize("launcher", ["aws-cli", "boto3"])
def test_real_ssh_through_the_plugin(tmp_path: Path, launcher: str) -> None:
    if launcher == "aws-cli":
        if shutil.which("aws") is None:
            pytest.skip("aws-cli is not installed")
        proxy = ("aws ssm start-session --target %h --document-name AWS-StartSSHSession "
                 "--parameters portNumber=%p")
    else:
        (tmp_path / "launch.py").write_text(_LAUNCHER)
        proxy = f"{sys.executable} {tmp_path / 'launch.py'} %h %p"
    with started_sshd(tmp_path) as (port, key), \
            online_agent(tmp_path) as (server, ssm, mi, agent, env):
        argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no",  # tests only: throw-away host key
                "-o", "UserKnownHostsFile=/dev/null", "-o", f"ProxyCommand={proxy}",
                f"root@{mi}", "echo connected-as-$(id -un); head -c 200000 /dev/zero | wc -c"]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["connected-as-root", "200000"]
        wait_for(lambda: not ssm.describe_sessions(State="Active")["Sessions"],
                 what="session terminated after ssh exit")
        (done,) = ssm.describe_sessions(State="History")["Sessions"]
        assert done["Target"] == mi and done["Status"] == "Terminated"


HAVE_AWS_CLI = importlib.util.find_spec("awscli") is not None
AWS_CLI = [sys.executable, "-m", "awscli"]  # the `aws` command of AWS CLI v1 (pip install)


@pytest.mark.skipif(not HAVE_AWS_CLI, reason="no AWS CLI v1 for this Python (pip install awscli)")
def test_aws_cli_start_session_shell_and_ssh_document(tmp_path: Path) -> None:
    """The seed's Method A, `aws ssm start-session --target mi-...` (AWS CLI v1 from pip, no
    document: a shell), and its troubleshooting line with AWS-StartSSHSession."""
    with started_sshd(tmp_path) as (sshd_port, _), online_agent(tmp_path) as (_, ssm, mi, _, env):
        shell = subprocess.run([*AWS_CLI, "ssm", "start-session", "--target", mi],
                               input="echo shell-$((6 * 7)) in $(pwd)\nexit\n", env=env,
                               capture_output=True, text=True, timeout=60)
        assert shell.returncode == 0, shell.stderr
        assert shell.stdout.startswith("\nStarting session with SessionId: ")
        assert "shell-42 in /usr/bin" in shell.stdout
        assert "Exiting session with sessionId: " in shell.stdout
        ssh = subprocess.run([*AWS_CLI, "ssm", "start-session", "--target", mi, "--document-name",
                              "AWS-StartSSHSession", "--parameters",
                              f"portNumber={sshd_port}"], input=b"SSH-2.0-probe\r\n", env=env,
                             capture_output=True, timeout=60)
        assert ssh.stdout.startswith(b"SSH-2.0-OpenSSH"), (ssh.stdout, ssh.stderr)
        history = ssm.describe_sessions(State="History", Filters=[
            {"key": "Target", "value": mi}])["Sessions"]
        assert {s["DocumentName"] for s in history} == {"SSM-SessionManagerRunShell",
                                                       "AWS-StartSSHSession"}


def test_session_streams_keep_the_services_throughput_ceiling() -> None:
    """After the burst, bytes pass at the configured rate (a fake clock: no timing here)."""
    from sagemaker_ssh_sandbox.ssm.channel import RateLimit, pump
    from sagemaker_ssh_sandbox.ssm.service import DEFAULT_SESSION_RATE, session_ceiling

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    limit = RateLimit(rate=1_000_000, burst=1_000_000, clock=lambda: now[0], sleep=sleep)
    chunks = [b"x" * 50_000] * 200  # 10 MB
    received: list[bytes] = []
    assert pump(lambda size: chunks.pop() if chunks else b"", received.append, limit)
    assert sum(map(len, received)) == 10_000_000
    assert now[0] == pytest.approx(9.0)  # (10 MB - 1 MB of burst) at 1 MB/s
    small = RateLimit(rate=1_000_000, burst=1_000_000, clock=lambda: now[0], sleep=sleep)
    before = now[0]
    small.take(64_000)  # interactive traffic never waits
    assert now[0] == before

    assert session_ceiling({}) == (DEFAULT_SESSION_RATE, 4 * 1024 * 1024)
    assert DEFAULT_SESSION_RATE == 700_000
    assert session_ceiling({"SM_SSH_SANDBOX_SESSION_RATE": "off"})[0] == 0
    assert session_ceiling({"SM_SSH_SANDBOX_SESSION_RATE": "2e6",
                            "SM_SSH_SANDBOX_SESSION_BURST": "0"}) == (2e6, 0)
    with pytest.raises(ValueError, match="SM_SSH_SANDBOX_SESSION_RATE"):
        session_ceiling({"SM_SSH_SANDBOX_SESSION_RATE": "fast"})
