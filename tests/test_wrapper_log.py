"""SSHLog: console URLs in every partition and the Logs Insights lookup against moto."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, List, Optional

import boto3
import pytest
from moto import mock_aws

from sagemaker_ssh_helper.log import REGISTRATION_TEXT, SSHLog

ENDPOINT = "my-endpoint"
MI_OLD, MI_NEW, MI_OTHER = "mi-0123456789abcdef0", "mi-0fedcba9876543210", "mi-00000000000000001"


@pytest.mark.parametrize("region, domain", [
    ("us-east-1", "console.aws.amazon.com"),
    ("eu-west-1", "console.aws.amazon.com"),
    ("cn-north-1", "console.amazonaws.cn"),
    ("cn-northwest-1", "console.amazonaws.cn"),
    ("us-gov-west-1", "console.amazonaws-us-gov.com"),
])
def test_console_urls_in_every_partition(region: str, domain: str) -> None:
    log = SSHLog(region_name=region)
    base = f"https://{domain}"
    assert log.get_training_job_url("job-1") == \
        f"{base}/sagemaker/home?region={region}#/jobs/job-1"
    assert log.get_processing_job_url("proc-1") == \
        f"{base}/sagemaker/home?region={region}#/processing-jobs/proc-1"
    assert log.get_transform_job_url("tr-1") == \
        f"{base}/sagemaker/home?region={region}#/transform-jobs/tr-1"
    assert log.get_endpoint_url("ep-1") == f"{base}/sagemaker/home?region={region}#/endpoints/ep-1"
    cloudwatch = f"{base}/cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
    assert log.get_training_cloudwatch_url("job-1") == (
        f"{cloudwatch}$252Faws$252Fsagemaker$252FTrainingJobs$3FlogStreamNameFilter$3Djob-1$252F")
    assert log.get_processing_cloudwatch_url("proc-1") == (
        f"{cloudwatch}$252Faws$252Fsagemaker$252FProcessingJobs"
        "$3FlogStreamNameFilter$3Dproc-1$252F")
    assert log.get_transform_cloudwatch_url("tr-1") == (
        f"{cloudwatch}$252Faws$252Fsagemaker$252FTransformJobs$3FlogStreamNameFilter$3Dtr-1$252F")
    assert log.get_endpoint_cloudwatch_url("ep-1") == \
        f"{cloudwatch}$252Faws$252Fsagemaker$252FEndpoints$252Fep-1"


def test_region_comes_from_the_session() -> None:
    log = SSHLog(session=boto3.Session(region_name="ap-southeast-2"))
    assert log.region_name == "ap-southeast-2"
    assert "region=ap-southeast-2#" in log.get_endpoint_url("x")


def test_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no console page for 'studio'"):
        SSHLog(region_name="us-east-1").get_console_url("studio", "x")


class FakeTime:
    """Injectable clock/sleep: sleeping advances the clock and may run a callback."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: List[float] = []
        self.on_sleep: Optional[Callable[[int], None]] = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


@pytest.fixture
def logs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("logs", region_name="us-east-1")


def put(logs: Any, group: str, stream: str, messages: List[str], offset_ms: int = 0) -> None:
    groups = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    if not any(g["logGroupName"] == group for g in groups):
        logs.create_log_group(logGroupName=group)
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)
    if not any(s["logStreamName"] == stream for s in streams["logStreams"]):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000) + offset_ms
    logs.put_log_events(logGroupName=group, logStreamName=stream,
                        logEvents=[{"timestamp": now + i, "message": m}
                                   for i, m in enumerate(messages)])


def registered(instance_id: str) -> str:
    return f"{REGISTRATION_TEXT}: {instance_id}"


def test_endpoint_instance_ids_from_logs_newest_first(logs: Any) -> None:
    group = f"/aws/sagemaker/Endpoints/{ENDPOINT}"
    put(logs, group, "AllTraffic/i-aaa", ["starting", registered(MI_OLD), "serving"],
        offset_ms=-60_000)
    put(logs, group, "AllTraffic/i-bbb", ["starting", registered(MI_NEW)])
    put(logs, group, "AllTraffic/i-bbb", [registered(MI_NEW)], offset_ms=10)  # agent restart
    put(logs, "/aws/sagemaker/Endpoints/other", "AllTraffic/i-ccc", [registered(MI_OTHER)])

    ids = SSHLog(region_name="us-east-1").get_endpoint_ssm_instance_ids(ENDPOINT)
    assert ids == [MI_NEW, MI_OLD]


def test_training_lookup_keeps_to_its_job(logs: Any) -> None:
    group = "/aws/sagemaker/TrainingJobs"
    put(logs, group, "job-a/algo-1-1700000000", [registered(MI_OLD)])
    put(logs, group, "job-ab/algo-1-1700000000", [registered(MI_OTHER)])
    put(logs, group, "job-b/algo-1-1700000000", [registered(MI_NEW)])
    log = SSHLog(region_name="us-east-1")
    assert log.get_training_ssm_instance_ids("job-a") == [MI_OLD]
    assert log.get_training_ssm_instance_ids("job-c") == []


def test_missing_log_group_without_wait_gives_no_ids(logs: Any) -> None:
    fake = FakeTime()
    log = SSHLog(region_name="us-east-1", clock=fake.clock, sleep=fake.sleep)
    assert log.get_endpoint_ssm_instance_ids("not-yet") == []
    assert fake.sleeps == []


def test_waits_until_the_registration_is_logged(logs: Any) -> None:
    fake = FakeTime()
    group = f"/aws/sagemaker/Endpoints/{ENDPOINT}"

    def register_on_third_sleep(count: int) -> None:
        if count == 3:
            put(logs, group, "AllTraffic/i-aaa", [registered(MI_NEW)])

    fake.on_sleep = register_on_third_sleep
    log = SSHLog(region_name="us-east-1", clock=fake.clock, sleep=fake.sleep)
    assert log.get_endpoint_ssm_instance_ids(ENDPOINT, timeout_in_sec=300) == [MI_NEW]
    assert len(fake.sleeps) == 3
    assert fake.sleeps == sorted(fake.sleeps)  # backs off, never shrinks


def test_wait_is_bounded_by_the_deadline(logs: Any) -> None:
    fake = FakeTime()
    put(logs, f"/aws/sagemaker/Endpoints/{ENDPOINT}", "AllTraffic/i-aaa", [registered(MI_OLD)])
    log = SSHLog(region_name="us-east-1", clock=fake.clock, sleep=fake.sleep)
    ids = log.get_endpoint_ssm_instance_ids(ENDPOINT, expected_count=2, timeout_in_sec=60)
    assert ids == [MI_OLD]
    assert sum(fake.sleeps) == pytest.approx(60)
    assert max(fake.sleeps) <= 5.0
