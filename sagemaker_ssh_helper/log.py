"""Console links and CloudWatch Logs lookups for SageMaker resources.

``SSHLog`` builds console URLs (any partition) for a job's page and its CloudWatch logs, and
finds the SSM managed instance IDs a resource's containers registered by searching their logs
for the line the SSM agent prints on registration::

    Successfully registered the instance with AWS SSM using Managed instance-id: mi-…

Endpoints are the main use: their containers log to ``/aws/sagemaker/Endpoints/<name>``.
``SSMManager`` (SSM tags) is faster and needs no Logs Insights for every other kind; the
``get_*_ssm_instance_ids`` methods of SSH Helper v2 are kept for scripts that use them.

``SSHLog`` keeps the v2 constructor ``(region_name, sleep_between_retries_in_seconds=10,
redo_attempts=5)``: see :mod:`sagemaker_ssh_helper.manager_base` for how those knobs map onto
the deadline-based waiting.
"""
from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import quote

from sagemaker_ssh_helper import aws, fqdn, retry
from sagemaker_ssh_helper.errors import AwsError
from sagemaker_ssh_helper.manager_base import SSMManagerBase

logger = logging.getLogger(__name__)

REGISTRATION_TEXT = "Successfully registered the instance with AWS SSM using Managed instance-id"
REGISTRATION_RE = re.compile(re.escape(REGISTRATION_TEXT) + r": (mi-[0-9a-f]+)")
IP_TEXT = "SSH Helper Log IP: "
IP_RE = re.compile(re.escape(IP_TEXT) + r"(\d+\.\d+\.\d+\.\d+)")
STUDIO_LOG_GROUP = "/aws/sagemaker/studio"
# seconds per attempt of the deprecated ``retry`` parameters (as in SSH Helper v2)
SECONDS_PER_RETRY = 10

_QUERY = (
    "fields @timestamp, @message, @logStream"
    " | filter @message like /{text}/"
    " | sort @timestamp desc"
    " | limit 1000"
)
_FAILED_QUERY_STATUSES = ("Failed", "Cancelled", "Timeout", "Unknown")


def _console_escape(value: str) -> str:
    """The CloudWatch console's fragment encoding: percent-encode twice, then '%' -> '$'."""
    return quote(quote(value, safe=""), safe="").replace("%", "$")


class SSHLog(SSMManagerBase):
    """Console URLs and log lookups in one region."""

    def __init__(self, region_name: str | None = None,
                 sleep_between_retries_in_seconds: float = 10, redo_attempts: int = 5,
                 session: Any = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 progress: Callable[[str], None] | None = None) -> None:
        super().__init__(region_name, sleep_between_retries_in_seconds, redo_attempts, session,
                         clock=clock, sleep=sleep, progress=progress)

    # -- console URLs -----------------------------------------------------------------------
    @staticmethod
    def _logs(kind: str) -> fqdn.Logs:
        """The table's console page and logs of ``kind`` (ValueError for kinds without)."""
        logs = next((k.logs for k in fqdn.RESOURCE_KINDS if k.kind == kind), None)
        if logs is None:
            raise ValueError(f"no console page for {kind!r}: use one of "
                             f"{', '.join(k.kind for k in fqdn.RESOURCE_KINDS if k.logs)}")
        return logs

    def get_console_url(self, kind: str, name: str) -> str:
        """The SageMaker console page of a resource (``kind`` as in ``fqdn``)."""
        fragment = self._logs(kind).console
        return aws.console_url(self.region_name, f"sagemaker/home?region={self.region_name}"
                                                 f"#/{fragment}/{quote(name, safe='')}")

    def log_group(self, kind: str, name: str) -> str:
        return self._logs(kind).log_group(name)

    def get_cloudwatch_url(self, kind: str, name: str) -> str:
        """The CloudWatch console view of a resource's log streams."""
        logs = self._logs(kind)
        return self._log_group_url(logs.log_group(name), logs.streams(name))

    def _sagemaker_page(self, fragment: str) -> str:
        return aws.console_url(self.region_name,
                               f"sagemaker/home?region={self.region_name}#/{fragment}")

    def _log_group_url(self, group: str, stream_filter: str = "") -> str:
        path = f"log-group/{_console_escape(group)}"
        if stream_filter:
            path += "$3FlogStreamNameFilter$3D" + _console_escape(stream_filter)
        return aws.console_url(self.region_name, f"cloudwatch/home?region={self.region_name}"
                                                 f"#logsV2:log-groups/{path}")

    def get_training_job_url(self, name: str) -> str:
        return self.get_console_url("training", name)

    def get_training_cloudwatch_url(self, training_job_name: str) -> str:
        return self.get_cloudwatch_url("training", training_job_name)

    def get_training_metadata_url(self, training_job_name: str) -> str:
        return self.get_console_url("training", training_job_name)

    def get_processing_job_url(self, name: str) -> str:
        return self.get_console_url("processing", name)

    def get_processing_cloudwatch_url(self, processing_job_name: str) -> str:
        return self.get_cloudwatch_url("processing", processing_job_name)

    def get_processing_metadata_url(self, processing_job_name: str) -> str:
        return self.get_console_url("processing", processing_job_name)

    def get_transform_job_url(self, name: str) -> str:
        return self.get_console_url("transform", name)

    def get_transform_cloudwatch_url(self, transform_job_name: str) -> str:
        return self.get_cloudwatch_url("transform", transform_job_name)

    def get_transform_metadata_url(self, transform_job_name: str) -> str:
        return self.get_console_url("transform", transform_job_name)

    def get_endpoint_url(self, name: str) -> str:
        return self.get_console_url("inference", name)

    def get_endpoint_cloudwatch_url(self, endpoint_name: str) -> str:
        return self.get_cloudwatch_url("inference", endpoint_name)

    def get_endpoint_metadata_url(self, endpoint_name: str) -> str:
        return self.get_console_url("inference", endpoint_name)

    def get_endpoint_config_metadata_url(self, endpoint_config_name: str) -> str:
        return self._sagemaker_page(f"endpointConfig/{quote(endpoint_config_name, safe='')}")

    def get_model_metadata_url(self, model_name: str) -> str:
        return self._sagemaker_page(f"models/{quote(model_name, safe='')}")

    def get_ide_cloudwatch_url(self, domain: str, user: str, app_name: str) -> str:
        """Studio app logs (``/aws/sagemaker/studio``, streams ``<domain>/<user>/<type>/<app>``;
        the app type is guessed as the seed did: ``default`` is the JupyterServer)."""
        app_type = "JupyterServer" if app_name == "default" else "KernelGateway"
        stream = f"{domain}/{user}/{app_type}/{app_name}" if user else f"{app_type}/{app_name}"
        return self._log_group_url(STUDIO_LOG_GROUP, stream)

    def get_ide_metadata_url(self, domain: str, user: str) -> str:
        return self._sagemaker_page(f"studio/{quote(domain, safe='')}/user/"
                                    f"{quote(user, safe='')}")

    def get_notebook_cloudwatch_url(self, notebook_name: str) -> str:
        return self.get_cloudwatch_url("notebook", notebook_name)

    def get_notebook_metadata_url(self, notebook_name: str) -> str:
        return self.get_console_url("notebook", notebook_name)

    def count_sns_notifications(self, topic_name: str, period: timedelta) -> int:
        """Notifications SNS delivered for ``topic_name`` during the last ``period`` (the sum
        of the ``NumberOfNotificationsDelivered`` metric, one-minute data points)."""
        cloudwatch = aws.client(self.session, "cloudwatch", self.region_name)
        end = datetime.now(timezone.utc)
        try:
            stats = cloudwatch.get_metric_statistics(
                Namespace="AWS/SNS", MetricName="NumberOfNotificationsDelivered",
                Dimensions=[{"Name": "TopicName", "Value": topic_name}],
                StartTime=end - period, EndTime=end, Period=60, Statistics=["Sum"])
        except Exception as e:
            raise aws.explain(e, "cloudwatch:GetMetricStatistics") from e
        return int(sum(point.get("Sum", 0) for point in stats.get("Datapoints", [])))

    # -- Logs Insights ----------------------------------------------------------------------
    def get_endpoint_ssm_instance_ids(self, endpoint_name: str, timeout_in_sec: float = 0,
                                      expected_count: int = 1) -> list[str]:
        """Instances registered in the endpoint's log group (any variant), newest first."""
        return self.get_instance_ids(self.log_group("inference", endpoint_name), "",
                                     timeout_in_sec, expected_count)

    def get_training_ssm_instance_ids(self, training_job_name: str, timeout_in_sec: float = 0,
                                      expected_count: int = 1) -> list[str]:
        return self.get_instance_ids(self.log_group("training", training_job_name),
                                     f"{training_job_name}/", timeout_in_sec, expected_count)

    def get_processing_ssm_instance_ids(self, processing_job_name: str,
                                        timeout_in_sec: float = 0,
                                        expected_count: int = 1) -> list[str]:
        return self.get_instance_ids(self.log_group("processing", processing_job_name),
                                     f"{processing_job_name}/", timeout_in_sec, expected_count)

    def get_transformer_ssm_instance_ids(self, transform_job_name: str,
                                         timeout_in_sec: float = 0,
                                         expected_count: int = 1) -> list[str]:
        return self.get_instance_ids(self.log_group("transform", transform_job_name),
                                     f"{transform_job_name}/", timeout_in_sec, expected_count)

    def get_studio_kgw_ssm_instance_ids(self, kgw_name: str, timeout_in_sec: float = 0,
                                        expected_count: int = 1) -> list[str]:
        return self.get_instance_ids(STUDIO_LOG_GROUP, f"KernelGateway/{kgw_name}",
                                     timeout_in_sec, expected_count)

    def get_instance_ids_once(self, arn_resource_type: str, arn_resource_name: str,
                              arn_filter_regex: str | None = None,
                              not_earlier_than_timestamp: int = 0) -> list[str]:
        """For logs, ``arn_resource_type`` is the log group and ``arn_resource_name`` the text
        the log stream names must contain."""
        if arn_filter_regex:
            raise ValueError("arn_filter_regex is not supported for log lookups: use "
                             "SSMManager.get_instance_ids()")
        return self.get_ssm_instance_ids_once(arn_resource_type, arn_resource_name,
                                              not_earlier_than_timestamp)

    def get_ssm_instance_ids_once(self, log_group: str, stream_name: str,
                                  not_earlier_than_timestamp: int = 0) -> list[str]:
        """One Logs Insights query: IDs registered in streams of ``log_group`` whose name
        contains ``stream_name``, newest first (a missing log group gives none)."""
        rows = self._query(log_group, REGISTRATION_TEXT, not_earlier_than_timestamp)
        return _matches(rows, stream_name, REGISTRATION_RE)

    def get_ssm_instance_ids(self, log_group: str, stream_name: str,
                             retry: int | None = None,
                             sleep_between_retries_seconds: float | None = None,
                             timeout_in_sec: float = 900, expected_count: int = 1) -> list[str]:
        """``get_ssm_instance_ids_once`` repeated until ``expected_count`` IDs are found or
        ``timeout_in_sec`` passed. ``retry`` (deprecated) means ``retry`` times the interval;
        ``sleep_between_retries_seconds`` (deprecated) sets the interval cap."""
        if sleep_between_retries_seconds:
            logger.warning("sleep_between_retries_seconds is deprecated: pass "
                           "sleep_between_retries_in_seconds to SSHLog() instead")
            self.sleep_between_retries_in_seconds = float(sleep_between_retries_seconds)
        if retry:
            logger.warning("retry is deprecated: use timeout_in_sec instead")
            timeout_in_sec = int(retry) * self.sleep_between_retries_in_seconds
        return self.get_instance_ids(log_group, stream_name, timeout_in_sec, expected_count)

    def get_ip_addresses(self, training_job_name: str, retry: int = 0) -> list[str]:
        """The IP addresses the job's nodes logged (``SSH Helper Log IP: …``), newest first;
        with ``retry`` > 0 wait up to ``retry`` x 10 s for the first one."""
        group = self.log_group("training", training_job_name)

        def fetch() -> list[str]:
            return _matches(self._query(group, IP_TEXT), f"{training_job_name}/", IP_RE)

        return self.poll(fetch, len, 1, max(0, int(retry or 0)) * SECONDS_PER_RETRY,
                         lambda n, left: f"waiting for the IP addresses of {training_job_name}, "
                                         f"{round(left)} s left")

    def _query(self, log_group: str, text: str, not_earlier_than: int = 0,
               lookback: timedelta = timedelta(days=14)) -> list[Any]:
        logs = aws.client(self.session, "logs", self.region_name)
        now = datetime.now(timezone.utc)
        start = max(int((now - lookback).timestamp()), int(not_earlier_than or 0))
        try:
            query_id = logs.start_query(
                logGroupName=log_group, queryString=_QUERY.format(text=text.strip()),
                startTime=start, endTime=int(now.timestamp()) + 60,
            )["queryId"]
        except Exception as e:
            if aws.error_code(e) in ("ResourceNotFoundException", "MalformedQueryException"):
                return []  # no log group yet (or it is younger than the time range)
            raise aws.explain(e, "logs:StartQuery") from e
        return self._wait_query(logs, query_id)

    def _wait_query(self, logs: Any, query_id: str, max_query_seconds: float = 60.0
                    ) -> list[Any]:
        """Poll one query until it completes (at most ``max_query_seconds``)."""
        poll = retry.Poll(max_query_seconds, first=0.2, cap=2.0, factor=2.0, clock=self._clock,
                          sleep=self._sleep)
        while True:
            try:
                response = logs.get_query_results(queryId=query_id)
            except Exception as e:
                raise aws.explain(e, "logs:GetQueryResults") from e
            status = response.get("status")
            if status == "Complete":
                return list(response.get("results") or [])
            if status in _FAILED_QUERY_STATUSES:
                raise AwsError(f"CloudWatch Logs Insights query {query_id} ended {status}")
            if poll.expired():
                raise TimeoutError(f"CloudWatch Logs Insights query {query_id} still {status} "
                                   f"after {max_query_seconds:.0f} s")
            poll.wait()


def _stream_matches(stream: str, part: str) -> bool:
    """``part`` is whole path segments of the stream name: ``job-a/`` matches
    ``job-a/algo-1-…`` but not ``xjob-a/…``; ``KernelGateway/app`` matches
    ``d-x/alice/KernelGateway/app`` but not ``…/KernelGateway/app-2``."""
    if not part:
        return True
    end = "" if part.endswith("/") else "(/|$)"
    return re.search(f"(^|/){re.escape(part)}{end}", stream) is not None


def _matches(results: list[Any], stream_part: str, pattern: re.Pattern[str]) -> list[str]:
    """First group of ``pattern`` in each row's message, in result order, once each, for rows
    whose log stream name holds ``stream_part`` (see ``_stream_matches``). The filtering is
    repeated here because emulated services may ignore the query's ``filter``."""
    found: list[str] = []
    for row in results:
        fields = {f.get("field"): f.get("value", "") for f in row}
        if not _stream_matches(str(fields.get("@logStream", "")), stream_part):
            continue
        match = pattern.search(str(fields.get("@message", "")))
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found
