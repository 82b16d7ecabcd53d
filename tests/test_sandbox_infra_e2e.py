"""End to end: the sandbox daemon, jobs launched by the real SageMaker SDK v2, namespaced
containers, and `sandbox down` leaving nothing behind. Needs root on Linux.

One module-scoped sandbox; one SDK launch script (the SDK takes seconds to import) starts all
the jobs the tests then examine.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SANDBOX_E2E, create_transform_job

from sagemaker_ssh_sandbox import Sandbox
from sagemaker_ssh_sandbox.sagemaker.container import pid_namespace_members

REPO = Path(__file__).resolve().parents[1]

pytestmark = SANDBOX_E2E

TOKEN = f"sm-ssh-infra-{uuid.uuid4().hex[:8]}"
SKEL = os.listdir("/etc/skel") if os.path.isdir("/etc/skel") else []
PROBE_DIRS = ("/etc", "/tmp", "/opt", "/usr/local/bin", "/var", "/root", "/home", "/run")

TRAIN = """\
import json, os, socket, sys
import boto3

token = sys.argv[sys.argv.index("--token") + 1]
for d in {probe_dirs!r}:
    if os.path.isdir(d):
        open(os.path.join(d, token), "w").write("written inside the container")
report = {{
    "hostname": socket.gethostname(),
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "config": {{n: json.load(open("/opt/ml/input/config/" + n)) for n in
               ("resourceconfig.json", "hyperparameters.json", "inputdataconfig.json")}},
    "train_files": sorted(os.listdir("/opt/ml/input/data/train")),
    "code": sorted(os.listdir("/opt/ml/code")),
    "pid1": open("/proc/1/cmdline").read().split("\\0")[:3],
    "account": boto3.client("sts").get_caller_identity()["Account"],
    "interfaces": sorted(n for _, n in socket.if_nameindex()),
    "resolv_conf": open("/etc/resolv.conf").read(),
    "home": sorted(os.listdir("/root")),
}}
with socket.socket() as s:  # the container has its own loopback: port 22 is free here
    s.bind(("127.0.0.1", 22))
    s.listen(1)
    with socket.create_connection(("127.0.0.1", 22)) as c, s.accept()[0] as a:
        c.sendall(b"ping")
        report["port22"] = a.recv(4).decode()
json.dump(report, open("/opt/ml/model/report.json", "w"))
print("REPORT " + json.dumps(report), flush=True)
"""

FAIL = """\
import sys
print("about to fail", flush=True)
print("intentional failure: bad input", file=sys.stderr, flush=True)
sys.exit(3)
"""

SLEEPY = """\
import signal, subprocess, sys, time
def on_term(*_):
    print("got SIGTERM", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
subprocess.Popen(["sleep", "600"])  # a second process in the container
print("sleeping", flush=True)
time.sleep(600)
"""

PROC = """\
import json, os, socket, sys
cfg = json.load(open("/opt/ml/config/processingjobconfig.json"))
res = json.load(open("/opt/ml/config/resourceconfig.json"))
os.makedirs("/opt/ml/processing/output", exist_ok=True)
out = {"job": cfg["ProcessingJobName"], "arn": cfg["ProcessingJobArn"], "host": res["current_host"],
       "inputs": sorted(os.listdir("/opt/ml/processing/input/data")),
       "var": os.environ.get("PROC_VAR"), "args": sys.argv[1:], "hostname": socket.gethostname()}
json.dump(out, open("/opt/ml/processing/output/result.json", "w"))
print("PROC " + json.dumps(out), flush=True)
"""

LAUNCH = """\
import json, os, sys

connects = []
def audit(event, args):
    if event == "socket.connect":
        connects.append(repr(args[1]))
sys.addaudithook(audit)

import sagemaker
from sagemaker.processing import ProcessingInput, ProcessingOutput, ScriptProcessor
from sagemaker.pytorch import PyTorch
from sagemaker.pytorch.processing import PyTorchProcessor

src, token = sys.argv[1], sys.argv[2]
role = os.environ["SM_SSH_SANDBOX_ROLE_ARN"]
session = sagemaker.Session()
bucket = session.default_bucket()
data = session.upload_data(os.path.join(src, "data"), bucket, "infra/data")
common = dict(role=role, framework_version="2.2", py_version="py310",
              instance_type="ml.m5.xlarge", source_dir=src)
jobs = {}

def train(key, entry, count=1, **kw):
    est = PyTorch(entry_point=entry, instance_count=count, base_job_name="infra-" + key,
                  hyperparameters={"token": token, "epochs": 2}, **common, **kw)
    est.fit({"train": data}, wait=False)
    jobs[key] = est.latest_training_job.name

train("ok", "train.py", environment={"MY_VAR": "hello", "START_SSH": "false"})
train("two", "train.py", count=2)
train("fail", "fail.py")
train("stop", "sleepy.py")
proc_io = dict(
    inputs=[ProcessingInput(source=data, destination="/opt/ml/processing/input/data")],
    outputs=[ProcessingOutput(source="/opt/ml/processing/output",
                              destination=f"s3://{bucket}/infra/out-" + token)],
    wait=False, logs=False)
script = ScriptProcessor(command=["python3"], image_uri="any:latest", role=role,
                         instance_count=1, instance_type="ml.m5.xlarge",
                         env={"PROC_VAR": "script"}, base_job_name="infra-script")
script.run(code=os.path.join(src, "proc.py"), arguments=["--mode", "script"], **proc_io)
jobs["script"] = script.latest_job.job_name
framework = PyTorchProcessor(framework_version="2.2", py_version="py310", image_uri="any:latest",
                             role=role, instance_count=1, instance_type="ml.m5.xlarge",
                             env={"PROC_VAR": "framework"}, base_job_name="infra-framework")
proc_io["outputs"] = [ProcessingOutput(source="/opt/ml/processing/output",
                                       destination=f"s3://{bucket}/infra/fw-" + token)]
framework.run(code="proc.py", source_dir=src, arguments=["--mode", "framework"], **proc_io)
jobs["framework"] = framework.latest_job.job_name
print("JOBS " + json.dumps({"jobs": jobs, "connects": connects}))
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("sandbox"), stop_grace=3.0) as sb:
        yield sb


@pytest.fixture(scope="module")
def host_port22() -> Iterator[list[bytes]]:
    """Hold 127.0.0.1:22 on the host (if free) while the jobs run; record what reaches it."""
    received: list[bytes] = []
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", 22))
    except OSError:
        server.close()
        yield received  # something (e.g. the host's sshd) already holds it: no clash either way
        return
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            received.append(conn.recv(64))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield received
    server.close()


@pytest.fixture(scope="module", autouse=True)
def no_probe_residue() -> Iterator[None]:
    """Should isolation ever break, remove the probe files from the host after the module
    (the tests have asserted their absence by then)."""
    yield
    for directory in PROBE_DIRS:
        for leaked in Path(directory).glob(f"{TOKEN}*"):
            leaked.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def launched(sandbox: Sandbox, host_port22: list[bytes],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("launch")
    src = work / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "a.csv").write_text("1,2\n")
    (src / "data" / "b.csv").write_text("3,4\n")
    (src / "train.py").write_text(TRAIN.format(probe_dirs=PROBE_DIRS))
    (src / "fail.py").write_text(FAIL)
    (src / "sleepy.py").write_text(SLEEPY)
    (src / "proc.py").write_text(PROC)
    (work / "launch.py").write_text(LAUNCH)
    env = dict(os.environ, **sandbox.env, SAGEMAKER_SUPPRESS_V2_WARNING="1")
    done = subprocess.run([sys.executable, str(work / "launch.py"), str(src), TOKEN], env=env,
                          cwd=str(work), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("JOBS "))
    result: dict[str, Any] = json.loads(line[len("JOBS "):])
    return result


def _processes(pidns: str) -> set[tuple[int, float]]:
    """(pid, start time) of the processes in a live container's PID namespace."""
    import psutil

    found = set()
    for pid in pid_namespace_members(pidns):
        try:
            found.add((pid, psutil.Process(pid).create_time()))
        except psutil.NoSuchProcess:
            continue
    return found


def _any_alive(processes: set[tuple[int, float]]) -> bool:
    import psutil

    for pid, created in processes:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _report(sandbox: Sandbox, job: str, host: str = "algo-1") -> dict[str, Any]:
    log = sandbox.container_log(job, host)
    line = next((x for x in log.splitlines() if x.startswith("REPORT ")), None)
    assert line, f"no report in {job}/{host} log:\n{log[-2000:]}"
    report: dict[str, Any] = json.loads(line[len("REPORT "):])
    return report


def test_sdk_launch_made_no_network_attempts_outside_loopback(launched: dict[str, Any]) -> None:
    outside = [c for c in launched["connects"] if "127.0.0.1" not in c and "/" not in c]
    assert outside == []


def test_sdk_training_job_completes_with_environment(sandbox: Sandbox,
                                                     launched: dict[str, Any]) -> None:
    job = launched["jobs"]["ok"]
    described = sandbox.wait_for_job(job)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert described["SecondaryStatus"] == "Completed"
    assert described["Environment"] == {"MY_VAR": "hello", "START_SSH": "false"}
    assert [t["Status"] for t in described["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert described["TrainingEndTime"] >= described["TrainingStartTime"]
    # /opt/ml/model went to S3 as model.tar.gz
    s3 = sandbox.client("s3")
    bucket, key = described["ModelArtifacts"]["S3ModelArtifacts"][5:].split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert "report.json" in tar.getnames()
    # ... and its output reached CloudWatch Logs
    logs = sandbox.client("logs")
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs",
                                        logStreamNamePrefix=f"{job}/algo-1")["logStreams"]
    assert len(streams) == 1


def test_container_sees_sagemaker_layout_and_env(sandbox: Sandbox,
                                                 launched: dict[str, Any]) -> None:
    job = launched["jobs"]["ok"]
    sandbox.wait_for_job(job)
    report = _report(sandbox, job)
    assert report["hostname"] == "algo-1"
    assert report["argv"] == ["--epochs", "2", "--token", TOKEN]
    assert report["cwd"] == "/opt/ml/code"
    assert report["code"] == ["data", "fail.py", "proc.py", "sleepy.py", "train.py"]
    assert report["train_files"] == ["a.csv", "b.csv"]
    assert report["config"]["resourceconfig.json"]["current_host"] == "algo-1"
    assert report["config"]["resourceconfig.json"]["hosts"] == ["algo-1"]
    assert report["config"]["hyperparameters.json"]["sagemaker_program"] == '"train.py"'
    assert set(report["config"]["inputdataconfig.json"]) == {"train"}
    env = report["env"]
    assert env["TRAINING_JOB_NAME"] == job
    assert env["TRAINING_JOB_ARN"].endswith(f":training-job/{job.lower()}")
    assert env["MY_VAR"] == "hello"
    assert env["SM_CURRENT_HOST"] == "algo-1"
    assert json.loads(env["SM_HOSTS"]) == ["algo-1"]
    assert json.loads(env["SM_CHANNELS"]) == ["train"]
    assert json.loads(env["SM_HPS"]) == {"epochs": 2, "token": TOKEN}
    assert env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert env["SM_NUM_GPUS"] == "0"
    assert env["AWS_ENDPOINT_URL"] == sandbox.env["AWS_ENDPOINT_URL"]
    assert env["AWS_ENDPOINT_URL_SSM"] == sandbox.env["AWS_ENDPOINT_URL_SSM"]
    assert env["PATH"].split(":")[0].endswith("sagemaker_ssh_sandbox/ssm/bin")
    assert report["account"] == "123456789012"  # STS through the unix-socket bridge
    assert report["interfaces"] == ["lo"]
    assert report["resolv_conf"] == Path("/etc/resolv.conf").read_text()
    # /root is fresh: nothing of the host's /root but the interpreter (pyenv) shows through
    leaked = set(report["home"]) & (set(os.listdir("/root")) - {".pyenv"} - set(SKEL))
    assert leaked == set()
    assert report["pid1"][2] == "sagemaker_ssh_sandbox.sagemaker.container_init"


def test_container_writes_never_reach_the_host(sandbox: Sandbox,
                                               launched: dict[str, Any]) -> None:
    sandbox.wait_for_job(launched["jobs"]["ok"])
    sandbox.wait_for_job(launched["jobs"]["two"])
    for directory in PROBE_DIRS:
        assert not os.path.exists(os.path.join(directory, TOKEN)), directory
    upper = sandbox.container_dir(launched["jobs"]["ok"]) / "upper" / "etc" / TOKEN
    assert upper.exists()  # the write landed in the container's overlay layer


def test_port_22_inside_a_container_does_not_clash_with_the_host(
        sandbox: Sandbox, launched: dict[str, Any], host_port22: list[bytes]) -> None:
    sandbox.wait_for_job(launched["jobs"]["ok"])
    assert _report(sandbox, launched["jobs"]["ok"])["port22"] == "ping"
    assert host_port22 == []


def test_two_node_job_runs_two_containers(sandbox: Sandbox, launched: dict[str, Any]) -> None:
    job = launched["jobs"]["two"]
    described = sandbox.wait_for_job(job)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    reports = [_report(sandbox, job, host) for host in ("algo-1", "algo-2")]
    assert [r["hostname"] for r in reports] == ["algo-1", "algo-2"]
    for host, report in zip(("algo-1", "algo-2"), reports):
        assert report["config"]["resourceconfig.json"]["current_host"] == host
        assert report["config"]["resourceconfig.json"]["hosts"] == ["algo-1", "algo-2"]
        assert report["env"]["SM_CURRENT_HOST"] == host
    containers = [c for c in sandbox.status()["containers"] if c["job"] == job]
    assert sorted(c["hostname"] for c in containers) == ["algo-1", "algo-2"]


def test_failing_entry_point_fails_the_job(sandbox: Sandbox, launched: dict[str, Any]) -> None:
    described = sandbox.wait_for_job(launched["jobs"]["fail"])
    assert described["TrainingJobStatus"] == "Failed"
    assert described["SecondaryStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith("AlgorithmError: ")
    assert "ExitCode 3" in reason and "intentional failure: bad input" in reason


def test_stop_training_job_stops_it(sandbox: Sandbox, launched: dict[str, Any]) -> None:
    job = launched["jobs"]["stop"]
    deadline = time.monotonic() + 60
    while "sleeping" not in sandbox.container_log(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "sleeping" in sandbox.container_log(job)
    record = json.loads((sandbox.container_dir(job) / "pids.json").read_text())
    processes = _processes(record["pidns"])
    assert len(processes) >= 3  # init, entry point, sleep
    sandbox.client("sagemaker").stop_training_job(TrainingJobName=job)
    described = sandbox.wait_for_job(job)
    assert described["TrainingJobStatus"] == "Stopped"
    assert "got SIGTERM" in sandbox.container_log(job)
    assert not _any_alive(processes)


@pytest.mark.parametrize("kind", ["script", "framework"])
def test_processing_jobs_run(sandbox: Sandbox, launched: dict[str, Any], kind: str) -> None:
    job = launched["jobs"][kind]
    described = sandbox.wait_for_job(job, kind="processing")
    assert described["ProcessingJobStatus"] == "Completed", (
        described.get("FailureReason"), sandbox.container_log(job, kind="processing")[-2000:])
    assert described["Environment"]["PROC_VAR"] == kind
    output = described["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    bucket, prefix = output[5:].split("/", 1)
    s3 = sandbox.client("s3")
    result = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/result.json")["Body"].read())
    assert result == {"job": job, "arn": described["ProcessingJobArn"], "host": "algo-1",
                      "inputs": ["a.csv", "b.csv"], "var": kind, "args": ["--mode", kind],
                      "hostname": "algo-1"}


def _raw_training_job(sandbox: Sandbox, name: str, argv: list[str], **extra: Any) -> None:
    """CreateTrainingJob without the SDK, with an explicit container entry point."""
    request: dict[str, Any] = dict(
        TrainingJobName=name, RoleArn=sandbox.role_arn,
        AlgorithmSpecification={"TrainingImage": "any", "TrainingInputMode": "File",
                                "ContainerEntrypoint": argv},
        OutputDataConfig={"S3OutputPath": f"s3://{sandbox.state['bucket']}/out"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})
    request.update(extra)
    sandbox.client("sagemaker").create_training_job(**request)


def test_max_runtime_stops_the_job(sandbox: Sandbox) -> None:
    _raw_training_job(sandbox, "infra-max-runtime", ["sleep", "600"],
                      StoppingCondition={"MaxRuntimeInSeconds": 1})
    described = sandbox.wait_for_job("infra-max-runtime", timeout=60)
    assert (described["TrainingJobStatus"], described["SecondaryStatus"]) == (
        "Stopped", "MaxRuntimeExceeded")


def test_entry_point_exit_ends_the_container(sandbox: Sandbox) -> None:
    import psutil

    marker = f"{TOKEN}-background"
    script = f"(exec -a {marker} sleep 600) & echo started"
    _raw_training_job(sandbox, "infra-exit", ["bash", "-c", script])
    described = sandbox.wait_for_job("infra-exit", timeout=60)
    assert described["TrainingJobStatus"] == "Completed"
    record = json.loads((sandbox.container_dir("infra-exit") / "pids.json").read_text())
    assert sandbox.container_log("infra-exit").strip() == "started"
    assert record["init_pid"] and not _alive(record["init_pid"])
    # the background process of the entry point died with the container
    assert [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0] == marker] == []
    members = [c for c in sandbox.status()["containers"] if c["job"] == "infra-exit"]
    assert [c["state"] for c in members] == ["Exited(0)"]


def test_rule_statuses_are_settable(sandbox: Sandbox) -> None:
    _raw_training_job(sandbox, "infra-rules", ["sleep", "600"],
                      ProfilerRuleConfigurations=[{"RuleConfigurationName": "ProfilerReport",
                                                   "RuleEvaluatorImage": "any"}])
    sm = sandbox.client("sagemaker")
    statuses = sm.describe_training_job(TrainingJobName="infra-rules")[
        "ProfilerRuleEvaluationStatuses"]
    assert statuses[0]["RuleEvaluationStatus"] == "InProgress"
    sandbox.set_rule_status("infra-rules", "ProfilerReport", "IssuesFound", "LowGPUUtilization")
    statuses = sm.describe_training_job(TrainingJobName="infra-rules")[
        "ProfilerRuleEvaluationStatuses"]
    assert (statuses[0]["RuleEvaluationStatus"], statuses[0]["StatusDetails"]) == (
        "IssuesFound", "LowGPUUtilization")
    sm.stop_training_job(TrainingJobName="infra-rules")
    assert sandbox.wait_for_job("infra-rules")["TrainingJobStatus"] == "Stopped"


def test_transform_job_of_a_missing_model_fails(sandbox: Sandbox) -> None:
    create_transform_job(sandbox.client("sagemaker"), "infra-transform", "any-model",
                         {"START_SSH": "true"})
    described = sandbox.wait_for_job("infra-transform", kind="transform")
    assert described["TransformJobStatus"] == "Failed"
    assert described["FailureReason"].startswith("ClientError: Could not find model")
    assert described["Environment"] == {"START_SSH": "true"}


def test_status_lists_services_jobs_and_containers(sandbox: Sandbox,
                                                   launched: dict[str, Any]) -> None:
    sandbox.wait_for_job(launched["jobs"]["ok"])
    env = dict(os.environ, PYTHONPATH=str(REPO), SM_SSH_SANDBOX_DIR=str(sandbox.state_dir.root))
    done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_sandbox.cli", "status"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sandbox.env["AWS_ENDPOINT_URL"] in done.stdout
    assert launched["jobs"]["ok"] in done.stdout and "Completed" in done.stdout
    assert f"{launched['jobs']['two']}-algo-2" in done.stdout


def test_down_leaves_no_processes_mounts_or_host_files(tmp_path: Path) -> None:
    watched = ("/etc", "/opt", "/usr/local/bin")
    before = {d: sorted(os.listdir(d)) for d in watched}
    state_dir = tmp_path / "down-state"
    sandbox = Sandbox(state_dir, stop_grace=2.0)
    env = dict(os.environ, **sandbox.up())
    script = textwrap.dedent(f"""\
        for d in {' '.join(PROBE_DIRS)}; do echo x > "$d/{TOKEN}-down"; done
        sleep 600 &
        echo running
        trap '' TERM
        wait
    """)
    _raw_training_job(sandbox, "infra-down", ["bash", "-c", script])
    # `up` again is idempotent: same daemon, same variables. As a user runs it, from an
    # activated virtualenv: its python (with the SageMaker SDK) stays first on PATH.
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    user = dict(os.environ, PATH=f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin")
    script = (f'eval "$({shlex.quote(venv_bin)}/sm-ssh sandbox up --state-dir '
              f'{shlex.quote(str(state_dir))})"; python -c "import sagemaker, sys; '
              f'print(sys.prefix)"; echo "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"')
    again = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=user,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']}" in again.stdout.splitlines()
    if sys.prefix != sys.base_prefix:
        assert sys.prefix in again.stdout.splitlines(), again.stdout
    deadline = time.monotonic() + 60
    while "running" not in sandbox.container_log("infra-down") and time.monotonic() < deadline:
        time.sleep(0.1)
    record = json.loads((sandbox.container_dir("infra-down") / "pids.json").read_text())
    daemon_pid = sandbox.state["pid"]
    processes = _processes(record["pidns"])
    assert len(processes) >= 3  # init, bash, sleep

    done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_sandbox.cli", "down",
                           "--state-dir", str(state_dir)], capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=str(REPO)), timeout=120)
    assert done.returncode == 0, done.stderr
    assert not _any_alive(processes)  # SIGTERM was ignored: SIGKILL after the grace period
    assert not _alive(daemon_pid)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(state_dir) not in mounts
    assert not list((state_dir / "sock").glob("*"))
    assert not (state_dir / "state.json").exists()
    assert (state_dir / "daemon.log").exists()
    assert "running" in sandbox.container_log("infra-down")  # logs are kept
    for directory in PROBE_DIRS:
        assert not os.path.exists(os.path.join(directory, f"{TOKEN}-down")), directory
    # Nothing new on the host (entries others remove meanwhile don't matter).
    assert {d: sorted(set(os.listdir(d)) - set(before[d])) for d in watched} == \
        {d: [] for d in watched}


def test_down_after_the_daemon_crashed(tmp_path: Path) -> None:
    """`down` still stops containers by PID when the daemon died without cleaning up."""
    import signal

    import boto3

    state_dir = tmp_path / "crash-state"
    sandbox = Sandbox(state_dir, stop_grace=2.0)
    up = subprocess.run([sys.executable, "-m", "sagemaker_ssh_sandbox.cli", "up",
                         "--state-dir", str(state_dir), "--stop-grace", "2", "--no-iam"],
                        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                        timeout=120)
    assert up.returncode == 0, up.stderr
    assert sandbox.state["iam"] is False
    # without IAM, even credentials no one issued get an answer (with IAM: "invalid token")
    stranger = boto3.client("ssm", region_name=sandbox.region,
                            endpoint_url=sandbox.state["ssm_endpoint_url"],
                            aws_access_key_id="AKIANOBODYISSUEDTHIS", aws_secret_access_key="x")
    assert stranger.describe_instance_information()["InstanceInformationList"] == []
    _raw_training_job(sandbox, "infra-crash", ["bash", "-c", "sleep 600 & echo running; wait"])
    deadline = time.monotonic() + 60
    while "running" not in sandbox.container_log("infra-crash") and time.monotonic() < deadline:
        time.sleep(0.1)
    record = json.loads((sandbox.container_dir("infra-crash") / "pids.json").read_text())
    processes = _processes(record["pidns"])
    assert len(processes) >= 3
    os.kill(sandbox.state["pid"], signal.SIGKILL)
    report = sandbox.down()
    assert report.ok, report.leftovers
    assert any("infra-crash" in line for line in report.stopped)
    assert not _any_alive(processes)
    assert str(state_dir) not in Path("/proc/self/mountinfo").read_text()


PARENT = """\
import sys
from sagemaker_ssh_sandbox import Sandbox

sandbox = Sandbox(sys.argv[1], stop_grace=1.0)  # as a test fixture starts one
sandbox.up()
print(sandbox.state["pid"], flush=True)
sys.stdin.read()  # until killed
"""


def test_a_sandbox_does_not_outlive_the_process_it_was_started_for(tmp_path: Path) -> None:
    """A test run (or demo) SIGKILLed mid-way leaves no daemon, container or mount behind."""
    state_dir = tmp_path / "orphan-state"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(state_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        daemon_pid = int(parent.stdout.readline() if parent.stdout else "0")
        sandbox = Sandbox(state_dir)
        _raw_training_job(sandbox, "infra-orphan", ["bash", "-c", "sleep 600 & echo running; wait"])
        deadline = time.monotonic() + 60
        while "running" not in sandbox.container_log("infra-orphan") \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        record = json.loads((sandbox.container_dir("infra-orphan") / "pids.json").read_text())
        processes = _processes(record["pidns"])
        assert len(processes) >= 3 and _alive(daemon_pid)
    finally:
        parent.kill()  # SIGKILL: no teardown, no atexit
        parent.wait()
    deadline = time.monotonic() + 30
    while (_alive(daemon_pid) or _any_alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert not _alive(daemon_pid) and not _any_alive(processes)
        assert str(state_dir) not in Path("/proc/self/mountinfo").read_text()
        assert not (state_dir / "state.json").exists()
        assert "has ended: stopping" in (state_dir / "daemon.log").read_text()
    finally:
        report = Sandbox(state_dir).down()  # in case it did not: the test must not leak either
    assert report.ok
