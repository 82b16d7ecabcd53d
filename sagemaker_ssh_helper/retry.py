"""Retrying and polling, written once: the product's backoff, deadlines and retryable errors.

Two shapes cover every wait in the product:

* :func:`call` retries one AWS call that failed with a retryable error (throttling, a transient
  server error: :data:`RETRY_CODES`) with equal-jitter exponential backoff
  (:func:`backoff_delay`: between half and all of ``base * 2**attempt``, capped), at most
  :data:`MAX_ATTEMPTS` times. Their clients make each call once (``aws.no_retry_config()``), so
  botocore's retries and ours do not multiply.
* :class:`Poll` re-checks something against a monotonic deadline (:class:`Deadline`), sleeping a
  growing, capped (optionally jittered) delay between checks, never past the deadline.

Clock, sleep and random source are injectable everywhere, so tests run with a fake clock in no time.
"""
from __future__ import annotations

import random
import re
import time
from typing import Callable, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]
Rand = Callable[[], float]

THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException",
                              "RequestLimitExceeded"})
TRANSIENT_CODES = frozenset({"InternalServerError", "ServiceUnavailable"})
RETRY_CODES = THROTTLING_CODES | TRANSIENT_CODES
# Throttling as a tool (e.g. ``amazon-ssm-agent -register``) prints it: the API's code or message.
THROTTLED_TEXT_RE = re.compile(r"ThrottlingException|Rate exceeded|TooManyRequestsException|"
                               r"RequestLimitExceeded")
MAX_ATTEMPTS = 8
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def is_retryable(e: BaseException) -> bool:
    """An AWS error worth retrying after a pause (throttling or a transient server error)."""
    from sagemaker_ssh_helper.aws import error_code

    return error_code(e) in RETRY_CODES


def is_throttled_text(text: str) -> bool:
    """A tool's output reports throttling."""
    return bool(THROTTLED_TEXT_RE.search(text))


def backoff_delay(attempt: int, rand: Rand = random.random, base: float = BACKOFF_BASE,
                  cap: float = BACKOFF_CAP) -> float:
    """Equal-jitter exponential backoff: between half and all of ``base * 2**attempt`` (capped)."""
    ceiling = min(cap, base * 2.0 ** attempt)
    return ceiling / 2 + rand() * ceiling / 2


def call(fn: Callable[[], T], *, retryable: Callable[[Exception], bool] = is_retryable,
         max_attempts: int = MAX_ATTEMPTS, sleep: Sleep = time.sleep, rand: Rand = random.random,
         on_retry: Callable[[Exception, int, float], None] | None = None) -> T:
    """Return ``fn()``, retrying it with :func:`backoff_delay` while it raises a ``retryable``
    exception, at most ``max_attempts`` calls in all; the last (or a non-retryable) exception
    propagates. ``on_retry(error, attempt, delay)`` is told before each pause (attempt from 0)."""
    for attempt in range(max_attempts):
        try:
            return fn()
        except Exception as e:
            if not retryable(e) or attempt == max_attempts - 1:
                raise
            delay = backoff_delay(attempt, rand)
            if on_retry is not None:
                on_retry(e, attempt, delay)
            sleep(delay)
    raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")


class Deadline:
    """A point ``seconds`` from now on a monotonic ``clock``."""

    def __init__(self, seconds: float, clock: Clock | None = None) -> None:
        self.clock = clock  # None: time.monotonic, looked up at each reading
        self.seconds = seconds
        self.at = self.now() + seconds

    def now(self) -> float:
        return (self.clock or time.monotonic)()

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.now()

    def expired(self) -> bool:
        """The deadline is reached or passed."""
        return self.remaining() <= 0

    def passed(self) -> bool:
        """The deadline is strictly passed."""
        return self.remaining() < 0


class Poll(Deadline):
    """A deadline and the pauses between the checks made before it.

    ``wait()`` sleeps the current delay (times a jitter factor drawn uniformly from
    ``[1 - jitter, 1 + jitter]``, at most ``cap``; clipped to the time left unless ``clip`` is
    false), then grows
    the delay by ``factor`` up to ``cap``. The loop around it decides what "done" is::

        poll = Poll(timeout, first=0.2, cap=2.0)
        while not done():
            if poll.expired():
                raise TimeoutError(...)
            poll.wait()
    """

    def __init__(self, seconds: float, *, first: float, cap: float, factor: float = 1.5,
                 jitter: float = 0.0, clip: bool = True, clock: Clock | None = None,
                 sleep: Sleep | None = None, rand: Rand = random.random) -> None:
        super().__init__(seconds, clock)
        self.delay = first
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.clip = clip
        self.sleep = sleep  # None: time.sleep, looked up at each pause
        self.rand = rand

    def next_delay(self) -> float:
        """The pause ``wait()`` would take now (jittered and clipped), without taking it."""
        delay = self.delay
        if self.jitter:
            low, high = 1 - self.jitter, 1 + self.jitter
            delay *= low + (high - low) * self.rand()
        delay = min(delay, self.cap)
        if self.clip:
            delay = max(0.0, min(delay, self.remaining()))
        return delay

    def wait(self) -> None:
        """Sleep one pause and grow the next one."""
        (self.sleep or time.sleep)(self.next_delay())
        self.delay = min(self.delay * self.factor, self.cap)
