"""The native transport end to end: SSH into training jobs over SageMaker's own remote-debugging
SSM targets, in one sandbox.

A 2-node job launched with ``SSHEstimatorWrapper.create(..., transport="native")`` (SDK v2,
unchanged user launch script) creates no activation; ``sm-ssh connect --node`` runs commands on
each node, ``-L`` and ``-R`` carry data both ways, the generated ssh config and ``SSMProxy``
work too, ``sm-ssh stop-waiting`` releases both nodes over ssh and the job completes. Next to
it a hybrid job, and ``sm-ssh list`` tells their transports apart. Then every state in which
SageMaker opens no session gets its one-line error, and a job started without SSH Helper gets
the plain shell.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SANDBOX_E2E, free_port, run, sm_ssh
from e2e_helpers import PAGE_ENTRY_POINT, forwarded_page, laptop_fetch, launch, ssm_calls, user_env

from sagemaker_ssh_sandbox import Sandbox

pytestmark = SANDBOX_E2E

LAUNCH = """\
import os, sys

from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper

source_dir, base_name, count, transport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
plain = transport == "plain"  # remote debugging without SSH Helper
estimator = PyTorch(entry_point="plain.py" if plain else "train.py", source_dir=source_dir,
                    dependencies=[SSHEstimatorWrapper.dependency_dir()],
                    role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                    py_version="py310", instance_count=count,
                    instance_type="ml.m5.xlarge", base_job_name=base_name)
if not plain:
    SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=600, transport=transport)
estimator.fit(wait=False)
print(estimator.latest_training_job.name)
"""

PLAIN = """\
import os, time

deadline = time.time() + 300
while not os.path.exists("/tmp/done") and time.time() < deadline:
    time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("native"), stop_grace=3.0) as sb:
        yield sb


@pytest.fixture(scope="module")
def env(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return user_env(sandbox.env, tmp_path_factory.mktemp("home"))


def launch_job(env: dict[str, str], tmp_path: Path, base_name: str, count: int,
               transport: str) -> str:
    return launch(LAUNCH, tmp_path / base_name, {"train.py": PAGE_ENTRY_POINT, "plain.py": PLAIN},
                  env, base_name, str(count), transport)


def test_native_journey_two_nodes_forwarding_release_and_list(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    before = ssm_calls(env).get("CreateActivation", 0)
    job = launch_job(env, tmp_path, "native", 2, "native")
    described = sandbox.client("sagemaker").describe_training_job(TrainingJobName=job)
    assert described["RemoteDebugConfig"] == {"EnableRemoteDebug": True}
    assert described["Environment"]["SSH_TRANSPORT"] == "native"
    fqdn = f"{job}.training.sagemaker"

    # both nodes, chosen by name or index; a choice is needed (one line otherwise)
    done = run(sm_ssh("connect", fqdn, "--", "hostname"), env)
    assert done.returncode == 2 and "has 2 nodes with SSH: algo-1, algo-2; choose one with " \
        "--node NAME or --index N" in done.stderr, done.stderr
    for choice, host in ((["--node", "algo-1"], "algo-1"), (["--index", "1"], "algo-2")):
        done = run(sm_ssh("connect", *choice, fqdn, "--", "hostname"), env)
        assert (done.returncode, done.stdout.strip()) == (0, host), done.stderr[-2000:]
    # every node at once: keys through S3, no SendCommand (SageMaker's targets take none)
    sends = ssm_calls(env).get("SendCommand", 0)
    done = run(sm_ssh("exec", fqdn, "--", "hostname"), env)
    assert (done.returncode, sorted(done.stdout.splitlines())) == (
        0, ["algo-1 | algo-1", "algo-2 | algo-2"]), done.stderr[-2000:]
    assert ssm_calls(env).get("SendCommand", 0) == sends
    # doctor: connectable over SageMaker's targets (no activation, no SSM trust to check)
    done = run(sm_ssh("doctor", fqdn, "--output", "json"), env)
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks[fqdn]["ok"] is True and checks[fqdn]["detail"].endswith(
        "transport: native (SageMaker's SSM targets), nodes with SSH: algo-1, algo-2"), done.stdout
    assert "ssm trust" not in checks
    assert ssm_calls(env).get("CreateActivation", 0) == before  # no activation, no agent of ours
    assert "SSH is served over SageMaker's remote debugging" in sandbox.container_log(job)

    # -L: a page served in the container; -R: a page served on the laptop
    assert forwarded_page(sm_ssh("connect", "--node", "algo-2", fqdn), env) == "page from algo-2\n"
    done = laptop_fetch(sm_ssh("connect", "--node", "algo-1", fqdn), env)
    assert (done.returncode, done.stdout) == (0, "page from the laptop\n"), done.stderr

    # plain ssh through `sm-ssh config` (start-proxy), and SSMProxy from Python
    assert run(sm_ssh("config"), env).returncode == 0
    done = run(["ssh", "-F", str(Path(env["HOME"]) / ".ssh" / "config"), "-o",
                "ProxyCommand=" + shlex.join(sm_ssh("start-proxy", "--node", "algo-2", "%h")),
                fqdn, "hostname"], env)
    assert (done.returncode, done.stdout.strip()) == (0, "algo-2"), done.stderr[-2000:]
    assert _ssm_proxy_hostname(env, job) == "algo-1"

    # SendCommand is refused for SageMaker's targets, as by the real service
    with sandbox.activated():
        with pytest.raises(Exception, match="ValidationException"):
            sandbox.client("ssm").send_command(
                InstanceIds=[f"sagemaker-training-job:{job}_algo-1"],
                DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]})

        # remote debugging turned off while Training: SageMaker's agent takes no session
        # (TargetNotConnected), sm-ssh says how to turn it on; on again, SSH works again
        sm, ssm = sandbox.client("sagemaker"), sandbox.client("ssm")
        sm.update_training_job(TrainingJobName=job,
                               RemoteDebugConfig={"EnableRemoteDebug": False})
        with pytest.raises(Exception, match="TargetNotConnected"):
            ssm.start_session(Target=f"sagemaker-training-job:{job}_algo-1",
                              DocumentName="AWS-StartSSHSession",
                              Parameters={"portNumber": ["22"]})
    done = run(sm_ssh("connect", "--node", "algo-1", fqdn, "--", "true"), env)
    assert done.returncode == 3 and "has remote debugging off: turn it on with" in done.stderr
    with sandbox.activated():
        sm.update_training_job(TrainingJobName=job,
                               RemoteDebugConfig={"EnableRemoteDebug": True})
    done = run(sm_ssh("connect", "--node", "algo-1", fqdn, "--", "hostname"), env)
    assert (done.returncode, done.stdout.strip()) == (0, "algo-1"), done.stderr[-2000:]

    # a hybrid job next to it; `sm-ssh list` tells the transports apart
    hybrid = launch_job(env, tmp_path, "hybrid", 1, "hybrid")
    done = run(sm_ssh("list", "training.sagemaker", "--output", "json"), env)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows[job]["transport"] == "native" and rows[job]["ssh"] == "Online"
    deadline = time.monotonic() + 120
    while rows[hybrid]["ssh"] != "Online" and time.monotonic() < deadline:
        time.sleep(1)
        rows = {r["name"]: r for r in json.loads(run(sm_ssh(
            "list", "training.sagemaker", "--output", "json"), env).stdout)}
    assert rows[hybrid]["transport"] == "hybrid" and rows[hybrid]["ssh"] == "Online"
    table = run(sm_ssh("list", "training.sagemaker"), env).stdout
    assert "TRANSPORT" in table.splitlines()[0]

    # release both nodes over ssh (no SendCommand): the job completes
    done = run(sm_ssh("stop-waiting", fqdn), env)
    assert done.returncode == 0, done.stderr
    assert "algo-1 (sagemaker-training-job:" in done.stdout and "algo-2 (" in done.stdout
    assert sandbox.wait_for_job(job, timeout=120)["TrainingJobStatus"] == "Completed"
    assert run(sm_ssh("stop-waiting", f"{hybrid}.training.sagemaker"), env).returncode == 0
    assert sandbox.wait_for_job(hybrid, timeout=120)["TrainingJobStatus"] == "Completed"

    # a finished job: one line
    done = run(sm_ssh("connect", "--node", "algo-1", fqdn, "--", "true"), env)
    assert done.returncode == 3 and done.stderr.strip() == (
        f"sm-ssh: training job {job} is Completed: SSH is available only while it runs")
    with sandbox.activated(), pytest.raises(Exception, match="TargetNotConnected"):
        sandbox.client("ssm").start_session(Target=f"sagemaker-training-job:{job}_algo-1")


def _ssm_proxy_hostname(env: dict[str, str], job: str) -> str:
    code = (
        "import sys\n"
        "from sagemaker_ssh_helper.proxy import SSMProxy\n"
        "from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper\n"
        f"ids = SSHEstimatorWrapper.attach({job!r}).get_instance_ids(timeout_in_sec=60)\n"
        "assert len(ids) == 2 and ids[0].endswith('_algo-1'), ids\n"
        f"with SSMProxy({free_port()}, name={job + '.training.sagemaker'!r}) as proxy:\n"
        "    proxy.connect_to_ssm_instance(ids[0])\n"
        "    print(proxy.run_command_with_output('hostname').decode().strip())\n")
    done = run([sys.executable, "-c", code], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_remote_debugging_without_ssh_helper_gets_the_plain_shell(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    job = launch_job(env, tmp_path, "plain", 1, "plain")  # no SSH Helper, remote debugging off
    fqdn = f"{job}.training.sagemaker"
    done = run(sm_ssh("shell", fqdn, "--wait", "60"), env)
    assert done.returncode == 3 and f"training job {job} has remote debugging off: turn it " \
        "on with `aws sagemaker update-training-job" in done.stderr, done.stderr

    # turned on while Training: SageMaker starts its agent in the container then
    with sandbox.activated():
        sm = sandbox.client("sagemaker")
        deadline = time.monotonic() + 120
        while sm.describe_training_job(TrainingJobName=job)["SecondaryStatus"] != "Training":
            assert time.monotonic() < deadline, "the job never reached Training"
            time.sleep(0.2)
        sm.update_training_job(
            TrainingJobName=job, RemoteDebugConfig={"EnableRemoteDebug": True})
    done = run(sm_ssh("connect", fqdn, "--", "true"), env)
    assert (done.returncode, done.stderr.strip()) == (3, (
        f"sm-ssh: no SSH server runs in training job {job} (it was not started with SSH "
        f"Helper): open a shell in it with `sm-ssh shell {fqdn}`"))
    shell = subprocess.run(sm_ssh("shell", fqdn), env=env, capture_output=True, text=True,
                           timeout=120, input="echo on-$(hostname)\ntouch /tmp/done\nexit\n",
                           check=False)
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert "on-algo-1" in shell.stdout
    assert sandbox.wait_for_job(job, timeout=120)["TrainingJobStatus"] == "Completed"


ENDPOINT_LAUNCH = """\
import io, json, os, sys, tarfile

import boto3
import sagemaker
from sagemaker.pytorch import PyTorchModel
from sagemaker_ssh_helper.wrapper import SSHModelWrapper

session = sagemaker.Session()
bucket = session.default_bucket()
archive = io.BytesIO()
with tarfile.open(fileobj=archive, mode="w:gz") as tar:
    info = tarfile.TarInfo("weights.json")
    info.size = 2
    tar.addfile(info, io.BytesIO(b"{}"))
boto3.client("s3").put_object(Bucket=bucket, Key="native-model/model.tar.gz",
                              Body=archive.getvalue())
model = PyTorchModel(entry_point="inference.py", source_dir=sys.argv[1],
                     dependencies=[SSHModelWrapper.dependency_dir()],
                     model_data=f"s3://{bucket}/native-model/model.tar.gz",
                     role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                     py_version="py310", sagemaker_session=session)
wrapper = SSHModelWrapper.create(model, transport="native")
model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=True)
print("RESULT " + json.dumps({"endpoint": wrapper.endpoint_name(), "model": model.name,
                              "ids": wrapper.get_instance_ids(timeout_in_sec=120)}), flush=True)
"""

INFERENCE = """\
import json
import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()


def model_fn(model_dir):
    open("/tmp/model-loaded", "w").write("loaded\\n")
    return {}


def predict_fn(data, model):
    return data
"""


def test_native_endpoint_over_ssm_access(sandbox: Sandbox, env: dict[str, str],
                                         tmp_path: Path) -> None:
    """An endpoint deployed with ``SSHModelWrapper.create(model, transport="native")``: its
    variant has EnableSSMAccess, no activation is created, SSH runs over SageMaker's
    ``sagemaker-endpoint:`` target found through the instance's SSM log stream."""
    before = ssm_calls(env).get("CreateActivation", 0)
    result = json.loads(launch(ENDPOINT_LAUNCH, tmp_path, {"inference.py": INFERENCE}, env,
                               marker="RESULT "))  # after the SDK's "!!"
    endpoint, fqdn = result["endpoint"], f"{result['endpoint']}.inference.sagemaker"
    sm = sandbox.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(
        EndpointName=endpoint)["EndpointConfigName"])
    assert config["ProductionVariants"][0]["EnableSSMAccess"] is True
    [target] = result["ids"]
    prefix = f"sagemaker-endpoint:{endpoint}_AllTraffic_i-"
    assert target.startswith(prefix), target
    instance = target[len("sagemaker-endpoint:" + endpoint + "_AllTraffic_"):]
    streams = sandbox.client("logs").describe_log_streams(
        logGroupName=f"/aws/sagemaker/Endpoints/{endpoint}")["logStreams"]
    assert f"AllTraffic/{instance}/ssm" in [s["logStreamName"] for s in streams]

    done = run(sm_ssh("connect", fqdn, "--", "hostname; cat /tmp/model-loaded"), env)
    assert (done.returncode, done.stdout.split()) == (0, [instance, "loaded"]), done.stderr
    assert ssm_calls(env).get("CreateActivation", 0) == before

    # -L to the model server's port, through SageMaker's target
    forwarded_page(sm_ssh("connect", fqdn), env, path="/ping")

    done = run(sm_ssh("list", "inference.sagemaker", "--output", "json"), env)
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert (rows[endpoint]["transport"], rows[endpoint]["ssh"]) == ("native", "Online"), rows
    shell = subprocess.run(sm_ssh("shell", fqdn), env=env, capture_output=True, text=True,
                           timeout=120, input="echo on-$(hostname)\nexit\n", check=False)
    assert shell.returncode == 0 and f"on-{instance}" in shell.stdout, shell.stderr[-2000:]
    with sandbox.activated(), pytest.raises(Exception, match="ValidationException"):
        sandbox.client("ssm").send_command(InstanceIds=[target], DocumentName="AWS-RunShellScript",
                                         Parameters={"commands": ["true"]})

    # the same model behind an endpoint whose variant has SSM access off: one line
    sm.create_endpoint_config(EndpointConfigName=f"{endpoint}-off", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": result["model"], "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge", "EnableSSMAccess": False}])
    sm.create_endpoint(EndpointName=f"{endpoint}-off", EndpointConfigName=f"{endpoint}-off")
    done = run(sm_ssh("connect", f"{endpoint}-off.inference.sagemaker", "--", "true"), env)
    assert done.returncode == 3 and f"endpoint {endpoint}-off has SSM access off: create " \
        "an endpoint configuration whose production variant has EnableSSMAccess=true" \
        in done.stderr, done.stderr
    sm.delete_endpoint(EndpointName=f"{endpoint}-off")

    # deleted: SageMaker's target takes no session any more
    sm.delete_endpoint(EndpointName=endpoint)
    with sandbox.activated(), pytest.raises(Exception, match="TargetNotConnected"):
        sandbox.client("ssm").start_session(Target=target, DocumentName="AWS-StartSSHSession",
                                          Parameters={"portNumber": ["22"]})
