"""The core retry/poll module: backoff, retryable errors, deadlines and polls, on a fake clock."""
from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from sagemaker_ssh_helper import aws, retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "SomeOperation")


def test_backoff_is_equal_jitter_exponential_and_capped() -> None:
    assert [retry.backoff_delay(a, lambda: 0.0) for a in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert [retry.backoff_delay(a, lambda: 1.0) for a in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry.backoff_delay(20, lambda: 1.0) == retry.BACKOFF_CAP
    assert retry.backoff_delay(20, lambda: 0.0) == retry.BACKOFF_CAP / 2


def test_retryable_codes_are_throttling_and_transient_errors_only() -> None:
    for code in ("ThrottlingException", "Throttling", "TooManyRequestsException",
                 "RequestLimitExceeded", "InternalServerError", "ServiceUnavailable"):
        assert retry.is_retryable(client_error(code)), code
    for code in ("AccessDeniedException", "ValidationException", "InvalidInstanceId"):
        assert not retry.is_retryable(client_error(code)), code
    assert not retry.is_retryable(ValueError("Rate exceeded"))
    assert retry.is_throttled_text("error: ThrottlingException: Rate exceeded")
    assert not retry.is_throttled_text("error: AccessDenied")


def test_call_retries_throttling_then_returns() -> None:
    clock, seen = FakeClock(), []
    results = iter([client_error("ThrottlingException"), client_error("ServiceUnavailable"), "ok"])

    def fn() -> str:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    assert retry.call(fn, sleep=clock.sleep, rand=lambda: 1.0,
                      on_retry=lambda e, attempt, delay: seen.append((attempt, delay))) == "ok"
    assert clock.sleeps == [1.0, 2.0]
    assert seen == [(0, 1.0), (1, 2.0)]


def test_call_gives_up_after_max_attempts_and_on_other_errors() -> None:
    clock, calls = FakeClock(), []

    def throttled() -> None:
        calls.append(1)
        raise client_error("Throttling")

    with pytest.raises(ClientError):
        retry.call(throttled, max_attempts=3, sleep=clock.sleep, rand=lambda: 0.0)
    assert len(calls) == 3 and clock.sleeps == [0.5, 1.0]

    def denied() -> None:
        calls.append(1)
        raise client_error("AccessDeniedException")

    calls.clear()
    with pytest.raises(ClientError):
        retry.call(denied, sleep=clock.sleep)
    assert len(calls) == 1


def test_no_retry_config_makes_one_attempt() -> None:
    config = aws.no_retry_config()
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert config.connect_timeout == 60 and config.read_timeout == 60  # botocore's defaults
    assert aws.client_config().connect_timeout == aws.CONNECT_TIMEOUT


def test_deadline_expires_at_the_deadline_and_passes_after_it() -> None:
    clock = FakeClock()
    deadline = retry.Deadline(2.0, clock)
    assert deadline.remaining() == 2.0 and not deadline.expired()
    clock.now += 2.0
    assert deadline.expired() and not deadline.passed()
    clock.now += 0.1
    assert deadline.passed()


def test_poll_grows_its_delay_up_to_the_cap_and_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock()
    poll = retry.Poll(3.0, first=0.5, cap=1.0, factor=2.0, clock=clock, sleep=clock.sleep)
    checks = 0
    while True:
        checks += 1
        if poll.expired():
            break
        poll.wait()
    assert clock.sleeps == [0.5, 1.0, 1.0, 0.5]
    assert checks == 5 and clock.now == 103.0


def test_poll_unclipped_and_jittered() -> None:
    clock = FakeClock()
    poll = retry.Poll(1.0, first=2.0, cap=10.0, clip=False, clock=clock, sleep=clock.sleep)
    poll.wait()
    assert clock.sleeps == [2.0] and poll.delay == 3.0
    jittered = retry.Poll(100.0, first=4.0, cap=4.5, jitter=0.2, clock=clock,
                          sleep=clock.sleep, rand=lambda: 1.0)
    assert jittered.next_delay() == 4.5  # 4.8 capped
    jittered.rand = lambda: 0.0
    assert jittered.next_delay() == pytest.approx(3.2)
