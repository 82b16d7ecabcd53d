"""Sandbox infrastructure without namespaces: gateway <-> moto, job API, bridges, pyhook, CLI.

These run as any user on any POSIX machine; the namespaced job runner is covered by
test_sandbox_infra_e2e.py.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import RecordingRunner, create_transform_job, moto_address

from sagemaker_ssh_sandbox import control
from sagemaker_ssh_sandbox.gateway import Gateway
from sagemaker_ssh_sandbox.sagemaker import layout
from sagemaker_ssh_sandbox.sagemaker.bridge import TcpToUnix, UnixToTcp
from sagemaker_ssh_sandbox.sagemaker.jobs import JobsAPI

REPO = Path(__file__).resolve().parents[1]
PYHOOK = REPO / "sagemaker_ssh_sandbox" / "sagemaker" / "pyhook"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture
def gateway(moto_url: str) -> Iterator[dict[str, Any]]:
    runner = RecordingRunner()
    jobs = JobsAPI("us-east-1", "123456789012", runner)
    gw = Gateway(("127.0.0.1", 0), moto_address(moto_url), jobs).start()
    yield {"url": gw.url, "runner": runner, "jobs": jobs}
    gw.stop()


@pytest.fixture
def endpoint_env(gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3 reaches the gateway through the standard AWS_ENDPOINT_URL variable only."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", gateway["url"])
    return str(gateway["url"])


def training_request(name: str, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": "any:latest", "TrainingInputMode": "File"},
        "RoleArn": ROLE,
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1,
                           "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }
    request.update(extra)
    return request


def test_gateway_forwards_s3_sts_iam_to_moto(endpoint_env: str) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="infra-gw-bucket")
    body = os.urandom(3 * 1024 * 1024)  # large enough for Expect: 100-continue / chunking
    s3.put_object(Bucket="infra-gw-bucket", Key="dir/blob.bin", Body=body)
    assert s3.get_object(Bucket="infra-gw-bucket", Key="dir/blob.bin")["Body"].read() == body
    head = s3.head_object(Bucket="infra-gw-bucket", Key="dir/blob.bin")
    assert head["ContentLength"] == len(body)
    listed = s3.list_objects_v2(Bucket="infra-gw-bucket", Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/blob.bin"]

    assert boto3.client("sts").get_caller_identity()["Account"] == "123456789012"

    iam = boto3.client("iam")
    iam.create_role(RoleName="InfraGwRole", AssumeRolePolicyDocument="{}")
    assert iam.get_role(RoleName="InfraGwRole")["Role"]["Arn"].endswith(":role/InfraGwRole")

    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="infra-gw-bucket", Key="missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_other_sagemaker_operations_go_to_moto(endpoint_env: str) -> None:
    sm = boto3.client("sagemaker")
    sm.create_model(ModelName="infra-model", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": "any:latest", "Environment": {"A": "1"}})
    assert sm.describe_model(ModelName="infra-model")["ModelName"] == "infra-model"


def test_training_job_api_keeps_what_create_received(endpoint_env: str,
                                                     gateway: dict[str, Any]) -> None:
    sm = boto3.client("sagemaker")
    arn = sm.create_training_job(**training_request(
        "infra-api-job", Environment={"START_SSH": "true", "SSH_OWNER_TAG": "me"},
        HyperParameters={"epochs": "3"}, Tags=[{"Key": "team", "Value": "x"}],
        ProfilerRuleConfigurations=[{"RuleConfigurationName": "ProfilerReport",
                                     "RuleEvaluatorImage": "any"}]))["TrainingJobArn"]
    assert arn == "arn:aws:sagemaker:us-east-1:123456789012:training-job/infra-api-job"
    assert [j.name for j in gateway["runner"].jobs] == ["infra-api-job"]

    described = sm.describe_training_job(TrainingJobName="infra-api-job")
    assert described["TrainingJobStatus"] == "InProgress"
    assert described["SecondaryStatus"] == "Starting"
    assert described["Environment"] == {"START_SSH": "true", "SSH_OWNER_TAG": "me"}
    assert described["HyperParameters"] == {"epochs": "3"}
    assert described["RoleArn"] == ROLE
    assert described["ResourceConfig"]["InstanceCount"] == 1
    rules = described["ProfilerRuleEvaluationStatuses"]
    assert [(r["RuleConfigurationName"], r["RuleEvaluationStatus"]) for r in rules] == [
        ("ProfilerReport", "InProgress")]
    gateway["jobs"].set_rule_status("infra-api-job", "ProfilerReport", "IssuesFound")
    rules = sm.describe_training_job(TrainingJobName="infra-api-job")[
        "ProfilerRuleEvaluationStatuses"]
    assert rules[0]["RuleEvaluationStatus"] == "IssuesFound"

    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "x"}]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "more", "Value": "y"}])
    assert {t["Key"] for t in sm.list_tags(ResourceArn=arn)["Tags"]} == {"team", "more"}

    sm.stop_training_job(TrainingJobName="infra-api-job")
    assert sm.describe_training_job(TrainingJobName="infra-api-job")[
        "TrainingJobStatus"] == "Stopping"
    assert gateway["runner"].jobs[0].stop_requested.is_set()


def test_job_api_errors_use_aws_codes(endpoint_env: str) -> None:
    sm = boto3.client("sagemaker")
    sm.create_training_job(**training_request("infra-dup"))
    with pytest.raises(ClientError) as e:
        sm.create_training_job(**training_request("infra-dup"))
    assert e.value.response["Error"]["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as e:
        sm.describe_training_job(TrainingJobName="no-such-job")
    assert e.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as e:
        sm.stop_processing_job(ProcessingJobName="no-such-job")
    assert e.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as e:
        sm.create_training_job(**training_request("bad_name"))
    assert e.value.response["Error"]["Code"] == "ValidationException"


def _raw_request(url: str, method: str, path: str, body: bytes,
                 headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()  # RemoteDisconnected if the gateway dropped the request
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_gateway_answers_its_own_failures_with_500_and_keeps_serving(
        gateway: dict[str, Any]) -> None:
    # A job name that is not a string fails inside the rule-status route (unhashable key).
    rule = json.dumps({"job": ["x"], "rule": "R", "status": "IssuesFound"}).encode()
    status, answer = _raw_request(gateway["url"], "POST", "/_sandbox/rule-status", rule,
                                  {"Content-Type": "application/json",
                                   "Content-Length": str(len(rule))})
    assert status == 500 and answer["__type"] == "InternalFailure"
    assert "TypeError" in answer["message"] and "Traceback" not in answer["message"]
    # A Content-Length that is not a number fails before any route is chosen.
    status, answer = _raw_request(gateway["url"], "POST", "/", b"{}",
                                  {"X-Amz-Target": "SageMaker.ListTrainingJobs",
                                   "Content-Length": "two"})
    assert (status, answer["__type"]) == (500, "InternalFailure")
    assert _raw_request(gateway["url"], "GET", "/_sandbox/health", b"", {}) == (200, {"ok": True})


def test_job_records_are_saved_safely_from_concurrent_threads(tmp_path: Path) -> None:
    """The runner's threads and the rule-status route save the same job at the same time."""
    jobs = JobsAPI("us-east-1", "123456789012", RecordingRunner(), state_dir=tmp_path)
    jobs.handle("CreateTrainingJob", training_request("infra-saves", ProfilerRuleConfigurations=[
        {"RuleConfigurationName": "ProfilerReport", "RuleEvaluatorImage": "any"}]))
    job = jobs.get("training", "infra-saves")
    errors: list[BaseException] = []

    def save_often() -> None:
        try:
            for _ in range(200):
                jobs.save(job)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=save_often) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        jobs.set_rule_status("infra-saves", "ProfilerReport", "IssuesFound", "LowGPUUtilization")
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    saved = json.loads((tmp_path / "jobs/training/infra-saves/job.json").read_text())
    assert saved["ProfilerRuleEvaluationStatuses"][0]["RuleEvaluationStatus"] == "IssuesFound"


def test_list_jobs_filters_and_paginates(endpoint_env: str) -> None:
    sm = boto3.client("sagemaker")
    for i in range(5):
        sm.create_training_job(**training_request(f"infra-list-{i}"))
    sm.create_training_job(**training_request("other-job"))
    pages = sm.get_paginator("list_training_jobs").paginate(
        NameContains="infra-list", PaginationConfig={"PageSize": 2})
    names = [s["TrainingJobName"] for p in pages for s in p["TrainingJobSummaries"]]
    assert names == [f"infra-list-{i}" for i in range(5)]
    newest = sm.list_training_jobs(SortBy="CreationTime", SortOrder="Descending", MaxResults=1)
    assert newest["TrainingJobSummaries"][0]["TrainingJobName"] == "other-job"


def test_processing_and_transform_job_api(endpoint_env: str) -> None:
    sm = boto3.client("sagemaker")
    sm.create_processing_job(
        ProcessingJobName="infra-proc", RoleArn=ROLE, Environment={"K": "V"},
        ProcessingResources={"ClusterConfig": {"InstanceCount": 1,
                                               "InstanceType": "ml.m5.xlarge",
                                               "VolumeSizeInGB": 30}},
        AppSpecification={"ImageUri": "any", "ContainerEntrypoint": ["python3", "x.py"]})
    described = sm.describe_processing_job(ProcessingJobName="infra-proc")
    assert described["ProcessingJobStatus"] == "InProgress"
    assert described["Environment"] == {"K": "V"}
    assert described["ProcessingJobArn"].endswith(":processing-job/infra-proc")
    create_transform_job(sm, "infra-transform", "m", {"T": "1"})
    assert sm.describe_transform_job(TransformJobName="infra-transform")["Environment"] == {
        "T": "1"}
    names = [s["TransformJobName"] for s in sm.list_transform_jobs()["TransformJobSummaries"]]
    assert names == ["infra-transform"]


def _echo_server() -> socket.socket:
    """A TCP server upper-casing whatever it reads, answering after the client half-closes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def handle(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(data.upper())
        conn.close()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_bridge_pipes_many_concurrent_full_duplex_connections(tmp_path: Path) -> None:
    upstream = _echo_server()
    port = upstream.getsockname()[1]
    host_side = UnixToTcp(tmp_path / "sock" / f"{port}.sock", "127.0.0.1", port).start()
    container_side = TcpToUnix("127.0.0.1", 0, str(host_side.path)).start()
    bridge_port = container_side._listener.getsockname()[1]
    results: dict[int, bytes] = {}

    def client(i: int) -> None:
        payload = (b"conn-%d-" % i) * 20000
        with socket.create_connection(("127.0.0.1", bridge_port)) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # half-close must reach the server
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        results[i] = data

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(24))
    for i, data in results.items():
        assert data == ((b"conn-%d-" % i) * 20000).upper()
    container_side.close()
    host_side.close()
    upstream.close()
    assert not host_side.path.exists()


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1]  # the SDK logs its config search to stdout


def test_pyhook_redirects_sdk_sts_endpoint_only_in_the_sandbox(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PYHOOK), str(REPO)]),
               AWS_ENDPOINT_URL="http://127.0.0.1:4599", SAGEMAKER_SUPPRESS_V2_WARNING="1")
    code = ("import sys; lazy = 'sagemaker' not in sys.modules; "
            "from sagemaker.utils import sts_regional_endpoint as f; "
            "import sagemaker.session as s; "
            "print(lazy, f('eu-west-1'), s.sts_regional_endpoint('eu-west-1'))")
    inside = _python(code, dict(env, SM_SSH_SANDBOX_DIR=str(tmp_path)))
    assert inside == "True http://127.0.0.1:4599 http://127.0.0.1:4599"
    outside = _python(code, {k: v for k, v in env.items() if k != "SM_SSH_SANDBOX_DIR"})
    assert outside == "True https://sts.eu-west-1.amazonaws.com https://sts.eu-west-1.amazonaws.com"


def test_pyhook_runs_the_next_sitecustomize(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PYHOOK), str(other)]),
               SM_SSH_SANDBOX_DIR=str(tmp_path))
    assert _python("import os; print(os.environ.get('CHAINED'))", env) == "yes"


@pytest.mark.parametrize("key, prefix, expected", [
    ("code/runproc.sh", "code/runproc.sh", "runproc.sh"),
    ("data/a/b.csv", "data/", "a/b.csv"),
    ("data/a/b.csv", "data", "a/b.csv"),
    ("job/source/sourcedir.tar.gz", "job/source/sourcedir.tar.gz", "sourcedir.tar.gz"),
])
def test_s3_prefix_download_names(key: str, prefix: str, expected: str) -> None:
    assert layout._relative_key(key, prefix) == expected


def test_training_entry_point_runs_like_the_toolkit() -> None:
    request = {"HyperParameters": {"sagemaker_program": '"train.py"', "epochs": "3",
                                   "name": '"x y"', "opts": '{"a": 1}'}}
    assert layout.training_entry(request, "/py") == [
        "/py", "train.py", "--epochs", "3", "--name", "x y", "--opts", '{"a": 1}']
    with pytest.raises(layout.JobSetupError):
        layout.training_entry({"HyperParameters": {}}, "/py")


def _cli(*argv: str, user: bool = False, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sagemaker_ssh_sandbox.cli", *argv]
    if user:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    run_env = dict(env or os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=run_env,
                          cwd="/")


def test_cli_without_a_running_sandbox(tmp_path: Path) -> None:
    state = tmp_path / "state"
    status = _cli("status", "--state-dir", str(state))
    assert status.returncode == 1
    assert "not running" in status.stdout
    env = _cli("env", "--state-dir", str(state))
    assert env.returncode == 1
    assert env.stderr.count("\n") == 1 and "sm-ssh sandbox up" in env.stderr
    assert "Traceback" not in env.stderr
    down = _cli("down", "--state-dir", str(state))
    assert down.returncode == 0


@pytest.mark.skipif(not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv")),
                    reason="needs root and setpriv to run the CLI as an unprivileged user")
def test_cli_up_refuses_without_root_in_one_line(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    done = _cli("up", "--state-dir", str(tmp_path / "state"), user=True,
                env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 2
    assert done.stderr.strip() == ("sm-ssh sandbox up: the sandbox needs root (it creates "
                                   "namespaces and mounts): run it as root")
    assert done.stdout == ""


def test_export_lines_round_trip_through_a_shell() -> None:
    state = {"endpoint_url": "http://127.0.0.1:1", "ssm_endpoint_url": "http://127.0.0.1:2",
             "region": "eu-west-1", "pybin": "/s/pybin", "sagemaker_config": "/s/c.yaml",
             "state_dir": "/s dir/with 'quote'", "role_arn": ROLE, "python": sys.executable}
    env = control.sandbox_env(state, base={"PATH": "/usr/bin", "PYTHONPATH": "/x"})
    script = control.export_lines(env) + "env -0"
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True,
                         env={"AWS_PROFILE": "p", "PATH": "/usr/bin:/bin"}).stdout
    seen = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    assert "AWS_PROFILE" not in seen
    for name, value in env.items():
        assert seen[name] == value
    assert env["PATH"].split(":")[0].endswith("sagemaker_ssh_sandbox/ssm/bin")
    assert env["PYTHONPATH"].split(":")[0] == str(PYHOOK)
    assert json.loads(json.dumps(env))["SM_SSH_SANDBOX_DIR"] == "/s dir/with 'quote'"
