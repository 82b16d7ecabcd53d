"""``SSMManagerBase``: what ``SSMManager`` (SSM tags) and ``SSHLog`` (CloudWatch logs) share.

Both answer "which managed instances (``mi-…``) did this resource register?" with one lookup
(``get_instance_ids_once``) that ``get_instance_ids`` repeats against a monotonic deadline.
The constructor keeps the knobs of SSH Helper v2, mapped onto that deadline logic:

* ``sleep_between_retries_in_seconds`` caps the interval between lookups (the interval starts
  small and grows with jitter, so an instance that is already registered is found at once);
* ``redo_attempts=0`` returns as soon as one instance is found, instead of waiting until
  ``expected_count`` instances are there or the deadline passes. Other values wait for all of
  them: the deadline bounds the wait, the number of re-fetches no longer does.

Clock, sleep and the progress callback are injectable so tests drive the waiting without time.
"""
from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, TypeVar

from sagemaker_ssh_helper import aws, cli, retry

logger = logging.getLogger(__name__)

T = TypeVar("T")


stderr_progress = cli.progress  # the default progress callback: one line on stderr


def _seconds(name: str, value: Any, minimum: float = 0.0) -> float:
    """A finite number of seconds >= ``minimum`` (one-line ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            math.isnan(value) or math.isinf(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number of seconds >= {minimum:g}, "
                         f"got {value!r}")
    return float(value)


class SSMManagerBase(ABC):
    """Deadline-driven repetition of one instance lookup, with the v2 constructor."""

    def __init__(self, region_name: str | None = None,
                 sleep_between_retries_in_seconds: float = 10,
                 redo_attempts: int = 5, session: Any = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 progress: Callable[[str], None] | None = stderr_progress,
                 poll_interval: float = 1.0) -> None:
        self.sleep_between_retries_in_seconds = _seconds(
            "sleep_between_retries_in_seconds", sleep_between_retries_in_seconds, 0.01)
        if isinstance(redo_attempts, bool) or not isinstance(redo_attempts, int) \
                or redo_attempts < 0:
            raise ValueError(f"redo_attempts must be an integer >= 0, got {redo_attempts!r}")
        self.redo_attempts = redo_attempts
        self.session = session if session is not None else aws.boto_session(region=region_name)
        self.region_name = region_name or aws.session_region(self.session)
        self.poll_interval = min(_seconds("poll_interval", poll_interval, 0.01),
                                 self.sleep_between_retries_in_seconds)
        self._clock = clock
        self._sleep = sleep
        self._progress = progress

    @property
    def max_poll_interval(self) -> float:
        return self.sleep_between_retries_in_seconds

    def wanted_count(self, expected_count: int) -> int:
        """How many instances a lookup waits for (see ``redo_attempts``)."""
        return expected_count if self.redo_attempts > 0 else min(1, expected_count)

    def poll(self, fetch: Callable[[], T], count: Callable[[T], int], wanted: int,
             timeout_in_sec: float, describe: Callable[[int, float], str]) -> T:
        """Call ``fetch()`` until ``count(result) >= wanted`` or ``timeout_in_sec`` passed;
        return the last result. ``describe(found, seconds_left)`` is the progress line."""
        timeout = _seconds("timeout_in_sec", timeout_in_sec) if timeout_in_sec else 0.0
        poll = retry.Poll(timeout, first=self.poll_interval, cap=self.max_poll_interval,
                          jitter=0.2, clock=self._clock, sleep=self._sleep)
        while True:
            result = fetch()
            found = count(result)
            left = poll.remaining()
            if found >= wanted or left <= 0:
                return result
            if self._progress:
                self._progress(describe(found, left))
            poll.wait()

    def get_instance_ids(self, arn_resource_type: str, arn_resource_name: str,
                         timeout_in_sec: float = 0, expected_count: int = 1,
                         arn_filter_regex: str | None = None,
                         not_earlier_than_timestamp: int = 0) -> list[str]:
        """Repeat ``get_instance_ids_once`` until ``expected_count`` IDs are found or
        ``timeout_in_sec`` passed; return what was found last (newest first)."""
        if str(arn_resource_name).startswith("mi-"):
            logger.warning("%r looks like a managed instance ID, not a resource name",
                           arn_resource_name)

        def describe(found: int, left: float) -> str:
            return (f"waiting for {expected_count} instance(s) of {arn_resource_type} "
                    f"{arn_resource_name}, {found} found, {max(0, round(left))} s left")

        return self.poll(
            lambda: self.get_instance_ids_once(arn_resource_type, arn_resource_name,
                                               arn_filter_regex, not_earlier_than_timestamp),
            len, self.wanted_count(expected_count), timeout_in_sec, describe)

    @abstractmethod
    def get_instance_ids_once(self, arn_resource_type: str, arn_resource_name: str,
                              arn_filter_regex: str | None = None,
                              not_earlier_than_timestamp: int = 0) -> list[str]:
        """One lookup, no waiting: the instance IDs found now, newest first."""
