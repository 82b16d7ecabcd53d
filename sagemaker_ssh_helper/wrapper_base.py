"""``SSHEnvironmentWrapper``: what every launch-side wrapper shares.

The constructor and methods are those of SSH Helper v2 (``ssm_iam_role, bootstrap_on_start,
connection_wait_time_seconds, sagemaker_session, local_user_id, log_to_stdout``;
``get_instance_ids(retry, timeout_in_sec)``, ``start_ssm_connection(port, retry, timeout,
timeout_in_sec, extra_args)``, ...), on top of this package's parts: instance lookups through
``SSMManager`` (tag-filtered, deadline-based), console URLs through ``SSHLog``, tunnels through
``SSMProxy``. Constructing a wrapper sends nothing; ``_augment()`` (called by each
``create()``) validates the settings, asks STS for the owner and injects the environment
(:mod:`sagemaker_ssh_helper.wrapper_settings`) into the SDK object.

Before waiting for instances, a wrapper checks its resource once: a job that does not exist or
has ended fails in seconds with a one-line ``WrapperStateError`` (a ``ValueError``) instead of
waiting out the timeout.

The SageMaker SDK is imported only here and in ``wrapper.py``, and here only when a default
``sagemaker.Session()`` is needed.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_helper import aws, code_shipping, fqdn, resources
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError
from sagemaker_ssh_helper.log import SSHLog
from sagemaker_ssh_helper.manager import SSMManager
from sagemaker_ssh_helper.proxy import SSMProxy
from sagemaker_ssh_helper.wrapper_settings import (  # noqa: F401 - re-exported names
    DEFAULT_LOOKUP_TIMEOUT,
    TERMINAL_JOB_STATUSES,
    WAIT_0,
    WAIT_10_MINUTES,
    WAIT_600,
    DefaultDelta,
    DefaultSeconds,
    SSHSettings,
    build_settings,
    check_keep_alive,
    check_owner,
    check_role_name,
    check_seconds,
    describe_existing,
    launch_boto_session,
    merged,
    resolve_ssh_instance_count,
    resolve_ssm_role,
    resolve_wait_seconds,
    wait_for_status,
)

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
LOOKUP_900 = DefaultSeconds(DEFAULT_LOOKUP_TIMEOUT)
TIMEOUT_15_MINUTES = DefaultDelta(minutes=15)
SECONDS_PER_RETRY = 10  # what one deprecated ``retry`` stood for in SSH Helper v2
FINISHED = ("Completed", "Failed", "Stopped", "Stopping", "Deleting", "Deleted", "OutOfService")


class WrapperStateError(ResolutionError, ValueError):
    """The wrapper's resource does not exist or has ended: nothing to wait for."""


class SSHEnvironmentWrapper:
    """Base of every wrapper. Subclasses set ``kind`` (an ``fqdn`` kind) and implement
    ``resource_name()``, ``_lookup()`` and, if they create resources, ``_inject()``."""

    kind = "training"
    ssh_user = "root"  # who start_ssm_connection() logs in as

    def __init__(self, ssm_iam_role: str, bootstrap_on_start: bool = True,
                 connection_wait_time_seconds: int = 600, sagemaker_session: Any = None,
                 local_user_id: str | None = None, log_to_stdout: bool = False) -> None:
        self.ssm_iam_role = check_role_name(ssm_iam_role) if ssm_iam_role else ""
        self.bootstrap_on_start = bool(bootstrap_on_start)
        check_seconds("connection_wait_time_seconds", connection_wait_time_seconds)
        self.connection_wait_time_seconds = connection_wait_time_seconds
        self.local_user_id = check_owner(local_user_id) if local_user_id else None
        self.log_to_stdout = bool(log_to_stdout)
        self._sagemaker_session = sagemaker_session
        self._sdk_object: Any = None
        self.env: dict[str, str] = {}
        self.augmented = False

    # -- sessions and names -----------------------------------------------------------------
    @property
    def sagemaker_session(self) -> Any:
        """The session given, else the SDK object's (the SDK sets it at fit/run/deploy time),
        else a default ``sagemaker.Session()``."""
        if self._sagemaker_session is not None:
            return self._sagemaker_session
        session = getattr(self._sdk_object, "sagemaker_session", None)
        if session is not None:
            return session
        import sagemaker

        self._sagemaker_session = sagemaker.Session()
        return self._sagemaker_session

    @sagemaker_session.setter
    def sagemaker_session(self, value: Any) -> None:
        self._sagemaker_session = value

    @property
    def boto_session(self) -> Any:
        return self.sagemaker_session.boto_session

    def region(self) -> str:
        """The AWS region of the wrapper's session."""
        return aws.session_region(self.boto_session)

    @classmethod
    def dependency_dir(cls) -> str:
        """A folder named ``sagemaker_ssh_helper`` holding what containers use of the package
        (not its launch side, laptop commands or CDK code), for ``dependencies=[...]`` of
        framework estimators, processors and models (see :mod:`.code_shipping`)."""
        return code_shipping.package_copy()

    @classmethod
    def ssm_role_from_iam_arn(cls, iam_arn: str) -> str:
        """``arn:aws:iam::123:role/service-role/X`` -> ``service-role/X``."""
        if not aws.is_arn(iam_arn):
            raise ValueError(f"iam_arn must be an IAM role ARN, got {iam_arn!r}")
        try:
            return check_role_name(aws.role_name_from_arn(iam_arn), "the role in iam_arn")
        except SSHHelperError as e:
            raise ValueError(str(e)) from e

    def resource_name(self) -> str:
        raise NotImplementedError

    def fqdn(self) -> str:
        return fqdn.format_fqdn(self.kind, self.resource_name())

    @property
    def status_key(self) -> str:
        """The key of the resource's status in its Describe* answer (``TrainingJobStatus``),
        from the kinds' table."""
        api = fqdn.kind(self.kind).api
        if api is None:
            raise AttributeError(f"a {fqdn.kind(self.kind).description} has no status key")
        return api.status_key

    def what(self) -> str:
        return f"{fqdn.kind(self.kind).description} {self.resource_name()}"

    def ssm_manager(self) -> SSMManager:
        return SSMManager(region_name=self.region(), session=self.boto_session)

    def ssh_log(self) -> SSHLog:
        return SSHLog(region_name=self.region(), session=self.boto_session)

    # -- the environment --------------------------------------------------------------------
    def _inject(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not create resources")

    def _augment(self) -> None:
        """Inject the SSH environment into the SDK object (``create()`` calls this)."""
        self._inject()
        self.augmented = True

    # -- instances --------------------------------------------------------------------------
    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        raise NotImplementedError

    def _native_lookup(self, name: str, timeout_in_sec: float,
                       managed: Callable[[], list[str]]) -> list[str]:
        """SageMaker's own targets when the resource is reached over them (a training job with
        remote debugging, an endpoint with SSM access: native), else ``managed()``, its
        managed instances."""
        from sagemaker_ssh_helper import native

        targets = native.native_targets(self.boto_session, self.region(), self.kind, name,
                                        timeout_in_sec)
        return targets if targets is not None else list(managed())

    def _check_state(self) -> None:
        """Fail at once when the resource does not exist (here) or has ended."""
        target = fqdn.Target(kinds=(fqdn.kind(self.kind),), name=self.resource_name())
        self._raise_for_status(resources.resource_status(self.boto_session, self.region(),
                                                         target))

    def _raise_for_status(self, status: str | None) -> None:
        if status == "NotFound":
            raise WrapperStateError(
                f"no {self.what().replace(' ', ' named ', 1)} in {self.region()}: check the "
                "name and the region of the session")
        if status in FINISHED:
            raise WrapperStateError(f"{self.what()} is {status}: SSH is available only while "
                                    f"it runs (logs: {self.get_cloudwatch_url()})")

    def retry_deprecated_warning(self, retry: int | None, timeout_in_sec: float) -> float:
        """``retry`` (deprecated: attempts 10 s apart) as a timeout, else ``timeout_in_sec``."""
        if retry:
            logger.warning("retry is deprecated, use timeout_in_sec instead "
                           "(retry=%s means timeout_in_sec=%s)", retry, retry * SECONDS_PER_RETRY)
            return check_seconds("retry x 10 s", int(retry) * SECONDS_PER_RETRY)
        return check_seconds("timeout_in_sec", timeout_in_sec)

    def get_instance_ids(self, retry: int | None = None,
                         timeout_in_sec: float = LOOKUP_900) -> list[str]:
        """SSM managed instance IDs (``mi-…``) of this resource, newest first; waits up to
        ``timeout_in_sec`` for them (checking first that the resource is running)."""
        timeout = self.retry_deprecated_warning(retry, timeout_in_sec)
        if timeout > 0:
            self._check_state()
        return list(self._lookup(self.ssm_manager(), self.resource_name(), timeout))

    def get_instance_id(self, retry: int | None = None, timeout_in_sec: float = LOOKUP_900,
                        index: int = 0) -> str:
        ids = self.get_instance_ids(retry, timeout_in_sec)
        if not ids:
            raise WrapperStateError(f"no SSM instance registered for {self.fqdn()} yet: check "
                                    f"the logs at {self.get_cloudwatch_url()}")
        if not 0 <= index < len(ids):
            raise ValueError(f"instance index {index} out of range: {self.fqdn()} has "
                             f"{len(ids)} instance(s)")
        return ids[index]

    # -- connections ------------------------------------------------------------------------
    def _connection_timeout(self, retry: int | None, timeout_in_sec: float,
                            timeout: timedelta | None) -> float:
        """``retry`` (deprecated) wins, then an explicit ``timeout_in_sec``, then ``timeout``."""
        if retry:
            return self.retry_deprecated_warning(retry, timeout_in_sec)
        if timeout is not None and not isinstance(timeout, timedelta):
            raise ValueError(f"timeout must be a datetime.timedelta, got {timeout!r}")
        explicit_delta = timeout is not None and not isinstance(timeout, DefaultDelta)
        if explicit_delta and isinstance(timeout_in_sec, DefaultSeconds):
            assert timeout is not None
            return check_seconds("timeout", timeout)
        if explicit_delta and timeout is not None and \
                float(timeout_in_sec) != timeout.total_seconds():
            logger.warning("timeout_in_sec=%s given: ignoring timeout=%s", timeout_in_sec,
                           timeout)
        return check_seconds("timeout_in_sec", timeout_in_sec)

    def start_ssm_connection(self, ssh_listen_port: int, retry: int | None = None,
                             timeout: timedelta = TIMEOUT_15_MINUTES,
                             timeout_in_sec: float = LOOKUP_900, extra_args: str = "",
                             index: int = 0) -> SSMProxy:
        """Open an SSH tunnel to instance ``index`` on localhost:``ssh_listen_port`` (plus
        ``extra_args`` such as ``-R 12345:localhost:12345``). The job stays held: call
        ``terminate_waiting_loop()`` on the proxy, or use ``start_ssm_connection_and_continue``.
        """
        seconds = self._connection_timeout(retry, timeout_in_sec, timeout)
        instance_id = self.get_instance_id(timeout_in_sec=seconds, index=index)
        proxy = SSMProxy(ssh_listen_port, extra_args, self.region(), self.get_cloudwatch_url(),
                         session=self.boto_session, user=self.ssh_user)
        proxy.connect_to_ssm_instance(instance_id)
        return proxy

    def start_ssm_connection_and_continue(self, ssh_listen_port: int,
                                          retry: int | None = None,
                                          timeout_in_sec: float = LOOKUP_900,
                                          timeout: timedelta = TIMEOUT_15_MINUTES,
                                          extra_args: str = "", index: int = 0) -> SSMProxy:
        """Connect, release the container's wait loop (``sm-wait stop``) so the job goes on,
        and disconnect. Returns the (closed) proxy, e.g. for its ``instance_id``."""
        proxy = self.start_ssm_connection(ssh_listen_port, retry, timeout, timeout_in_sec,
                                          extra_args, index)
        try:
            proxy.terminate_waiting_loop()
        finally:
            proxy.disconnect()
        return proxy

    # -- telling the user -------------------------------------------------------------------
    def get_cloudwatch_url(self) -> str:
        return self.ssh_log().get_cloudwatch_url(self.kind, self.resource_name())

    def get_metadata_url(self) -> str:
        return self.ssh_log().get_console_url(self.kind, self.resource_name())

    def ssh_info(self, instance_ids: list[str] | None = None) -> str:
        """How to connect: ``sm-ssh connect <fqdn>`` first, then each instance by its id."""
        ids = self.get_instance_ids() if instance_ids is None else instance_ids
        lines = [f"Connect with: sm-ssh connect {self.fqdn()}",
                 f"  instances: {', '.join(ids) if ids else '(none registered yet)'}"]
        lines += [f"  by id:     sm-local-start-ssh {i}" for i in ids]
        return "\n".join(lines)

    def print_ssh_info(self, timeout_in_sec: float = LOOKUP_900) -> str:
        """Print how to connect (and return the same text)."""
        text = self.ssh_info(self.get_instance_ids(timeout_in_sec=timeout_in_sec))
        print(text, flush=True)
        return text

    def print_connect_info(self, fqdn: str) -> None:
        """Print the commands that connect to ``fqdn`` (``<name>.<kind>.sagemaker``)."""
        print(f"Connect with: sm-ssh connect {fqdn}\n"
              f"  or, after `sm-ssh config`: ssh {fqdn}", flush=True)

    @classmethod
    def attach_to_resource(cls, fqdn: str, domain_id: str = "", user_profile_name: str = "",
                           sagemaker_session: Any = None) -> SSHEnvironmentWrapper:
        """The wrapper of the resource named by ``fqdn`` (no API call, like ``attach()``);
        a Studio app without user and domain in its FQDN takes them from the arguments."""
        from sagemaker_ssh_helper import fqdn as fqdn_module
        from sagemaker_ssh_helper import wrapper

        target = fqdn_module.parse_resource(fqdn)
        name = str(target.name)
        kind = target.kind.kind
        if kind == "studio":
            domain = target.domain or domain_id
            user = target.user_or_space or user_profile_name
            if not domain or not user:
                raise ValueError(f"{fqdn} does not name the user and domain: use "
                                 "<app>.<user>.<domain>.studio.sagemaker or pass domain_id and "
                                 "user_profile_name")
            return wrapper.SSHIDEWrapper.attach(domain, user, name, sagemaker_session)
        attachers: dict[str, Callable[[str, Any], SSHEnvironmentWrapper]] = {
            "training": wrapper.SSHEstimatorWrapper.attach,
            "processing": wrapper.SSHProcessorWrapper.attach,
            "transform": wrapper.SSHTransformerWrapper.attach,
            "inference": wrapper.SSHModelWrapper.attach,
            "notebook": wrapper.SSHNotebookInstanceWrapper.attach,
        }
        return attachers[kind](name, sagemaker_session)


class SSHJobWrapperBase(SSHEnvironmentWrapper):
    """A wrapper around a job (training, processing, transform) with status helpers."""

    keep_alive_on_failure_seconds = 0  # create(keep_alive_on_failure_seconds=N): see postmortem

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_state(self) -> None:
        try:
            job = self.describe()
        except ValueError as e:  # describe_existing(): no such job
            raise WrapperStateError(str(e)) from e
        except Exception as e:
            if aws.error_code(e) in ("AccessDenied", "AccessDeniedException"):
                logger.info("cannot check the state of %s (%s): waiting for it anyway",
                            self.what(), aws.error_code(e))
                return
            raise
        self._described(job)
        self._raise_for_status(str(job.get(self.status_key, "")) or None)

    def _described(self, job: dict[str, Any]) -> None:
        """What a wrapper learns from its job's description (attached wrappers: the node
        count that starts SSH)."""

    def is_job_in_progress(self) -> bool:
        status: str = self.describe()[self.status_key]
        return status == "InProgress"

    def wait_with_status(self, poll_seconds: float = 30.0,
                         timeout_in_sec: float | None = None) -> str:
        """Wait until the job ends; return Completed, Failed or Stopped (never raises on them)."""
        return wait_for_status(self.describe, self.status_key, poll_seconds=poll_seconds,
                               timeout_in_sec=timeout_in_sec)
