"""Security pieces without a sandbox: the generated IAM policies evaluated by the sandbox's IAM
evaluator (the attacks of a forged tag fail, the owners' own calls succeed), secret redaction,
the debug log's cap and mode, the log shipper's batches, and region-scoped SSM."""
from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from sagemaker_ssh_helper import cli, redact
from sagemaker_ssh_helper.cdk import policies
from sagemaker_ssh_sandbox.iam.policy import (
    ALLOW,
    EXPLICIT_DENY,
    IMPLICIT_DENY,
    Request,
    evaluate,
)

ACCOUNT = "123456789012"
TARGET = policies.Target(account=ACCOUNT, sagemaker_role="SageMakerRole")
MI = f"arn:aws:ssm:us-east-1:{ACCOUNT}:managed-instance/mi-0123456789abcdef0"
JOB = "AROAJOBROLE:SageMaker"
OTHER_JOB = "AROAOTHERROLE:SageMaker"
ALICE, BOB = "AIDAALICE", "AIDABOB"
SSH_TAGS = {"SSHOwner": ALICE, "SSHCreator": JOB, "SSHTimestamp": "1",
            "SSHResourceName": "job", "SSHResourceArn": "arn:aws:sagemaker:::training-job/job"}


def server(action: str, resource: str = "*", userid: str = JOB, **context: Any) -> str:
    return evaluate([policies.server_policy(TARGET)],
                    Request(action, resource, {"aws:userid": userid, **context}))


def on_instance(tags: dict[str, str]) -> dict[str, Any]:
    return {f"ssm:resourceTag/{k}": v for k, v in tags.items()}


def creating(tags: dict[str, str]) -> dict[str, Any]:
    return {**{f"aws:RequestTag/{k}": v for k, v in tags.items()}, "aws:TagKeys": list(tags)}


# -- the evaluator ----------------------------------------------------------------------------
def test_evaluator_semantics() -> None:
    allow_all = {"Statement": [{"Effect": "Allow", "Action": "ssm:*", "Resource": "*"}]}
    deny_tags = {"Statement": [{"Effect": "Deny", "NotAction": ["ssm:Describe*"],
                                "Resource": "arn:aws:ssm:*:*:managed-instance/*"}]}
    assert evaluate([allow_all], Request("SSM:SendCommand", MI)) == ALLOW  # actions: any case
    assert evaluate([allow_all, deny_tags], Request("ssm:SendCommand", MI)) == EXPLICIT_DENY
    assert evaluate([allow_all, deny_tags],
                    Request("ssm:DescribeInstanceInformation", MI)) == ALLOW
    assert evaluate([], Request("ssm:SendCommand", MI)) == IMPLICIT_DENY
    own = {"Statement": [{"Effect": "Allow", "Action": "ssm:StartSession",
                          "NotResource": "arn:aws:ssm:*:*:document/*",
                          "Condition": {"StringEquals": {"ssm:resourceTag/SSHOwner":
                                                         "${aws:userid}"},
                                        "BoolIfExists": {"ssm:SessionDocumentAccessCheck":
                                                         "true"}}}]}
    mine = {"aws:userid": ALICE, "ssm:resourceTag/SSHOwner": ALICE}
    assert evaluate([own], Request("ssm:StartSession", MI, mine)) == ALLOW
    assert evaluate([own], Request("ssm:StartSession", MI, {
        **mine, "ssm:SessionDocumentAccessCheck": "false"})) == IMPLICIT_DENY
    assert evaluate([own], Request("ssm:StartSession", MI, {"aws:userid": BOB,
                                                            **on_instance(SSH_TAGS)})) \
        == IMPLICIT_DENY
    assert evaluate([own], Request("ssm:StartSession", MI, {"aws:userid": ALICE})) \
        == IMPLICIT_DENY  # no tag: StringEquals on a missing key is false
    keys = {"Statement": [{"Effect": "Allow", "Action": "ssm:AddTagsToResource",
                           "Resource": "*", "Condition": {
                               "ForAllValues:StringLike": {"aws:TagKeys": ["SSH*"]},
                               "ForAnyValue:StringEquals": {"aws:TagKeys": ["SSHOwner"]},
                               "Null": {"aws:RequestTag/Name": "true"}}}]}
    assert evaluate([keys], Request("ssm:AddTagsToResource", "*", creating(
        {"SSHOwner": "x", "SSHA": "y"}))) == ALLOW
    assert evaluate([keys], Request("ssm:AddTagsToResource", "*", creating(
        {"SSHA": "y"}))) == IMPLICIT_DENY  # ForAnyValue: none matches
    assert evaluate([keys], Request("ssm:AddTagsToResource", "*", creating(
        {"SSHOwner": "x", "Name": "y"}))) == IMPLICIT_DENY


# -- the server policy (SageMaker execution role) -----------------------------------------------
def test_server_policy_lets_a_container_register_itself() -> None:
    role = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
    assert server("iam:PassRole", role, **{"iam:PassedToService": "ssm.amazonaws.com"}) == ALLOW
    assert server("iam:PassRole", role.replace("SageMakerRole", "Admin"),
                  **{"iam:PassedToService": "ssm.amazonaws.com"}) == IMPLICIT_DENY
    assert server("ssm:CreateActivation", **creating(SSH_TAGS)) == ALLOW
    assert server("ssm:AddTagsToResource", **creating(SSH_TAGS)) == ALLOW  # at creation
    assert server("ssm:DeleteActivation") == ALLOW
    assert server("ssm:DeregisterManagedInstance", MI, **on_instance(SSH_TAGS)) == ALLOW


@pytest.mark.parametrize("attack, action, resource, context", [
    ("put its owner's ID on someone else's instance", "ssm:AddTagsToResource", MI,
     {**on_instance(SSH_TAGS), **creating({"SSHOwner": BOB})}),
    ("re-tag an instance it created itself", "ssm:AddTagsToResource", MI,
     {**on_instance({**SSH_TAGS, "SSHCreator": JOB}), **creating({"SSHResourceName": "x"})}),
    ("tag an unrelated hybrid server for the cleanup", "ssm:AddTagsToResource", MI,
     creating({"SSHTimestamp": "1"})),
    ("untag an instance", "ssm:RemoveTagsFromResource", MI,
     {**on_instance(SSH_TAGS), "aws:TagKeys": ["SSHOwner"]}),
    ("claim another creator", "ssm:CreateActivation", "*",
     creating({**SSH_TAGS, "SSHCreator": OTHER_JOB})),
    ("an activation with other tags", "ssm:CreateActivation", "*",
     creating({**SSH_TAGS, "Name": "db-server"})),
    ("an activation that names no resource", "ssm:CreateActivation", "*",
     creating({"SSHOwner": ALICE, "SSHCreator": JOB})),
    ("deregister another role's instance", "ssm:DeregisterManagedInstance", MI,
     on_instance({**SSH_TAGS, "SSHCreator": OTHER_JOB})),
    ("deregister an unrelated hybrid server", "ssm:DeregisterManagedInstance", MI,
     on_instance({"SSHCreator": JOB})),
    ("send commands", "ssm:SendCommand", MI, on_instance(SSH_TAGS)),
    ("start sessions", "ssm:StartSession", MI, on_instance(SSH_TAGS)),
])
def test_server_policy_refuses(attack: str, action: str, resource: str,
                               context: dict[str, Any]) -> None:
    assert server(action, resource, **context) != ALLOW, attack


def test_tag_changes_on_managed_instances_are_an_explicit_deny() -> None:
    """A Deny wins over any other Allow the role may have (e.g. AmazonSSMFullAccess)."""
    full = {"Statement": [{"Effect": "Allow", "Action": "ssm:*", "Resource": "*"}]}
    request = Request("ssm:AddTagsToResource", MI, {"aws:userid": JOB,
                                                    **creating({"SSHOwner": BOB})})
    assert evaluate([policies.server_policy(TARGET), full], request) == EXPLICIT_DENY


# -- the client policy (users) --------------------------------------------------------------------
@pytest.mark.parametrize("userid, owner, expected", [(ALICE, ALICE, ALLOW),
                                                      (BOB, ALICE, IMPLICIT_DENY)])
def test_client_policy_reaches_own_instances_only(userid: str, owner: str,
                                                  expected: str) -> None:
    client = [policies.client_policy(TARGET)]
    context = {"aws:userid": userid, **on_instance({**SSH_TAGS, "SSHOwner": owner})}
    for action in ("ssm:SendCommand", "ssm:StartSession"):
        assert evaluate(client, Request(action, MI, context)) == expected
    doc = "arn:aws:ssm:us-east-1::document/"
    assert evaluate(client, Request("ssm:SendCommand", doc + "AWS-RunShellScript",
                                    context)) == ALLOW
    assert evaluate(client, Request("ssm:SendCommand", doc + "AWS-RunPowerShellScript",
                                    context)) == IMPLICIT_DENY
    assert evaluate(client, Request("logs:FilterLogEvents", f"arn:aws:logs:us-east-1:{ACCOUNT}"
                                    ":log-group:/aws/sagemaker/TrainingJobs", context)) == ALLOW
    team = [policies.client_policy(TARGET, owner="team-a")]
    assert evaluate(team, Request("ssm:SendCommand", MI, {
        "aws:userid": BOB, **on_instance({"SSHOwner": "team-a"})})) == ALLOW


# -- redaction ----------------------------------------------------------------------------------
BOTOCORE_DEBUG = [
    "x-amz-security-token:FQoGZXIvYXdzEBYaDyYO9fzp6i0Ou0pak5hrl+/nldPfu1==",
    "Sending http request: <AWSPreparedRequest stream_output=False, method=POST, "
    "url=http://127.0.0.1:1/, headers={'X-Amz-Target': b'AmazonSSM.CreateActivation', "
    "'Authorization': b'AWS4-HMAC-SHA256 Credential=ASIAX/20261201/us-east-1/ssm/aws4_request, "
    "SignedHeaders=host;x-amz-security-token, Signature=abcdef0123', "
    "'X-Amz-Security-Token': b'FQoGsecret'}>",
    "Response body:\nb'{\"ActivationId\": \"6978665e\", \"ActivationCode\": \"KmBMmVIK1nmKqv\"}'",
    '{"SessionId": "u-1", "TokenValue": "AAEAAfsecret", "StreamUrl": '
    '"wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/u-1?role=publish_subscribe'
    '&cell-number=AAEAAQsecret"}',
    "{'Credentials': {'AccessKeyId': 'ASIA1', 'SecretAccessKey': 'sekret', "
    "'SessionToken': 'stoken'}}",
    "AWS_SESSION_TOKEN=tok123 AWS_SECRET_ACCESS_KEY=sec456",
    "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=tok&X-Amz-Signature=sig&x=1",
    "amazon-ssm-agent -register -code abcdEFGH123 -id 6978665e -region us-east-1 -y",
]
SECRETS = ["FQoGZXIvYXdz", "abcdef0123", "FQoGsecret", "KmBMmVIK1nmKqv", "AAEAAfsecret",
           "AAEAAQsecret", "sekret", "stoken", "tok123", "sec456", "=tok&", "=sig&",
           "abcdEFGH123"]


def test_redaction_masks_every_secret_and_keeps_the_rest() -> None:
    cleaned = "\n".join(redact.redact(line) for line in BOTOCORE_DEBUG)
    assert [s for s in SECRETS if s in cleaned] == []
    for kept in ("AmazonSSM.CreateActivation", "6978665e", "ASIA1", "u-1", "x=1", "us-east-1"):
        assert kept in cleaned
    assert redact.redact("content-type;host;x-amz-date;x-amz-security-token") == \
        "content-type;host;x-amz-date;x-amz-security-token"


def test_debug_log_is_private_capped_and_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SM_SSH_DEBUG", "true")
    monkeypatch.setattr(cli, "DEBUG_LOG_MAX_BYTES", 20_000)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    root.handlers = []
    try:
        chatty = logging.getLogger("sagemaker_ssh_helper.test_security")
        chatty.setLevel(logging.NOTSET)  # whatever earlier tests set: the root level decides

        def body(frame: cli.Command) -> int:
            for i in range(300):
                chatty.debug("line %d %s", i, BOTOCORE_DEBUG[1])
            return 0

        assert cli.guarded_main("sm-ssh", body) == 0
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = saved
    log = tmp_path / ".sm-ssh" / "debug.log"
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"sm-ssh: debug log: {log} (secrets masked, rotated at 0 MiB)"
    files = sorted(log.parent.iterdir())
    assert [f.name for f in files] == ["debug.log", "debug.log.1"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert f.stat().st_size <= 20_000 + 2000
        text = f.read_text()
        assert "FQoGsecret" not in text and "abcdef0123" not in text and "b'****'" in text
    assert "FQoGsecret" not in err


# -- the log shipper -----------------------------------------------------------------------------
def test_log_shipper_delivers_every_line(moto_url: str) -> None:
    """Debug output has blank lines, and stdout/stderr lines reach the queue out of order:
    either made PutLogEvents refuse the whole batch, so the registration line never arrived."""
    from sagemaker_ssh_sandbox.sagemaker.cwlogs import LogShipper

    logs = boto3.client("logs", endpoint_url=moto_url)
    shipper = LogShipper(logs, interval=60)
    sink = shipper.sink_to("/aws/sagemaker/TrainingJobs", "job/algo-1-1")
    now = int(time.time() * 1000)
    lines: list[str] = []
    for i, line in enumerate(["first", "", "second", "x" * 300_000, "registered mi-1"]):
        shipper._queue.put(("/aws/sagemaker/TrainingJobs", "job/algo-1-1", now - i, line))
        lines.append(line)
    sink("c", "last")
    shipper.close()
    events = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs",
                                 logStreamName="job/algo-1-1", startFromHead=True)["events"]
    messages = [e["message"] for e in events]
    # in time order, blank lines dropped, the long line cut to what the service accepts
    assert [m for m in messages if len(m) < 100] == ["registered mi-1", "second", "first", "last"]
    assert len(messages) == 5 and 0 < max(len(m) for m in messages) <= 256 * 1024


# -- regions -------------------------------------------------------------------------------------
def test_ssm_stand_in_keeps_regions_apart() -> None:
    from sagemaker_ssh_sandbox.ssm.service import start_ssm_server

    with start_ssm_server(region="us-east-1") as server:
        server.backend.add_fake_instances(1, tags={"SSHResourceName": "job"})

        def ssm(region: str) -> Any:
            return boto3.client("ssm", region_name=region, endpoint_url=server.url)

        assert len(ssm("us-east-1").describe_instance_information()[
            "InstanceInformationList"]) == 1
        assert ssm("eu-west-1").describe_instance_information()["InstanceInformationList"] == []
        made = ssm("eu-west-1").create_activation(IamRole="R")["ActivationId"]
        listed = ssm("us-east-1").describe_activations()["ActivationList"]
        assert made not in [a["ActivationId"] for a in listed]
