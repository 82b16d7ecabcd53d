"""End to end: `sm-ssh connect`, `start-proxy` and SSMProxy against a real sshd and the SSM
stand-in's agent, both running in a private mount/PID/UTS namespace ("container") whose
/etc/ssh, /run and /tmp are its own, so the host's files are never touched."""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import create_training_job, free_port, is_root_linux, keep_visible, wait_until
from e2e_helpers import get, laptop_page, stop

from sagemaker_ssh_helper import keys
from sagemaker_ssh_helper.errors import SSHHelperError
from sagemaker_ssh_helper.proxy import SSMProxy

ssm_service = pytest.importorskip("sagemaker_ssh_sandbox.ssm.service")
moto_server = pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parents[1]
SANDBOX_BIN = REPO / "sagemaker_ssh_sandbox" / "ssm" / "bin"
ACCOUNT = "123456789012"
REGISTERED = "Successfully registered the instance with AWS SSM using Managed instance-id"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not is_root_linux() or not Path("/usr/sbin/sshd").exists()
                       or not (SANDBOX_BIN / "amazon-ssm-agent").exists(),
                       reason="needs root on Linux, /usr/sbin/sshd and the SSM stand-in"),
]

CONTAINER_SH = r"""
set -euo pipefail
hostname "$NODE_NAME"
mount -t tmpfs tmpfs /run
mkdir -p /run/sshd /run/work
mount --bind "$WORK" /run/work
mount --bind /run/work/etc-ssh /etc/ssh
eval "$KEEP_BEFORE"
mount -t tmpfs tmpfs /tmp
eval "$KEEP_AFTER"
export SSM_AGENT_STATE_DIR=/run/work/agent
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config 2>>/run/work/sshd.log &
for _ in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null && break
  sleep 0.05
done
amazon-ssm-agent -register -code "$CODE" -id "$ACTIVATION_ID" -region us-east-1 -y
exec amazon-ssm-agent >>/run/work/agent.log 2>&1
"""
SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
PidFile none
AllowTcpForwarding yes
"""




def running_job_logged(name: str, node: str, *lines: str) -> None:
    """What SageMaker does for the job ``name``: it exists and runs (moto would say Completed at
    once), and the container's output is in its log stream ``<name>/<node>-<epoch>``."""
    from moto.sagemaker.models import sagemaker_backends

    sm = boto3.client("sagemaker")
    try:
        create_training_job(name, sm, instance_count=2, max_runtime=3600)
    except sm.exceptions.ClientError as e:
        assert "already" in str(e).lower() or "exist" in str(e).lower(), e
    sagemaker_backends[ACCOUNT]["us-east-1"].training_jobs[name].training_job_status = \
        "InProgress"
    logs, group = boto3.client("logs"), "/aws/sagemaker/TrainingJobs"
    stream = f"{name}/{node}-{int(time.time())}"
    for call, kwargs in ((logs.create_log_group, {"logGroupName": group}),
                         (logs.create_log_stream, {"logGroupName": group,
                                                   "logStreamName": stream})):
        try:
            call(**kwargs)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
        {"timestamp": int(time.time() * 1000), "message": line} for line in lines])


class Container:
    """A namespace with sshd on ``port`` and the stand-in agent, registered with SSH* tags."""

    def __init__(self, work: Path, name: str, kind: str = "training-job",
                 node: str = "algo-1") -> None:
        self.work, self.port, self.node = work, free_port(), node
        (work / "etc-ssh").mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(work / "etc-ssh" / "ssh_host_ed25519_key")], check=True)
        (work / "etc-ssh" / "sshd_config").write_text(SSHD_CONFIG.format(port=self.port))
        tags = {"SSHResourceName": name, "SSHOwner": "tester", "SSHCreator": "tester",
                "SSHResourceArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:{kind}/{name.lower()}",
                "SSHTimestamp": str(int(time.time()))}
        activation = boto3.client("ssm").create_activation(
            IamRole="SageMakerRole", DefaultInstanceName=name,
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        keep_before, keep_after = keep_visible("/run/work", covered=("/tmp",))
        env = dict(os.environ, WORK=str(work), NODE_NAME=node, SSHD_PORT=str(self.port),
                   KEEP_BEFORE=keep_before, KEEP_AFTER=keep_after,
                   CODE=activation["ActivationCode"], ACTIVATION_ID=activation["ActivationId"])
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
             "bash", "-c", CONTAINER_SH], env=env, stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "Successfully registered" in line, f"agent did not register: {line!r}"
        self.instance_id = line.split()[-1]
        if kind == "training-job":
            running_job_logged(name, node, line.strip())
        ssm, deadline = boto3.client("ssm"), time.monotonic() + 30
        while ssm.describe_instance_information(Filters=[
                {"Key": "InstanceIds", "Values": [self.instance_id]}, {"Key": "PingStatus",
                                                                        "Values": ["Online"]}]
        )["InstanceInformationList"] == []:
            assert time.monotonic() < deadline, "the agent never came online"
            time.sleep(0.1)

    @property
    def authorized_keys(self) -> list[str]:
        return (self.work / "etc-ssh" / "authorized_keys").read_text().splitlines()

    def stop(self) -> None:
        self.proc.kill()  # --kill-child: the namespace's processes die with it
        self.proc.wait(timeout=30)
        # as a container does at exit; otherwise it stays Online until its heartbeat times out
        boto3.client("ssm").deregister_managed_instance(InstanceId=self.instance_id)


class Aws:
    """moto (STS, SageMaker) and the SSM stand-in, as the client reaches them."""

    def __init__(self) -> None:
        self.moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0,
                                                   verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.ssm = ssm_service.start_ssm_server()
        self.env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                    "AWS_ENDPOINT_URL_SSM": self.ssm.url}

    def add_fake(self, name: str, resource: str, count: int, ping: str) -> list[str]:
        return list(self.ssm.backend.add_fake_instances(count, ping_status=ping, tags={
            "SSHResourceName": name,
            "SSHResourceArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:{resource}"}))

    def stop(self) -> None:
        self.ssm.shutdown()
        self.moto.stop()


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    a = Aws()
    yield a
    a.stop()


@pytest.fixture
def env(aws: Aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    for key, value in aws.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{SANDBOX_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("SM_SSH_PYTHON", sys.executable)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_KEY", raising=False)
    (tmp_path / "home").mkdir()
    return dict(os.environ)


@pytest.fixture
def container(env: dict[str, str], tmp_path: Path) -> Iterator[Container]:
    c = Container(tmp_path / "c1", "Job-E2e")
    yield c
    c.stop()


def sm_ssh(args: list[str], env: dict[str, str], timeout: float = 120,
           **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args],
                          env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def test_connect_runs_the_command_and_returns_its_exit_code(
        container: Container, env: dict[str, str], tmp_path: Path) -> None:
    done = sm_ssh(["connect", "Job-E2e.training.sagemaker", "-p", str(container.port), "--",
                   "hostname; echo $USER; exit 3"], env)
    assert (done.returncode, done.stdout) == (3, "algo-1\nroot\n"), done.stderr
    home = tmp_path / "home" / ".ssh"
    key = home / "job-e2e.training.sagemaker"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    marker = keys.client_marker(key)
    assert container.authorized_keys == [
        f"{keys.public_key(key)} {marker}"]
    host_pub = (container.work / "etc-ssh" / "ssh_host_ed25519_key.pub").read_text().split()
    # pinned with the instance the keys came from and when they were first seen
    assert re.fullmatch(rf"job-e2e\.training\.sagemaker {host_pub[0]} {re.escape(host_pub[1])} "
                        r"sm-ssh:mi-[0-9a-f]{17}@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n",
                        (home / "sm-ssh-known_hosts").read_text())
    # again, with a plugin too old for the env var: the response comes as its first argument
    # (as aws-cli hands it), through ssh's ProxyCommand, quoted and with its % doubled
    old = tmp_path / "old-plugin"
    old.mkdir()
    (old / "session-manager-plugin").write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo 1.2.497.0; exit 0; }\n'
        'case "$1" in {*) ;; *) echo "not a response: $1" >&2; exit 9;; esac\n'
        f'unset AWS_SSM_START_SESSION_RESPONSE; exec {SANDBOX_BIN}/session-manager-plugin "$@"\n')
    (old / "session-manager-plugin").chmod(0o755)
    again = sm_ssh(["connect", "Job-E2e.training.sagemaker", "-p", str(container.port), "--",
                    "true"], dict(env, PATH=f"{old}:{env['PATH']}"))
    assert again.returncode == 0, again.stderr
    assert len(container.authorized_keys) == 1  # replaced, not accumulated
    cached = (home / "sm-ssh" / "plugin-version.json").read_text()
    assert "1.2.497.0" in cached and str(SANDBOX_BIN) in cached


def test_two_users_connect_at_once(container: Container, env: dict[str, str],
                                   tmp_path: Path) -> None:
    envs = []
    for user in ("alice", "bob"):
        home = tmp_path / user
        home.mkdir()
        envs.append(dict(env, HOME=str(home)))
    procs = [subprocess.Popen([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "connect",
                               "Job-E2e.training.sagemaker", "-p", str(container.port), "--",
                               "echo", f"hello-{i}"], env=e, stdout=subprocess.PIPE, text=True)
             for i, e in enumerate(envs)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["hello-0\n", "hello-1\n"]
    assert len(container.authorized_keys) == 2


@pytest.fixture
def web() -> Iterator[int]:
    with laptop_page(b"hello through the tunnel\n") as port:
        yield port


def test_local_and_remote_forwarding(container: Container, env: dict[str, str],
                                     web: int) -> None:
    local = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "connect",
                             "Job-E2e.training.sagemaker", "-p", str(container.port), "-N",
                             "-L", f"{local}:localhost:{web}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        page = wait_until(lambda: get(f"http://127.0.0.1:{local}/"), proc, "-L", timeout=60)
    finally:
        stop(proc)
    assert page == "hello through the tunnel\n"
    remote = free_port()
    fetch = (f"import urllib.request; print(urllib.request.urlopen("
             f"'http://127.0.0.1:{remote}/').read().decode(), end='')")
    done = sm_ssh(["connect", "Job-E2e.training.sagemaker", "-p", str(container.port),
                   "-R", f"{remote}:localhost:{web}", "--",
                   shlex.join([sys.executable, "-c", fetch])], env)
    assert (done.returncode, done.stdout) == (0, "hello through the tunnel\n"), done.stderr


def test_plain_ssh_through_start_proxy_with_lowercased_host(
        container: Container, env: dict[str, str], tmp_path: Path) -> None:
    """As ~/.ssh/config would: ssh lowercases %h, the job name has capitals."""
    home = tmp_path / "home" / ".ssh"
    proxy_cmd = (f"{shlex.quote(sys.executable)} -m sagemaker_ssh_helper.sm_ssh start-proxy "
                 "%h --port %p")
    done = subprocess.run(
        ["ssh", "-F", "none", "-o", f"ProxyCommand={proxy_cmd}",
         "-o", f"IdentityFile={home}/%h", "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={home}/sm-ssh-known_hosts",
         "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=job-e2e.training.sagemaker",
         "-p", str(container.port), "root@Job-E2e.training.sagemaker", "echo", "via-proxy"],
        env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "via-proxy\n"), done.stderr


def test_ssm_proxy_runs_commands_and_releases_the_wait(container: Container,
                                                       env: dict[str, str]) -> None:
    port = free_port()
    with SSMProxy(port, region_name="us-east-1", remote_port=container.port,
                  name="job-e2e.training.sagemaker") as proxy:
        proxy.connect_to_ssm_instance(container.instance_id)
        assert proxy.run_command_with_output("hostname") == b"algo-1\n"
        assert proxy.run_command_with_output(["echo", "a b"]) == b"a b\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(64).startswith(b"SSH-2.0-")  # the forwarded sshd
        proxy.terminate_waiting_loop()
        assert proxy.run_command_with_output("ls /tmp/sm-wait-stopped") == \
            b"/tmp/sm-wait-stopped\n"
        with pytest.raises(subprocess.CalledProcessError):
            proxy.run_command_with_output("exit 4")
        ctl = proxy._control
        master = proxy.master
    assert master is not None and master.poll() is not None
    assert not ctl.parent.exists()


def test_ssm_proxy_refused_port_is_a_clear_error(container: Container,
                                                 env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with SSMProxy(busy.getsockname()[1], region_name="us-east-1",
                      remote_port=container.port) as proxy:
            with pytest.raises(SSHHelperError, match="local forwarding port is already in use"):
                proxy.connect_to_ssm_instance(container.instance_id)
            assert proxy.master is None and proxy._tmp is None


def _one_line(done: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    *progress, error = done.stderr.splitlines()
    assert error.startswith("sm-ssh: ") and needle in error, done.stderr
    assert all(line.startswith("waiting for ") for line in progress), done.stderr


def test_error_cases(env: dict[str, str], aws: Aws) -> None:
    _one_line(sm_ssh(["connect", "nope.training.sagemaker", "--wait", "0"], env), 3,
              "no training job nope in us-east-1")
    _one_line(sm_ssh(["connect", "nothing.studio.sagemaker", "--wait", "1"], env), 3,
              "no SSM instance registered for nothing.studio.sagemaker in us-east-1 after 1 s")
    aws.add_fake("lost", "app/d-1/u/KernelGateway/lost", 1, "ConnectionLost")
    _one_line(sm_ssh(["connect", "lost.studio.sagemaker", "--wait", "0"], env), 3,
              "is ConnectionLost")
    multi = aws.add_fake("multi", "training-job/multi", 2, "Online")
    running_job_logged("multi", "algo-1", *(f"{REGISTERED}: {mi}" for mi in multi))
    _one_line(sm_ssh(["connect", "multi.training.sagemaker"], env), 2, "2 online instances")
    # an instance its job's log names, but the job has finished: said at once
    [done] = aws.add_fake("done-job", "training-job/done-job", 1, "ConnectionLost")
    running_job_logged("done-job", "algo-1", f"{REGISTERED}: {done}")
    from moto.sagemaker.models import sagemaker_backends
    sagemaker_backends[ACCOUNT]["us-east-1"].training_jobs["done-job"].training_job_status = \
        "Completed"
    aws.ssm.backend.reset_call_counts()
    _one_line(sm_ssh(["connect", "done-job.training.sagemaker"], env), 3,
              "training job done-job is Completed: SSH is available only while it runs")
    assert "StartSession" not in aws.ssm.backend.stats()["CallCounts"]
    aws.ssm.backend.inject_fault("SendCommand", "AccessDeniedException", 1)
    _one_line(sm_ssh(["connect", "multi.training.sagemaker", "--index", "0"], env), 4,
              "access denied for ssm:SendCommand")
    no_creds = {k: v for k, v in env.items()
                if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    _one_line(sm_ssh(["connect", "multi.training.sagemaker"], no_creds), 4,
              "no valid AWS credentials")


def test_two_nodes_are_picked_by_name_or_index(env: dict[str, str], tmp_path: Path) -> None:
    nodes = [Container(tmp_path / f"n{i}", "Two-Nodes", node=f"algo-{i}") for i in (1, 2)]
    try:
        _one_line(sm_ssh(["connect", "two-nodes.training.sagemaker"], env), 2,
                  "2 online instances: algo-1 ")
        for choice, node in ((["--node", "algo-2"], nodes[1]), (["--index", "0"], nodes[0])):
            done = sm_ssh(["connect", "Two-Nodes.training.sagemaker", *choice,
                           "-p", str(node.port), "--", "hostname"], env)
            assert (done.returncode, done.stdout) == (0, f"{node.node}\n"), done.stderr
        aliases = sorted(line.split()[0] for line in
                         (tmp_path / "home" / ".ssh" / "sm-ssh-known_hosts").read_text()
                         .splitlines())
        assert aliases == sorted(f"{n.instance_id}.two-nodes.training.sagemaker" for n in nodes)
    finally:
        for n in nodes:
            n.stop()


def test_ssh_through_the_generated_config(container: Container, env: dict[str, str],
                                          tmp_path: Path) -> None:
    done = sm_ssh(["config"], env)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    config = tmp_path / "home" / ".ssh" / "config"
    # ssh reads ~ from the password database, not $HOME: point it at the test's file.
    ssh = subprocess.run(["ssh", "-F", str(config), "-p", str(container.port),
                          "-o", "HostKeyAlias=job-e2e.training.sagemaker",
                          "Job-E2e.training.sagemaker", "echo", "via-config"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert (ssh.returncode, ssh.stdout) == (0, "via-config\n"), ssh.stderr
