"""Endpoints and batch transform end to end in the offline sandbox.

One sandbox for the module. A user script, unchanged from what runs against AWS, uses the real
SageMaker SDK to deploy a ``PyTorchModel`` (script mode, the package shipped as a dependency)
behind an SSH-enabled endpoint, to start an SSH-enabled batch transform job of the same model
that holds until released, to deploy a model whose ``model_fn`` raises (behind an endpoint and in
a transform job), and to start a transform job whose entry point never returns. Tests then use
them only through the commands users run (``sm-ssh``, ``sm-local-ssh-transform``, ``sm-ssh
sandbox status``) and the AWS APIs. The last tests delete the endpoint, then take the sandbox
down with an endpoint still starting, so the module's order matters.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SANDBOX_E2E, allow_team_owner, free_port, run, sm_ssh, wait_until
from e2e_helpers import launch, stop, user_env

from sagemaker_ssh_helper import mux
from sagemaker_ssh_sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sagemaker_ssh_helper"

pytestmark = SANDBOX_E2E

INFERENCE = """\
import json
import os
import socket

import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()


def model_fn(model_dir):
    with open(os.path.join(model_dir, "weights.json")) as f:
        weights = json.load(f)
    with open("/tmp/model-loaded", "w") as f:
        f.write(f"scale={weights['scale']} package={sagemaker_ssh_helper.__file__}\\n")
    return weights


def input_fn(body, content_type):
    return [float(x) for x in body.decode().split(",")]


def predict_fn(data, model):
    return [x * model["scale"] for x in data]


def output_fn(prediction, accept):
    return json.dumps({"prediction": prediction, "host": socket.gethostname()})
"""

FAILING = """\
def model_fn(model_dir):
    raise RuntimeError("cannot load the weights: this model is broken on purpose")
"""

HOLDING = """\
import threading

print("holding until stopped", flush=True)
threading.Event().wait()
"""

LAUNCH = """\
import io, json, os, sys, tarfile, time

import boto3
import sagemaker
from sagemaker.pytorch import PyTorchModel
from sagemaker_ssh_helper.wrapper import SSHModelWrapper, SSHTransformerWrapper

session = sagemaker.Session()
bucket = session.default_bucket()
archive = io.BytesIO()
with tarfile.open(fileobj=archive, mode="w:gz") as tar:
    weights = json.dumps({"scale": 3}).encode()
    info = tarfile.TarInfo("weights.json")
    info.size = len(weights)
    tar.addfile(info, io.BytesIO(weights))
s3 = boto3.client("s3")
s3.put_object(Bucket=bucket, Key="models/model.tar.gz", Body=archive.getvalue())
s3.put_object(Bucket=bucket, Key="batch-in/a.csv", Body=b"1,2\\n3,4\\n")
s3.put_object(Bucket=bucket, Key="batch-in/more/b.csv", Body=b"5\\n")


def model(entry_point):
    return PyTorchModel(entry_point=entry_point, source_dir=sys.argv[1],
                        dependencies=[SSHModelWrapper.dependency_dir()],
                        model_data=f"s3://{bucket}/models/model.tar.gz",
                        role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                        py_version="py310", sagemaker_session=session)


# (b) batch transform, held in the entry point until released
batch_model = model("inference.py")
batch_wrapper = SSHModelWrapper.create(batch_model, connection_wait_time_seconds=600)
transformer = batch_model.transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                      output_path=f"s3://{bucket}/batch-out",
                                      accept="application/json", strategy="SingleRecord",
                                      assemble_with="Line")
transformer_wrapper = SSHTransformerWrapper.create(transformer, batch_wrapper)
transformer.transform(f"s3://{bucket}/batch-in/", content_type="text/csv", split_type="Line",
                      wait=False, logs=False)

# (a) a real-time endpoint with SSH
endpoint_model = model("inference.py")
wrapper = SSHModelWrapper.create(endpoint_model, local_user_id="e2e-owner")
endpoint_model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)

# (c) a model that cannot load, behind an endpoint and in a transform job
broken = model("failing.py")
broken.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)
broken_batch = model("failing.py").transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                               output_path=f"s3://{bucket}/broken-out")
broken_batch.transform(f"s3://{bucket}/batch-in/", content_type="text/csv", wait=False,
                       logs=False)
# a transform job that never gets past its entry point, to be stopped
held = model("holding.py").transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                       output_path=f"s3://{bucket}/held-out")
held.transform(f"s3://{bucket}/batch-in/", content_type="text/csv", wait=False, logs=False)

sagemaker_client = boto3.client("sagemaker")
deadline = time.monotonic() + 180
while True:
    status = sagemaker_client.describe_endpoint(
        EndpointName=wrapper.endpoint_name())["EndpointStatus"]
    if status != "Creating" or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print("RESULT " + json.dumps({
    "endpoint": wrapper.endpoint_name(), "status": status,
    "ids": wrapper.get_instance_ids(timeout_in_sec=120),
    "ids_from_logs": wrapper.get_instance_ids_from_logs(timeout_in_sec=60),
    "job": transformer_wrapper.transform_job_name(), "broken": broken.endpoint_name,
    "broken_job": broken_batch.latest_transform_job.name,
    "held_job": held.latest_transform_job.name,
    "bucket": bucket}), flush=True)
"""


@dataclass
class World:
    sandbox: Sandbox
    env: dict[str, str]
    result: dict[str, Any]

    @property
    def endpoint_fqdn(self) -> str:
        return f"{self.result['endpoint']}.inference.sagemaker"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("endpoints-e2e")
    with Sandbox(tmp / "sandbox", stop_grace=3.0) as sandbox:
        allow_team_owner(sandbox, "e2e-owner")
        env = user_env(sandbox.env, tmp / "home")
        env.pop("SM_SSH_REUSE", None)  # the user's default: shared connections
        sources = {"inference.py": INFERENCE, "failing.py": FAILING, "holding.py": HOLDING}
        result = launch(LAUNCH, tmp, sources, env, timeout=600, marker="RESULT ")
        yield World(sandbox, env, json.loads(result))


# -- (a) the endpoint ----------------------------------------------------------------------------
def test_endpoint_is_in_service_and_its_logs_name_its_instance(world: World) -> None:
    result = world.result
    assert result["status"] == "InService"
    assert len(result["ids"]) == 1 and result["ids"][0].startswith("mi-")
    assert result["ids_from_logs"] == result["ids"]
    described = world.sandbox.client("sagemaker").describe_endpoint(
        EndpointName=result["endpoint"])
    variant = described["ProductionVariants"][0]
    assert (variant["VariantName"], variant["CurrentInstanceCount"]) == ("AllTraffic", 1)
    assert described["EndpointArn"].endswith(f":endpoint/{result['endpoint'].lower()}")


def test_connect_to_the_endpoint_runs_in_the_container_that_loaded_the_model(
        world: World) -> None:
    done = run(sm_ssh("connect", world.endpoint_fqdn, "--",
                      "whoami; cat /tmp/model-loaded; grep -c '^START_SSH=' /etc/environment"),
               world.env)
    assert done.returncode == 0, done.stderr
    user, loaded, count = done.stdout.splitlines()
    assert user == "root" and count == "1"
    # The entry point imported the package shipped in the model (code/lib), as on SageMaker.
    assert loaded == "scale=3 package=/opt/ml/model/code/lib/sagemaker_ssh_helper/__init__.py"


def test_port_8080_of_the_model_server_through_the_tunnel(world: World) -> None:
    local = free_port()
    proc = subprocess.Popen(sm_ssh("connect", world.endpoint_fqdn, "-N",
                                   "-L", f"{local}:127.0.0.1:8080"),
                            env=world.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def ping() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/ping", timeout=5) as response:
            return int(response.status)

    try:
        assert wait_until(ping, proc, "-L 8080") == 200
        request = urllib.request.Request(f"http://127.0.0.1:{local}/invocations", data=b"1,2",
                                         headers={"Content-Type": "text/csv"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    finally:
        stop(proc)
    assert answer["prediction"] == [3.0, 6.0]
    assert answer["host"].startswith("i-")


def test_list_shows_the_endpoints(world: World) -> None:
    world.sandbox.wait_for_endpoint(world.result["broken"], timeout=120)
    done = run(sm_ssh("list", "inference.sagemaker", "--output", "json"), world.env)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    row = rows[world.result["endpoint"]]
    assert (row["status"], row["ssh"]) == ("InService", "Online")
    assert [i["instance_id"] for i in row["instances"]] == world.result["ids"]
    assert rows[world.result["broken"]]["status"] == "Failed"


# -- (c) a model that cannot load -----------------------------------------------------------------
def test_a_model_that_cannot_load_fails_its_endpoint(world: World) -> None:
    described = world.sandbox.wait_for_endpoint(world.result["broken"], timeout=120)
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert "production variant AllTraffic did not pass the ping health check" in reason
    assert "RuntimeError: cannot load the weights: this model is broken on purpose" in reason
    assert f"/aws/sagemaker/Endpoints/{world.result['broken']}" in reason
    done = run(sm_ssh("connect", f"{world.result['broken']}.inference.sagemaker", "--", "true"),
               world.env)
    assert done.returncode == 3 and done.stdout == "", done.stderr
    assert "is Failed: SSH is available only while it runs" in done.stderr


def test_a_transform_job_whose_model_cannot_load_fails(world: World) -> None:
    described = world.sandbox.wait_for_job(world.result["broken_job"], kind="transform",
                                           timeout=120)
    assert described["TransformJobStatus"] == "Failed"
    assert described["FailureReason"] == (
        "AlgorithmError: the model server on algo-1 exited with code 1: sandbox model server: "
        "cannot load the model: RuntimeError: cannot load the weights: this model is broken "
        "on purpose. See job logs for more information")


def test_stop_transform_job_stops_its_container(world: World) -> None:
    job = world.result["held_job"]
    deadline = time.monotonic() + 120
    while "holding until stopped" not in world.sandbox.container_log(job, kind="transform"):
        assert time.monotonic() < deadline, world.sandbox.container_log(job, kind="transform")
        time.sleep(0.1)
    sagemaker = world.sandbox.client("sagemaker")
    sagemaker.stop_transform_job(TransformJobName=job)
    assert world.sandbox.wait_for_job(job, kind="transform", timeout=60)[
        "TransformJobStatus"] == "Stopped"
    containers = {c["name"]: c for c in world.sandbox.status()["containers"]}
    assert containers[f"{job}-algo-1"]["state"].startswith("Exited")


# -- status ---------------------------------------------------------------------------------------
def test_sandbox_status_lists_endpoints_and_their_containers(world: World) -> None:
    done = run(sm_ssh("sandbox", "status", "--state-dir", str(world.sandbox.state_dir.root)),
               world.env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    endpoints = lines[lines.index("endpoints (2):") + 1:][:2]
    assert sorted(line.split() for line in endpoints) == sorted(
        [[world.result["endpoint"], "InService"], [world.result["broken"], "Failed"]])
    containers = [line.split() for line in lines[lines.index(next(
        line for line in lines if line.startswith("containers ("))) + 1:]]
    owners = {(c[5], c[6]): c[2] for c in containers}
    assert owners[("endpoint", world.result["endpoint"])] == "Running"
    assert owners[("endpoint", world.result["broken"])] == "Exited(1)"
    assert ("transform", world.result["job"]) in owners


# -- (b) batch transform -------------------------------------------------------------------------
def test_transform_job_is_held_for_ssh_then_released_and_completes(world: World) -> None:
    job = world.result["job"]
    sagemaker = world.sandbox.client("sagemaker")
    assert sagemaker.describe_transform_job(TransformJobName=job)[
        "TransformJobStatus"] == "InProgress"
    done = run(sm_ssh("connect", f"{job}.transform.sagemaker", "--", "hostname"), world.env)
    assert (done.returncode, done.stdout) == (0, "algo-1\n"), done.stderr
    assert sagemaker.describe_transform_job(TransformJobName=job)[
        "TransformJobStatus"] == "InProgress"
    done = run(["bash", str(PACKAGE / "sm-local-ssh-transform"), "stop-waiting", job], world.env)
    assert done.returncode == 0, done.stderr
    described = world.sandbox.wait_for_job(job, kind="transform", timeout=120)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    s3 = world.sandbox.client("s3")
    bucket = world.result["bucket"]

    def output(key: str) -> list[dict[str, Any]]:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        return [json.loads(line) for line in body.splitlines()]

    assert [o["prediction"] for o in output("batch-out/a.csv.out")] == [[3.0, 6.0], [9.0, 12.0]]
    assert [o["prediction"] for o in output("batch-out/more/b.csv.out")] == [[15.0]]
    log = world.sandbox.container_log(job, kind="transform")
    assert "a.csv -> a.csv.out (2 record(s))" in log


# -- deleting the endpoint (last) -----------------------------------------------------------------
def test_delete_endpoint_stops_its_container_and_the_instance_goes_away(world: World) -> None:
    name, instance_id = world.result["endpoint"], world.result["ids"][0]
    sagemaker = world.sandbox.client("sagemaker")
    config = sagemaker.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    sagemaker.delete_endpoint(EndpointName=name)
    assert world.sandbox.wait_for_endpoint(name, timeout=60, until=())["EndpointStatus"] \
        == "NotFound"
    with pytest.raises(sagemaker.exceptions.ClientError, match="Could not find endpoint"):
        sagemaker.describe_endpoint(EndpointName=name)
    status = world.sandbox.status()
    assert name not in [e["EndpointName"] for e in status["endpoints"]]
    assert "sandbox model server: stopped" in world.sandbox.endpoint_log(name)
    # The entry point's exit hook deregistered the managed instance.
    ssm = world.sandbox.client("ssm")
    listed = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])["InstanceInformationList"]
    assert listed == []
    # The shared connection of the earlier tests went with the container: no stale master.
    done = run(sm_ssh("connect", world.endpoint_fqdn, "--", "true"), world.env)
    assert done.returncode == 3 and f"no endpoint {name}" in done.stderr, done.stderr

    # A new endpoint under the same name: a new instance, to which the key goes afresh.
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=config)
    assert world.sandbox.wait_for_endpoint(name, timeout=120)["EndpointStatus"] == "InService"
    done = run(sm_ssh("connect", world.endpoint_fqdn, "--wait", "120", "--",
                      "cat /etc/ssh/authorized_keys"), world.env)
    assert done.returncode == 0, done.stderr
    key = Path(world.env["HOME"]) / ".ssh" / world.endpoint_fqdn.lower()
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    assert public in done.stdout
    home = Path(world.env["HOME"])
    directory = mux.control_dir(home / ".ssh", create=False, environ=world.env)
    for socket_path in directory.iterdir() if directory else []:
        if socket_path.is_socket():
            mux.terminate(socket_path)
    sagemaker.delete_endpoint(EndpointName=name)


# -- sandbox shutdown (last: the sandbox goes down here) ------------------------------------------
def test_sandbox_down_stops_the_containers_of_a_running_endpoint(world: World) -> None:
    sagemaker = world.sandbox.client("sagemaker")
    model = sagemaker.describe_transform_job(
        TransformJobName=world.result["held_job"])["ModelName"]
    sagemaker.create_endpoint_config(EndpointConfigName="left-running", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge"}])
    sagemaker.create_endpoint(EndpointName="left-running", EndpointConfigName="left-running")
    deadline = time.monotonic() + 60
    while "holding until stopped" not in world.sandbox.endpoint_log("left-running"):
        assert time.monotonic() < deadline, world.sandbox.endpoint_log("left-running")
        time.sleep(0.1)
    assert sagemaker.describe_endpoint(EndpointName="left-running")["EndpointStatus"] \
        == "Creating"
    pid = world.sandbox.state["pid"]
    report = world.sandbox.down()
    # The daemon stopped every container itself: `down` had nothing else to kill.
    assert (report.stopped, report.leftovers) == ([f"daemon (pid {pid})"], [])
