"""Launch-side wrappers: turn SSH on for SageMaker jobs and endpoints built with SDK v2.

Each ``create()`` injects the environment contract (``START_SSH``, ``SSH_SSM_ROLE``,
``SSH_OWNER_TAG``, ``SSH_WAIT_TIME_SECONDS``, ``SSH_INSTANCE_COUNT``, ``SSH_LOG_TO_STDOUT``)
into the SDK object before the job starts or the endpoint is deployed::

    estimator = PyTorch(..., dependencies=[SSHEstimatorWrapper.dependency_dir()])
    ssh = SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=600)
    estimator.fit(wait=False)
    ssh.print_ssh_info()

This is the only module of the package that imports the SageMaker SDK.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional

from sagemaker_ssh_helper import aws, wrapper_hooks
from sagemaker_ssh_helper.errors import SSHHelperError
from sagemaker_ssh_helper.ide import IDEWrapperBase, NotebookInstanceWrapperBase
from sagemaker_ssh_helper.wrapper_base import (
    DEFAULT_LOOKUP_TIMEOUT,
    WAIT_0,
    WAIT_600,
    SSHJobWrapperBase,
    SSHWrapperBase,
    build_settings,
    describe_existing,
    merged,
    resolve_ssh_instance_count,
)

try:
    import sagemaker
    from sagemaker import utils as sdk_utils
    from sagemaker.exceptions import UnexpectedStatusException
    from sagemaker.multidatamodel import MultiDataModel
    from sagemaker.processing import ProcessingInput
except ImportError as _e:  # pragma: no cover - depends on the installed SDK
    raise ImportError(
        "sagemaker_ssh_helper.wrapper needs the SageMaker Python SDK v2: "
        "pip install 'sagemaker>=2.200,<3'") from _e

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# Where augmented_input() mounts the package in a processing container: the script runs
# sys.path.append("/opt/ml/processing/input") and then `import sagemaker_ssh_helper`.
PROCESSING_INPUT_PARENT = "/opt/ml/processing/input"


class _SDKWrapper(SSHWrapperBase):
    @staticmethod
    def dependency_dir() -> str:
        """The package folder, for ``dependencies=[...]`` of framework estimators/processors."""
        return str(PACKAGE_DIR)

    def _default_session(self) -> Any:
        return sagemaker.Session()


def _session_for_arn(arn_text: str, expected_type: str, sagemaker_session: Any) -> tuple:
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


class SSHEstimatorWrapper(_SDKWrapper, SSHJobWrapperBase):
    """SSH into the nodes of a training job."""

    kind = "training"
    status_key = "TrainingJobStatus"

    def __init__(self, estimator: Any = None, env: Optional[Dict[str, str]] = None,
                 ssh_instance_count: int = 1, training_job_name: Optional[str] = None,
                 sagemaker_session: Any = None) -> None:
        super().__init__(estimator, sagemaker_session, env)
        self.ssh_instance_count = ssh_instance_count
        self._job_name = training_job_name

    @classmethod
    def create(cls, estimator: Any, connection_wait_time_seconds: int = WAIT_600,
               ssh_instance_count: int = 2, local_user_id: Optional[str] = None,
               log_to_stdout: bool = False, connection_wait_time: Optional[timedelta] = None,
               ssm_iam_role: Optional[str] = None) -> SSHEstimatorWrapper:
        """Enable SSH for ``estimator``; call before ``fit()``."""
        if getattr(estimator, "latest_training_job", None) is not None:
            raise ValueError(
                f"the estimator already started training job "
                f"{estimator.latest_training_job.job_name}: call SSHEstimatorWrapper.create() "
                "before fit()")
        heterogeneous = bool(getattr(estimator, "instance_groups", None))
        count = resolve_ssh_instance_count(ssh_instance_count, estimator.instance_count,
                                           heterogeneous)
        settings = build_settings(estimator, estimator.role, "estimator",
                                  connection_wait_time_seconds, connection_wait_time,
                                  local_user_id, log_to_stdout, ssm_iam_role,
                                  instance_count=count)
        env = settings.environment()
        estimator.environment = merged(estimator.environment, env)
        _hint_dependencies(estimator)
        return cls(estimator, env, ssh_instance_count=count)

    @classmethod
    def attach(cls, training_job_name: str, sagemaker_session: Any = None
               ) -> SSHEstimatorWrapper:
        """Wrap an existing training job (e.g. started by another process)."""
        session = sagemaker_session or sagemaker.Session()
        job = describe_existing(session.describe_training_job, training_job_name,
                                 "training job")
        env = dict(job.get("Environment") or {})
        count = int(env.get("SSH_INSTANCE_COUNT", "1"))
        return cls(None, env, ssh_instance_count=count, training_job_name=training_job_name,
                   sagemaker_session=session)

    @classmethod
    def attach_arn(cls, arn: str, sagemaker_session: Any = None) -> SSHEstimatorWrapper:
        name, session = _session_for_arn(arn, "training-job", sagemaker_session)
        return cls.attach(name, session)

    @property
    def estimator(self) -> Any:
        """The SDK estimator given to create(); None for attached jobs (the SDK's
        ``Estimator.attach`` blocks until a job ends, so it is not called here)."""
        return self._sdk_object

    def training_job_name(self) -> str:
        if self._job_name:
            return self._job_name
        job = getattr(self._sdk_object, "latest_training_job", None)
        if job is None:
            raise ValueError("the training job has not started yet: call fit() first")
        return str(job.job_name)

    resource_name = training_job_name

    def _lookup(self, manager: Any, name: str, timeout_in_sec: int) -> List[str]:
        return list(manager.get_training_instance_ids(
            name, timeout_in_sec=timeout_in_sec, expected_count=self.ssh_instance_count))

    def describe(self) -> Dict[str, Any]:
        return dict(self.sagemaker_session.describe_training_job(self.training_job_name()))

    def wait_training_job_with_status(self, poll_seconds: float = 30.0) -> str:
        return self.wait_with_status(poll_seconds)

    def wait_training_job(self, poll_seconds: float = 30.0) -> None:
        """Wait for the job to end; raise ``UnexpectedStatusException`` if it failed."""
        _raise_unless_ok(self.training_job_name(), self.wait_with_status(poll_seconds))

    def stop_training_job(self) -> None:
        self.sagemaker_session.stop_training_job(self.training_job_name())

    def rule_job_summary(self) -> List[Dict[str, Any]]:
        """Debugger and Profiler rule evaluation statuses of the job."""
        job = self.describe()
        return list(job.get("DebugRuleEvaluationStatuses") or []) + \
            list(job.get("ProfilerRuleEvaluationStatuses") or [])


def _raise_unless_ok(name: str, status: str) -> None:
    if status not in ("Completed", "Stopped"):
        raise UnexpectedStatusException(f"job {name} ended with status {status}",
                                        allowed_statuses=["Completed", "Stopped"],
                                        actual_status=status)


def _hint_dependencies(sdk_object: Any) -> None:
    deps = getattr(sdk_object, "dependencies", None)
    if getattr(sdk_object, "entry_point", None) and not any(
            Path(str(d)).resolve() == PACKAGE_DIR for d in deps or []):
        logger.info("the entry point must be able to `import sagemaker_ssh_helper`: pass "
                    "dependencies=[SSHEstimatorWrapper.dependency_dir()] or list "
                    "sagemaker-ssh-helper in the source dir's requirements.txt")


def _model_image(model: Any, call: Any) -> Optional[str]:
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


class SSHModelWrapper(_SDKWrapper):
    """SSH into the instances behind a real-time endpoint."""

    kind = "inference"

    def __init__(self, model: Any = None, env: Optional[Dict[str, str]] = None,
                 endpoint_name: Optional[str] = None, sagemaker_session: Any = None) -> None:
        super().__init__(model, sagemaker_session, env)
        self._endpoint_name = endpoint_name

    @classmethod
    def create(cls, model: Any, connection_wait_time_seconds: int = WAIT_0,
               local_user_id: Optional[str] = None, log_to_stdout: bool = False,
               connection_wait_time: Optional[timedelta] = None,
               ssm_iam_role: Optional[str] = None) -> SSHModelWrapper:
        """Enable SSH for ``model``; call before ``deploy()`` or ``transformer()``."""
        if isinstance(model, MultiDataModel):
            raise ValueError("use SSHMultiModelWrapper.create() for a MultiDataModel")
        return cls._create(model, model, connection_wait_time_seconds, connection_wait_time,
                           local_user_id, log_to_stdout, ssm_iam_role)

    @classmethod
    def _create(cls, model: Any, env_holder: Any, seconds: Any, delta: Optional[timedelta],
                local_user_id: Optional[str], log_to_stdout: bool,
                ssm_iam_role: Optional[str]) -> Any:
        if getattr(model, "endpoint_name", None):
            raise ValueError(f"the model is already deployed to endpoint {model.endpoint_name}: "
                             f"call {cls.__name__}.create() before deploy()")
        settings = build_settings(model, getattr(env_holder, "role", None), "model", seconds,
                                  delta, local_user_id, log_to_stdout, ssm_iam_role)
        env = settings.environment()
        env_holder.env = merged(getattr(env_holder, "env", None), env)
        multi_model = isinstance(model, MultiDataModel)
        wrapper_hooks.hook_name_argument(
            model, "deploy", "endpoint_name", env_holder, "env",
            wrapper_hooks.ENDPOINT_NAME_VAR,
            lambda sdk_model, call: wrapper_hooks.default_endpoint_name(
                sdk_model, None if multi_model else _model_image(sdk_model, call),
                sdk_utils.name_from_base, sdk_utils.base_from_name,
                sdk_utils.base_name_from_image, multi_model))
        return cls(model, env)

    @classmethod
    def attach(cls, endpoint_name: str, sagemaker_session: Any = None) -> SSHModelWrapper:
        return cls(None, None, endpoint_name=endpoint_name,
                   sagemaker_session=sagemaker_session or sagemaker.Session())

    def endpoint_name(self) -> str:
        name = self._endpoint_name or getattr(self._sdk_object, "endpoint_name", None)
        if not name:
            raise ValueError("the model is not deployed yet: call deploy() first")
        return str(name)

    resource_name = endpoint_name

    def _lookup(self, manager: Any, name: str, timeout_in_sec: int) -> List[str]:
        return list(manager.get_endpoint_instance_ids(name, timeout_in_sec=timeout_in_sec))

    def get_instance_ids_from_logs(self, timeout_in_sec: int = DEFAULT_LOOKUP_TIMEOUT
                                   ) -> List[str]:
        """Managed instance IDs found in the endpoint's CloudWatch logs (Logs Insights)."""
        return self.ssh_log().get_endpoint_ssm_instance_ids(self.endpoint_name(),
                                                            timeout_in_sec=timeout_in_sec)


class SSHMultiModelWrapper(SSHModelWrapper):
    """SSH into a multi-model endpoint (MultiDataModel with ``model=`` or ``image_uri=``)."""

    @classmethod
    def create(cls, model: Any, connection_wait_time_seconds: int = WAIT_0,
               local_user_id: Optional[str] = None, log_to_stdout: bool = False,
               connection_wait_time: Optional[timedelta] = None,
               ssm_iam_role: Optional[str] = None) -> SSHMultiModelWrapper:
        if not isinstance(model, MultiDataModel):
            raise ValueError("SSHMultiModelWrapper.create() takes a MultiDataModel; "
                             "use SSHModelWrapper.create() for a Model")
        # With model=..., the container definition (and its env) comes from the inner model.
        env_holder = model.model if model.model is not None else model
        return cls._create(model, env_holder, connection_wait_time_seconds, connection_wait_time,
                           local_user_id, log_to_stdout, ssm_iam_role)


class SSHProcessorWrapper(_SDKWrapper, SSHJobWrapperBase):
    """SSH into the nodes of a processing job (framework or script processors)."""

    kind = "processing"
    status_key = "ProcessingJobStatus"

    def __init__(self, processor: Any = None, env: Optional[Dict[str, str]] = None,
                 ssh_instance_count: int = 1, processing_job_name: Optional[str] = None,
                 sagemaker_session: Any = None) -> None:
        super().__init__(processor, sagemaker_session, env)
        self.ssh_instance_count = ssh_instance_count
        self._job_name = processing_job_name

    @classmethod
    def create(cls, processor: Any, connection_wait_time_seconds: int = WAIT_600,
               ssh_instance_count: int = 2, local_user_id: Optional[str] = None,
               log_to_stdout: bool = False, connection_wait_time: Optional[timedelta] = None,
               ssm_iam_role: Optional[str] = None) -> SSHProcessorWrapper:
        """Enable SSH for ``processor``; call before ``run()``."""
        if getattr(processor, "latest_job", None) is not None:
            raise ValueError(f"the processor already started processing job "
                             f"{processor.latest_job.job_name}: call "
                             "SSHProcessorWrapper.create() before run()")
        count = resolve_ssh_instance_count(ssh_instance_count, processor.instance_count, False)
        settings = build_settings(processor, processor.role, "processor",
                                  connection_wait_time_seconds, connection_wait_time,
                                  local_user_id, log_to_stdout, ssm_iam_role,
                                  instance_count=count)
        env = settings.environment()
        processor.env = merged(processor.env, env)
        return cls(processor, env, ssh_instance_count=count)

    @classmethod
    def attach(cls, processing_job_name: str, sagemaker_session: Any = None
               ) -> SSHProcessorWrapper:
        session = sagemaker_session or sagemaker.Session()
        job = describe_existing(session.describe_processing_job, processing_job_name,
                                 "processing job")
        count = int(dict(job.get("Environment") or {}).get("SSH_INSTANCE_COUNT", "1"))
        return cls(None, dict(job.get("Environment") or {}), ssh_instance_count=count,
                   processing_job_name=processing_job_name, sagemaker_session=session)

    @classmethod
    def augmented_input(cls) -> ProcessingInput:
        """An input that ships the package to a script processor's container; the script runs
        ``sys.path.append("/opt/ml/processing/input")`` then ``import sagemaker_ssh_helper``."""
        return ProcessingInput(source=cls.dependency_dir(), input_name="sagemaker_ssh_helper",
                               destination=f"{PROCESSING_INPUT_PARENT}/{PACKAGE_DIR.name}")

    def processing_job_name(self) -> str:
        if self._job_name:
            return self._job_name
        job = getattr(self._sdk_object, "latest_job", None)
        if job is None:
            raise ValueError("the processing job has not started yet: call run() first")
        return str(job.job_name)

    resource_name = processing_job_name

    def _lookup(self, manager: Any, name: str, timeout_in_sec: int) -> List[str]:
        return list(manager.get_processing_instance_ids(
            name, timeout_in_sec=timeout_in_sec, expected_count=self.ssh_instance_count))

    def describe(self) -> Dict[str, Any]:
        return dict(self.sagemaker_session.describe_processing_job(self.processing_job_name()))

    def wait_processing_job(self, poll_seconds: float = 30.0) -> None:
        _raise_unless_ok(self.processing_job_name(), self.wait_with_status(poll_seconds))

    def stop_processing_job(self) -> None:
        self.sagemaker_session.stop_processing_job(self.processing_job_name())


class SSHTransformerWrapper(_SDKWrapper, SSHJobWrapperBase):
    """SSH into the instances of a batch transform job; its model needs SSHModelWrapper too."""

    kind = "transform"
    status_key = "TransformJobStatus"

    def __init__(self, transformer: Any = None, ssh_model_wrapper: Optional[SSHModelWrapper] = None,
                 transform_job_name: Optional[str] = None, sagemaker_session: Any = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        super().__init__(transformer, sagemaker_session,
                         env if env is not None else getattr(ssh_model_wrapper, "env", None))
        self.ssh_model_wrapper = ssh_model_wrapper
        self._job_name = transform_job_name

    @classmethod
    def create(cls, transformer: Any, ssh_model_wrapper: SSHModelWrapper
               ) -> SSHTransformerWrapper:
        """Enable SSH for ``transformer`` (from ``model.transformer()`` after
        ``SSHModelWrapper.create(model)``); call before ``transform()``."""
        if not isinstance(ssh_model_wrapper, SSHModelWrapper) or not ssh_model_wrapper.env:
            raise ValueError("pass the SSHModelWrapper returned by SSHModelWrapper.create(model)")
        if getattr(transformer, "latest_transform_job", None) is not None:
            raise ValueError(f"the transformer already started transform job "
                             f"{transformer.latest_transform_job.job_name}: call "
                             "SSHTransformerWrapper.create() before transform()")
        transformer.env = merged(transformer.env, ssh_model_wrapper.env)
        # Transform containers see the model's env too: the job name set here wins over an
        # endpoint name the model may carry (see sagemaker_ssh_helper.env).
        wrapper_hooks.hook_name_argument(
            transformer, "transform", "job_name", transformer, "env",
            wrapper_hooks.TRANSFORM_JOB_NAME_VAR,
            lambda sdk_transformer, call: wrapper_hooks.default_transform_job_name(
                sdk_transformer, sdk_utils.name_from_base))
        return cls(transformer, ssh_model_wrapper)

    @classmethod
    def attach(cls, transform_job_name: str, sagemaker_session: Any = None
               ) -> SSHTransformerWrapper:
        session = sagemaker_session or sagemaker.Session()
        job = describe_existing(session.describe_transform_job, transform_job_name,
                                 "transform job")
        return cls(None, None, transform_job_name=transform_job_name, sagemaker_session=session,
                   env=dict(job.get("Environment") or {}))

    def transform_job_name(self) -> str:
        if self._job_name:
            return self._job_name
        job = getattr(self._sdk_object, "latest_transform_job", None)
        if job is None:
            raise ValueError("the transform job has not started yet: call transform() first")
        return str(job.job_name)

    resource_name = transform_job_name

    def _lookup(self, manager: Any, name: str, timeout_in_sec: int) -> List[str]:
        return list(manager.get_transformer_instance_ids(name, timeout_in_sec=timeout_in_sec))

    def describe(self) -> Dict[str, Any]:
        return dict(self.sagemaker_session.describe_transform_job(self.transform_job_name()))

    def wait_transform_job(self, poll_seconds: float = 30.0) -> None:
        _raise_unless_ok(self.transform_job_name(), self.wait_with_status(poll_seconds))

    def stop_transform_job(self) -> None:
        self.sagemaker_session.stop_transform_job(self.transform_job_name())


class SSHIDEWrapper(_SDKWrapper, IDEWrapperBase):
    """SSH into a Studio app (user profile or space) that runs ``sm-ssh-ide`` or
    ``kernel-lc-config.sh``: ``get_instance_ids``, ``print_ssh_info``, ``start_ssm_connection``."""

    @classmethod
    def attach(cls, domain_id: str, user_profile_name: str, app_name: str = "default",
               sagemaker_session: Any = None) -> SSHIDEWrapper:
        return cls(domain_id, user_profile_name, app_name,
                   sagemaker_session=sagemaker_session or sagemaker.Session())


class SSHNotebookInstanceWrapper(_SDKWrapper, NotebookInstanceWrapperBase):
    """SSH into a notebook instance set up with ``SageMaker_SSH_Notebook.ipynb``."""

    @classmethod
    def attach(cls, notebook_instance_name: str,
               sagemaker_session: Any = None) -> SSHNotebookInstanceWrapper:
        return cls(notebook_instance_name,
                   sagemaker_session=sagemaker_session or sagemaker.Session())
