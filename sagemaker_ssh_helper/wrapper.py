"""Launch-side wrappers: turn SSH on for SageMaker jobs and endpoints built with SDK v2.

Each ``create()`` injects the environment contract (``START_SSH``, ``SSH_SSM_ROLE``,
``SSH_OWNER_TAG``, ``SSH_WAIT_TIME_SECONDS``, ``SSH_INSTANCE_COUNT``, ``SSH_LOG_TO_STDOUT``)
into the SDK object before the job starts or the endpoint is deployed::

    estimator = PyTorch(..., dependencies=[SSHEstimatorWrapper.dependency_dir()])
    ssh = SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=600)
    estimator.fit(wait=False)
    ssh.print_ssh_info()

Names, constructors and ``create()`` / ``attach()`` signatures are those of SSH Helper v2
(see "Compatibility with SSH Helper v2" in the README for the few deliberate differences).
``attach()`` makes no API call: it wraps a ``detached_sagemaker`` object that only knows the
job's name. This is the only module of the package that imports the SageMaker SDK at import
time.
"""
from __future__ import annotations

import functools
import logging
from datetime import timedelta
from typing import Any, TypeVar

from sagemaker_ssh_helper import aws, code_shipping, detached_sagemaker, fqdn, wrapper_hooks
from sagemaker_ssh_helper.errors import SSHHelperError
from sagemaker_ssh_helper.manager import SSMManager
from sagemaker_ssh_helper.wrapper_base import (
    LOOKUP_900,
    PACKAGE_DIR,
    WAIT_0,
    WAIT_10_MINUTES,
    WAIT_600,
    SSHEnvironmentWrapper,
    SSHJobWrapperBase,
    WrapperStateError,
    build_settings,
    check_keep_alive,
    describe_existing,
    merged,
    resolve_ssh_instance_count,
    resolve_ssm_role,
    wait_for_status,
)
from sagemaker_ssh_helper.wrapper_ide import SSHIDEWrapper, SSHNotebookInstanceWrapper
from sagemaker_ssh_helper.wrapper_settings import resolve_transport

try:
    import sagemaker
    from sagemaker import utils as sdk_utils
    from sagemaker.exceptions import UnexpectedStatusException
    from sagemaker.multidatamodel import MultiDataModel
    from sagemaker.processing import ProcessingInput
except ImportError as _e:  # pragma: no cover - depends on the installed SDK
    # SDK v3 (or none): the v2 names below are withdrawn at the end of the module, and importing
    # one says what to use instead; the v3 wrappers need no v2.
    _SDK_V2_MISSING: ImportError | None = _e
else:
    _SDK_V2_MISSING = None

__all__ = ["SSHEnvironmentWrapper", "SSHEstimatorWrapper", "SSHIDEWrapper", "SSHModelWrapper",
           "SSHMultiModelWrapper", "SSHNotebookInstanceWrapper", "SSHProcessorWrapper",
           "SSHTransformerWrapper", "WrapperStateError"]

logger = logging.getLogger(__name__)

# Where augmented_input() mounts the package in a processing container: the script runs
# sys.path.append("/opt/ml/processing/input") and then `import sagemaker_ssh_helper`.
PROCESSING_INPUT_PARENT = "/opt/ml/processing/input"


def _session_for_arn(arn_text: str, expected_type: str, sagemaker_session: Any
                     ) -> tuple[str, Any]:
    try:
        arn = aws.parse_arn(arn_text)
    except SSHHelperError as e:
        raise ValueError(str(e)) from e
    if arn.service != "sagemaker" or arn.resource_type != expected_type or not arn.resource_id:
        raise ValueError(f"not a SageMaker {expected_type} ARN: {arn_text!r}")
    if sagemaker_session is None:
        sagemaker_session = sagemaker.Session(boto_session=aws.boto_session(region=arn.region))
    elif sagemaker_session.boto_region_name != arn.region:
        raise ValueError(f"{arn_text} is in {arn.region} but the session is in "
                         f"{sagemaker_session.boto_region_name}")
    return arn.resource_id, sagemaker_session


def _raise_unless_ok(name: str, status: str) -> None:
    if status not in ("Completed", "Stopped"):
        raise UnexpectedStatusException(f"job {name} ended with status {status}",
                                        allowed_statuses=["Completed", "Stopped"],
                                        actual_status=status)


def _hint_dependencies(sdk_object: Any) -> None:
    deps = getattr(sdk_object, "dependencies", None)
    if getattr(sdk_object, "entry_point", None) and not any(
            code_shipping.is_package_copy(d) for d in deps or []):
        logger.info("the entry point must be able to `import sagemaker_ssh_helper`: pass "
                    "dependencies=[SSHEstimatorWrapper.dependency_dir()] or list "
                    "sagemaker-ssh-helper in the source dir's requirements.txt")


def _node_count(job: dict[str, Any], cluster: int | None) -> int:
    """How many nodes of an existing job start SSH (``SSH_INSTANCE_COUNT`` it was sent)."""
    try:
        count = int(dict(job.get("Environment") or {}).get("SSH_INSTANCE_COUNT", "1"))
    except ValueError:
        count = 1
    return max(1, min(count, cluster)) if isinstance(cluster, int) and cluster > 0 else count


def _native_unsupported(estimator: Any) -> str | None:
    """Why SageMaker's remote debugging cannot serve the estimator's job (None: it can)."""
    if not hasattr(estimator, "get_remote_debug_config"):
        return "this SageMaker SDK has no remote debugging (enable_remote_debug): upgrade it"
    if getattr(estimator, "algorithm_arn", None):
        return "AWS offers no remote debugging for built-in or AWS Marketplace algorithms"
    isolation = getattr(estimator, "enable_network_isolation", None)
    if callable(isolation) and isolation() is True:
        return "AWS offers no remote debugging with network isolation"
    if getattr(estimator, "_enable_remote_debug", None) is False:
        return "the estimator turns remote debugging off (enable_remote_debug=False)"
    return None


class SSHEstimatorWrapper(SSHJobWrapperBase):
    """SSH into the nodes of a training job."""

    kind = "training"
    transport = "hybrid"  # the one create() chose; "native": SageMaker's remote debugging

    def __init__(self, estimator: Any, ssm_iam_role: str = "", bootstrap_on_start: bool = True,
                 connection_wait_time_seconds: int = 600, ssh_instance_count: int = 2,
                 local_user_id: str | None = None, log_to_stdout: bool = False, *,
                 connection_wait_time: timedelta | None = None) -> None:
        super().__init__(ssm_iam_role, bootstrap_on_start, connection_wait_time_seconds,
                         None, local_user_id, log_to_stdout)
        self._sdk_object = estimator
        self._connection_wait_time = connection_wait_time
        self.ssh_instance_count: int | None = None  # learned from the job when attached
        if not isinstance(estimator, detached_sagemaker.DetachedEstimator):
            heterogeneous = bool(getattr(estimator, "instance_groups", None))
            self.ssh_instance_count = resolve_ssh_instance_count(
                ssh_instance_count, estimator.instance_count, heterogeneous)
            if not self.ssm_iam_role:
                self.ssm_iam_role = resolve_ssm_role(None, estimator.role, "estimator")

    @classmethod
    def create(cls, estimator: Any, connection_wait_time_seconds: int = WAIT_600,
               connection_wait_time: timedelta = WAIT_10_MINUTES, ssh_instance_count: int = 2,
               local_user_id: str | None = None, log_to_stdout: bool = False,
               ssm_iam_role: str | None = None,
               bootstrap_on_start: bool = True,
               keep_alive_on_failure_seconds: int = 0, *,
               transport: str = "hybrid") -> SSHEstimatorWrapper:
        """Enable SSH for ``estimator``; call before ``fit()``. With
        ``keep_alive_on_failure_seconds=N`` a script that dies of an uncaught exception keeps
        its container for up to N seconds (or until ``sm-wait stop``) before the job fails.

        ``transport``: ``"hybrid"`` (an SSM hybrid activation from the container, as SSH
        Helper v2), ``"native"`` (SageMaker's remote debugging carries the sessions: no
        activation, no advanced tier) or ``"auto"`` (native where the job supports it)."""
        check_keep_alive(keep_alive_on_failure_seconds)
        if getattr(estimator, "latest_training_job", None) is not None:
            raise ValueError(
                f"the estimator already started training job "
                f"{estimator.latest_training_job.job_name}: call SSHEstimatorWrapper.create() "
                "before fit()")
        wrapper = cls(estimator, ssm_iam_role or "", bootstrap_on_start,
                      connection_wait_time_seconds, ssh_instance_count, local_user_id,
                      log_to_stdout, connection_wait_time=connection_wait_time)
        wrapper.keep_alive_on_failure_seconds = keep_alive_on_failure_seconds
        wrapper.transport = resolve_transport(transport, _native_unsupported(estimator))
        wrapper._augment()
        return wrapper

    def _inject(self) -> None:
        estimator = self._sdk_object
        settings = build_settings(estimator, estimator.role, "estimator",
                                  self.connection_wait_time_seconds, self._connection_wait_time,
                                  self.local_user_id, self.log_to_stdout, self.ssm_iam_role,
                                  self.ssh_instance_count, self.bootstrap_on_start,
                                  self.keep_alive_on_failure_seconds,
                                  transport=self.transport)
        if self.transport == "native":  # SageMaker starts its SSM agent in the containers
            estimator._enable_remote_debug = True
        self.env = settings.environment()
        estimator.environment = merged(estimator.environment, self.env)
        _hint_dependencies(estimator)

    @classmethod
    def attach(cls, training_job_name: str, sagemaker_session: Any = None
               ) -> SSHEstimatorWrapper:
        """Wrap an existing training job by name (no API call: a job still being created, or a
        caller without DescribeTrainingJob, can attach)."""
        session = sagemaker_session or sagemaker.Session()
        wrapper = cls(detached_sagemaker.DetachedEstimator.attach(training_job_name, session))
        wrapper.sagemaker_session = session
        return wrapper

    @classmethod
    def attach_arn(cls, training_job_arn: str, sagemaker_session: Any = None
                   ) -> SSHEstimatorWrapper:
        name, session = _session_for_arn(training_job_arn, fqdn.kind(cls.kind).arn_type,
                                         sagemaker_session)
        return cls.attach(name, session)

    @property
    def estimator(self) -> Any:
        """The SDK estimator (a ``DetachedEstimator`` for attached jobs)."""
        return self._sdk_object

    def training_job_name(self) -> str:
        job = getattr(self._sdk_object, "latest_training_job", None)
        if job is None:
            raise ValueError("the training job has not started yet: call fit() first")
        return str(job.job_name)

    resource_name = training_job_name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return self._native_lookup(name, timeout_in_sec, lambda: manager.get_training_instance_ids(
            name, timeout_in_sec=timeout_in_sec, expected_count=self.ssh_instance_count or 1))

    def describe(self) -> dict[str, Any]:
        return describe_existing(self.sagemaker_session.describe_training_job,
                                 self.training_job_name(), "training job")

    def _described(self, job: dict[str, Any]) -> None:
        if self.ssh_instance_count is None:
            cluster = dict(job.get("ResourceConfig") or {}).get("InstanceCount")
            self.ssh_instance_count = _node_count(job, cluster)

    def wait_training_job_with_status(self, poll_seconds: float = 30.0) -> str:
        """Wait until the job ends; return its final status."""
        return self.wait_with_status(poll_seconds)

    def wait_training_job(self, poll_seconds: float = 30.0) -> None:
        """Wait for the job to end; raise ``UnexpectedStatusException`` if it failed."""
        _raise_unless_ok(self.training_job_name(), self.wait_with_status(poll_seconds))

    def stop_training_job(self, wait: bool = True, poll_seconds: float = 30.0) -> None:
        """Stop the job and (as in v2) wait until it has stopped."""
        self.sagemaker_session.stop_training_job(self.training_job_name())
        if wait:
            self.wait_with_status(poll_seconds)

    def rule_job_summary(self) -> list[dict[str, Any]]:
        """Debugger and Profiler rule evaluation statuses of the job."""
        job = self.describe()
        return list(job.get("DebugRuleEvaluationStatuses") or []) + \
            list(job.get("ProfilerRuleEvaluationStatuses") or [])


def _model_image(model: Any, call: Any) -> str | None:
    """The model's image URI, or the framework serving image ``deploy()`` would pick."""
    image = getattr(model, "image_uri", None)
    if isinstance(image, str) and image:
        return image
    serving_image_uri = getattr(model, "serving_image_uri", None)
    if serving_image_uri is None:
        return None
    session = getattr(model, "sagemaker_session", None)
    try:
        region = (session.boto_region_name if session is not None
                  else aws.session_region(aws.boto_session()))
        return str(serving_image_uri(region, call.arguments.get("instance_type")))
    except Exception as e:  # only the default endpoint name depends on it
        logger.debug("no serving image for the default endpoint name: %s", e)
        return None


def _endpoint_native_unsupported(model: Any) -> str | None:
    """Why SSM access (``EnableSSMAccess``) cannot serve the model's endpoint (None: it may)."""
    try:  # a MultiDataModel's method reads an attribute the SDK never sets
        isolation = getattr(model, "enable_network_isolation", None)
        isolated = (isolation() if callable(isolation) else isolation) is True
    except AttributeError:
        isolated = False
    return wrapper_hooks.endpoint_native_unsupported(
        isolated, bool(getattr(model, "algorithm_arn", None)
                       or getattr(model, "model_package_arn", None)))


def _hook_ssm_access(model: Any) -> None:
    """Make the model's ``deploy()`` create its endpoint configuration with ``EnableSSMAccess``
    on the model's production variant (``wrapper_hooks.register_ssm_access`` on the session's
    SageMaker client, which exists once ``deploy()`` is called)."""
    original = model.deploy
    if getattr(original, "_sm_ssh_ssm_access", False):
        return

    @functools.wraps(original)
    def deploy(*args: Any, **kwargs: Any) -> Any:
        if getattr(model, "sagemaker_session", None) is None:
            model.sagemaker_session = sagemaker.Session()
        wrapper_hooks.register_ssm_access(model.sagemaker_session.sagemaker_client,
                                          lambda: getattr(model, "name", None), model)
        return original(*args, **kwargs)

    deploy._sm_ssh_ssm_access = True  # type: ignore[attr-defined]
    model.deploy = deploy


_Model = TypeVar("_Model", bound="SSHModelWrapper")


class SSHModelWrapper(SSHEnvironmentWrapper):
    """SSH into the instances behind a real-time endpoint."""

    kind = "inference"
    transport = "hybrid"  # the one create() chose; "native": the variant's SSM access

    def __init__(self, model: Any, ssm_iam_role: str = "", bootstrap_on_start: bool = True,
                 connection_wait_time_seconds: int = 600, *, local_user_id: str | None = None,
                 log_to_stdout: bool = False, connection_wait_time: timedelta | None = None,
                 endpoint_name: str | None = None, sagemaker_session: Any = None) -> None:
        super().__init__(ssm_iam_role, bootstrap_on_start, connection_wait_time_seconds,
                         sagemaker_session, local_user_id, log_to_stdout)
        self._sdk_object = model
        self._endpoint_name = endpoint_name
        self._connection_wait_time = connection_wait_time
        if model is not None and not self.ssm_iam_role:
            self.ssm_iam_role = resolve_ssm_role(None, getattr(self._env_holder(), "role", None),
                                                 "model")

    @property
    def model(self) -> Any:
        return self._sdk_object

    def _env_holder(self) -> Any:
        return self._sdk_object

    @classmethod
    def create(cls, model: Any, connection_wait_time_seconds: int = WAIT_0,
               local_user_id: str | None = None, log_to_stdout: bool = False,
               connection_wait_time: timedelta | None = None,
               ssm_iam_role: str | None = None,
               bootstrap_on_start: bool = True, *,
               transport: str = "hybrid") -> SSHModelWrapper:
        """Enable SSH for ``model``; call before ``deploy()`` or ``transformer()``.

        The hold defaults to 0 s (v2: 600 s), so model loading is not held up.

        ``transport``: ``"hybrid"`` (an SSM hybrid activation from the container), or
        ``"native"``: ``deploy()`` turns on the production variant's SSM access
        (``EnableSSMAccess``; AWS support must allowlist the account) and SageMaker's agent
        carries the sessions. ``"auto"`` means hybrid here: whether the account is allowlisted
        shows only when the endpoint configuration is created."""
        if isinstance(model, MultiDataModel):
            raise ValueError("use SSHMultiModelWrapper.create() for a MultiDataModel")
        return cls._create(model, connection_wait_time_seconds, connection_wait_time,
                           local_user_id, log_to_stdout, ssm_iam_role, bootstrap_on_start,
                           transport)

    @classmethod
    def _create(cls: type[_Model], model: Any, seconds: Any, delta: timedelta | None,
                local_user_id: str | None, log_to_stdout: bool,
                ssm_iam_role: str | None, bootstrap_on_start: bool,
                transport: str = "hybrid") -> _Model:
        if getattr(model, "endpoint_name", None):
            raise ValueError(f"the model is already deployed to endpoint {model.endpoint_name}: "
                             f"call {cls.__name__}.create() before deploy()")
        wrapper = cls(model, ssm_iam_role or "", bootstrap_on_start, seconds,
                      local_user_id=local_user_id, log_to_stdout=log_to_stdout,
                      connection_wait_time=delta)
        unsupported = _endpoint_native_unsupported(model) if transport == "native" else (
            "the account's allowlisting for SSM access cannot be checked before deploy()")
        wrapper.transport = resolve_transport(transport, unsupported)
        wrapper._augment()
        return wrapper

    def _inject(self) -> None:
        model, env_holder = self._sdk_object, self._env_holder()
        settings = build_settings(model, getattr(env_holder, "role", None), "model",
                                  self.connection_wait_time_seconds, self._connection_wait_time,
                                  self.local_user_id, self.log_to_stdout, self.ssm_iam_role,
                                  bootstrap_on_start=self.bootstrap_on_start,
                                  transport=self.transport)
        self.env = settings.environment()
        env_holder.env = merged(getattr(env_holder, "env", None), self.env)
        if self.transport == "native":  # SageMaker starts its SSM agent in the instances
            _hook_ssm_access(model)
        multi_model = isinstance(model, MultiDataModel)
        wrapper_hooks.hook_name_argument(
            model, "deploy", "endpoint_name", env_holder, "env",
            wrapper_hooks.ENDPOINT_NAME_VAR,
            lambda sdk_model, call: wrapper_hooks.default_endpoint_name(
                sdk_model, None if multi_model else _model_image(sdk_model, call),
                sdk_utils.name_from_base, sdk_utils.base_from_name,
                sdk_utils.base_name_from_image, multi_model))

    @classmethod
    def attach(cls, endpoint_name: str, sagemaker_session: Any = None) -> SSHModelWrapper:
        """Wrap an existing endpoint by name (no API call)."""
        return cls(None, endpoint_name=endpoint_name,
                   sagemaker_session=sagemaker_session or sagemaker.Session())

    def endpoint_name(self) -> str:
        name = self._endpoint_name or getattr(self._sdk_object, "endpoint_name", None)
        if not name:
            raise ValueError("the model is not deployed yet: call deploy() first")
        return str(name)

    resource_name = endpoint_name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return self._native_lookup(name, timeout_in_sec, lambda: manager.get_endpoint_instance_ids(
            name, timeout_in_sec=timeout_in_sec))

    def get_instance_ids_from_logs(self, timeout_in_sec: float = LOOKUP_900) -> list[str]:
        """Managed instance IDs found in the endpoint's CloudWatch logs (Logs Insights)."""
        return self.ssh_log().get_endpoint_ssm_instance_ids(self.endpoint_name(),
                                                            timeout_in_sec=timeout_in_sec)

    def _describe_endpoint(self) -> dict[str, Any]:
        return describe_existing(
            lambda name: self.sagemaker_session.sagemaker_client.describe_endpoint(
                EndpointName=name), self.endpoint_name(), "endpoint")

    def endpoint_is_online(self) -> bool:
        return self._describe_endpoint().get(self.status_key) == "InService"

    def wait_for_endpoint(self, poll_seconds: float = 30.0,
                          timeout_in_sec: float | None = None) -> None:
        """Wait until the endpoint is InService; raise ``WrapperStateError`` if it failed."""
        status = wait_for_status(self._describe_endpoint, self.status_key,
                                 ("InService", "Failed", "OutOfService", "Deleting"),
                                 poll_seconds, timeout_in_sec)
        if status != "InService":
            raise WrapperStateError(f"endpoint {self.endpoint_name()} is {status}: see "
                                    f"{self.get_cloudwatch_url()}")

    def get_config_metadata_url(self) -> str:
        """The console page of the endpoint configuration (``deploy()`` names it after the
        endpoint)."""
        return self.ssh_log().get_endpoint_config_metadata_url(self.endpoint_name())

    def _model_name(self) -> str:
        name = getattr(self._sdk_object, "name", None)
        if name:
            return str(name)
        client = self.sagemaker_session.sagemaker_client
        config = client.describe_endpoint_config(
            EndpointConfigName=self._describe_endpoint()["EndpointConfigName"])
        return str(config["ProductionVariants"][0]["ModelName"])

    def get_model_metadata_url(self) -> str:
        return self.ssh_log().get_model_metadata_url(self._model_name())


class SSHMultiModelWrapper(SSHModelWrapper):
    """SSH into a multi-model endpoint (MultiDataModel with ``model=`` or ``image_uri=``)."""

    def __init__(self, mdm: Any, ssm_iam_role: str = "", bootstrap_on_start: bool = True,
                 connection_wait_time_seconds: int = 600, **kwargs: Any) -> None:
        super().__init__(mdm, ssm_iam_role, bootstrap_on_start, connection_wait_time_seconds,
                         **kwargs)

    @property
    def mdm(self) -> Any:
        return self._sdk_object

    def _env_holder(self) -> Any:
        # With model=..., the container definition (and its env) comes from the inner model.
        mdm = self._sdk_object
        return mdm.model if getattr(mdm, "model", None) is not None else mdm

    @classmethod
    def create(cls, mdm: Any, connection_wait_time_seconds: int = WAIT_0,
               local_user_id: str | None = None, log_to_stdout: bool = False,
               connection_wait_time: timedelta | None = None,
               ssm_iam_role: str | None = None,
               bootstrap_on_start: bool = True, *,
               transport: str = "hybrid") -> SSHMultiModelWrapper:
        """Enable SSH for a MultiDataModel; call before ``deploy()`` (hold: 0 s by default).
        ``transport`` as for ``SSHModelWrapper.create()``."""
        if not isinstance(mdm, MultiDataModel):
            raise ValueError("SSHMultiModelWrapper.create() takes a MultiDataModel; "
                             "use SSHModelWrapper.create() for a Model")
        return cls._create(mdm, connection_wait_time_seconds, connection_wait_time,
                           local_user_id, log_to_stdout, ssm_iam_role, bootstrap_on_start,
                           transport)


class SSHProcessorWrapper(SSHJobWrapperBase):
    """SSH into the nodes of a processing job (framework or script processors)."""

    kind = "processing"

    def __init__(self, processor: Any, ssm_iam_role: str = "", bootstrap_on_start: bool = True,
                 connection_wait_time_seconds: int = 600, *, ssh_instance_count: int = 2,
                 local_user_id: str | None = None, log_to_stdout: bool = False,
                 connection_wait_time: timedelta | None = None) -> None:
        super().__init__(ssm_iam_role, bootstrap_on_start, connection_wait_time_seconds,
                         None, local_user_id, log_to_stdout)
        self._sdk_object = processor
        self._connection_wait_time = connection_wait_time
        self.ssh_instance_count: int | None = None  # learned from the job when attached
        if not isinstance(processor, detached_sagemaker.DetachedProcessor):
            self.ssh_instance_count = resolve_ssh_instance_count(
                ssh_instance_count, processor.instance_count, False)
            if not self.ssm_iam_role:
                self.ssm_iam_role = resolve_ssm_role(None, processor.role, "processor")

    @property
    def processor(self) -> Any:
        return self._sdk_object

    @classmethod
    def create(cls, processor: Any, connection_wait_time_seconds: int = WAIT_600,
               ssh_instance_count: int = 2, local_user_id: str | None = None,
               log_to_stdout: bool = False, connection_wait_time: timedelta | None = None,
               ssm_iam_role: str | None = None,
               bootstrap_on_start: bool = True,
               keep_alive_on_failure_seconds: int = 0) -> SSHProcessorWrapper:
        """Enable SSH for ``processor``; call before ``run()`` (``keep_alive_on_failure_seconds``
        as for ``SSHEstimatorWrapper.create``)."""
        check_keep_alive(keep_alive_on_failure_seconds)
        if getattr(processor, "latest_job", None) is not None:
            raise ValueError(f"the processor already started processing job "
                             f"{processor.latest_job.job_name}: call "
                             "SSHProcessorWrapper.create() before run()")
        wrapper = cls(processor, ssm_iam_role or "", bootstrap_on_start,
                      connection_wait_time_seconds, ssh_instance_count=ssh_instance_count,
                      local_user_id=local_user_id, log_to_stdout=log_to_stdout,
                      connection_wait_time=connection_wait_time)
        wrapper.keep_alive_on_failure_seconds = keep_alive_on_failure_seconds
        wrapper._augment()
        return wrapper

    def _inject(self) -> None:
        processor = self._sdk_object
        settings = build_settings(processor, processor.role, "processor",
                                  self.connection_wait_time_seconds, self._connection_wait_time,
                                  self.local_user_id, self.log_to_stdout, self.ssm_iam_role,
                                  self.ssh_instance_count, self.bootstrap_on_start,
                                  self.keep_alive_on_failure_seconds)
        self.env = settings.environment()
        processor.env = merged(processor.env, self.env)

    @classmethod
    def attach(cls, processing_job_name: str, sagemaker_session: Any = None
               ) -> SSHProcessorWrapper:
        """Wrap an existing processing job by name (no API call)."""
        session = sagemaker_session or sagemaker.Session()
        wrapper = cls(detached_sagemaker.DetachedProcessor.attach(processing_job_name, session))
        wrapper.sagemaker_session = session
        return wrapper

    @classmethod
    def augmented_input(cls) -> ProcessingInput:
        """An input that ships the package to a script processor's container; the script runs
        ``sys.path.append("/opt/ml/processing/input")`` then ``import sagemaker_ssh_helper``."""
        return ProcessingInput(source=cls.dependency_dir(), input_name="sagemaker_ssh_helper",
                               destination=f"{PROCESSING_INPUT_PARENT}/{PACKAGE_DIR.name}")

    def processing_job_name(self) -> str:
        job = getattr(self._sdk_object, "latest_job", None)
        if job is None:
            raise ValueError("the processing job has not started yet: call run() first")
        return str(job.job_name)

    resource_name = processing_job_name
    get_processor_latest_job_name = processing_job_name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return list(manager.get_processing_instance_ids(
            name, timeout_in_sec=timeout_in_sec, expected_count=self.ssh_instance_count or 1))

    def describe(self) -> dict[str, Any]:
        return describe_existing(self.sagemaker_session.describe_processing_job,
                                 self.processing_job_name(), "processing job")

    def _described(self, job: dict[str, Any]) -> None:
        if self.ssh_instance_count is None:
            cluster = dict(dict(job.get("ProcessingResources") or {})
                           .get("ClusterConfig") or {}).get("InstanceCount")
            self.ssh_instance_count = _node_count(job, cluster)

    def wait_processing_job(self, poll_seconds: float = 30.0) -> None:
        _raise_unless_ok(self.processing_job_name(), self.wait_with_status(poll_seconds))

    def stop_processing_job(self) -> None:
        self.sagemaker_session.stop_processing_job(self.processing_job_name())


class SSHTransformerWrapper(SSHJobWrapperBase):
    """SSH into the instances of a batch transform job; its model needs SSHModelWrapper too."""

    kind = "transform"

    def __init__(self, transformer: Any, model_wrapper: SSHModelWrapper | None, *,
                 transform_job_name: str | None = None, sagemaker_session: Any = None
                 ) -> None:
        wait = model_wrapper.connection_wait_time_seconds if model_wrapper is not None else 0
        super().__init__("", True, wait, sagemaker_session)
        self._sdk_object = transformer
        self.model_wrapper = model_wrapper
        self.env = dict(getattr(model_wrapper, "env", None) or {})
        self._job_name = transform_job_name

    @property
    def transformer(self) -> Any:
        return self._sdk_object

    @classmethod
    def create(cls, transformer: Any, model_wrapper: SSHModelWrapper) -> SSHTransformerWrapper:
        """Enable SSH for ``transformer`` (from ``model.transformer()`` after
        ``SSHModelWrapper.create(model)``); call before ``transform()``."""
        if not isinstance(model_wrapper, SSHModelWrapper) or not model_wrapper.augmented:
            raise ValueError("pass the SSHModelWrapper returned by SSHModelWrapper.create(model)")
        if model_wrapper.transport == "native":
            raise ValueError("batch transform jobs have no SSM access: create the model's "
                             "SSHModelWrapper with transport='hybrid' for a transformer")
        if getattr(transformer, "latest_transform_job", None) is not None:
            raise ValueError(f"the transformer already started transform job "
                             f"{transformer.latest_transform_job.job_name}: call "
                             "SSHTransformerWrapper.create() before transform()")
        wrapper = cls(transformer, model_wrapper)
        wrapper._augment()
        return wrapper

    def _inject(self) -> None:
        transformer = self._sdk_object
        transformer.env = merged(transformer.env, self.env)
        # Transform containers see the model's env too: the job name set here wins over an
        # endpoint name the model may carry (see sagemaker_ssh_helper.env).
        wrapper_hooks.hook_name_argument(
            transformer, "transform", "job_name", transformer, "env",
            wrapper_hooks.TRANSFORM_JOB_NAME_VAR,
            lambda sdk_transformer, call: wrapper_hooks.default_transform_job_name(
                sdk_transformer, sdk_utils.name_from_base))

    @classmethod
    def attach(cls, transform_job_name: str, sagemaker_session: Any = None
               ) -> SSHTransformerWrapper:
        """Wrap an existing transform job by name (no API call)."""
        return cls(None, None, transform_job_name=transform_job_name,
                   sagemaker_session=sagemaker_session or sagemaker.Session())

    def transform_job_name(self) -> str:
        if self._job_name:
            return self._job_name
        job = getattr(self._sdk_object, "latest_transform_job", None)
        if job is None:
            raise ValueError("the transform job has not started yet: call transform() first")
        return str(job.job_name)

    resource_name = transform_job_name
    get_transformer_latest_job_name = transform_job_name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return list(manager.get_transformer_instance_ids(name, timeout_in_sec=timeout_in_sec))

    def describe(self) -> dict[str, Any]:
        return describe_existing(self.sagemaker_session.describe_transform_job,
                                 self.transform_job_name(), "transform job")

    def wait_transform_job(self, poll_seconds: float = 30.0) -> None:
        _raise_unless_ok(self.transform_job_name(), self.wait_with_status(poll_seconds))

    def stop_transform_job(self) -> None:
        self.sagemaker_session.stop_transform_job(self.transform_job_name())


# -- SDK v3 ---------------------------------------------------------------------------------------
# SSHModelTrainerWrapper and SSHModelBuilderWrapper live in wrapper_v3 (no SDK import there) and are
# loaded on first use; without SDK v2 the names above are withdrawn and say what to use instead.
if _SDK_V2_MISSING is not None:  # pragma: no cover - depends on the installed SDK
    from sagemaker_ssh_helper import sdk_versions as _sdk_versions

    for _name in _sdk_versions.V2_ONLY:
        globals().pop(_name, None)
    __all__ = [_name for _name in __all__ if _name in globals()]
__all__ += [_name for _name in ("SSHModelTrainerWrapper", "SSHModelBuilderWrapper",
                                "SSHProcessorWrapper") if _name not in __all__]


def __getattr__(name: str) -> Any:
    from sagemaker_ssh_helper import sdk_versions, wrapper_v3

    if name in wrapper_v3.__all__:
        return getattr(wrapper_v3, name)
    if _SDK_V2_MISSING is not None and name in sdk_versions.V2_ONLY:
        raise ImportError(sdk_versions.v2_only_message(name, _SDK_V2_MISSING), name=name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
