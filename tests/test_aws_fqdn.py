"""aws.py (ARNs, partitions, console domains, roles, masking, STS) and fqdn.py (the grammar)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from moto import mock_aws

from sagemaker_ssh_helper import aws, fqdn
from sagemaker_ssh_helper.errors import AwsError, UsageError


# -- ARNs -------------------------------------------------------------------------------------
def test_parse_training_job_arn() -> None:
    text = "arn:aws:sagemaker:eu-west-1:123456789012:training-job/my-job-1"
    arn = aws.parse_arn(text)
    assert (arn.partition, arn.service, arn.region, arn.account) == \
        ("aws", "sagemaker", "eu-west-1", "123456789012")
    assert (arn.resource_type, arn.resource_id) == ("training-job", "my-job-1")
    assert str(arn) == text


def test_parse_studio_app_arn_keeps_the_nested_path() -> None:
    arn = aws.parse_arn(
        "arn:aws-cn:sagemaker:cn-north-1:123456789012:app/d-abc123/alice/KernelGateway/default")
    assert arn.partition == "aws-cn"
    assert arn.resource_type == "app"
    assert arn.resource_id == "d-abc123/alice/KernelGateway/default"


def test_parse_arn_without_region_or_resource_id() -> None:
    arn = aws.parse_arn("arn:aws-us-gov:iam::123456789012:root")
    assert (arn.partition, arn.region, arn.resource_type, arn.resource_id) == \
        ("aws-us-gov", "", "root", "")


@pytest.mark.parametrize("text", ["", "my-job", "arn:aws:sagemaker", "arn:gcp:s3:::bucket",
                                  "arn:aws:sagemaker:us-east-1:12ab:training-job/x"])
def test_parse_arn_rejects_non_arns(text: str) -> None:
    with pytest.raises(UsageError, match="not an ARN"):
        aws.parse_arn(text)


# -- partitions and console -------------------------------------------------------------------
@pytest.mark.parametrize("region, partition, suffix, console", [
    ("us-east-1", "aws", "amazonaws.com", "console.aws.amazon.com"),
    ("eu-central-2", "aws", "amazonaws.com", "console.aws.amazon.com"),
    ("ap-east-1", "aws", "amazonaws.com", "console.aws.amazon.com"),
    ("cn-north-1", "aws-cn", "amazonaws.com.cn", "console.amazonaws.cn"),
    ("cn-northwest-1", "aws-cn", "amazonaws.com.cn", "console.amazonaws.cn"),
    ("us-gov-west-1", "aws-us-gov", "amazonaws.com", "console.amazonaws-us-gov.com"),
    ("us-gov-east-1", "aws-us-gov", "amazonaws.com", "console.amazonaws-us-gov.com"),
    ("us-iso-east-1", "aws-iso", None, None),
    ("us-isob-east-1", "aws-iso-b", None, None),
])
def test_partitions(region: str, partition: str, suffix: str | None,
                    console: str | None) -> None:
    assert aws.partition_for_region(region) == partition
    if suffix:
        assert aws.dns_suffix(region) == suffix
    if console:
        host = f"{region}.{console}"  # the region in the host, as the console links it
        assert aws.console_domain(region) == host
        assert aws.AWS(region).get_console_domain() == host
        assert aws.console_url(region, "/sagemaker/home") == f"https://{host}/sagemaker/home"
        assert aws.console_url(region, "s3/home") == f"https://{host}/s3/home"
        assert aws.AWS(region).get_sts_endpoint() == f"https://sts.{region}.{suffix}"


@pytest.mark.parametrize("value, expected", [
    ("arn:aws:iam::123456789012:role/SageMakerRole", True),
    ("arn:aws-cn:iam::123456789012:role/service-role/X", True),
    ("arn:aws-us-gov:sagemaker:us-gov-west-1:123456789012:training-job/j", True),
    ("SageMakerRole", False), ("service-role/X", False), ("", False), (None, False),
])
def test_is_arn(value: str | None, expected: bool) -> None:
    assert aws.AWS.is_arn(value) is expected  # type: ignore[arg-type]


# -- roles and masking ------------------------------------------------------------------------
@pytest.mark.parametrize("role, name", [
    ("SageMakerRole", "SageMakerRole"),
    ("arn:aws:iam::123456789012:role/SageMakerRole", "SageMakerRole"),
    ("arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-ExecutionRole-1",
     "service-role/AmazonSageMaker-ExecutionRole-1"),
    ("arn:aws:iam::123456789012:role/a/b/c/Deep", "a/b/c/Deep"),
    ("arn:aws-cn:iam::123456789012:role/CnRole", "CnRole"),
    ("arn:aws-us-gov:iam::123456789012:role/GovRole", "GovRole"),
])
def test_role_name_from_arn(role: str, name: str) -> None:
    assert aws.role_name_from_arn(role) == name


@pytest.mark.parametrize("role", [
    "arn:aws:iam::123456789012:user/alice",
    "arn:aws:sts::123456789012:assumed-role/Role/session",
    "arn:aws:iam::123456789012:instance-profile/Profile",
])
def test_role_name_from_arn_rejects_other_arns(role: str) -> None:
    with pytest.raises(UsageError, match="not an IAM role ARN"):
        aws.role_name_from_arn(role)


@pytest.mark.parametrize("value, keep, masked", [
    (None, 4, "<none>"),
    ("", 4, "<none>"),
    ("short", 4, "*****"),
    ("12345678", 4, "********"),
    ("AIDAEXAMPLEUSERID", 4, "AIDA*********ERID"),
    ("AROAEXAMPLE:alice@example.com", 4, "AROA*********************.com"),
    ("abcdef", 1, "a****f"),
])
def test_mask(value: str | None, keep: int, masked: str) -> None:
    assert aws.mask(value, keep) == masked
    if value:
        assert len(aws.mask(value, keep)) == len(value)


# -- sessions, STS, errors --------------------------------------------------------------------
def test_unknown_profile_is_an_aws_error() -> None:
    with pytest.raises(AwsError, match="cannot open AWS profile 'no-such-profile'"):
        aws.boto_session(profile="no-such-profile")


def test_missing_region_is_an_aws_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(AwsError, match="no AWS region configured"):
        aws.session_region(aws.boto_session())


def test_aws_region_alone_names_the_region_as_the_error_advises(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """botocore reads AWS_DEFAULT_REGION and the profile only; AWS_REGION (what the errors
    advise, and what the AWS CLI v2 reads first) names the region too; --region wins."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert aws.session_region(aws.boto_session()) == "eu-west-3"
    assert aws.session_region(aws.boto_session(region="ap-south-1")) == "ap-south-1"


@pytest.mark.parametrize("region, endpoint", [
    ("us-east-1", "https://sts.us-east-1.amazonaws.com"),
    ("ap-east-1", "https://sts.ap-east-1.amazonaws.com"),
    ("cn-north-1", "https://sts.cn-north-1.amazonaws.com.cn"),
    ("us-gov-west-1", "https://sts.us-gov-west-1.amazonaws.com"),
])
def test_sts_client_uses_the_regional_endpoint(region: str, endpoint: str) -> None:
    client = aws.sts_client(boto3.Session(region_name=region))
    assert client.meta.endpoint_url == endpoint
    assert client.meta.region_name == region


def test_sts_client_honours_aws_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:4566")
    client = aws.sts_client(boto3.Session(region_name="eu-west-1"))
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"


@pytest.fixture
def moto_aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.mark.parametrize("region", ["us-east-1", "cn-north-1", "us-gov-west-1"])
def test_caller_user_id_against_moto(moto_aws: None, region: str) -> None:
    session = boto3.Session(region_name=region)
    expected = boto3.client("sts", region_name=region).get_caller_identity()["UserId"]
    assert aws.caller_user_id(session) == expected
    assert expected


def test_caller_user_id_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    session = boto3.Session(region_name="us-east-1")  # conftest: empty config, IMDS disabled
    with pytest.raises(AwsError, match="no valid AWS credentials for sts:GetCallerIdentity"):
        aws.caller_user_id(session)


def client_error(code: str, message: str = "msg") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "SendCommand")


@pytest.mark.parametrize("error, expected", [
    (client_error("AccessDeniedException"), "access denied for ssm:SendCommand"),
    (client_error("ExpiredTokenException"), "credentials rejected (ExpiredTokenException)"),
    (client_error("ThrottlingException"), "AWS throttled ssm:SendCommand"),
    (client_error("InvalidInstanceId", "bad id"),
     "ssm:SendCommand failed: InvalidInstanceId: bad id"),
    (NoCredentialsError(), "no valid AWS credentials for ssm:SendCommand"),
])
def test_explain(error: Exception, expected: str) -> None:
    explained = aws.explain(error, "ssm:SendCommand")
    assert isinstance(explained, AwsError)
    assert expected in str(explained)
    assert "\n" not in str(explained)


def test_explain_passes_other_errors_through() -> None:
    error = KeyError("x")
    assert aws.explain(error, "ssm:SendCommand") is error
    assert aws.error_code(error) == ""
    assert aws.error_code(client_error("ValidationException")) == "ValidationException"


# -- FQDN grammar -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, name", [
    ("my-job.training.sagemaker", "training", "my-job"),
    ("proc-1.processing.sagemaker", "processing", "proc-1"),
    ("tr.transform.sagemaker", "transform", "tr"),
    ("my-endpoint.inference.sagemaker", "inference", "my-endpoint"),
    ("nb.notebook.sagemaker", "notebook", "nb"),
    ("default.studio.sagemaker", "studio", "default"),
    ("My-Job.TRAINING.SageMaker.", "training", "My-Job"),
    ("  job.training.sagemaker ", "training", "job"),
])
def test_parse_one_resource(text: str, kind: str, name: str) -> None:
    target = fqdn.parse_resource(text)
    assert (target.kind.kind, target.name, target.is_list) == (kind, name, False)
    assert target.fqdn == f"{name}.{kind}.sagemaker"


def test_parse_studio_forms() -> None:
    app = fqdn.parse("jupyterlab-1.alice.d-abc123.studio.sagemaker")
    assert (app.name, app.user_or_space, app.domain) == ("jupyterlab-1", "alice", "d-abc123")
    assert app.fqdn == "jupyterlab-1.alice.d-abc123.studio.sagemaker"
    assert app.kind.arn_type == "app"
    user = fqdn.parse("alice.d-abc123.studio.sagemaker")
    assert user.is_list and (user.user_or_space, user.domain) == ("alice", "d-abc123")


def test_parse_list_forms() -> None:
    everything = fqdn.parse("sagemaker")
    assert everything.is_list and everything.kinds == fqdn.RESOURCE_KINDS
    training = fqdn.parse("training.sagemaker")
    assert training.is_list and [k.kind for k in training.kinds] == ["training"]


def test_list_forms_render_back() -> None:
    for text in ("sagemaker", "training.sagemaker", "alice.d-abc123.studio.sagemaker"):
        assert fqdn.parse(text).fqdn == text


@pytest.mark.parametrize("text, why", [
    ("", "must end with '.sagemaker'"),
    ("my-job.training", "must end with '.sagemaker'"),
    ("my-job.training.sagemaker.aws", "must end with '.sagemaker'"),
    ("my-job.batch.sagemaker", "unknown kind 'batch'"),
    ("a.b.training.sagemaker", "'training' takes one name before it"),
    ("-job.training.sagemaker", "invalid name '-job'"),
    ("my job.training.sagemaker", "invalid name 'my job'"),
    ("a..training.sagemaker", "invalid name ''"),
    ("a.b.c.d.studio.sagemaker", "too many labels before 'studio'"),
])
def test_malformed_names(text: str, why: str) -> None:
    with pytest.raises(UsageError) as info:
        fqdn.parse(text)
    message = str(info.value)
    assert why in message
    assert "expected '<name>.<training|processing|transform|inference|notebook>.sagemaker'" \
        in message
    assert "\n" not in message


@pytest.mark.parametrize("text, hint", [
    ("sagemaker", "'<name>.<kind>.sagemaker'"),
    ("training.sagemaker", "'<name>.training.sagemaker'"),
    ("alice.d-1.studio.sagemaker", "'<name>.studio.sagemaker'"),
])
def test_parse_resource_rejects_list_forms(text: str, hint: str) -> None:
    with pytest.raises(UsageError, match="names a list, not one resource") as info:
        fqdn.parse_resource(text)
    assert hint in str(info.value)
    assert f"sm-ssh list {text}" in str(info.value)


def test_resource_kind_table() -> None:
    kinds = [k.kind for k in fqdn.RESOURCE_KINDS]
    arn_types = [k.arn_type for k in fqdn.RESOURCE_KINDS]
    assert len(set(kinds)) == len(kinds) and len(set(arn_types)) == len(arn_types)
    assert fqdn.kind("inference").arn_type == "endpoint"
    assert fqdn.kind("training").default_port == 11022
    kind_for_job: Any = fqdn.kind_for_arn_type("processing-job")
    assert kind_for_job.kind == "processing"
    assert fqdn.kind_for_arn_type("hyper-parameter-tuning-job") is None
    with pytest.raises(UsageError, match="unknown resource kind 'batch'"):
        fqdn.kind("batch")


@pytest.mark.parametrize("rk", [k for k in fqdn.RESOURCE_KINDS if k.api], ids=lambda k: k.kind)
def test_kind_table_names_real_sagemaker_calls(rk: fqdn.ResourceKind) -> None:
    """Each kind's list/describe operations and keys exist in botocore's SageMaker model, as
    the table says: the list's page member, the name, ARN and status of its items, the name as
    Describe*'s argument and the status in its answer; the IAM action is the operation's."""
    client = boto3.session.Session().client("sagemaker", region_name="us-east-1")
    model, api = client.meta.service_model, rk.api
    assert api is not None
    listing = model.operation_model(api.list_action.split(":", 1)[1])  # e.g. ListTrainingJobs
    assert client.can_paginate(api.list_op)
    items = listing.output_shape.members[api.list_key].member
    assert {api.name_key, api.arn_key, api.status_key} <= set(items.members)
    if api.recent_only:
        assert "CreationTimeAfter" in listing.input_shape.members
    describe = model.operation_model("".join(w.title() for w in api.describe_op.split("_")))
    assert callable(getattr(client, api.describe_op))
    assert api.name_key in describe.input_shape.required_members
    assert {api.arn_key, api.status_key} <= set(describe.output_shape.members)


def test_kind_table_logs_and_scripts() -> None:
    """Console pages and log groups of the table (the containers' output is what the trust
    check reads), and one sm-local-ssh-<script> per kind."""
    training, endpoint = fqdn.kind("training"), fqdn.kind("inference")
    assert training.logs and endpoint.logs
    assert (training.logs.log_group("j"), training.logs.streams("j")) == \
        ("/aws/sagemaker/TrainingJobs", "j/")
    assert (endpoint.logs.log_group("e"), endpoint.logs.streams("e")) == \
        ("/aws/sagemaker/Endpoints/e", "")
    assert [k.kind for k in fqdn.RESOURCE_KINDS if k.logs and k.logs.container_output] == \
        ["training", "processing", "transform", "inference"]
    assert [k.script for k in fqdn.RESOURCE_KINDS] == \
        ["training", "processing", "transform", "inference", "notebook", "ide"]
    assert fqdn.arn_key("arn:aws:sagemaker:eu-west-1:1:training-job/My-Job") == \
        "training-job/my-job"
    assert fqdn.arn_key("not an arn") == ""


def test_format_fqdn() -> None:
    assert fqdn.format_fqdn("training", "job") == "job.training.sagemaker"
    assert fqdn.format_fqdn("studio", "app") == "app.studio.sagemaker"
    assert fqdn.format_fqdn("studio", "app", "alice", "d-1") == "app.alice.d-1.studio.sagemaker"
    with pytest.raises(UsageError):
        fqdn.format_fqdn("nope", "x")
