"""SSHLog: console URLs in every partition and the Logs Insights lookup against moto."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Callable

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
    base = f"https://{region}.{domain}"
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
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[int], None] | None = None

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


def put(logs: Any, group: str, stream: str, messages: list[str], offset_ms: int = 0) -> None:
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
    # the v2 knob sleep_between_retries_in_seconds caps the interval between queries
    log = SSHLog("us-east-1", 5, clock=fake.clock, sleep=fake.sleep)
    ids = log.get_endpoint_ssm_instance_ids(ENDPOINT, expected_count=2, timeout_in_sec=60)
    assert ids == [MI_OLD]
    assert sum(fake.sleeps) == pytest.approx(60)
    assert max(fake.sleeps) <= 5.0


# -- SSH Helper v2 methods ------------------------------------------------------------------
@pytest.mark.parametrize("region, domain", [
    ("eu-west-1", "eu-west-1.console.aws.amazon.com"),
    ("cn-north-1", "cn-north-1.console.amazonaws.cn"),
    ("us-gov-east-1", "us-gov-east-1.console.amazonaws-us-gov.com"),
])
def test_v2_console_urls(region: str, domain: str) -> None:
    log = SSHLog(region)
    page = f"https://{domain}/sagemaker/home?region={region}#/"
    assert log.get_training_metadata_url("j") == page + "jobs/j"
    assert log.get_processing_metadata_url("p") == page + "processing-jobs/p"
    assert log.get_transform_metadata_url("t") == page + "transform-jobs/t"
    assert log.get_endpoint_metadata_url("e") == page + "endpoints/e"
    assert log.get_endpoint_config_metadata_url("c") == page + "endpointConfig/c"
    assert log.get_model_metadata_url("m") == page + "models/m"
    assert log.get_ide_metadata_url("d-abc", "alice") == page + "studio/d-abc/user/alice"
    studio = (f"https://{domain}/cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
              "$252Faws$252Fsagemaker$252Fstudio$3FlogStreamNameFilter$3D")
    assert log.get_ide_cloudwatch_url("d-abc", "alice", "default") == \
        studio + "d-abc$252Falice$252FJupyterServer$252Fdefault"
    assert log.get_ide_cloudwatch_url("d-abc", "", "kgw") == studio + "KernelGateway$252Fkgw"


def test_v2_log_lookups_of_every_kind(logs: Any) -> None:
    put(logs, "/aws/sagemaker/ProcessingJobs", "proc-1/algo-1-1700000000",
        [registered(MI_OLD)])
    put(logs, "/aws/sagemaker/TransformJobs", "tr-1/i-abc-1700000000", [registered(MI_NEW)])
    put(logs, "/aws/sagemaker/studio", "d-abc/alice/KernelGateway/kgw-1", [registered(MI_OTHER)])
    put(logs, "/aws/sagemaker/studio", "d-abc/alice/KernelGateway/kgw-10", [registered(MI_OLD)])
    put(logs, "/aws/sagemaker/TrainingJobs", "job-ip/algo-1-1700000000",
        ["SSH Helper Log IP: 10.0.0.7", "SSH Helper Log IP: 10.0.0.8"])
    log = SSHLog(region_name="us-east-1")
    assert log.get_processing_ssm_instance_ids("proc-1") == [MI_OLD]
    assert log.get_transformer_ssm_instance_ids("tr-1") == [MI_NEW]
    assert log.get_studio_kgw_ssm_instance_ids("kgw-1") == [MI_OTHER]
    assert log.get_ssm_instance_ids_once("/aws/sagemaker/TransformJobs", "tr-1") == [MI_NEW]
    assert log.get_instance_ids_once("/aws/sagemaker/ProcessingJobs", "proc-1") == [MI_OLD]
    with pytest.raises(ValueError, match="arn_filter_regex is not supported"):
        log.get_instance_ids_once("/aws/sagemaker/ProcessingJobs", "proc-1", ".*")
    assert sorted(log.get_ip_addresses("job-ip")) == ["10.0.0.7", "10.0.0.8"]
    assert log.get_ip_addresses("no-such-job") == []


def test_v2_deprecated_retry_of_get_ssm_instance_ids(logs: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    log = SSHLog(region_name="us-east-1", clock=fake.clock, sleep=fake.sleep)
    with caplog.at_level("WARNING"):
        assert log.get_ssm_instance_ids("/aws/sagemaker/TrainingJobs", "j/", retry=3,
                                        sleep_between_retries_seconds=2) == []
    assert sum(fake.sleeps) == pytest.approx(6)  # 3 retries x 2 s
    assert max(fake.sleeps) <= 2
    assert "retry is deprecated" in caplog.text
    assert "sleep_between_retries_seconds is deprecated" in caplog.text


def test_count_sns_notifications(logs: Any) -> None:
    from datetime import datetime, timedelta, timezone

    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    now = datetime.now(timezone.utc)
    for minutes, value in ((1, 2.0), (3, 1.0), (90, 5.0)):
        cloudwatch.put_metric_data(Namespace="AWS/SNS", MetricData=[{
            "MetricName": "NumberOfNotificationsDelivered", "Value": value,
            "Timestamp": now - timedelta(minutes=minutes),
            "Dimensions": [{"Name": "TopicName", "Value": "gpu-alerts"}]}])
    log = SSHLog(region_name="us-east-1")
    assert log.count_sns_notifications("gpu-alerts", timedelta(minutes=15)) == 3
    assert log.count_sns_notifications("other", timedelta(minutes=15)) == 0
