"""The client end to end in the offline sandbox, against real job containers.

One sandbox for the module and three long-waiting training jobs launched by an unchanged user
script through ``SSHEstimatorWrapper``: ``one`` (1 node, serves a page on 127.0.0.1:8080),
``two`` (2 nodes, both with SSH) and ``nossh`` (its entry point never starts SSH). Tests talk
to them only through the commands users run: ``sm-ssh``, ``ssh`` with the generated config, and
the ``sm-local-*`` scripts. The last tests release the jobs, so the module's order matters.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SANDBOX_E2E, free_port, keep_visible, run, sm_ssh, wait_until
from e2e_helpers import (
    PAGE_ENTRY_POINT,
    forwarded_page,
    get,
    laptop_fetch,
    laptop_page,
    launch,
    ssm_calls,
    stop,
    user_env,
)

from sagemaker_ssh_helper import keys, mux
from sagemaker_ssh_sandbox import Sandbox
from sagemaker_ssh_sandbox.sagemaker.studio import exec_argv

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sagemaker_ssh_helper"

pytestmark = SANDBOX_E2E

LAUNCH = """\
import json, os, sys

from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper


def launch(entry_point, base_name, instance_count):
    estimator = PyTorch(entry_point=entry_point, source_dir=sys.argv[1],
                        dependencies=[SSHEstimatorWrapper.dependency_dir()],
                        role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                        py_version="py310", instance_count=instance_count,
                        instance_type="ml.m5.xlarge", base_job_name=base_name)
    SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=900,
                               ssh_instance_count=instance_count)
    estimator.fit(wait=False)
    return estimator.latest_training_job.name


print("JOBS " + json.dumps({"one": launch("train.py", "client-one", 1),
                            "two": launch("train.py", "client-two", 2),
                            "nossh": launch("nossh.py", "client-nossh", 1)}), flush=True)
"""

NO_SSH = "import time\ntime.sleep(900)\n"


@dataclass
class World:
    sandbox: Sandbox
    env: dict[str, str]
    jobs: dict[str, str]
    tmp: Path

    def fqdn(self, job: str) -> str:
        return f"{self.jobs[job]}.training.sagemaker"

    def home(self, name: str) -> dict[str, str]:
        """The client environment with a HOME of its own (keys, known_hosts, ssh config)."""
        home = self.tmp / name
        home.mkdir(exist_ok=True)
        return dict(self.env, HOME=str(home))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("client-e2e")
    with Sandbox(tmp / "sandbox", stop_grace=3.0) as sandbox:
        env = user_env(sandbox.env, tmp / "alice")
        env.pop("SM_SSH_REUSE", None)  # the user's default: shared connections
        jobs = json.loads(launch(LAUNCH, tmp, {"train.py": PAGE_ENTRY_POINT, "nossh.py": NO_SSH},
                                 env, marker="JOBS "))
        from sagemaker_ssh_helper.manager import SSMManager

        with sandbox.activated():
            manager = SSMManager(progress=None)
            assert len(manager.get_training_instance_ids(jobs["one"], 120)) == 1
            assert len(manager.get_training_instance_ids(jobs["two"], 120, 2)) == 2
        try:
            yield World(sandbox, env, jobs, tmp)
        finally:
            close_masters(tmp, env)


def masters(home: Path, env: dict[str, str]) -> list[Path]:
    """The sockets of the shared connections `sm-ssh connect` keeps for ``home``."""
    directory = mux.control_dir(home / ".ssh", create=False, environ=env)
    return sorted(p for p in directory.iterdir() if p.is_socket()) if directory else []


def close_masters(tmp: Path, env: dict[str, str]) -> None:
    for home in [tmp / "alice", *tmp.iterdir()]:
        for path in masters(home, env):
            mux.terminate(path)


def script(name: str, *args: str) -> list[str]:
    return ["bash", str(PACKAGE / name), *args]


def one_line_error(done: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The command failed with ``code`` and said so in one line (after progress lines)."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr
    *progress, error = done.stderr.splitlines()
    assert all(line.startswith("waiting for ") for line in progress), done.stderr
    for needle in needles:
        assert needle in error, done.stderr
    return str(error)


# -- listing -----------------------------------------------------------------------------------
def test_list_shows_the_running_jobs_online(world: World) -> None:
    done = run(sm_ssh("list"), world.env)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert rows[world.fqdn("one")][1:3] == ["InProgress", "Online"]
    assert rows[world.fqdn("nossh")][1:3] == ["InProgress", "ssh:NotFound"]

    done = run(sm_ssh("list", "training.sagemaker", "--output", "json"), world.env)
    assert done.returncode == 0, done.stderr
    listed = {row["fqdn"]: row for row in json.loads(done.stdout)}
    one, two = listed[world.fqdn("one")], listed[world.fqdn("two")]
    assert (one["status"], one["ssh"], one["name"]) == ("InProgress", "Online", world.jobs["one"])
    assert [i["computer_name"] for i in one["instances"]] == ["algo-1"]
    assert sorted(i["computer_name"] for i in two["instances"]) == ["algo-1", "algo-2"]
    assert all(i["ping_status"] == "Online" for i in two["instances"])


# -- connect -------------------------------------------------------------------------------------
def test_connect_returns_the_commands_output_and_exit_code(world: World) -> None:
    done = run(sm_ssh("connect", world.fqdn("one"), "--", "hostname; echo $USER; exit 3"),
               world.env)
    assert (done.returncode, done.stdout) == (3, "algo-1\nroot\n"), done.stderr
    # A command after the ssh options needs no "--", as with ssh.
    done = run(sm_ssh("connect", world.fqdn("one"), "-o", "LogLevel=ERROR", "cat",
                      "/opt/ml/input/config/resourceconfig.json"), world.env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["current_host"] == "algo-1"
    ssh_dir = Path(world.env["HOME"]) / ".ssh"
    key = ssh_dir / world.fqdn("one")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    pinned = (ssh_dir / "sm-ssh-known_hosts").read_text().splitlines()
    assert any(line.startswith(f"{world.fqdn('one')} ssh-ed25519 ") for line in pinned)


def test_cp_takes_what_follows_double_dash_as_file_names(world: World) -> None:
    """As for POSIX tools, `--` ends cp's options: `-weights.txt` after it is a file."""
    work = world.tmp / "dashes"
    work.mkdir()
    (work / "-weights.txt").write_text("dash\n")
    remote = f"{world.fqdn('one')}:/tmp/-weights.txt"
    for operands in (["-weights.txt", remote], [remote, "-back.txt"]):
        done = subprocess.run(sm_ssh("cp", "--", *operands), env=world.env, cwd=work,
                              capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 0 and "over the SSH session" in done.stderr, done.stderr
    assert (work / "-back.txt").read_text() == "dash\n"


def test_the_users_ssh_options_win_over_ours(world: World) -> None:
    """ssh keeps the first value it sees and the user's options come first: here the user's
    empty known_hosts file replaces our pinned one, so ssh refuses the host (in one line)."""
    done = run(sm_ssh("connect", world.fqdn("one"), "-o", "UserKnownHostsFile=/dev/null",
                      "--", "true"), world.env)
    one_line_error(done, 255, f"ssh to {world.fqdn('one')} failed:", "host key")


def test_local_and_remote_forwarding_carry_data_both_ways(world: World) -> None:
    connect = sm_ssh("connect", world.fqdn("one"))
    assert forwarded_page(connect, world.env) == "page from algo-1\n"
    done = laptop_fetch(connect, world.env)
    assert (done.returncode, done.stdout) == (0, "page from the laptop\n"), done.stderr


def test_plain_ssh_through_the_generated_config(world: World) -> None:
    env = world.home("config-user")
    done = run(sm_ssh("config"), env)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    config = Path(env["HOME"]) / ".ssh" / "config"
    # ssh takes ~ from the password database, not from $HOME: name the file explicitly.
    done = run(["ssh", "-F", str(config), world.fqdn("one"), "echo", "via-config"], env)
    assert (done.returncode, done.stdout) == (0, "via-config\n"), done.stderr


def test_proxy_commands_for_ides(world: World) -> None:
    """sm-local-ssh-training proxy-host and sm-connect-ssh-proxy as ssh ProxyCommands."""
    env = world.home("ide-user")
    ssh_dir = Path(env["HOME"]) / ".ssh"
    base = ["ssh", "-F", "none", "-o", f"IdentityFile={ssh_dir}/%h",
            "-o", f"UserKnownHostsFile={ssh_dir}/sm-ssh-known_hosts",
            "-o", "StrictHostKeyChecking=yes", "-l", "root"]
    proxy_host = shlex.join(script("sm-local-ssh-training", "proxy-host")) + " %n %p"
    done = run([*base, "-o", f"ProxyCommand={proxy_host}", world.fqdn("one"), "hostname"], env)
    assert (done.returncode, done.stdout) == (0, "algo-1\n"), done.stderr

    listed = json.loads(run(sm_ssh("list", world.fqdn("one"), "--output", "json"),
                            env).stdout)
    instance_id = listed[0]["instances"][0]["instance_id"]
    setup = run(script("sm-local-start-ssh", "--proxy-setup-only", instance_id), env)
    assert (setup.returncode, setup.stdout, setup.stderr) == (0, "", "")
    assert (ssh_dir / instance_id).exists()
    proxy = shlex.join(script("sm-connect-ssh-proxy")) + " %h %p"
    done = run([*base, "-o", f"ProxyCommand={proxy}", instance_id, "hostname"], env)
    assert (done.returncode, done.stdout) == (0, "algo-1\n"), done.stderr
    done = run(script("sm-local-start-ssh", instance_id, "-p", "22", "echo", "by-id"), env)
    assert (done.returncode, done.stdout) == (0, "by-id\n"), done.stderr


def test_two_users_connect_at_the_same_time(world: World) -> None:
    envs = [world.home(user) for user in ("alice-2", "bob")]
    procs = [subprocess.Popen(sm_ssh("connect", world.fqdn("one"), "--", f"echo hello-{i}"),
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, env in enumerate(envs)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out for out, _ in results] == ["hello-0\n", "hello-1\n"]
    lines = authorized_keys(world, "one")
    blobs = [public_blob(Path(env["HOME"]) / ".ssh" / world.fqdn("one"))
             for env in (*envs, world.env)]
    assert [sum(line.split()[1] == b for line in lines) for b in blobs] == [1, 1, 1]


def test_users_sharing_user_host_and_key_path_do_not_evict_each_other(world: World) -> None:
    """Studio users: the same user name, host name and key path, in homes of their own."""
    shared_key = world.tmp / "shared" / "id_studio"  # the path both users' key has
    shared_key.parent.mkdir()
    blobs = []
    for user in ("studio-ann", "studio-ben"):
        env = dict(world.home(user), SSH_KEY=str(shared_key))
        for old in shared_key.parent.iterdir():  # this user's own file at that path
            old.unlink()
        done = run(sm_ssh("connect", world.fqdn("one"), "--", "true"), env)
        assert done.returncode == 0, done.stderr
        blobs.append(public_blob(shared_key))
    assert blobs[0] != blobs[1]
    lines = authorized_keys(world, "one")
    assert [sum(line.split()[1] == b for line in lines) for b in blobs] == [1, 1]


def test_each_node_of_a_two_node_job(world: World) -> None:
    fqdn = world.fqdn("two")
    one_line_error(run(sm_ssh("connect", fqdn, "--", "hostname"), world.env), 2,
                   f"{fqdn} has 2 online instances: algo-1 (mi-", ", algo-2 (mi-",
                   "choose one with --node NAME or --index N")
    for choice, node in ((["--node", "algo-2"], "algo-2"), (["--index", "0"], "algo-1")):
        done = run(sm_ssh("connect", fqdn, *choice, "--", "hostname"), world.env)
        assert (done.returncode, done.stdout) == (0, f"{node}\n"), done.stderr
    done = run(script("sm-local-start-ssh", "--index", "1", fqdn, "hostname"), world.env)
    assert (done.returncode, done.stdout) == (0, "algo-2\n"), done.stderr
    # Plain ssh through start-proxy pins every node under the one name: another instance's
    # keys replace the pinned ones without a warning (pinning is per instance, not per name).
    env = world.home("proxy-nodes")
    ssh_dir = Path(env["HOME"]) / ".ssh"
    for node in ("algo-1", "algo-2", "algo-1"):
        proxy = shlex.join(sm_ssh("start-proxy", "%n", "--port", "%p", "--node", node))
        done = run(["ssh", "-F", "none", "-o", f"IdentityFile={ssh_dir}/%h",
                    "-o", f"UserKnownHostsFile={ssh_dir}/sm-ssh-known_hosts",
                    "-o", "StrictHostKeyChecking=yes", "-l", "root",
                    "-o", f"ProxyCommand={proxy}", fqdn, "hostname"], env)
        assert (done.returncode, done.stdout) == (0, f"{node}\n"), done.stderr


# -- sm-ssh exec: every node at once ------------------------------------------------------------
def test_exec_runs_on_every_node_with_prefixed_lines_and_json(world: World) -> None:
    fqdn = world.fqdn("two")
    done = run(sm_ssh("exec", fqdn, "--", "hostname; echo to-stderr >&2"), world.env)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["algo-1 | algo-1", "algo-2 | algo-2"]
    assert sorted(line for line in done.stderr.splitlines() if "to-stderr" in line) == \
        ["algo-1 | to-stderr", "algo-2 | to-stderr"]
    # A subset, and JSON with a failing node: the exit code is the failing node's.
    failing = 'echo "out $(hostname)"; echo err >&2; [ "$(hostname)" != algo-2 ]; exit $((7 * $?))'
    done = run(sm_ssh("exec", fqdn, "--output", "json", "--", failing), world.env)
    assert done.returncode == 7, done.stderr
    nodes = {r["node"]: r for r in json.loads(done.stdout)}
    assert [(n, r["exit_code"], r["stdout"], r["stderr"], r["error"]) for n, r in
            sorted(nodes.items())] == [("algo-1", 0, "out algo-1\n", "err\n", None),
                                        ("algo-2", 7, "out algo-2\n", "err\n", None)]
    assert all(r["instance_id"].startswith("mi-") and r["seconds"] > 0 for r in nodes.values())
    assert done.stderr.strip().splitlines()[-1] == "sm-ssh: 1 of 2 node(s) failed: algo-2 (exit 7)"
    done = run(sm_ssh("exec", fqdn, "--node", "algo-2", "--", "hostname"), world.env)
    assert (done.returncode, done.stdout) == (0, "algo-2 | algo-2\n"), done.stderr
    one_line_error(run(sm_ssh("exec", fqdn, "--node", "algo-1,algo-9", "--", "true"),
                       world.env), 2, f"{fqdn} has no online node algo-9: its online nodes are "
                                      "algo-1 (mi-")


def test_exec_bounds_its_concurrency(world: World) -> None:
    """--parallel 1 runs the nodes one after the other; the default runs them together."""
    timed = "date +%s.%N; sleep 2; date +%s.%N"

    def intervals(*options: str) -> list[list[float]]:
        done = run(sm_ssh("exec", world.fqdn("two"), "--output", "json", *options, "--",
                          timed), world.env)
        assert done.returncode == 0, done.stderr
        return sorted([float(t) for t in r["stdout"].split()] for r in json.loads(done.stdout))

    first, second = intervals("--parallel", "1")
    assert first[1] <= second[0]
    first, second = intervals()
    assert second[0] < first[1]


def sandbox_ssm(world: World, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{world.env['AWS_ENDPOINT_URL_SSM']}{path}", data=data,
                                     method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"{}")


def test_exec_stays_under_the_startsession_rate(world: World) -> None:
    """The sandbox throttles StartSession above one call per 2 s: paced under that rate
    (one call per 2.5 s), exec is never throttled; unpaced, the same two nodes are."""
    fqdn = world.fqdn("two")
    sandbox_ssm(world, "/_sandbox/rates", {"operation": "StartSession", "per_second": 0.5})
    try:
        sandbox_ssm(world, "/_sandbox/stats/reset", {})
        done = run(sm_ssh("exec", fqdn, "--rate", "0.4", "--", "hostname"), world.env)
        assert done.returncode == 0, done.stderr
        assert sorted(done.stdout.splitlines()) == ["algo-1 | algo-1", "algo-2 | algo-2"]
        stats = sandbox_ssm(world, "/_sandbox/stats")
        assert stats["CallCounts"]["StartSession"] == 2 and stats["Throttled"] == {}, stats
        sandbox_ssm(world, "/_sandbox/stats/reset", {})
        run(sm_ssh("exec", fqdn, "--rate", "1000", "--", "hostname"), world.env)
        assert sandbox_ssm(world, "/_sandbox/stats")["Throttled"].get("StartSession", 0) >= 1
    finally:
        sandbox_ssm(world, "/_sandbox/rates", {"operation": "StartSession", "per_second": 0})


def test_exec_reports_a_node_it_cannot_reach_and_goes_on(world: World) -> None:
    """One StartSession refused: that node fails with the explained error (exit 4), the other
    runs; throttled calls are retried."""
    inject(world, "StartSession", "ThrottlingException", count=2)
    done = run(sm_ssh("exec", world.fqdn("two"), "--", "echo", "after-throttling"), world.env)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["algo-1 | after-throttling",
                                                "algo-2 | after-throttling"]
    inject(world, "StartSession", "AccessDeniedException")
    done = run(sm_ssh("exec", world.fqdn("two"), "--parallel", "1", "--", "hostname"),
               world.env)
    assert done.returncode == 4, done.stderr
    assert done.stdout == "algo-2 | algo-2\n"
    assert "algo-1 | sm-ssh: access denied for ssm:StartSession" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        "sm-ssh: 1 of 2 node(s) failed: algo-1 (unreachable 4)"
    assert "Traceback" not in done.stderr


# -- sm-ssh doctor: a resource, IAM by policy simulation, the role's trust policy ---------------
def doctor_lines(done: subprocess.CompletedProcess) -> dict[str, str]:
    assert "Traceback" not in done.stderr, done.stderr
    return {line[2:].split(":", 1)[0]: line for line in done.stdout.splitlines()}


def test_doctor_explains_why_a_job_is_or_is_not_connectable(world: World) -> None:
    fqdn = world.fqdn("two")
    done = run(sm_ssh("doctor", fqdn), world.env)
    lines = doctor_lines(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(line.startswith("✓ ") for line in lines.values()), done.stdout
    assert "actions the client needs are allowed (policy simulation)" in lines["iam"]
    assert re.fullmatch(
        rf"✓ {re.escape(fqdn)}: training job {world.jobs['two']} is InProgress, 2 node\(s\), "
        r"2 with SSH; managed instances: algo-\d mi-\w+ Online, algo-\d mi-\w+ Online; "
        r"transport: SSM AWS-StartSSHSession over a hybrid activation", lines[fqdn]), lines[fqdn]
    assert lines["ssm trust"] == "✓ ssm trust: role SageMakerRole trusts ssm.amazonaws.com"
    fqdn = world.fqdn("nossh")
    done = run(sm_ssh("doctor", fqdn, "--output", "json"), world.env)
    answer = json.loads(done.stdout)
    assert (done.returncode, answer["failures"]) == (1, 1), done.stdout
    resource = next(c for c in answer["checks"] if c["name"] == fqdn)
    assert resource["ok"] is False
    assert resource["detail"].endswith("is InProgress, 1 node(s), 1 with SSH; managed "
                                       "instances: none")
    assert resource["fix"].startswith("its containers have not registered yet or lost SSM: "
                                      "the entry point must call "
                                      "sagemaker_ssh_helper.setup_and_start_ssh()")
    done = run(sm_ssh("doctor", "gone.training.sagemaker"), world.env)
    assert done.returncode == 1
    assert doctor_lines(done)["gone.training.sagemaker"] == (
        "✗ gone.training.sagemaker: no training job gone in us-east-1 (the default region) — "
        "fix: check the name (sm-ssh list training.sagemaker) or pass --region")


def test_doctor_finds_a_missing_action_by_policy_simulation(world: World) -> None:
    """A user whose policy lacks SendCommand: the simulation evaluates the sandbox's real
    policies (as the SSM stand-in enforces them)."""
    from sagemaker_ssh_helper.cdk import policies

    iam = world.sandbox.client("iam")
    document = policies.client_policy(policies.Target(account="123456789012"))
    document["Statement"] = [st for st in document["Statement"]
                             if st["Sid"] not in ("CommandsToOwnInstances", "CommandDocument")]
    iam.create_user(UserName="doctor-limited")
    iam.put_user_policy(UserName="doctor-limited", PolicyName="NoCommands",
                        PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName="doctor-limited")["AccessKey"]
    env = dict(world.home("doctor-limited"), AWS_ACCESS_KEY_ID=key["AccessKeyId"],
               AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    done = run(sm_ssh("doctor"), env)
    lines = doctor_lines(done)
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines["iam"] == (
        "✗ iam: arn:aws:iam::123456789012:user/doctor-limited may not call ssm:SendCommand "
        "(policy simulation) — fix: attach the SSH client policy to it (the SSH-IAM-SSM "
        "stack, or the policy in IAM_SSM_Setup.md)")


def test_doctor_names_a_role_that_does_not_trust_ssm(world: World) -> None:
    iam = world.sandbox.client("iam")
    before = iam.get_role(RoleName="SageMakerRole")["Role"]["AssumeRolePolicyDocument"]
    sagemaker_only = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    iam.update_assume_role_policy(RoleName="SageMakerRole",
                                  PolicyDocument=json.dumps(sagemaker_only))
    try:
        done = run(sm_ssh("doctor", world.fqdn("one")), world.env)
    finally:
        iam.update_assume_role_policy(RoleName="SageMakerRole", PolicyDocument=before
                                      if isinstance(before, str) else json.dumps(before))
    assert done.returncode == 1, done.stdout + done.stderr
    assert doctor_lines(done)["ssm trust"] == (
        "✗ ssm trust: role SageMakerRole's trust policy does not name ssm.amazonaws.com: SSM "
        "cannot register the containers' managed instances with it — fix: add the "
        "ssm.amazonaws.com statement of IAM_SSM_Setup.md to role SageMakerRole's trust policy")


def instance_of(world: World, job: str) -> str:
    listed = json.loads(run(sm_ssh("list", world.fqdn(job), "--output", "json"),
                            world.env).stdout)
    return str(listed[0]["instances"][0]["instance_id"])


def in_container(world: World, job: str, script: str) -> str:
    """Run ``script`` in the job's (first) container through SendCommand, as root."""
    return keys.run_shell_command(world.sandbox.client("ssm"), instance_of(world, job), script)


def authorized_keys(world: World, job: str) -> list[str]:
    return in_container(world, job, "cat /etc/ssh/authorized_keys").splitlines()


def public_blob(key: Path) -> str:
    done = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True,
                          check=True)
    return done.stdout.split()[1]


# -- reused connections, optimistic key pushes ------------------------------------------------
def sessions_and_pushes(world: World, job: str) -> tuple[int, int]:
    """SSM sessions started to the job's instance, and commands sent to it (key pushes)."""
    ssm, instance = world.sandbox.client("ssm"), instance_of(world, job)
    sessions = sum(len(page["Sessions"]) for state in ("Active", "History")
                   for page in ssm.get_paginator("describe_sessions").paginate(
                       State=state, Filters=[{"key": "Target", "value": instance}]))
    pushes = sum(1 for page in ssm.get_paginator("list_commands").paginate(InstanceId=instance)
                 for c in page["Commands"] if c.get("Comment", "").startswith(
                     "sm-ssh: authorize"))
    return sessions, pushes


def test_a_second_command_rides_the_first_ones_connection(world: World) -> None:
    env = world.home("reuse-user")  # with the default: shared connections
    home, fqdn = Path(env["HOME"]), world.fqdn("one")

    def connect(*argv: str, extra: dict[str, str] | None = None) -> str:
        done = run(sm_ssh("connect", fqdn, *argv), dict(env, **(extra or {})))
        assert done.returncode == 0, done.stderr
        return str(done.stdout)

    others = set(masters(home, env))  # other homes' (the directory may be a shared one)
    before = sessions_and_pushes(world, "one")
    assert connect("--", "hostname") == "algo-1\n"
    first = sessions_and_pushes(world, "one")
    assert (first[0] - before[0], first[1] - before[1]) == (1, 1)
    assert connect("--", "echo two; exit 0") == "two\n"
    assert sessions_and_pushes(world, "one") == first  # no StartSession, no key push
    [master] = set(masters(home, env)) - others

    # Another key never rides on this master: a connection (and a push) of its own.
    other_key = world.tmp / "reuse-other-key"
    assert connect("--", "echo other", extra={"SSH_KEY": str(other_key)}) == "other\n"
    [other] = set(masters(home, env)) - others - {master}
    mux.terminate(other)

    # A killed master leaves its socket behind: the next command connects afresh, without a
    # key push (this key went to this instance before and its host keys are pinned).
    pid = mux.probe(master)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _refused(master) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert master.is_socket()
    pushed = sessions_and_pushes(world, "one")[1]
    assert connect("--", "echo after-kill") == "after-kill\n"
    assert sessions_and_pushes(world, "one")[1] == pushed
    # A master that does not answer (stopped) is set aside, never waited for.
    stopped = mux.probe(master)
    assert stopped is not None
    os.kill(stopped, signal.SIGSTOP)
    try:
        assert connect("--", "echo past-stopped") == "past-stopped\n"
    finally:
        os.kill(stopped, signal.SIGKILL)
        os.kill(stopped, signal.SIGCONT)

    # The container lost our key (a restarted sshd, a new container): ssh is refused once,
    # then the key is pushed and the command runs.
    blob = public_blob(home / ".ssh" / fqdn)
    in_container(world, "one", f"sed -i '/{blob.replace('/', chr(92) + '/')}/d' "
                               "/etc/ssh/authorized_keys")
    assert connect("--", "echo pushed-again", extra={"SM_SSH_REUSE": "off"}) == \
        "pushed-again\n"
    assert sessions_and_pushes(world, "one")[1] == pushed + 1
    for path in set(masters(home, env)) - others:
        mux.terminate(path)


def test_two_commands_at_once_start_one_session(world: World) -> None:
    """The second waits for the first one's master and rides it: one StartSession."""
    env = world.home("reuse-race")
    home = Path(env["HOME"])
    others = set(masters(home, env))
    before = sessions_and_pushes(world, "one")[0]
    procs = [subprocess.Popen(sm_ssh("connect", world.fqdn("one"), "--", f"echo race-{i}"),
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        assert [out for out, _ in results] == ["race-0\n", "race-1\n"]
        assert sessions_and_pushes(world, "one")[0] - before == 1
    finally:
        for path in set(masters(home, env)) - others:
            mux.terminate(path)


def _refused(path: Path) -> bool:
    """Nobody listens on the socket at ``path`` any more (its file is still there)."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            return True
    return False


def test_plain_ssh_shares_a_connection_through_the_generated_config(world: World) -> None:
    """`sm-ssh config` writes ControlMaster: the second ssh needs no start-proxy at all."""
    home = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))  # socket paths must be short
    env = dict(world.env, HOME=str(home))
    config = home / ".ssh" / "config"
    try:
        assert run(sm_ssh("config"), env).returncode == 0
        before = sessions_and_pushes(world, "one")
        for word in ("first", "second", "third"):
            done = run(["ssh", "-F", str(config), world.fqdn("one"), "echo", word], env)
            assert (done.returncode, done.stdout) == (0, f"{word}\n"), done.stderr
        after = sessions_and_pushes(world, "one")
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
        check = run(["ssh", "-F", str(config), "-O", "check", world.fqdn("one")], env)
        assert check.returncode == 0 and "Master running" in check.stderr, check.stderr
    finally:
        run(["ssh", "-F", str(config), "-O", "exit", world.fqdn("one")], env)
        shutil.rmtree(home, ignore_errors=True)


# -- host keys, sshd, ssh's messages, local keys ------------------------------------------------
def test_each_container_has_host_keys_of_its_own(world: World) -> None:
    """Not the machine's (the sandbox hides them), not shared between containers or jobs."""
    seen = []
    for fqdn, node in ((world.fqdn("one"), []), (world.fqdn("two"), ["--node", "algo-1"]),
                       (world.fqdn("two"), ["--node", "algo-2"])):
        done = run(sm_ssh("connect", fqdn, *node, "--", "cat /etc/ssh/ssh_host_ed25519_key.pub"),
                   world.env)
        assert done.returncode == 0, done.stderr
        seen.append(done.stdout.split()[1])
    host = Path("/etc/ssh/ssh_host_ed25519_key.pub")
    machine = [host.read_text().split()[1]] if host.exists() else []
    assert len(set(seen + machine)) == len(seen) + len(machine)
    never_set_up = exec_argv(world.sandbox.container_dir(world.jobs["nossh"]),
                             ["sh", "-c", "ls /etc/ssh | grep -c ssh_host_ || true"])
    assert subprocess.run(never_set_up, capture_output=True, text=True,
                          check=True).stdout.strip() == "0"


def test_a_host_key_changed_on_the_same_instance_is_refused(world: World) -> None:
    env = dict(world.home("pinning-user"), SM_SSH_REUSE="off")  # each connect checks it
    fqdn = world.fqdn("one")
    assert run(sm_ssh("connect", fqdn, "--", "true"), env).returncode == 0
    pinned = (Path(env["HOME"]) / ".ssh" / "sm-ssh-known_hosts").read_text()
    assert re.search(rf"^{re.escape(fqdn.lower())} ssh-ed25519 \S+ "
                     r"sm-ssh:mi-[0-9a-f]+@\d{4}-\d\d-\d\dT", pinned, re.M), pinned
    # sshd itself changes its key (reloaded with SIGHUP): ssh, tried first because the key
    # went there before, refuses it; the key push that follows names the change.
    key = "/etc/ssh/ssh_host_ed25519_key"
    in_container(world, "one", f"cp -p {key} /tmp/host && cp -p {key}.pub /tmp/host.pub && "
                               f"rm -f /tmp/other* && ssh-keygen -q -t ed25519 -N '' "
                               f"-f /tmp/other && cp /tmp/other {key} && cp /tmp/other.pub "
                               f"{key}.pub && kill -HUP $(cat /run/sshd.pid)")
    try:
        one_line_error(run(sm_ssh("connect", fqdn, "--", "true"), env), 1,
                       f"host key for {fqdn.lower()} changed since ", "on the same instance mi-",
                       "ssh-keygen -R")
    finally:
        in_container(world, "one", f"cp -p /tmp/host {key} && cp -p /tmp/host.pub {key}.pub && "
                                   "kill -HUP $(cat /run/sshd.pid)")
    assert run(sm_ssh("connect", fqdn, "--", "true"), env).returncode == 0
    assert (Path(env["HOME"]) / ".ssh" / "sm-ssh-known_hosts").read_text() == pinned


def test_a_dead_sshd_is_started_again(world: World) -> None:
    """By the key push at once (connect works), and by the container's watchdog. The key
    went there before: ssh is tried first, and its failure brings the push."""
    in_container(world, "one", "kill $(cat /run/sshd.pid)")
    done = run(sm_ssh("connect", world.fqdn("one"), "--", "echo", "alive"),
               dict(world.env, SM_SSH_REUSE="off"))
    assert (done.returncode, done.stdout) == (0, "alive\n"), done.stderr
    before = in_container(world, "one", "cat /run/sshd.pid; kill $(cat /run/sshd.pid)").strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = in_container(world, "one", "p=$(cat /run/sshd.pid 2>/dev/null) && kill -0 $p "
                                          "&& echo $p || true").strip()
        if now and now != before:
            break
        time.sleep(0.5)
    assert now and now != before, "the watchdog did not restart sshd"


def test_ssh_warnings_show_while_the_session_runs(world: World) -> None:
    """A forwarded connection the container refuses: ssh says so at once, not at exit."""
    local, lines = free_port(), []
    proc = subprocess.Popen(sm_ssh("connect", world.fqdn("one"), "-L", f"{local}:localhost:9",
                                   "--", "sleep 30"),
                            env=world.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        def refused() -> None:
            with socket.create_connection(("127.0.0.1", local), timeout=5) as conn:
                conn.recv(1)
            assert any("open failed" in line for line in lines), lines

        wait_until(refused, proc, "ssh's warning while the session runs")
    finally:
        stop(proc)


# -- tunnels that come back ----------------------------------------------------------------------
def descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` (pid -> command line), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(
                b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        todo.extend(children.get(child, []))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def active_sessions(world: World, mi: str) -> list[str]:
    answer = world.sandbox.client("ssm").describe_sessions(
        State="Active", Filters=[{"key": "Target", "value": mi}])
    return [s["SessionId"] for s in answer["Sessions"]]


def test_a_tunnel_comes_back_after_drops_and_ctrl_c_leaves_nothing(world: World) -> None:
    """``sm-ssh tunnel -L -R``: the service drops the session, the plugin is killed, the plugin
    hangs (a silent network: only ssh's keep-alive can tell): each time the tunnel says so and
    the forwarded port answers again, and the container reaches the laptop through -R; Ctrl-C
    (SIGINT to the process group, as a terminal sends it) then ends ssh and the plugin and
    leaves no session open."""
    ssm, mi, local, remote = (world.sandbox.client("ssm"), instance_of(world, "one"),
                              free_port(), free_port())
    before = set(active_sessions(world, mi))
    lines: list[str] = []
    with laptop_page() as laptop:
        proc = subprocess.Popen(sm_ssh("tunnel", world.fqdn("one"), "-L", f"{local}:localhost:8080",
                                       "-R", f"{remote}:127.0.0.1:{laptop}"),
                                env=world.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True).start()
        page = "page from algo-1\n"
        seen: list[str] = []

        def said(needle: str, count: int) -> None:
            assert sum(needle in line for line in lines) >= count, lines

        def plugin() -> int:
            pids = [p for p, cmd in descendants(proc.pid).items()
                    if "sagemaker_ssh_sandbox.ssm.plugin" in cmd and "runpy" in cmd]
            assert len(pids) == 1, descendants(proc.pid)
            return pids[0]

        def comes_back(drops: int, fault: Any, bound: float) -> float:
            """Inject ``fault``; the tunnel says it dropped and serves the page again."""
            new = set(active_sessions(world, mi)) - before
            assert len(new) == 1, new  # the tunnel's one session
            seen.extend(new)
            began = time.monotonic()
            fault(new.pop())
            wait_until(lambda: said("dropped", drops), proc, "the drop noticed", timeout=bound)
            assert wait_until(lambda: get(f"http://127.0.0.1:{local}/"), proc,
                              "the page again", timeout=bound) == page
            took = time.monotonic() - began
            wait_until(lambda: said("is back after", drops), proc, "back", timeout=5)
            return took

        frozen: list[int] = []

        def freeze(_session: str) -> None:
            frozen.append(plugin())
            os.kill(frozen[-1], 19)  # SIGSTOP: the stream hangs, nothing is closed

        try:
            assert wait_until(lambda: get(f"http://127.0.0.1:{local}/"), proc, "tunnel") == page
            wait_until(lambda: said("is up; Ctrl-C closes it", 1), proc, "up", timeout=5)
            took = [comes_back(1, lambda sid: ssm.terminate_session(SessionId=sid), 30),
                    comes_back(2, lambda _sid: os.kill(plugin(), 9), 30),
                    comes_back(3, freeze, 45)]
            print(f"time to recover: session dropped {took[0]:.1f} s, plugin killed "
                  f"{took[1]:.1f} s, plugin hung {took[2]:.1f} s")
            assert re.search(r"dropped \(Timeout, server \S+ not responding", "".join(lines)), lines
            fetch = ("import urllib.request; print(urllib.request.urlopen("
                     f"'http://127.0.0.1:{remote}/', timeout=5).read().decode(), end='')")

            def from_the_container() -> None:
                out = keys.run_shell_command(ssm, mi, shlex.join(["python3", "-c", fetch])
                                             + " 2>&1 || true")
                assert out == "page from the laptop\n", out

            wait_until(from_the_container, proc, "-R after the drops", timeout=30)
            running = descendants(proc.pid)
            assert any(" -N " in f" {cmd} " and cmd.startswith(("ssh", "/usr/bin/ssh"))
                       for cmd in running.values()), running
            os.killpg(proc.pid, 2)  # Ctrl-C
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
            for pid in frozen:  # a hung plugin gets ssh's SIGHUP once it runs again
                if alive(pid):
                    os.kill(pid, 18)
    assert lines[-1].startswith("sm-ssh: tunnel to ") and "closed" in lines[-1], lines
    assert not [pid for pid in running if alive(pid) and pid not in frozen], running
    deadline = time.monotonic() + 10
    while frozen and any(alive(pid) for pid in frozen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in frozen)
    assert set(active_sessions(world, mi)) <= before, "a session was left open"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", local), timeout=5).close()
    assert proc.stdout is not None and proc.stdout.read() == ""
    # An IDE stops it with SIGTERM to this process alone: ssh and the plugin end with it.
    proc = subprocess.Popen(sm_ssh("tunnel", world.fqdn("one"), "-L", f"{local}:localhost:8080"),
                            env=world.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: get(f"http://127.0.0.1:{local}/"), proc, "again") == page
        running = descendants(proc.pid)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 143 and err.splitlines()[-1].endswith(" closed"), err
    assert len(running) >= 2 and not [pid for pid in running if alive(pid)], running
    assert set(active_sessions(world, mi)) <= before, "a session was left open"


def test_a_tunnel_that_cannot_come_back_gives_up_after_wait(world: World) -> None:
    """``connect -N --keep-alive``; after a drop, StartSession keeps failing: the tunnel
    retries for --wait seconds, saying why, then ends with one line naming the last error,
    leaving no session open."""
    mi, local = instance_of(world, "one"), free_port()
    before = set(active_sessions(world, mi))
    proc = subprocess.Popen(sm_ssh("connect", world.fqdn("one"), "-N", "--keep-alive",
                                   "--wait", "4", "-L", f"{local}:localhost:8080"),
                            env=world.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{local}/"), proc, "tunnel")
        inject(world, "StartSession", "AccessDeniedException", 100)
        (session,) = set(active_sessions(world, mi)) - before
        world.sandbox.client("ssm").terminate_session(SessionId=session)
        _, err = proc.communicate(timeout=60)
    finally:
        urllib.request.urlopen(urllib.request.Request(
            f"{world.env['AWS_ENDPOINT_URL_SSM']}/_sandbox/faults", method="DELETE"),
            timeout=10).close()
        stop(proc)
    assert proc.returncode == 1, err
    *said, last = err.splitlines()
    assert any(" dropped (" in line for line in said), err
    assert any(line.startswith("sm-ssh: cannot reconnect yet: access denied for ssm:StartSession")
               for line in said), err
    assert "could not be re-established within 4 s: " in last and "StartSession" in last, err
    assert set(active_sessions(world, mi)) <= before


def test_a_tunnel_coming_back_to_another_instance_pushes_the_key_there(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a reconnection does: the name is resolved again; the instance it had is reused as
    it is (no key push), another one (a restarted container) gets the key pushed."""
    import dataclasses

    from sagemaker_ssh_helper import connect

    def pushes() -> int:
        return ssm_calls(world.env).get("SendCommand", 0)

    with world.sandbox.activated():
        monkeypatch.setenv("HOME", world.home("reconnecting")["HOME"])
        ctx = connect.Context(None, None)
        first = connect.prepare(ctx, world.fqdn("one"), connect.Choice())
        count = pushes()
        assert connect.prepare(ctx, world.fqdn("one"), connect.Choice(), reuse=first) is first
        assert pushes() == count
        before = dataclasses.replace(first, instance_id="mi-0123456789abcdef0")
        moved = connect.prepare(ctx, world.fqdn("one"), connect.Choice(), reuse=before)
        assert moved.instance_id == first.instance_id != before.instance_id
        assert pushes() == count + 1


def test_local_key_problems_are_named(world: World) -> None:
    env = dict(world.home("key-user"), SM_SSH_REUSE="off")  # checked when a connection starts
    fqdn = world.fqdn("one")
    key = Path(env["HOME"]) / ".ssh" / fqdn
    assert run(sm_ssh("connect", fqdn, "--", "true"), env).returncode == 0
    key.chmod(0o644)
    one_line_error(run(sm_ssh("connect", fqdn, "--", "true"), env), 1,
                   f"SSH key {key} is accessible by other users (mode 0644)",
                   f"run `chmod 600 {key}`")
    key.chmod(0o600)
    # a stale .pub (the key was replaced, not its .pub): the real public key is pushed
    other = world.tmp / "other-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    Path(f"{key}.pub").write_text(Path(f"{other}.pub").read_text())
    done = run(sm_ssh("connect", fqdn, "--", "echo", "fine"), env)
    assert (done.returncode, done.stdout) == (0, "fine\n"), done.stderr
    # a key with a passphrase, and no terminal for ssh to ask it on
    locked = world.tmp / "locked-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f",
                    str(locked)], check=True)
    done = subprocess.run(sm_ssh("connect", fqdn, "--", "true"),
                          env=dict(env, SSH_KEY=str(locked), SSH_AUTH_SOCK=""),
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                          start_new_session=True)  # no controlling terminal
    one_line_error(done, 255, f"SSH key {locked} is protected by a passphrase and ssh could "
                              "not use it", f"ssh-add {locked}")


# -- faults --------------------------------------------------------------------------------------
ADVANCED_TIER = ("Enable advanced-instances tier to use Session Manager with your on-premises "
                 "instances")


def inject(world: World, operation: str, error_code: str, count: int = 1,
           message: str = "") -> None:
    body = {"operation": operation, "error_code": error_code, "count": count}
    if message:
        body["message"] = message
    request = urllib.request.Request(f"{world.env['AWS_ENDPOINT_URL_SSM']}/_sandbox/faults",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.mark.parametrize("operation, error_code, message, exit_code, needles", [
    ("StartSession", "AccessDeniedException", "", 4,
     ["access denied for ssm:StartSession", "IAM_SSM_Setup.md"]),
    ("StartSession", "BadRequest", ADVANCED_TIER, 4,
     ["advanced-instances tier", "see IAM_SSM_Setup.md"]),
    ("StartSession", "TargetNotConnected", "", 3, ["is not connected to SSM (ConnectionLost)"]),
    ("SendCommand", "AccessDeniedException", "", 4, ["access denied for ssm:SendCommand"]),
    ("GetCommandInvocation", "AccessDeniedException", "", 4,
     ["access denied for ssm:GetCommandInvocation"]),
    ("DescribeInstanceInformation", "AccessDeniedException", "", 4,
     ["access denied for ssm:DescribeInstanceInformation"]),
    ("DescribeInstanceInformation", "ExpiredTokenException", "", 4,
     ["AWS credentials rejected (ExpiredTokenException)", "aws sso login"]),
])
def test_aws_faults_are_one_line_with_the_fix(world: World, operation: str, error_code: str,
                                              message: str, exit_code: int,
                                              needles: list[str]) -> None:
    # A fresh home, one connection per command: every call of a first connect is made.
    env = dict(world.home(f"faults-{operation}-{error_code}"), SM_SSH_REUSE="off")
    inject(world, operation, error_code, message=message)
    done = run(sm_ssh("connect", world.fqdn("one"), "--", "true"), env)
    one_line_error(done, exit_code, *needles)


def test_throttling_is_retried_with_backoff(world: World) -> None:
    inject(world, "DescribeInstanceInformation", "ThrottlingException", count=2)
    inject(world, "StartSession", "ThrottlingException", count=1)
    done = run(sm_ssh("connect", world.fqdn("one"), "--", "echo", "after-throttling"),
               dict(world.home("throttled-user"), SM_SSH_REUSE="off"))
    assert (done.returncode, done.stdout) == (0, "after-throttling\n"), done.stderr


def test_resolution_faults_are_one_line_with_the_fix(world: World) -> None:
    one_line_error(run(sm_ssh("connect", "nope.training.sagemaker", "--wait", "0"), world.env),
                   3, "no training job nope in us-east-1", "--region")
    error = one_line_error(run(sm_ssh("connect", world.fqdn("nossh"), "--wait", "1"),
                               world.env), 3,
                           f"no SSM instance registered for {world.fqdn('nossh')} in us-east-1",
                           "setup_and_start_ssh()")
    assert re.search(r"https://us-east-1\.console\.aws\.amazon\.com/cloudwatch/home"
                     r"\?region=us-east-1#"
                     r"logsV2:log-groups/log-group/\S+TrainingJobs\S+" + world.jobs["nossh"],
                     error), error
    one_line_error(run(sm_ssh("connect", "training.sagemaker"), world.env), 2, "names a list")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line_error(run(script("sm-local-ssh-training", "connect", world.jobs["one"],
                                  "--local-port", str(port), "-N"), world.env),
                       2, f"local port {port} (127.0.0.1) is not available",
                       "pass --local-port N")


# -- the seed documents' flows: fixed local ports, the shared key, paramiko and Fabric ----------
QUICK_SETUP_BLOCK = """\
Host sagemaker-training
  HostName localhost
  IdentityFile ~/.ssh/sagemaker-ssh-gw
  Port {port}
  User root
"""


def as_user_with_home(home: Path, argv: list[str]) -> list[str]:
    """``argv`` with ``home`` mounted on /root (HOME=/root) in a private mount namespace: ssh
    takes ``~`` from the password database, so the user's ssh files must be there; the
    machine's own /root stays untouched (the interpreter, if below it, stays visible)."""
    stage = home.parent / f".{home.name}-stage"
    stage.mkdir(exist_ok=True)
    before, after = keep_visible(str(stage), covered=("/root",))
    script = f'{before}\nmount --bind {shlex.quote(str(home))} /root\n{after}\nexec "$@"'
    return ["unshare", "--mount", "bash", "-ec", script, "bash", *argv]


PARAMIKO_HOSTNAME = """\
import os, sys

import paramiko

config = paramiko.SSHConfig.from_path(os.path.expanduser("~/.ssh/config"))
host = config.lookup(sys.argv[1])
client = paramiko.SSHClient()
client.load_system_host_keys()  # ~/.ssh/known_hosts, strictly (RejectPolicy)
client.connect(host["hostname"], port=int(host["port"]), username=host["user"],
               key_filename=host["identityfile"], look_for_keys=False, allow_agent=False)
_, out, _ = client.exec_command("hostname; id -un")
print(out.read().decode().strip().replace("\\n", " "))
client.close()
"""


def test_quick_setup_block_with_ssh_and_paramiko_on_two_jobs(world: World) -> None:
    """The quick-setup guide's ssh config block (``Host sagemaker-training`` on a fixed local
    port with ``~/.ssh/sagemaker-ssh-gw``) after ``sm-local-ssh-training connect <job>``, with
    plain ssh and with paramiko, strict host key checking, for one job and then another on
    the same port (the port is a free one rather than 11022, which other tests may hold)."""
    pytest.importorskip("paramiko")
    home = world.tmp / "quick-setup"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    port = free_port()
    (home / ".ssh" / "config").write_text(QUICK_SETUP_BLOCK.format(port=port))
    env = dict(world.env, HOME="/root")
    for job, node, hostname in (("one", [], "algo-1"), ("two", ["--index", "1"], "algo-2")):
        tunnel = subprocess.Popen(
            as_user_with_home(home, script("sm-local-ssh-training", "connect", world.jobs[job],
                                           "--local-port", str(port), *node, "-N")),
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        try:
            def plain_ssh() -> str:
                done = run(as_user_with_home(home, ["ssh", "-o", "BatchMode=yes",
                                                    "sagemaker-training", "hostname"]), env)
                assert done.returncode == 0, done.stderr
                return str(done.stdout)

            assert wait_until(plain_ssh, tunnel, "ssh sagemaker-training") == f"{hostname}\n"
            done = run(as_user_with_home(home, [sys.executable, "-c", PARAMIKO_HOSTNAME,
                                                "sagemaker-training"]), env)
            assert (done.returncode, done.stdout) == (0, f"{hostname} root\n"), done.stderr
        finally:
            stop(tunnel)
    key = home / ".ssh" / "sagemaker-ssh-gw"
    assert key.stat().st_mode & 0o777 == 0o600
    known = (home / ".ssh" / "known_hosts").read_text().splitlines()
    assert {line.split()[0] for line in known} == {f"[localhost]:{port}", f"[127.0.0.1]:{port}"}
    # The README's low-level form by instance ID, then the key on the command line.
    from sagemaker_ssh_helper.manager import SSMManager

    with world.sandbox.activated():
        mi = SSMManager(progress=None).get_training_instance_ids(world.jobs["one"], 30)[0]
    tunnel = subprocess.Popen(
        as_user_with_home(home, script(
            "sm-local-start-ssh", mi, "-R", "localhost:12345:localhost:12345", "-L",
            f"localhost:{free_port()}:localhost:8787", "-L", f"localhost:{port}:localhost:22",
            "-N")), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        def with_key() -> str:
            done = run(as_user_with_home(home, [
                "ssh", "-o", "BatchMode=yes", "-i", "~/.ssh/sagemaker-ssh-gw", "-p", str(port),
                "root@localhost", "hostname"]), env)
            assert done.returncode == 0, done.stderr
            return str(done.stdout)

        assert wait_until(with_key, tunnel, "ssh -i ~/.ssh/sagemaker-ssh-gw") == "algo-1\n"
    finally:
        stop(tunnel)


FABRIC_HOSTNAME = """\
import sys

from fabric import Connection

print(Connection(sys.argv[1]).run("hostname", hide=True).stdout.strip())
"""


def test_fabric_connection_after_sm_ssh_config_inline(world: World) -> None:
    pytest.importorskip("fabric")
    home = world.tmp / "fabric-user"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    env = dict(world.env, HOME="/root")
    done = run(as_user_with_home(home, sm_ssh("config", "--inline")), env)
    assert done.returncode == 0, done.stderr
    done = run(as_user_with_home(home, [sys.executable, "-c", FABRIC_HOSTNAME,
                                        world.fqdn("one").lower()]), env)
    assert (done.returncode, done.stdout) == (0, "algo-1\n"), done.stderr


def test_aws_ssm_start_session_gives_a_shell_in_the_job(world: World) -> None:
    """The seed's Method A: `aws ssm start-session --target mi-...` (AWS CLI v1 from pip and
    the plugin stand-in) opens a shell in the container as ssm-user, with a sudoers entry as
    the real agent writes it."""
    import importlib.util

    from sagemaker_ssh_helper.manager import SSMManager

    if importlib.util.find_spec("awscli") is None:
        pytest.skip("no AWS CLI v1 for this Python (pip install awscli)")
    with world.sandbox.activated():
        mi = SSMManager(progress=None).get_training_instance_ids(world.jobs["one"], 30)[0]
    root = "ls /etc/sudoers.d"
    done = subprocess.run([sys.executable, "-m", "awscli", "ssm", "start-session", "--target",
                           mi], env=world.env, capture_output=True, text=True, timeout=120,
                          input=f"echo in-$(hostname) as $(id -un) in $(pwd); {root}\nexit\n")
    assert done.returncode == 0, done.stderr
    assert "in-algo-1 as ssm-user in /usr/bin" in done.stdout, done.stdout
    assert "ssm-agent-users" in done.stdout, done.stdout


PLUGIN_SHIM = """#!{python}
# the sandbox's session-manager-plugin stand-in, started without bash (as the real Go binary)
import sys

from sagemaker_ssh_sandbox.ssm.plugin import main

sys.exit(main())
"""


def test_laptop_commands_run_without_bash(world: World) -> None:
    """The laptop commands are console scripts: with no bash on PATH (as on Windows) they
    still connect. PATH: the virtualenv's bin, ssh and ssh-keygen, the plugin."""
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "sm-local-ssh-training").exists():
        pytest.skip("the package's console scripts are not installed (pip install -e .)")
    tools = world.tmp / "no-bash-tools"
    tools.mkdir()
    for tool in ("ssh", "ssh-keygen"):
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    (tools / "session-manager-plugin").write_text(PLUGIN_SHIM.format(python=sys.executable))
    (tools / "session-manager-plugin").chmod(0o755)
    path = f"{venv_bin}:{tools}"
    assert shutil.which("bash", path=path) is None and shutil.which("sh", path=path) is None
    env = dict(world.home("no-bash"), PATH=path)
    done = run(["sm-local-ssh-training", "connect", world.jobs["one"], "--local-port",
                str(free_port()), "--ssh-only", "--", "hostname"], env)
    assert (done.returncode, done.stdout) == (0, "algo-1\n"), done.stderr
    done = run(["sm-local-start-ssh", world.fqdn("one"), "--", "echo", "started"], env)
    assert (done.returncode, done.stdout) == (0, "started\n"), done.stderr
    for command in (["sm-local-configure", "--check"], ["sm-connect-ssh-proxy", "--help"],
                    ["sm-local-ssh-ide", "--help"], ["sm-ssh", "list", "training.sagemaker"]):
        done = run(command, env)
        assert done.returncode == 0, (command, done.stderr)


# -- releasing the jobs (last: the jobs end here) ------------------------------------------------
def test_sm_local_ssh_training_connect_run_command_and_stop_waiting(world: World) -> None:
    port = free_port()
    tunnel = subprocess.Popen(script("sm-local-ssh-training", "connect", world.jobs["one"],
                                     "--local-port", str(port), "-N"),
                              env=world.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def hostname() -> str:
            done = run(script("sm-local-ssh-training", "run-command", "--local-port", str(port),
                              "hostname"), world.env)
            assert done.returncode == 0, done.stderr
            return str(done.stdout)

        assert wait_until(hostname, tunnel, "sm-local-ssh-training connect") == "algo-1\n"
        done = run(script("sm-local-ssh-training", "stop-waiting", "--local-port", str(port)),
                   world.env)
        assert done.returncode == 0, done.stderr
    finally:
        stop(tunnel)
    described = world.sandbox.wait_for_job(world.jobs["one"], timeout=120)
    assert described["TrainingJobStatus"] == "Completed"
    assert "released" in world.sandbox.container_log(world.jobs["one"])
    one_line_error(run(sm_ssh("connect", world.fqdn("one"), "--", "true"), world.env), 3,
                   f"training job {world.jobs['one']} is Completed",
                   "SSH is available only while it runs")


def test_stop_waiting_and_pkill_sm_wait_release_the_nodes_and_the_job_completes(
        world: World) -> None:
    """algo-2 is released by `sm-ssh stop-waiting`, which runs `sm-wait stop` through
    SendCommand: it needs no sshd (here just killed on algo-2) and no key (this client has
    none); algo-1 the way earlier documents say, `pkill sm-wait` over ssh."""
    fqdn = world.fqdn("two")
    env = world.home("releaser")
    listed = json.loads(run(sm_ssh("list", fqdn, "--output", "json"), env).stdout)
    algo2 = [i["instance_id"] for i in listed[0]["instances"] if i["computer_name"] == "algo-2"]
    keys.run_shell_command(world.sandbox.client("ssm"), algo2[0], "pkill -x sshd || true")
    done = run(sm_ssh("stop-waiting", fqdn, "--node", "algo-2"), env)
    assert done.returncode == 0, done.stderr
    assert not (Path(env["HOME"]) / ".ssh").exists()  # no key made, no host key pinned
    assert [line.split(":")[0].split()[0] for line in done.stdout.splitlines()] == ["algo-2"]
    assert "sm-wait: created /tmp/sm-wait-stopped" in done.stdout, done.stdout
    done = run(sm_ssh("connect", fqdn, "--node", "algo-1", "--", "pkill", "sm-wait"), world.env)
    assert done.returncode == 0, done.stderr
    described = world.sandbox.wait_for_job(world.jobs["two"], timeout=120)
    assert described["TrainingJobStatus"] == "Completed"


def test_doctor_says_a_finished_job_is_not_connectable(world: World) -> None:
    """After the release above, job two has Completed: doctor names the status and the fix."""
    fqdn = world.fqdn("two")
    done = run(sm_ssh("doctor", fqdn), world.env)
    line = doctor_lines(done)[fqdn]
    assert done.returncode == 1, done.stdout + done.stderr
    assert line.startswith(f"✗ {fqdn}: training job {world.jobs['two']} is Completed, "
                           "2 node(s), 2 with SSH; managed instances: ")
    assert line.endswith("— fix: SSH works only while it runs: start a new training job")
