"""SDK-independent half of the launch-side wrappers.

It builds the environment contract that the container reads (DESIGN.md section 2) and holds
what every wrapper shares: instance lookups through ``SSMManager``, console URLs through
``SSHLog``, connections through ``SSMProxy`` and job-status polling. The SageMaker SDK itself is
only touched in ``wrapper.py``; here SDK objects are used through their attributes only.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from sagemaker_ssh_helper import aws, fqdn
from sagemaker_ssh_helper.errors import SSHHelperError

if TYPE_CHECKING:  # pragma: no cover
    from sagemaker_ssh_helper.log import SSHLog
    from sagemaker_ssh_helper.manager import SSMManager
    from sagemaker_ssh_helper.proxy import SSMProxy

logger = logging.getLogger(__name__)

DEFAULT_LOOKUP_TIMEOUT = 900


class DefaultSeconds(int):
    """An ``int`` default that ``create()`` can tell apart from the same value passed explicitly.

    ``connection_wait_time_seconds`` left at its default lets ``connection_wait_time`` (a
    timedelta) decide; any value the caller passes, including 0, wins over the timedelta.
    """

    def __repr__(self) -> str:
        return str(int(self))


WAIT_600 = DefaultSeconds(600)
WAIT_0 = DefaultSeconds(0)


def resolve_wait_seconds(seconds: Any, delta: Optional[timedelta]) -> int:
    """The number of seconds the container holds the job for SSH."""
    if delta is not None and not isinstance(delta, timedelta):
        raise ValueError(f"connection_wait_time must be a datetime.timedelta, got {delta!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"connection_wait_time_seconds must be a number, got {seconds!r}")
    if isinstance(seconds, DefaultSeconds) and delta is not None:
        value = int(delta.total_seconds())
    else:
        if delta is not None and int(seconds) != int(delta.total_seconds()):
            logger.warning("connection_wait_time_seconds=%s given: ignoring "
                           "connection_wait_time=%s", int(seconds), delta)
        value = int(seconds)
    if value < 0:
        raise ValueError(f"the connection wait time must be >= 0 seconds, got {value}")
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


def resolve_ssm_role(ssm_iam_role: Optional[str], sdk_role: Any, what: str) -> str:
    """The role name for the SSM activation: ``ssm_iam_role`` or the part of ``sdk_role`` after
    ``role/``. A full ARN is refused for ``ssm_iam_role`` (the container needs the name)."""
    if ssm_iam_role is not None:
        if not isinstance(ssm_iam_role, str) or not ssm_iam_role.strip():
            raise ValueError("ssm_iam_role must be a non-empty IAM role name")
        if ssm_iam_role.startswith("arn:"):
            raise ValueError(
                f"ssm_iam_role takes the role name, not an ARN: pass "
                f"{_role_name_or_arn(ssm_iam_role)!r} instead of {ssm_iam_role!r}")
        return ssm_iam_role
    if not isinstance(sdk_role, str) or not sdk_role:
        raise ValueError(f"the {what} has no IAM role: set its role or pass ssm_iam_role='<name>'")
    try:
        return aws.role_name_from_arn(sdk_role)
    except SSHHelperError as e:
        raise ValueError(f"the {what}'s role is not an IAM role: {e}; "
                         "pass ssm_iam_role='<name>'") from e


def _role_name_or_arn(value: str) -> str:
    try:
        return aws.role_name_from_arn(value)
    except SSHHelperError:
        return "<role name>"


def resolve_owner(local_user_id: Optional[str], boto_session: Any) -> str:
    """The SSHOwner tag value: ``local_user_id`` or the caller's STS UserId (logged masked)."""
    if local_user_id:
        owner = local_user_id
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
    instance_count: Optional[int] = None  # only where a node rank exists (training/processing)

    def environment(self) -> Dict[str, str]:
        env = {
            "START_SSH": "true",
            "SSH_SSM_ROLE": self.ssm_role,
            "SSH_OWNER_TAG": self.owner,
            "SSH_WAIT_TIME_SECONDS": str(self.wait_seconds),
            "SSH_LOG_TO_STDOUT": "true" if self.log_to_stdout else "false",
        }
        if self.instance_count is not None:
            env["SSH_INSTANCE_COUNT"] = str(self.instance_count)
        return env


def merged(existing: Optional[Mapping[str, Any]], env: Mapping[str, str]) -> Dict[str, Any]:
    result = dict(existing or {})
    result.update(env)
    return result


def launch_boto_session(sdk_object: Any) -> Any:
    """The boto3 session of the SDK object, or a default one (the SDK sets its session late)."""
    session = getattr(sdk_object, "sagemaker_session", None)
    return session.boto_session if session is not None else aws.boto_session()


def build_settings(sdk_object: Any, role: Any, what: str, connection_wait_time_seconds: Any,
              connection_wait_time: Optional[timedelta], local_user_id: Optional[str],
              log_to_stdout: bool, ssm_iam_role: Optional[str],
              instance_count: Optional[int] = None) -> SSHSettings:
    """Validate every argument first, then ask STS for the owner (unless given)."""
    wait_seconds = resolve_wait_seconds(connection_wait_time_seconds, connection_wait_time)
    ssm_role = resolve_ssm_role(ssm_iam_role, role, what)
    owner = resolve_owner(local_user_id, launch_boto_session(sdk_object))
    return SSHSettings(wait_seconds=wait_seconds, ssm_role=ssm_role, owner=owner,
                       log_to_stdout=bool(log_to_stdout), instance_count=instance_count)


def describe_existing(describe: Any, name: str, what: str) -> Dict[str, Any]:
    """``describe(name)``, with "no such job" turned into a ValueError that says so."""
    try:
        return dict(describe(name))
    except Exception as e:
        if aws.error_code(e) in ("ValidationException", "ResourceNotFound"):
            raise ValueError(f"no {what} named {name!r} in this region: {e}") from e
        raise


TERMINAL_JOB_STATUSES = ("Completed", "Failed", "Stopped")


def wait_for_status(describe: Callable[[], Mapping[str, Any]], status_key: str,
                    terminal: tuple = TERMINAL_JOB_STATUSES, poll_seconds: float = 30.0,
                    timeout_in_sec: Optional[float] = None,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll ``describe()`` until its ``status_key`` is terminal; return that status."""
    deadline = None if timeout_in_sec is None else clock() + timeout_in_sec
    while True:
        status = str(describe()[status_key])
        if status in terminal:
            return status
        if deadline is not None:
            remaining = deadline - clock()
            if remaining <= 0:
                raise TimeoutError(f"still {status} after {timeout_in_sec} s")
            sleep(min(poll_seconds, remaining))
        else:
            sleep(poll_seconds)


class SSHWrapperBase:
    """What every wrapper shares. Subclasses set ``kind`` (an ``fqdn`` kind) and implement
    ``resource_name()`` and ``_lookup()``."""

    kind = "training"
    ssh_user = "root"  # who start_ssm_connection() logs in as

    def __init__(self, sdk_object: Any = None, sagemaker_session: Any = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        self._sdk_object = sdk_object
        self._sagemaker_session = sagemaker_session
        self.env: Dict[str, str] = dict(env or {})

    # -- sessions ---------------------------------------------------------------------------
    @property
    def sagemaker_session(self) -> Any:
        """The session given to attach(), else the SDK object's (set by the SDK at fit/run/
        deploy time), else a default session."""
        if self._sagemaker_session is not None:
            return self._sagemaker_session
        session = getattr(self._sdk_object, "sagemaker_session", None)
        if session is not None:
            return session
        self._sagemaker_session = self._default_session()
        return self._sagemaker_session

    def _default_session(self) -> Any:
        raise NotImplementedError

    @property
    def boto_session(self) -> Any:
        return self.sagemaker_session.boto_session

    @property
    def region(self) -> str:
        return aws.session_region(self.boto_session)

    def resource_name(self) -> str:
        raise NotImplementedError

    def fqdn(self) -> str:
        return fqdn.format_fqdn(self.kind, self.resource_name())

    def ssm_manager(self) -> SSMManager:
        from sagemaker_ssh_helper.manager import SSMManager

        return SSMManager(region_name=self.region, session=self.boto_session)

    def ssh_log(self) -> SSHLog:
        from sagemaker_ssh_helper.log import SSHLog

        return SSHLog(region_name=self.region, session=self.boto_session)

    # -- instances --------------------------------------------------------------------------
    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: int) -> List[str]:
        raise NotImplementedError

    def get_instance_ids(self, timeout_in_sec: int = DEFAULT_LOOKUP_TIMEOUT) -> List[str]:
        """SSM managed instance IDs (``mi-…``) of this resource, newest first."""
        return list(self._lookup(self.ssm_manager(), self.resource_name(), timeout_in_sec))

    def get_instance_id(self, index: int = 0,
                        timeout_in_sec: int = DEFAULT_LOOKUP_TIMEOUT) -> str:
        ids = self.get_instance_ids(timeout_in_sec=timeout_in_sec)
        if not ids:
            raise ValueError(f"no SSM instance registered for {self.fqdn()} yet: check the logs "
                             f"at {self.get_cloudwatch_url()}")
        if not 0 <= index < len(ids):
            raise ValueError(f"instance index {index} out of range: {self.fqdn()} has "
                             f"{len(ids)} instance(s)")
        return ids[index]

    def ssh_info(self, instance_ids: Optional[List[str]] = None) -> str:
        """How to connect: ``sm-ssh connect <fqdn>`` first, then each instance by its id."""
        ids = self.get_instance_ids() if instance_ids is None else instance_ids
        lines = [f"Connect with: sm-ssh connect {self.fqdn()}",
                 f"  instances: {', '.join(ids) if ids else '(none registered yet)'}"]
        lines += [f"  by id:     sm-local-start-ssh {i}" for i in ids]
        return "\n".join(lines)

    def print_ssh_info(self, timeout_in_sec: int = DEFAULT_LOOKUP_TIMEOUT) -> str:
        """Print how to connect (and return the same text)."""
        text = self.ssh_info(self.get_instance_ids(timeout_in_sec=timeout_in_sec))
        print(text, flush=True)
        return text

    # -- connections ------------------------------------------------------------------------
    def start_ssm_connection(self, ssh_listen_port: int,
                             timeout_in_sec: int = DEFAULT_LOOKUP_TIMEOUT,
                             extra_args: str = "", index: int = 0) -> SSMProxy:
        """Open an SSH tunnel to instance ``index`` on localhost:``ssh_listen_port``."""
        from sagemaker_ssh_helper.proxy import SSMProxy

        instance_id = self.get_instance_id(index, timeout_in_sec=timeout_in_sec)
        proxy = SSMProxy(ssh_listen_port, extra_args, region_name=self.region,
                         session=self.boto_session, user=self.ssh_user)
        proxy.connect_to_ssm_instance(instance_id)
        return proxy

    def start_ssm_connection_and_continue(self, ssh_listen_port: int,
                                          timeout_in_sec: int = DEFAULT_LOOKUP_TIMEOUT,
                                          extra_args: str = "", index: int = 0) -> SSMProxy:
        """Connect, then release the container's wait loop (``sm-wait stop``) so the job goes
        on. The tunnel stays open; call ``disconnect()`` on the returned proxy when done."""
        proxy = self.start_ssm_connection(ssh_listen_port, timeout_in_sec, extra_args, index)
        proxy.terminate_waiting_loop()
        return proxy

    # -- console ----------------------------------------------------------------------------
    def get_cloudwatch_url(self) -> str:
        return self.ssh_log().get_cloudwatch_url(self.kind, self.resource_name())

    def get_metadata_url(self) -> str:
        return self.ssh_log().get_console_url(self.kind, self.resource_name())


class SSHJobWrapperBase(SSHWrapperBase):
    """A wrapper around a job (training, processing, transform) with status helpers."""

    status_key = "TrainingJobStatus"

    def describe(self) -> Dict[str, Any]:
        raise NotImplementedError

    def is_job_in_progress(self) -> bool:
        return self.describe()[self.status_key] == "InProgress"

    def wait_with_status(self, poll_seconds: float = 30.0,
                         timeout_in_sec: Optional[float] = None) -> str:
        """Wait until the job ends; return Completed, Failed or Stopped (never raises on them)."""
        return wait_for_status(self.describe, self.status_key, poll_seconds=poll_seconds,
                               timeout_in_sec=timeout_in_sec)
