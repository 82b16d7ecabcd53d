"""Console links and CloudWatch Logs lookups for SageMaker resources.

``SSHLog`` builds console URLs (any partition) for a job's page and its CloudWatch logs, and
finds the SSM managed instance IDs a resource's containers registered by searching their logs
for the line the SSM agent prints on registration::

    Successfully registered the instance with AWS SSM using Managed instance-id: mi-…

Endpoints are the main use: their containers log to ``/aws/sagemaker/Endpoints/<name>``.
"""
from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import quote

from sagemaker_ssh_helper import aws
from sagemaker_ssh_helper.errors import AwsError

logger = logging.getLogger(__name__)

REGISTRATION_TEXT = "Successfully registered the instance with AWS SSM using Managed instance-id"
REGISTRATION_RE = re.compile(re.escape(REGISTRATION_TEXT) + r": (mi-[0-9a-f]+)")

# kind -> (console fragment of the resource page, log group, log stream prefix per resource).
# Endpoint logs have one group per endpoint and streams named "<variant>/<instance>".
_CONSOLE: Dict[str, tuple] = {
    "training": ("jobs", "/aws/sagemaker/TrainingJobs", True),
    "processing": ("processing-jobs", "/aws/sagemaker/ProcessingJobs", True),
    "transform": ("transform-jobs", "/aws/sagemaker/TransformJobs", True),
    "inference": ("endpoints", "/aws/sagemaker/Endpoints/{name}", False),
    "notebook": ("notebook-instances", "/aws/sagemaker/NotebookInstances", True),
}
_QUERY = (
    "fields @timestamp, @message, @logStream"
    f" | filter @message like /{REGISTRATION_TEXT}/"
    " | sort @timestamp desc"
    " | limit 1000"
)
_FAILED_QUERY_STATUSES = ("Failed", "Cancelled", "Timeout", "Unknown")


def _console_escape(value: str) -> str:
    """The CloudWatch console's fragment encoding: percent-encode twice, then '%' -> '$'."""
    return quote(quote(value, safe=""), safe="").replace("%", "$")


class SSHLog:
    """Console URLs and log lookups in one region."""

    def __init__(self, region_name: Optional[str] = None, session: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.session = session if session is not None else aws.boto_session(region=region_name)
        self.region_name = region_name or aws.session_region(self.session)
        self._clock = clock
        self._sleep = sleep

    # -- console URLs -----------------------------------------------------------------------
    def _kind(self, kind: str) -> tuple:
        try:
            return _CONSOLE[kind]
        except KeyError:
            raise ValueError(f"no console page for {kind!r}: use one of "
                             f"{', '.join(_CONSOLE)}") from None

    def get_console_url(self, kind: str, name: str) -> str:
        """The SageMaker console page of a resource (``kind`` as in ``fqdn``)."""
        fragment = self._kind(kind)[0]
        return aws.console_url(self.region_name, f"sagemaker/home?region={self.region_name}"
                                                 f"#/{fragment}/{quote(name, safe='')}")

    def log_group(self, kind: str, name: str) -> str:
        return str(self._kind(kind)[1]).format(name=name)

    def get_cloudwatch_url(self, kind: str, name: str) -> str:
        """The CloudWatch console view of a resource's log streams."""
        _, group, per_resource_streams = self._kind(kind)
        path = f"log-group/{_console_escape(str(group).format(name=name))}"
        if per_resource_streams:
            path += "$3FlogStreamNameFilter$3D" + _console_escape(f"{name}/")
        return aws.console_url(self.region_name, f"cloudwatch/home?region={self.region_name}"
                                                 f"#logsV2:log-groups/{path}")

    def get_training_job_url(self, name: str) -> str:
        return self.get_console_url("training", name)

    def get_training_cloudwatch_url(self, name: str) -> str:
        return self.get_cloudwatch_url("training", name)

    def get_processing_job_url(self, name: str) -> str:
        return self.get_console_url("processing", name)

    def get_processing_cloudwatch_url(self, name: str) -> str:
        return self.get_cloudwatch_url("processing", name)

    def get_transform_job_url(self, name: str) -> str:
        return self.get_console_url("transform", name)

    def get_transform_cloudwatch_url(self, name: str) -> str:
        return self.get_cloudwatch_url("transform", name)

    def get_endpoint_url(self, name: str) -> str:
        return self.get_console_url("inference", name)

    def get_endpoint_cloudwatch_url(self, name: str) -> str:
        return self.get_cloudwatch_url("inference", name)

    # -- Logs Insights ----------------------------------------------------------------------
    def get_endpoint_ssm_instance_ids(self, endpoint_name: str, expected_count: int = 1,
                                      timeout_in_sec: float = 0) -> List[str]:
        return self.get_ssm_instance_ids_from_logs(
            self.log_group("inference", endpoint_name), expected_count=expected_count,
            timeout_in_sec=timeout_in_sec)

    def get_training_ssm_instance_ids(self, job_name: str, expected_count: int = 1,
                                      timeout_in_sec: float = 0) -> List[str]:
        return self.get_ssm_instance_ids_from_logs(
            self.log_group("training", job_name), stream_prefix=f"{job_name}/",
            expected_count=expected_count, timeout_in_sec=timeout_in_sec)

    def get_ssm_instance_ids_from_logs(self, log_group: str, stream_prefix: Optional[str] = None,
                                       expected_count: int = 1, timeout_in_sec: float = 0,
                                       lookback: timedelta = timedelta(days=14),
                                       poll_seconds: float = 5.0) -> List[str]:
        """Managed instance IDs registered in ``log_group`` (newest first).

        Re-runs the query until ``expected_count`` IDs are found or ``timeout_in_sec`` passes,
        then returns what it found (possibly fewer, possibly none). A missing log group counts
        as no registration yet.
        """
        logs = aws.client(self.session, "logs", self.region_name)
        deadline = self._clock() + timeout_in_sec
        delay = min(1.0, poll_seconds)
        while True:
            ids = self._query_once(logs, log_group, stream_prefix, lookback, deadline)
            remaining = deadline - self._clock()
            if len(ids) >= expected_count or remaining <= 0:
                if len(ids) < expected_count:
                    logger.info("found %d of %d registration(s) in %s", len(ids),
                                expected_count, log_group)
                return ids
            logger.info("waiting for %d registration(s) in %s, %d found, %.0f s left",
                        expected_count, log_group, len(ids), remaining)
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, poll_seconds)

    def _query_once(self, logs: Any, log_group: str, stream_prefix: Optional[str],
                    lookback: timedelta, deadline: float) -> List[str]:
        now = datetime.now(timezone.utc)
        try:
            query_id = logs.start_query(
                logGroupName=log_group, queryString=_QUERY,
                startTime=int((now - lookback).timestamp()), endTime=int(now.timestamp()) + 60,
            )["queryId"]
        except Exception as e:
            if aws.error_code(e) == "ResourceNotFoundException":
                return []
            raise aws.explain(e, "logs:StartQuery") from e
        return _instance_ids(self._wait_query(logs, query_id, deadline), stream_prefix)

    def _wait_query(self, logs: Any, query_id: str, deadline: float,
                    min_query_seconds: float = 60.0) -> List[Any]:
        """Poll one query; it may outlive ``deadline`` by up to ``min_query_seconds``."""
        query_deadline = max(deadline, self._clock() + min_query_seconds)
        delay = 0.2
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
            remaining = query_deadline - self._clock()
            if remaining <= 0:
                raise TimeoutError(f"CloudWatch Logs Insights query {query_id} still {status} "
                                   f"after {min_query_seconds:.0f} s")
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)


def _instance_ids(results: List[Any], stream_prefix: Optional[str]) -> List[str]:
    """Registered IDs in result order, once each. The filtering is repeated here because
    emulated services may ignore the query's ``filter``."""
    ids: List[str] = []
    for row in results:
        fields = {f.get("field"): f.get("value", "") for f in row}
        if stream_prefix and not str(fields.get("@logStream", "")).startswith(stream_prefix):
            continue
        match = REGISTRATION_RE.search(str(fields.get("@message", "")))
        if match and match.group(1) not in ids:
            ids.append(match.group(1))
    return ids
