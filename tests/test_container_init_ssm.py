"""sm-init-ssm: the activation (tags, retries, errors) and the registration of the agent.

CreateActivation is not in moto, so SSM is the sandbox's stand-in; STS is moto.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from test_container_support import Container, namespaces_available

from sagemaker_ssh_helper import contract, init_ssm, retry
from sagemaker_ssh_helper.errors import AwsError, UsageError
from sagemaker_ssh_sandbox.ssm.service import SSMServer

needs_namespaces = pytest.mark.skipif(not namespaces_available(),
                                      reason="needs root and Linux namespaces")
ARN = "arn:aws:sagemaker:us-east-1:123456789012:processing-job/prep-job"
REGISTERED = re.compile(
    r"^Successfully registered the instance with AWS SSM using Managed instance-id: "
    r"(mi-[0-9a-f]{17})$", re.M)


def client() -> Any:
    return init_ssm.ssm_client(boto3.Session(region_name="us-east-1"), "us-east-1")


TAGS = init_ssm.activation_tags("AIDAOWNER:alice@example.com", "AROACREATOR:SageMaker",
                                1700000000, "prep-job", ARN)


def test_tags_are_exactly_the_five_contract_tags() -> None:
    assert TAGS == [
        {"Key": "SSHOwner", "Value": "AIDAOWNER:alice@example.com"},
        {"Key": "SSHCreator", "Value": "AROACREATOR:SageMaker"},
        {"Key": "SSHTimestamp", "Value": "1700000000"},
        {"Key": "SSHResourceName", "Value": "prep-job"},
        {"Key": "SSHResourceArn", "Value": ARN},
    ]


def test_activation_is_created_as_specified(ssm_stand_in: SSMServer) -> None:
    activation = init_ssm.create_activation(client(), "service-role/SSMRole", TAGS,
                                            "sagemaker-ssh-helper processing prep-job",
                                            "prep-job")
    stored = ssm_stand_in.backend.activations[activation.activation_id]
    assert stored.code == activation.code
    assert (stored.iam_role, stored.registration_limit) == ("service-role/SSMRole", 1)
    assert (stored.description, stored.default_instance_name) == \
        ("sagemaker-ssh-helper processing prep-job", "prep-job")
    assert stored.tags == {t["Key"]: t["Value"] for t in TAGS}


def test_throttling_is_retried_with_jittered_exponential_backoff(ssm_stand_in: SSMServer) -> None:
    ssm_stand_in.backend.inject_fault("CreateActivation", "ThrottlingException", 3)
    sleeps: list[float] = []
    activation = init_ssm.create_activation(client(), "SSMRole", TAGS, "d", "n",
                                            sleep=sleeps.append, rand=lambda: 0.5)
    assert activation.activation_id in ssm_stand_in.backend.activations
    assert sleeps == [0.75, 1.5, 3.0]
    assert ssm_stand_in.backend.stats()["CallCounts"]["CreateActivation"] == 4


def test_backoff_stays_within_bounds() -> None:
    for attempt in range(10):
        ceiling = min(retry.BACKOFF_CAP, 2 ** attempt)
        assert retry.backoff_delay(attempt, lambda: 0.0) == ceiling / 2
        assert retry.backoff_delay(attempt, lambda: 1.0) == ceiling


def test_endless_throttling_gives_up_with_a_clear_error(ssm_stand_in: SSMServer) -> None:
    ssm_stand_in.backend.inject_fault("CreateActivation", "ThrottlingException", 100)
    sleeps: list[float] = []
    with pytest.raises(AwsError, match="AWS throttled ssm:CreateActivation"):
        init_ssm.create_activation(client(), "SSMRole", TAGS, "d", "n", sleep=sleeps.append)
    assert len(sleeps) == init_ssm.MAX_ATTEMPTS - 1


def no_sleep(seconds: float) -> None:
    pytest.fail(f"unexpected retry after {seconds} s")


def test_access_denied_is_not_retried_and_names_pass_role(ssm_stand_in: SSMServer) -> None:
    ssm_stand_in.backend.inject_fault("CreateActivation", "AccessDeniedException", 1)
    with pytest.raises(AwsError, match=r"iam:PassRole on SSMRole"):
        init_ssm.create_activation(client(), "SSMRole", TAGS, "d", "n", sleep=no_sleep)
    assert ssm_stand_in.backend.stats()["CallCounts"]["CreateActivation"] == 1


def test_role_comes_from_ssh_ssm_role() -> None:
    assert init_ssm._role(contract.read({"SSH_SSM_ROLE": "SSMRole"})) == "SSMRole"
    assert init_ssm._role(contract.read({"SSH_SSM_ROLE": "arn:aws:iam::1:role/service-role/R"})) \
        == "service-role/R"
    with pytest.raises(UsageError, match="ssm_iam_role="):
        init_ssm._role(contract.read({}))


def test_missing_role_is_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SSH_SSM_ROLE"}
    proc = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.init_ssm"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("sm-init-ssm: SSH_SSM_ROLE is not set:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_argument_is_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.init_ssm", "--what"],
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, "usage: sm-init-ssm [-v]\n")


STUDIO_METADATA = {
    "AppType": "JupyterLab", "DomainId": "d-abc123", "SpaceName": "team-space",
    "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:app/d-abc123/team-space/"
                   "jupyterlab/default",
    "ResourceName": "default",
    "ExecutionRoleArn": "arn:aws:iam::123456789012:role/service-role/StudioRole"}


@pytest.fixture
def container() -> Iterator[Container]:
    c = Container.create()
    yield c
    c.remove()


def processing_env(container: Container, **extra: str) -> dict[str, str]:
    config = container.root / "ml" / "config" / "processingjobconfig.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"ProcessingJobArn": ARN, "ProcessingJobName": "prep-job"}))
    return container.env({"SAGEMAKER_BASE_DIR": str(container.root / "ml"),
                          "SSH_SSM_ROLE": "SSMRole", "SSH_OWNER_TAG": "AIDAOWNER:alice", **extra})


@needs_namespaces
def test_sm_init_ssm_registers_the_container(container: Container) -> None:
    before = int(time.time())
    proc = container.run(r'''
start_aws
"$PY" -c 'import boto3; print(boto3.client("sts").get_caller_identity()["UserId"])' >"$R/user"
ssm_fault RegisterManagedInstance ThrottlingException 1
bash "$PKG/sm-init-ssm" >"$R/out1" 2>"$R/err1"
SAGEMAKER_BASE_DIR=/nonexistent SAGEMAKER_ENDPOINT_NAME=My-Endpoint \
  bash "$PKG/sm-init-ssm" >"$R/out2" 2>"$R/err2"
# sm-ssh-ide's init-ssm: the app's role and owner, passed to init_ssm (not through os.environ)
mkdir -p "$R/studio/metadata" && printf '%s' "$STUDIO" >"$R/studio/metadata/resource-metadata.json"
"$PY" -m sagemaker_ssh_helper.ide_container set-local-user-id AIDAOWNER:bob
SAGEMAKER_BASE_DIR="$R/studio" "$PY" -c '
import json, os, sys
from sagemaker_ssh_helper import ide_container
before = dict(os.environ)
ide_container.init_ssm(ide_container.load_metadata())
print(json.dumps(sorted(k for k in set(before) | set(os.environ)
                        if before.get(k) != os.environ.get(k))), file=sys.stderr)
' >"$R/out3" 2>"$R/err3"
''', env=processing_env(container, STUDIO=json.dumps(STUDIO_METADATA)))
    assert proc.returncode == 0, container.report(proc)
    after = int(time.time())

    def read(name: str) -> str:
        return (container.root / name).read_text()

    state = container.ssm_state()
    assert state["activations"] == []  # deleted once used
    instances = {i["instance_id"]: i for i in state["instances"]}
    for out, err, name, arn in (
            ("out1", "err1", "prep-job", ARN),
            ("out2", "err2", "My-Endpoint",
             "arn:aws:sagemaker:us-east-1:123456789012:endpoint/my-endpoint")):
        instance_id = read(out).strip()
        match = REGISTERED.search(read(err))
        assert match and match.group(1) == instance_id
        assert "-code **** -id " in read(err)
        tags = instances[instance_id]["tags"]
        assert before <= int(tags.pop("SSHTimestamp")) <= after
        assert tags == {"SSHOwner": "AIDAOWNER:alice", "SSHCreator": read("user").strip(),
                        "SSHResourceName": name, "SSHResourceArn": arn}
        assert instances[instance_id]["iam_role"] == "SSMRole"
    assert "sm-init-ssm: amazon-ssm-agent -register was throttled, retrying in " in read("err1")
    studio = instances[read("out3").strip()]
    assert (studio["iam_role"], studio["tags"]["SSHOwner"], studio["tags"]["SSHResourceArn"]) \
        == ("service-role/StudioRole", "AIDAOWNER:bob", STUDIO_METADATA["ResourceArn"])
    assert read("err3").strip().splitlines()[-1] == "[]"  # os.environ left as it was


@needs_namespaces
def test_the_activation_code_stays_out_of_the_logs(container: Container) -> None:
    proc = container.run(r'''
start_aws
ssm_fault DeleteActivation InternalServerError 1
bash "$PKG/sm-init-ssm" >"$R/out" 2>"$R/err"
''', env=processing_env(container))
    assert proc.returncode == 0, container.report(proc)
    [activation] = container.ssm_state()["activations"]
    err = (container.root / "err").read_text()
    assert f"could not delete activation {activation['activation_id']} (it expires by itself)" \
        in err
    assert activation["code"] not in err + (container.root / "out").read_text()


@needs_namespaces
def test_registration_failures_are_one_line(container: Container) -> None:
    proc = container.run(r'''
start_aws
AWS_REGION=eu-west-1 SM_SSH_FAILURE_FILE="$R/failed" \
  bash "$PKG/sm-init-ssm" >"$R/out" 2>"$R/err" || echo "rc=$?"
PATH=/usr/bin:/bin bash "$PKG/sm-init-ssm" 2>"$R/err-no-agent" || echo "rc=$?"
SSH_OWNER_TAG=$'AIDAOWNER:alice\nmallory' bash "$PKG/sm-init-ssm" 2>"$R/err-owner" || echo "rc=$?"
''', env=processing_env(container))
    assert proc.stdout.splitlines() == ["rc=1", "rc=1", "rc=2"], container.report(proc)
    last = (container.root / "err").read_text().strip().splitlines()[-1]
    assert last.startswith("sm-init-ssm: amazon-ssm-agent -register failed (exit 1): "
                           "Registration failed")
    assert (container.root / "out").read_text() == ""
    # the reason is kept for sm-wait; no activation is left usable
    assert (container.root / "failed").read_text() == last[len("sm-init-ssm: "):] + "\n"
    assert container.ssm_state()["activations"] == []
    assert (container.root / "err-owner").read_text() == (
        "sm-init-ssm: SSH_OWNER_TAG holds characters an SSM tag cannot: '\\n' in "
        "'AIDAOWNER:alice\\nmallory'; set it to your AWS user ID (e.g. the wrapper's "
        "local_user_id)\n")
    assert (container.root / "err-no-agent").read_text().strip().splitlines()[-1] == (
        "sm-init-ssm: amazon-ssm-agent not found on PATH: run `sm-setup-ssh configure` first "
        "(or install the SSM agent in the image)")


REGISTER_CASES = r"""
import json, sys, urllib.request
import boto3
from sagemaker_ssh_helper import init_ssm, retry
from sagemaker_ssh_helper.errors import SSHHelperError

url = sys.argv[1]
ssm = init_ssm.ssm_client(boto3.Session(), "us-east-1")
results = {}
for case, fault in (("throttled twice", ("ThrottlingException", 2)),
                    ("denied", ("AccessDeniedException", 1)),
                    ("always throttled", ("ThrottlingException", 100))):
    activation = init_ssm.create_activation(ssm, "SSMRole", [], "d", "n")
    body = dict(operation="RegisterManagedInstance", error_code=fault[0], count=fault[1])
    urllib.request.urlopen(urllib.request.Request(url + "/_sandbox/stats/reset", b"{}"))
    urllib.request.urlopen(urllib.request.Request(url + "/_sandbox/faults",
                                                  json.dumps(body).encode()))
    sleeps = []
    try:
        outcome = init_ssm.register_agent(activation, "us-east-1", sleep=sleeps.append,
                                          rand=lambda: 0.5)
    except SSHHelperError as e:
        outcome = "error: " + str(e)
    stats = json.load(urllib.request.urlopen(url + "/_sandbox/stats"))
    results[case] = dict(outcome=outcome, sleeps=sleeps,
                         calls=stats["AgentCallCounts"]["RegisterManagedInstance"])
print(json.dumps(results))
"""


@needs_namespaces
def test_only_throttled_registrations_are_retried(container: Container) -> None:
    (container.root / "cases.py").write_text(REGISTER_CASES)
    proc = container.run(r'''
start_aws
"$PY" "$R/cases.py" "$AWS_ENDPOINT_URL_SSM" >"$R/out" 2>"$R/err"
''', env=processing_env(container))
    assert proc.returncode == 0, container.report(proc)
    results = json.loads((container.root / "out").read_text())
    throttled = results["throttled twice"]
    assert REGISTERED.match("Successfully registered the instance with AWS SSM using Managed "
                            f"instance-id: {throttled['outcome']}")
    assert (throttled["sleeps"], throttled["calls"]) == ([0.75, 1.5], 3)
    denied = results["denied"]
    assert (denied["sleeps"], denied["calls"]) == ([], 1)
    assert denied["outcome"].startswith("error: amazon-ssm-agent -register failed (exit 1): ")
    assert "AccessDeniedException" in denied["outcome"]
    endless = results["always throttled"]
    assert len(endless["sleeps"]) == init_ssm.MAX_ATTEMPTS - 1
    assert endless["calls"] == init_ssm.MAX_ATTEMPTS
    assert endless["outcome"].startswith(
        f"error: amazon-ssm-agent -register failed (exit 1) after {init_ssm.MAX_ATTEMPTS} "
        "attempts: ")
    assert "Rate exceeded" in endless["outcome"]
    err = (container.root / "err").read_text()
    assert "amazon-ssm-agent -register was throttled, retrying in 0.8 s (attempt 1 of 8)" in err


@needs_namespaces
def test_a_running_agent_is_stopped_before_registering(container: Container) -> None:
    fake = container.root / "bin2" / "amazon-ssm-agent"
    fake.parent.mkdir()
    fake.write_bytes(Path("/bin/sleep").read_bytes())
    fake.chmod(0o755)
    proc = container.run(rf'''
"{fake}" 600 & agent=$!
# until the forked shell has exec'd the agent (comm holds the first 15 characters)
wait_for 10 grep -qsx amazon-ssm-agen "/proc/$agent/comm"
"$PY" -c 'from sagemaker_ssh_helper.init_ssm import stop_running_agent; stop_running_agent()'
wait "$agent" || echo "agent ended by signal $(($? - 128))"
''')
    assert proc.stdout.strip() == "agent ended by signal 15", container.report(proc)
