"""The native transport's key folder is used with ``ExpectedBucketOwner`` on every S3 call:
by the client (its key, the host keys), by the container (the host keys it publishes, the keys
sshd's AuthorizedKeysCommand reads) and chosen once at launch (the launching account, or
``SSH_NATIVE_KEYS_BUCKET_OWNER`` for a bucket of another account).

moto ignores ExpectedBucketOwner; the sandbox's gateway answers as S3 does (403 AccessDenied
when the bucket's owner is another account: every sandbox bucket is its account's). These
tests run the real clients against that gateway in front of moto."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from sagemaker_ssh_helper import native, native_container, transport, wrapper_settings
from sagemaker_ssh_helper.errors import AwsError
from sagemaker_ssh_sandbox.gateway import Gateway

ACCOUNT = "123456789012"  # moto's default account: it owns every bucket here
OTHER = "111122223333"
BUCKET = f"keys-bucket-{uuid.uuid4().hex[:8]}"  # moto is shared by the whole session
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm2xRVZ3dGz8yrmrXOp8uC0v2L0+f3b4IYtB8b8jW1S"


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    host, port = moto_url[len("http://"):].split(":")
    gateway = Gateway(("127.0.0.1", 0), (host, int(port)), jobs=None)
    gateway.account = ACCOUNT
    gateway.start()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=gateway.url, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    gateway.stop()


def layout(owner: str) -> transport.KeyLayout:
    return transport.KeyLayout.for_job(f"s3://{BUCKET}/ssh-native-keys/", "AIDAOWNER", "job-1",
                                       owner)


def test_the_gateway_answers_expected_bucket_owner_as_s3(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"x", ExpectedBucketOwner=ACCOUNT)
    assert s3.get_object(Bucket=BUCKET, Key="k", ExpectedBucketOwner=ACCOUNT)["Body"].read() \
        == b"x"
    for call in (lambda: s3.get_object(Bucket=BUCKET, Key="k", ExpectedBucketOwner=OTHER),
                 lambda: s3.list_objects_v2(Bucket=BUCKET, ExpectedBucketOwner=OTHER),
                 lambda: s3.put_object(Bucket=BUCKET, Key="k2", Body=b"y",
                                       ExpectedBucketOwner=OTHER)):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "k" in keys and "k2" not in keys  # the refused put wrote nothing


def test_the_client_expects_the_owner_and_says_so_in_one_line(s3: Any) -> None:
    mine = layout(ACCOUNT)
    key = native.push_key(s3, mine, HOST_KEY, "sm-ssh-client:abc")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().startswith(HOST_KEY)
    s3.put_object(Bucket=BUCKET, Key=mine.host_keys("algo-1"), Body=f"{HOST_KEY}\n".encode())
    assert native.fetch_host_keys(s3, mine, "algo-1", "target", 1.0)
    assert native.fetch_endpoint_host_keys(s3, mine, 1, "target", 1.0)

    theirs = layout(OTHER)
    for call in (lambda: native.push_key(s3, theirs, HOST_KEY, "sm-ssh-client:abc"),
                 lambda: native.fetch_host_keys(s3, theirs, "algo-1", "target", 1.0),
                 lambda: native.fetch_endpoint_host_keys(s3, theirs, 1, "target", 1.0)):
        with pytest.raises(AwsError) as refused:
            call()
        [line] = str(refused.value).splitlines()
        assert f"or the bucket {BUCKET} is not owned by account {OTHER} (the owner the " \
            "launch expected, SSH_AUTHORIZED_KEYS_BUCKET_OWNER; for a bucket of another " \
            "account relaunch with SSH_NATIVE_KEYS_BUCKET_OWNER=<its account>)" in line, line
        assert line.startswith(f"access denied to s3://{BUCKET}/ssh-native-keys/AIDAOWNER/job-1/")


def test_the_client_expects_the_launch_owner_else_the_resources_account() -> None:
    env = {"SSH_AUTHORIZED_KEYS_PATH": "s3://b/p/", "SSH_OWNER_TAG": "o"}
    job = native.Job({"TrainingJobName": "j", "Environment": env,
                      "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/j"})
    assert native.layout_of(job).owner_args() == {"ExpectedBucketOwner": ACCOUNT}
    job.env["SSH_AUTHORIZED_KEYS_BUCKET_OWNER"] = OTHER
    assert native.layout_of(job).owner_args() == {"ExpectedBucketOwner": OTHER}


def test_the_container_expects_the_owner(s3: Any, tmp_path: Path) -> None:
    etc_ssh = tmp_path / "ssh"
    etc_ssh.mkdir()
    (etc_ssh / "ssh_host_ed25519_key.pub").write_text(HOST_KEY + "\n")
    environ = {"SSH_AUTHORIZED_KEYS_PATH": f"s3://{BUCKET}/ssh-native-keys/",
               "SSH_OWNER_TAG": "AIDAOWNER", "TRAINING_JOB_NAME": "job-1",
               "SSH_AUTHORIZED_KEYS_BUCKET_OWNER": ACCOUNT}
    url = native_container.publish(environ, etc_ssh, s3)
    assert url.startswith(f"s3://{BUCKET}/ssh-native-keys/AIDAOWNER/job-1/host-keys/")
    s3.put_object(Bucket=BUCKET, Key="ssh-native-keys/AIDAOWNER/job-1/me.pub",
                  Body=f"{HOST_KEY} me\n".encode())
    config = {"bucket": BUCKET, "prefix": "ssh-native-keys/AIDAOWNER/job-1/",
              "bucket_owner": ACCOUNT, "env": {}}
    assert f"{HOST_KEY} me" in native_container.read_keys(config, s3)

    with pytest.raises(ClientError, match="AccessDenied"):
        native_container.publish(dict(environ, SSH_AUTHORIZED_KEYS_BUCKET_OWNER=OTHER),
                                 etc_ssh, s3)
    with pytest.raises(ClientError, match="AccessDenied"):
        native_container.read_keys(dict(config, bucket_owner=OTHER), s3)


def test_the_launch_chooses_the_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        session = boto3.Session(region_name="eu-west-1")
        assert wrapper_settings.native_keys_location(session) == (
            f"s3://sagemaker-eu-west-1-{ACCOUNT}/ssh-native-keys/", ACCOUNT)
        monkeypatch.setenv("SSH_NATIVE_KEYS_PATH", "s3://central-keys/ssh")
        assert wrapper_settings.native_keys_location(session) == (
            "s3://central-keys/ssh/", ACCOUNT)
        monkeypatch.setenv("SSH_NATIVE_KEYS_BUCKET_OWNER", OTHER)
        assert wrapper_settings.native_keys_location(session) == (
            "s3://central-keys/ssh/", OTHER)
        monkeypatch.setenv("SSH_NATIVE_KEYS_BUCKET_OWNER", "me")
        with pytest.raises(ValueError, match=r"^SSH_NATIVE_KEYS_BUCKET_OWNER must be a "
                           r"12-digit AWS account ID, got 'me'$"):
            wrapper_settings.native_keys_location(session)
