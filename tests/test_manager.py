"""SSMManager and `sm-ssh list` against the SSM stand-in (and moto for STS/SageMaker)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from conftest import FakeClock, create_training_job

from sagemaker_ssh_helper import fqdn, sm_ssh
from sagemaker_ssh_helper.errors import AwsError, SSHHelperError
from sagemaker_ssh_helper.manager import SSMManager

ssm_service = pytest.importorskip("sagemaker_ssh_sandbox.ssm.service")
moto_server = pytest.importorskip("moto.server")

ACCOUNT = "123456789012"


def arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:{kind}/{name.lower()}"


def tags(name: str, kind: str = "training-job", ts: int = 1000, **extra: str) -> dict[str, str]:
    return {"SSHResourceName": name, "SSHResourceArn": arn(kind, name),
            "SSHTimestamp": str(ts), "SSHOwner": "owner", **extra}


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> Iterator[Any]:
    server = ssm_service.start_ssm_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    yield server
    server.shutdown()


def manager(**kwargs: Any) -> SSMManager:
    return SSMManager(region_name="us-east-1", progress=None, **kwargs)


def test_training_ids_newest_first_online_only_right_type(ssm: Any) -> None:
    backend = ssm.backend
    backend.add_fake_instances(50, tags=lambda i: tags(f"other-{i}"))
    old = backend.add_fake_instances(1, tags=tags("job-a", ts=1000))
    new = backend.add_fake_instances(1, tags=tags("job-a", ts=2000))
    lost = backend.add_fake_instances(1, tags=tags("job-a", ts=3000), ping_status="ConnectionLost")
    backend.add_fake_instances(1, tags=tags("job-a", kind="processing-job", ts=4000))
    backend.add_fake_instances(1, tags={"SSHResourceName": "job-a"})  # no ARN: not ours
    mgr = manager()
    assert mgr.get_training_instance_ids("job-a") == new + old
    assert mgr.get_processing_instance_ids("job-a") != new + old
    assert len(mgr.get_processing_instance_ids("job-a")) == 1
    found = mgr.resolve(fqdn.parse_resource("job-a.training.sagemaker"))
    assert [i.instance_id for i in found] == lost + new + old
    assert [i.ping_status for i in found] == ["ConnectionLost", "Online", "Online"]


def test_resolution_calls_do_not_grow_with_the_account(ssm: Any) -> None:
    backend = ssm.backend
    backend.add_fake_instances(2, tags=tags("job-b"))
    counts = []
    for extra in (0, 500):
        backend.add_fake_instances(extra, tags=lambda i: tags(f"x-{i}"))
        backend.add_fake_instances(extra)  # instances of other tools, untagged
        backend.reset_call_counts()
        assert len(manager().get_training_instance_ids("job-b", expected_count=2)) == 2
        counts.append(dict(backend.stats()["CallCounts"]))
    assert counts[0] == counts[1] == {"DescribeInstanceInformation": 1, "ListTagsForResource": 2}


def test_name_holding_the_arn_saves_the_tag_reads(ssm: Any) -> None:
    """An activation whose DefaultInstanceName is the resource ARN needs no tag reads."""
    backend = ssm.backend
    ids = backend.add_fake_instances(1, tags=tags("ep-1", kind="endpoint"))
    with backend.lock:
        backend.instances[ids[0]].name = arn("endpoint", "ep-1")
    backend.reset_call_counts()
    assert manager().get_endpoint_instance_ids("ep-1") == ids
    assert backend.stats()["CallCounts"] == {"DescribeInstanceInformation": 1}


def test_lowercased_name_falls_back_to_the_arn(ssm: Any) -> None:
    ids = ssm.backend.add_fake_instances(1, tags=tags("MyJob"))
    mgr = manager()
    assert mgr.get_training_instance_ids("MyJob") == ids
    ssm.backend.reset_call_counts()
    assert mgr.get_training_instance_ids("myjob") == ids
    assert ssm.backend.stats()["CallCounts"] == {"DescribeInstanceInformation": 2,
                                                  "ListTagsForResource": 1}


def test_studio_lookups(ssm: Any) -> None:
    b = ssm.backend
    alice = b.add_fake_instances(1, tags=tags("default", kind="app", ts=5) | {
        "SSHResourceArn": arn("app", "d-1/alice/KernelGateway/default")})
    bob = b.add_fake_instances(1, tags=tags("default", kind="app", ts=6) | {
        "SSHResourceArn": arn("app", "d-1/bob/KernelGateway/default")})
    mgr = manager()
    assert mgr.get_studio_user_kgw_instance_ids("d-1", "alice", "default") == alice
    assert mgr.get_studio_kgw_instance_ids("default") == bob + alice
    assert mgr.get_studio_kgw_instance_ids("default", not_earlier_than_timestamp=6) == bob


def test_many_studio_apps_of_the_same_name_are_narrowed_by_arn(ssm: Any) -> None:
    b = ssm.backend
    b.add_fake_instances(60, tags=lambda i: tags("default", kind="app") | {
        "SSHResourceArn": arn("app", f"d-1/user{i}/KernelGateway/default")})
    mine = b.add_fake_instances(1, tags=tags("default", kind="app") | {
        "SSHResourceArn": arn("app", "d-1/me/KernelGateway/default")})
    b.reset_call_counts()
    assert manager().get_studio_user_kgw_instance_ids("d-1", "me") == mine
    assert b.stats()["CallCounts"]["ListTagsForResource"] == 1


def test_wait_for_expected_count_with_deadline_and_progress(ssm: Any) -> None:
    b = ssm.backend
    b.add_fake_instances(1, tags=tags("job-w"))
    clock = FakeClock()
    lines: list[str] = []
    mgr = SSMManager(region_name="us-east-1", clock=clock, sleep=clock.sleep,
                     progress=lines.append)
    ids = mgr.get_training_instance_ids("job-w", timeout_in_sec=30, expected_count=2)
    assert len(ids) == 1  # deadline passed with one of two
    assert lines[0] == "waiting for 2 instances of training job job-w, 1 online, 30 s left"
    assert clock.now == pytest.approx(30)
    assert all(b <= a * 1.5 * 1.2 / 0.8 + 1e-9 for a, b in zip(clock.sleeps, clock.sleeps[1:]))
    assert len(clock.sleeps) < 15  # backoff, not a fixed tight loop


def test_wait_returns_as_soon_as_enough_are_online(ssm: Any) -> None:
    b = ssm.backend
    b.add_fake_instances(1, tags=tags("job-x"))
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        b.add_fake_instances(1, tags=tags("job-x"))  # the second node registers meanwhile

    mgr = SSMManager(region_name="us-east-1", clock=clock, sleep=sleep, progress=None)
    assert len(mgr.get_training_instance_ids("job-x", 600, expected_count=2)) == 2
    assert len(clock.sleeps) == 1


def test_throttling_is_retried_then_explained(ssm: Any) -> None:
    ssm.backend.add_fake_instances(1, tags=tags("job-t"))
    ssm.backend.inject_fault("DescribeInstanceInformation", "ThrottlingException", 2)
    assert len(manager().get_training_instance_ids("job-t")) == 1
    ssm.backend.inject_fault("DescribeInstanceInformation", "ThrottlingException", 5)
    impatient = manager(ssm_client=boto3.client(
        "ssm", config=Config(retries={"mode": "standard", "max_attempts": 2})))
    with pytest.raises(AwsError, match="throttled ssm:DescribeInstanceInformation after retries"):
        impatient.get_training_instance_ids("job-t")


def test_access_denied_names_the_action(ssm: Any) -> None:
    ssm.backend.inject_fault("DescribeInstanceInformation", "AccessDeniedException", 1)
    with pytest.raises(AwsError, match="access denied for ssm:DescribeInstanceInformation"):
        manager().get_training_instance_ids("job-d")


def test_expired_lists_only_offline_ssh_instances(ssm: Any) -> None:
    b = ssm.backend
    expired = b.add_fake_instances(2, tags=tags("old"), ping_status="ConnectionLost")
    b.add_fake_instances(1, tags=tags("live"))
    b.add_fake_instances(3, ping_status="ConnectionLost")  # not SSH Helper's
    mgr = manager()
    assert mgr.list_expired_ssh_instances(1) == []  # pinged just now
    later = time.time() + 2 * 86400
    assert sorted(mgr.list_expired_ssh_instances(1, now=later)) == sorted(expired)
    assert mgr.get_ssh_instance_timestamp(expired[0]) == 1000
    assert mgr.deregister(expired[0]) is True
    assert mgr.deregister("mi-00000000000000000") is False


def test_list_joins_jobs_with_one_scan(ssm: Any, moto_url: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("listed-a", "listed-b"):
        create_training_job(name)
    b = ssm.backend
    online = b.add_fake_instances(1, tags=tags("listed-a"))
    b.add_fake_instances(1, tags=tags("gone-job"), ping_status="ConnectionLost")
    b.add_fake_instances(20)  # unrelated instances are never read
    b.reset_call_counts()
    assert sm_ssh.main(["list", "training.sagemaker", "--output", "json"]) == 0
    rows = {r["fqdn"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["listed-a.training.sagemaker"]["ssh"] == "Online"
    assert rows["listed-a.training.sagemaker"]["instances"][0]["instance_id"] == online[0]
    assert rows["listed-b.training.sagemaker"]["ssh"] == "ssh:NotFound"
    assert rows["gone-job.training.sagemaker"]["ssh"] == "ConnectionLost"
    assert b.stats()["CallCounts"] == {"DescribeInstanceProperties": 1,
                                       "ListTagsForResource": 2}
    assert sm_ssh.main(["list", "listed-a.training.sagemaker"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["FQDN", "STATUS", "SSH", "TRANSPORT", "INSTANCES"]
    assert table[1].split()[0:4:2] == ["listed-a.training.sagemaker", "Online"]
    assert table[1].split()[3] == "hybrid"
    assert len(table) == 2


def test_public_key_also_goes_to_s3_when_asked(ssm: Any, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    from sagemaker_ssh_helper import keys

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="keys-bucket")
    session = boto3.Session()
    monkeypatch.delenv("SSH_AUTHORIZED_KEYS_PATH", raising=False)
    assert keys.upload_public_key(session, "ssh-ed25519 AAAA", "sm-ssh:0123") is None
    monkeypatch.setenv("SSH_AUTHORIZED_KEYS_PATH", "s3://keys-bucket/ssh-authorized-keys")
    url = keys.upload_public_key(session, "ssh-ed25519 AAAA", "sm-ssh:0123")
    assert url == "s3://keys-bucket/ssh-authorized-keys/0123.pub"
    body = s3.get_object(Bucket="keys-bucket", Key="ssh-authorized-keys/0123.pub")["Body"]
    assert body.read() == b"ssh-ed25519 AAAA sm-ssh:0123\n"
    monkeypatch.setenv("SSH_AUTHORIZED_KEYS_PATH", "/not/s3")
    with pytest.raises(SSHHelperError, match="must be an s3:// prefix"):
        keys.upload_public_key(session, "ssh-ed25519 AAAA", "sm-ssh:0123")
