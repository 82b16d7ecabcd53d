"""The environment contract the launch-side wrappers inject, and the checks on its inputs.

Every value a user passes to a wrapper (wait times, role names, owner IDs) is checked here
before anything is sent to AWS, and a bad one is a one-line ``ValueError`` that says what to
pass instead. No SageMaker SDK import: SDK objects are used through their attributes only.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from sagemaker_ssh_helper import aws, retry
from sagemaker_ssh_helper.errors import SSHHelperError

logger = logging.getLogger(__name__)

DEFAULT_LOOKUP_TIMEOUT = 900


# The longest a SageMaker job may run (28 days): a longer hold cannot be meant.
MAX_WAIT_SECONDS = 28 * 24 * 3600
# IAM role names (with an optional path such as service-role/) and SSM tag values.
_ROLE_NAME = re.compile(r"^(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}$")
_TAG_VALUE = re.compile(r"^[\w.:/=+@ -]{1,256}$")


class DefaultSeconds(int):
    """An ``int`` default that ``create()`` can tell apart from the same value passed explicitly.

    ``connection_wait_time_seconds`` left at its default lets ``connection_wait_time`` (a
    timedelta) decide; any value the caller passes, including 0, wins over the timedelta.
    """

    def __repr__(self) -> str:
        return str(int(self))


class DefaultDelta(timedelta):
    """A ``timedelta`` default that can be told apart from the same value passed explicitly."""

    def __repr__(self) -> str:
        return f"timedelta(seconds={int(self.total_seconds())})"


WAIT_600 = DefaultSeconds(600)
WAIT_0 = DefaultSeconds(0)
WAIT_10_MINUTES = DefaultDelta(minutes=10)


def check_seconds(name: str, value: Any, maximum: float = MAX_WAIT_SECONDS) -> float:
    """A finite number of seconds in [0, maximum], else a one-line ValueError."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be between 0 and {maximum:.0f} seconds, got {value!r}")
    return float(value)


def resolve_wait_seconds(seconds: Any, delta: timedelta | None) -> int:
    """The number of seconds the container holds the job for SSH.

    ``connection_wait_time_seconds`` wins when given; ``connection_wait_time`` (a timedelta)
    counts when the seconds were left at their default.
    """
    if delta is not None and not isinstance(delta, timedelta):
        raise ValueError(f"connection_wait_time must be a datetime.timedelta, got {delta!r}")
    check_seconds("connection_wait_time_seconds", seconds)
    if delta is not None:
        check_seconds("connection_wait_time", delta)
    explicit_delta = delta is not None and not isinstance(delta, DefaultDelta)
    if isinstance(seconds, DefaultSeconds) and explicit_delta:
        assert delta is not None
        return int(delta.total_seconds())
    if explicit_delta and delta is not None and int(seconds) != int(delta.total_seconds()):
        logger.warning("connection_wait_time_seconds=%s given: ignoring "
                       "connection_wait_time=%s", int(seconds), delta)
    return int(seconds)


def check_keep_alive(value: Any) -> int:
    """``keep_alive_on_failure_seconds``: whole seconds in [0, 28 days] (a timedelta too)."""
    seconds = check_seconds("keep_alive_on_failure_seconds", value)
    if seconds != int(seconds):
        raise ValueError(f"keep_alive_on_failure_seconds must be whole seconds, got {value!r}")
    return int(seconds)


def check_role_name(value: Any, what: str = "ssm_iam_role") -> str:
    """An IAM role name, optionally with its path (``service-role/Name``); not an ARN."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty IAM role name, got {value!r}")
    if value.startswith("arn:"):
        raise ValueError(f"{what} takes the role name, not an ARN: pass "
                         f"{_role_name_or_arn(value)!r} instead of {value!r}")
    if not _ROLE_NAME.match(value) or len(value) > 512:
        raise ValueError(f"{what} {value!r} is not an IAM role name (letters, digits and "
                         "+=,.@_- only, with an optional path such as service-role/)")
    return value


def check_owner(value: Any) -> str:
    """A value for the SSHOwner tag (``local_user_id``): one line of tag-safe characters."""
    if not isinstance(value, str) or not _TAG_VALUE.match(value) or value != value.strip():
        raise ValueError(f"local_user_id must be up to 256 letters, digits, spaces or "
                         f"_.:/=+-@ (an AWS user ID such as AIDA…), got {value!r}")
    return value


def resolve_ssh_instance_count(requested: Any, instance_count: Any, heterogeneous: bool) -> int:
    """How many nodes (rank < count) start SSH: clipped to the cluster, 1 for heterogeneous ones."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"ssh_instance_count must be an integer >= 1, got {requested!r}")
    if heterogeneous:
        if requested != 1:
            logger.warning("heterogeneous cluster (instance_groups): SSH starts on one node only, "
                           "not %d", requested)
        return 1
    if isinstance(instance_count, int) and not isinstance(instance_count, bool) \
            and 0 < instance_count < requested:
        logger.info("ssh_instance_count=%d clipped to the instance count %d",
                    requested, instance_count)
        return instance_count
    return requested


def resolve_ssm_role(ssm_iam_role: str | None, sdk_role: Any, what: str) -> str:
    """The role name for the SSM activation: ``ssm_iam_role`` or the part of ``sdk_role`` after
    ``role/``. A full ARN is refused for ``ssm_iam_role`` (the container needs the name)."""
    if ssm_iam_role is not None and ssm_iam_role != "":
        return check_role_name(ssm_iam_role)
    if not isinstance(sdk_role, str) or not sdk_role:
        raise ValueError(f"the {what} has no IAM role: set its role or pass ssm_iam_role='<name>'")
    try:
        return check_role_name(aws.role_name_from_arn(sdk_role), f"the {what}'s role")
    except SSHHelperError as e:
        raise ValueError(f"the {what}'s role is not an IAM role: {e}; "
                         "pass ssm_iam_role='<name>'") from e


def _role_name_or_arn(value: str) -> str:
    try:
        return aws.role_name_from_arn(value)
    except SSHHelperError:
        return "<role name>"


def resolve_owner(local_user_id: str | None, boto_session: Any) -> str:
    """The SSHOwner tag value: ``local_user_id`` or the caller's STS UserId (logged masked)."""
    if local_user_id:
        owner = check_owner(local_user_id)
    else:
        owner = aws.caller_user_id(boto_session)
    logger.info("SSH owner tag: %s", aws.mask(owner))
    return owner


@dataclass(frozen=True)
class SSHSettings:
    """The environment contract a wrapper injects into the SDK object."""

    wait_seconds: int
    ssm_role: str
    owner: str
    log_to_stdout: bool = False
    instance_count: int | None = None  # only where a node rank exists (training/processing)
    start_ssh: bool = True  # bootstrap_on_start: setup_and_start_ssh() starts SSH
    keep_alive_on_failure_seconds: int = 0  # post-mortem hold of a crashed script (postmortem)
    transport: str = "hybrid"  # "native": SageMaker's remote debugging carries the sessions
    keys_path: str = ""  # native: the S3 prefix of the keys (SSH_AUTHORIZED_KEYS_PATH)
    keys_bucket_owner: str = ""  # native: the account owning its bucket (ExpectedBucketOwner)

    def environment(self) -> dict[str, str]:
        env = {
            "START_SSH": "true" if self.start_ssh else "false",
            "SSH_SSM_ROLE": self.ssm_role,
            "SSH_OWNER_TAG": self.owner,
            "SSH_WAIT_TIME_SECONDS": str(self.wait_seconds),
            "SSH_LOG_TO_STDOUT": "true" if self.log_to_stdout else "false",
        }
        if self.instance_count is not None:
            env["SSH_INSTANCE_COUNT"] = str(self.instance_count)
        if self.keep_alive_on_failure_seconds:
            env["SSH_KEEP_ALIVE_ON_FAILURE_SECONDS"] = str(self.keep_alive_on_failure_seconds)
        if self.transport == "native":  # absent means hybrid, as for SSH Helper v2's jobs
            env["SSH_TRANSPORT"] = "native"
            env["SSH_AUTHORIZED_KEYS_PATH"] = self.keys_path
            if self.keys_bucket_owner:
                env["SSH_AUTHORIZED_KEYS_BUCKET_OWNER"] = self.keys_bucket_owner
        return env


def merged(existing: Mapping[str, Any] | None, env: Mapping[str, str]) -> dict[str, Any]:
    result = dict(existing or {})
    result.update(env)
    return result


def launch_boto_session(sdk_object: Any) -> Any:
    """The boto3 session of the SDK object, or a default one (the SDK sets its session late)."""
    session = getattr(sdk_object, "sagemaker_session", None)
    return session.boto_session if session is not None else aws.boto_session()


def build_settings(sdk_object: Any, role: Any, what: str, connection_wait_time_seconds: Any,
                   connection_wait_time: timedelta | None, local_user_id: str | None,
                   log_to_stdout: bool, ssm_iam_role: str | None,
                   instance_count: int | None = None,
                   bootstrap_on_start: bool = True,
                   keep_alive_on_failure_seconds: Any = 0,
                   transport: str = "hybrid") -> SSHSettings:
    """Validate every argument first, then ask STS for the owner (unless given).
    ``transport`` is ``hybrid`` or ``native`` (``auto`` is resolved by the wrapper)."""
    wait_seconds = resolve_wait_seconds(connection_wait_time_seconds, connection_wait_time)
    keep_alive = check_keep_alive(keep_alive_on_failure_seconds)
    ssm_role = resolve_ssm_role(ssm_iam_role, role, what)
    if local_user_id:
        check_owner(local_user_id)
    session = launch_boto_session(sdk_object)
    keys_path, bucket_owner = native_keys_location(session) if transport == "native" \
        else ("", "")
    owner = resolve_owner(local_user_id, session)
    return SSHSettings(wait_seconds=wait_seconds, ssm_role=ssm_role, owner=owner,
                       log_to_stdout=bool(log_to_stdout), instance_count=instance_count,
                       start_ssh=bool(bootstrap_on_start),
                       keep_alive_on_failure_seconds=keep_alive, transport=transport,
                       keys_path=keys_path, keys_bucket_owner=bucket_owner)


def native_keys_location(boto_session: Any) -> tuple[str, str]:
    """(key folder, account that must own its bucket). The folder: ``SSH_NATIVE_KEYS_PATH`` of
    the launching environment, else our folder in the SageMaker default bucket
    (``s3://sagemaker-<region>-<account>/ssh-native-keys/``). Not ``SSH_AUTHORIZED_KEYS_PATH``:
    that is the hybrid transport's copy of the keys, where every user may write; the native one
    is written per owner only. The owner: the launching account, which owns its default bucket
    and, unless ``SSH_NATIVE_KEYS_BUCKET_OWNER`` names another account (a central bucket),
    the bucket ``SSH_NATIVE_KEYS_PATH`` names."""
    import os

    from sagemaker_ssh_helper import transport

    given = os.environ.get(transport.LAUNCH_KEYS_PATH_ENV, "")
    owner = os.environ.get(transport.LAUNCH_BUCKET_OWNER_ENV, "").strip()
    if owner and not transport.is_account(owner):
        raise ValueError(f"{transport.LAUNCH_BUCKET_OWNER_ENV} must be a 12-digit AWS account "
                         f"ID, got {owner!r}")
    if given:
        try:
            transport.split_s3(given)
        except ValueError:
            raise ValueError(f"{transport.LAUNCH_KEYS_PATH_ENV} must be an s3://bucket/prefix/ "
                             f"URL, got {given!r}") from None
    try:
        account = str(aws.sts_client(boto_session).get_caller_identity()["Account"])
    except Exception as e:
        raise aws.explain(e, "sts:GetCallerIdentity") from e
    if given:
        return (given if given.endswith("/") else given + "/"), owner or account
    return transport.default_keys_path(aws.session_region(boto_session), account), account


def resolve_transport(requested: Any, unsupported: str | None) -> str:
    """``hybrid`` or ``native`` for ``requested``: ``auto`` is native unless ``unsupported``
    says why remote debugging cannot serve the job; ``native`` then is a ValueError."""
    from sagemaker_ssh_helper import transport

    chosen = transport.check_transport(requested)
    if chosen == transport.AUTO:
        chosen = transport.HYBRID if unsupported else transport.NATIVE
        logger.info("transport='auto': %s%s", chosen,
                    f" ({unsupported})" if unsupported else "")
    elif chosen == transport.NATIVE and unsupported:
        raise ValueError(f"transport='native' is not possible: {unsupported}; use "
                         "transport='hybrid'")
    return chosen


def describe_existing(describe: Any, name: str, what: str) -> dict[str, Any]:
    """``describe(name)``, with "no such job" turned into a ValueError that says so."""
    try:
        return dict(describe(name))
    except Exception as e:
        if aws.error_code(e) in ("ValidationException", "ResourceNotFound"):
            raise ValueError(f"no {what} named {name!r} in this region: "
                             f"{' '.join(str(e).split())}") from e
        raise


TERMINAL_JOB_STATUSES = ("Completed", "Failed", "Stopped")


def wait_for_status(describe: Callable[[], Mapping[str, Any]], status_key: str,
                    terminal: tuple[str, ...] = TERMINAL_JOB_STATUSES, poll_seconds: float = 30.0,
                    timeout_in_sec: float | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll ``describe()`` until its ``status_key`` is terminal; return that status."""
    poll = retry.Poll(math.inf if timeout_in_sec is None else timeout_in_sec,
                      first=poll_seconds, cap=poll_seconds, factor=1.0, clock=clock, sleep=sleep)
    while True:
        status = str(describe()[status_key])
        if status in terminal:
            return status
        if poll.expired():
            raise TimeoutError(f"still {status} after {timeout_in_sec} s")
        poll.wait()


