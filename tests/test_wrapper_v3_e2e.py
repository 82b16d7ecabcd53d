"""End to end in the offline sandbox with SageMaker Python SDK v3 (runs in ``.venv-v3``).

Training: a user script builds a ``ModelTrainer``, adds ``SSHModelTrainerWrapper.create()`` and
calls ``train(wait=False)``; the SDK's own launcher (``sm_train.sh`` and its script driver) runs
the entry script from the ``code`` channel, which imports the package shipped next to it.
``sm-ssh connect <job>.training.sagemaker -- ...`` runs in the job, ``sm-wait stop`` releases it
and the job is Completed within seconds. Endpoint: ``ModelBuilder`` +
``SSHModelBuilderWrapper``, ``build()`` then ``deploy(endpoint_name=...)``, and
``sm-ssh connect <endpoint>.inference.sagemaker`` reaches the container that loaded the model.
Needs root on Linux.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SANDBOX_E2E, allow_team_owner, run, sm_ssh

pytest.importorskip("sagemaker.train", reason="SageMaker Python SDK v3 is not installed "
                    "(scripts/test runs this module in .venv-v3)")

from sagemaker_ssh_helper.wrapper import (  # noqa: E402
    SSHModelBuilderWrapper,
    SSHModelTrainerWrapper,
)
from sagemaker_ssh_sandbox import Sandbox  # noqa: E402

pytestmark = SANDBOX_E2E

ENTRY_POINT = """\
import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()
print("released by the user", flush=True)
"""

TRAIN = """\
import json, os, sys

from sagemaker.core.training.configs import Compute, SourceCode
from sagemaker.train import ModelTrainer
from sagemaker_ssh_helper.wrapper import SSHModelTrainerWrapper

trainer = ModelTrainer(training_image="any:latest", role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"],
                       source_code=SourceCode(source_dir=sys.argv[1], entry_script="train.py"),
                       compute=Compute(instance_type="ml.m5.xlarge", instance_count=1),
                       base_job_name="ssh-v3-e2e")
wrapper = SSHModelTrainerWrapper.create(trainer, connection_wait_time_seconds=900,
                                        local_user_id="e2e-owner")
trainer.train(wait=False)
ids = wrapper.get_instance_ids(timeout_in_sec=180)
print("RESULT " + json.dumps({"job": wrapper.training_job_name(), "ids": ids,
                              "held": wrapper.is_job_in_progress()}), flush=True)
"""

INFERENCE = """\
import os

import sagemaker_ssh_helper

sagemaker_ssh_helper.setup_and_start_ssh()


def model_fn(model_dir):
    with open("/tmp/model-loaded", "w") as f:
        f.write(",".join(sorted(os.listdir(model_dir))))
    return "model"
"""

DEPLOY = """\
import io, json, os, sys, tarfile, time

import boto3
from sagemaker.core.training.configs import SourceCode
from sagemaker.serve import ModelBuilder
from sagemaker.serve.mode.function_pointers import Mode
from sagemaker_ssh_helper.wrapper import SSHModelBuilderWrapper

bucket = "sagemaker-%s-123456789012" % os.environ["AWS_REGION"]
archive = io.BytesIO()
with tarfile.open(fileobj=archive, mode="w:gz") as tar:
    info = tarfile.TarInfo("weights.txt")
    info.size = 2
    tar.addfile(info, io.BytesIO(b"42"))
boto3.client("s3").put_object(Bucket=bucket, Key="v3-e2e/model.tar.gz", Body=archive.getvalue())

builder = ModelBuilder(source_code=SourceCode(source_dir=sys.argv[1], entry_script="inference.py"),
                       s3_model_data_url="s3://%s/v3-e2e/model.tar.gz" % bucket,
                       image_uri="any:latest", role_arn=os.environ["SM_SSH_SANDBOX_ROLE_ARN"],
                       instance_type="ml.m5.xlarge", mode=Mode.SAGEMAKER_ENDPOINT)
wrapper = SSHModelBuilderWrapper.create(builder, local_user_id="e2e-owner")
builder.build()
builder.deploy(endpoint_name=sys.argv[2], initial_instance_count=1, wait=False)
deadline = time.monotonic() + 180
while wrapper.describe()["EndpointStatus"] == "Creating" and time.monotonic() < deadline:
    time.sleep(0.5)
print("RESULT " + json.dumps({"endpoint": wrapper.endpoint_name(),
                              "status": wrapper.describe()["EndpointStatus"]}), flush=True)
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("sandbox"), stop_grace=3.0) as sb:
        allow_team_owner(sb, "e2e-owner")
        yield sb


@pytest.fixture
def user_env(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> dict[str, str]:
    """The sandbox's variables, for the user's scripts and for this test process."""
    home = tmp_path / "home"  # client keys and known_hosts stay out of the real ~/.ssh
    home.mkdir()
    env = dict(os.environ, **sandbox.env, HOME=str(home))
    for name, value in sandbox.env.items():
        monkeypatch.setenv(name, value)
    return env


def launch(script: str, env: dict[str, str], tmp_path: Path, sources: dict[str, str],
           *args: str) -> dict[str, Any]:
    source = tmp_path / "src"
    source.mkdir()
    for name, text in sources.items():
        (source / name).write_text(text)
    (tmp_path / "launch.py").write_text(script)
    done = subprocess.run([sys.executable, str(tmp_path / "launch.py"), str(source), *args],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return dict(json.loads(lines[-1][len("RESULT "):]))


def test_model_trainer_journey(sandbox: Sandbox, user_env: dict[str, str], tmp_path: Path
                               ) -> None:
    result = launch(TRAIN, user_env, tmp_path, {"train.py": ENTRY_POINT})
    job = result["job"]
    assert len(result["ids"]) == 1 and result["ids"][0].startswith("mi-")
    assert result["held"] is True

    inside = run(sm_ssh("connect", f"{job}.training.sagemaker", "--",
                        "hostname; ls /opt/ml/input/data/code; cat /etc/environment"), user_env)
    assert inside.returncode == 0, inside.stderr
    lines = inside.stdout.splitlines()
    assert lines[0] == "algo-1"
    assert {"train.py", "sagemaker_ssh_helper"} <= set(lines)
    for name, value in (("SSH_OWNER_TAG", "e2e-owner"), ("SSH_WAIT_TIME_SECONDS", "900"),
                        ("SSH_INSTANCE_COUNT", "1"), ("SSH_SSM_ROLE", "SageMakerRole")):
        assert re.search(rf"^(export )?{name}=['\"]?{value}['\"]?$", inside.stdout, re.M), name

    released = run(sm_ssh("connect", f"{job}.training.sagemaker", "--", "sm-wait", "stop"),
                   user_env)
    assert released.returncode == 0, released.stderr
    attached = SSHModelTrainerWrapper.attach(job)
    assert attached.env["SSH_OWNER_TAG"] == "e2e-owner" and attached.ssh_instance_count == 1
    # within seconds: the SSH setup lets go of the entry point's output once it has exited
    assert attached.wait_with_status(poll_seconds=0.5, timeout_in_sec=60) == "Completed"
    log = sandbox.container_log(job)
    assert "released by the user" in log
    assert "Training Container Execution Completed" in log  # SDK v3's own launcher ran it


def test_model_builder_endpoint_is_reachable(sandbox: Sandbox, user_env: dict[str, str],
                                             tmp_path: Path) -> None:
    result = launch(DEPLOY, user_env, tmp_path, {"inference.py": INFERENCE}, "ssh-v3-endpoint")
    assert result == {"endpoint": "ssh-v3-endpoint", "status": "InService"}

    inside = run(sm_ssh("connect", "ssh-v3-endpoint.inference.sagemaker", "--",
                        "cat /tmp/model-loaded; echo; cat /etc/environment"), user_env)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.splitlines()[0] == "code,weights.txt", inside  # it loaded the model
    assert re.search(r"^(export )?SAGEMAKER_ENDPOINT_NAME=['\"]?ssh-v3-endpoint['\"]?$",
                     inside.stdout, re.M)
    assert re.search(r"^(export )?SSH_OWNER_TAG=['\"]?e2e-owner['\"]?$", inside.stdout, re.M)
    assert SSHModelBuilderWrapper.attach("ssh-v3-endpoint").get_instance_ids(timeout_in_sec=10)


DEPLOY_NATIVE = DEPLOY.replace('local_user_id="e2e-owner")',
                               'local_user_id="e2e-owner",\n'
                               '                                        transport="native")') + """
print("RESULT " + json.dumps({"endpoint": wrapper.endpoint_name(),
                              "status": wrapper.describe()["EndpointStatus"],
                              "model": builder.built_model.model_name,
                              "ids": wrapper.get_instance_ids(timeout_in_sec=120)}), flush=True)
"""


def _ssm_calls(sandbox: Sandbox) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"{sandbox.env['AWS_ENDPOINT_URL_SSM']}/_sandbox/stats",
                                timeout=10) as response:
        return dict(json.loads(response.read())["CallCounts"])


def _update_endpoint(sandbox: Sandbox, endpoint: str, model: str, ssm_access: bool) -> str:
    """What the one-line error says: a new endpoint configuration, then update-endpoint; waits
    for InService as `aws sagemaker wait endpoint-in-service` would."""
    import time

    sm = sandbox.client("sagemaker")
    config = f"{endpoint}-ssm-{'on' if ssm_access else 'off'}"
    sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge", "EnableSSMAccess": ssm_access}])
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config)
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "Updating"
    deadline = time.monotonic() + 120
    while (described := sm.describe_endpoint(EndpointName=endpoint))["EndpointStatus"] == \
            "Updating" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == \
        ("InService", config), described
    return config


def test_model_builder_native_endpoint_and_update_endpoint(sandbox: Sandbox,
                                                           user_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    """ModelBuilder + SSHModelBuilderWrapper(transport="native"): the variant has SSM access,
    no activation is created and SSH runs over SageMaker's target. Then UpdateEndpoint turns
    SSM access off (one line says how to turn it on) and on again, as that line says: new
    instances, reached in turn."""
    before = _ssm_calls(sandbox).get("CreateActivation", 0)
    result = launch(DEPLOY_NATIVE, user_env, tmp_path, {"inference.py": INFERENCE},
                    "ssh-v3-native")
    endpoint, fqdn = "ssh-v3-native", "ssh-v3-native.inference.sagemaker"
    assert (result["endpoint"], result["status"]) == (endpoint, "InService")
    [target] = result["ids"]
    assert target.startswith(f"sagemaker-endpoint:{endpoint}_AllTraffic_i-"), target
    first = target.rsplit("_", 1)[1]
    sm = sandbox.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(
        EndpointName=endpoint)["EndpointConfigName"])
    assert config["ProductionVariants"][0]["EnableSSMAccess"] is True

    inside = run(sm_ssh("connect", fqdn, "--", "hostname; cat /etc/environment"), user_env)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.splitlines()[0] == first
    assert re.search(r"^(export )?SSH_TRANSPORT=['\"]?native['\"]?$", inside.stdout, re.M)
    assert _ssm_calls(sandbox).get("CreateActivation", 0) == before  # no activation at all
    listed = run(sm_ssh("list", fqdn, "--output", "json"), user_env)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert (rows[endpoint]["transport"], rows[endpoint]["ssh"]) == ("native", "Online"), rows

    # UpdateEndpoint to a configuration without SSM access: new instances, no agent. (A master
    # of the connection above would serve the old instance while it stops: no reuse here.)
    user_env = dict(user_env, SM_SSH_REUSE="off")
    _update_endpoint(sandbox, endpoint, result["model"], ssm_access=False)
    refused = run(sm_ssh("connect", fqdn, "--", "hostname"), user_env)
    assert refused.returncode == 3, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.endswith(f"endpoint {endpoint} has SSM access off: create an endpoint "
                         "configuration whose production variant has EnableSSMAccess=true and "
                         "`aws sagemaker update-endpoint` to it (AWS must have allowlisted the "
                         "account), or redeploy with transport='native'"), line
    with sandbox.activated(), pytest.raises(Exception, match="TargetNotConnected"):
        sandbox.client("ssm").start_session(Target=target, DocumentName="AWS-StartSSHSession",
                                          Parameters={"portNumber": ["22"]})

    # ... and what the line says: a configuration with EnableSSMAccess=true, update-endpoint
    _update_endpoint(sandbox, endpoint, result["model"], ssm_access=True)
    again = run(sm_ssh("connect", fqdn, "--", "hostname"), user_env)
    assert again.returncode == 0, again.stderr
    third = again.stdout.strip()
    assert third.startswith("i-") and third != first
    streams = {s["logStreamName"] for s in sandbox.client("logs").describe_log_streams(
        logGroupName=f"/aws/sagemaker/Endpoints/{endpoint}")["logStreams"]}
    ssm_streams = {s for s in streams if s.endswith("/ssm")}
    assert ssm_streams == {f"AllTraffic/{first}/ssm", f"AllTraffic/{third}/ssm"}, streams
    assert len({s.split("/")[1] for s in streams}) == 3  # three fleets, one instance each
    assert SSHModelBuilderWrapper.attach(endpoint).get_instance_ids(timeout_in_sec=10) == [
        f"sagemaker-endpoint:{endpoint}_AllTraffic_{third}"]
    sm.delete_endpoint(EndpointName=endpoint)


def test_key_folder_of_another_account_is_one_line(sandbox: Sandbox, user_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    """A launch told that the key folder's bucket is another account's (a central bucket:
    SSH_NATIVE_KEYS_PATH and SSH_NATIVE_KEYS_BUCKET_OWNER) while S3 says it is not: the
    container cannot publish its host keys, and `sm-ssh connect` says why in one line."""
    bucket = f"sagemaker-{user_env['AWS_REGION']}-123456789012"  # the sandbox account's
    env = dict(user_env, SSH_NATIVE_KEYS_PATH=f"s3://{bucket}/central-keys/",
               SSH_NATIVE_KEYS_BUCKET_OWNER="111122223333")
    result = launch(DEPLOY_NATIVE, env, tmp_path, {"inference.py": INFERENCE},
                    "ssh-v3-not-mine")
    assert result["status"] == "InService" and len(result["ids"]) == 1
    refused = run(sm_ssh("connect", "ssh-v3-not-mine.inference.sagemaker", "--", "true"),
                  user_env)
    assert refused.returncode == 4, refused.stderr
    [line] = refused.stderr.strip().splitlines()  # no traceback
    assert f"access denied to s3://{bucket}/central-keys/e2e-owner/ssh-v3-not-mine/" in line \
        and f"or the bucket {bucket} is not owned by account 111122223333" in line, line
    instance = result["ids"][0].rsplit("_", 1)[1]
    log = sandbox.container_log("ssh-v3-not-mine", instance, kind="endpoint")
    assert "cannot publish the SSH host keys" in log and "AccessDenied" in log, log[-2000:]
    sandbox.client("sagemaker").delete_endpoint(EndpointName="ssh-v3-not-mine")
