"""Launch-side wrappers for SageMaker Python SDK v3: ``ModelTrainer`` and ``ModelBuilder``.

Import them from :mod:`sagemaker_ssh_helper.wrapper` (loaded there on first use)::

    trainer = ModelTrainer(training_image=image, role=role,
                           source_code=SourceCode(source_dir="src", entry_script="train.py"))
    ssh = SSHModelTrainerWrapper.create(trainer, connection_wait_time_seconds=600)
    trainer.train(wait=False)
    ssh.print_ssh_info()

``create()`` puts the environment contract into the object's ``environment`` / ``env_vars``
(validated by the SDK on assignment) and ships the package with the code (see
:mod:`sagemaker_ssh_helper.code_shipping`), so the entry script calls ``setup_and_start_ssh()`` as
with SDK v2. The SDK is never imported here: objects are recognised by their class, and the
helpers (``attach()``, status, instance lookups) call the SageMaker API through boto3, so they
work for jobs and endpoints launched by any means, with or without an SDK installed.
"""
from __future__ import annotations

import inspect
import logging
import uuid
from datetime import timedelta
from typing import Any, Callable

from sagemaker_ssh_helper import aws, code_shipping, fqdn, sdk_versions, wrapper_hooks
from sagemaker_ssh_helper.errors import SSHHelperError
from sagemaker_ssh_helper.manager import SSMManager
from sagemaker_ssh_helper.wrapper_base import (
    DEFAULT_LOOKUP_TIMEOUT,
    WAIT_0,
    WAIT_600,
    SSHEnvironmentWrapper,
    SSHJobWrapperBase,
    build_settings,
    describe_existing,
    merged,
    resolve_ssh_instance_count,
)
from sagemaker_ssh_helper.wrapper_settings import resolve_transport

logger = logging.getLogger(__name__)

__all__ = ["SSHModelTrainerWrapper", "SSHModelBuilderWrapper", "SSHProcessorWrapper"]
# Where augmented_input() mounts the package: the script runs
# sys.path.append("/opt/ml/processing/input") and then `import sagemaker_ssh_helper` (as with v2).
PROCESSING_INPUT_PARENT = "/opt/ml/processing/input"


def sdk_class(obj: Any, name: str, package: str) -> bool:
    """Whether ``obj`` is a ``name`` of the SDK v3 package ``package`` (or a subclass)."""
    return any(c.__name__ == name and c.__module__.split(".")[:2] == package.split(".")
               for c in type(obj).__mro__)


class BotoSession:
    """What the shared wrapper base calls a SageMaker session, on a boto3 session alone."""

    def __init__(self, boto_session: Any) -> None:
        self.boto_session = boto_session
        self.boto_region_name = aws.session_region(boto_session)


def _boto_session(boto_session: Any, region: str | None = None) -> BotoSession:
    return BotoSession(boto_session if boto_session is not None
                       else aws.boto_session(region=region))


def _without_metadata(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def _name_from_arn(arn_text: str, expected_type: str) -> tuple[str, str]:
    try:
        arn = aws.parse_arn(arn_text)
    except SSHHelperError as e:
        raise ValueError(str(e)) from e
    if arn.service != "sagemaker" or arn.resource_type != expected_type or not arn.resource_id:
        raise ValueError(f"not a SageMaker {expected_type} ARN: {arn_text!r}")
    return arn.resource_id, arn.region


class JobEndedError(SSHHelperError, RuntimeError):
    """The job ended Failed (SDK v2 raises UnexpectedStatusException in the same place)."""


def _raise_unless_ok(wrapper: Any, what: str, name: str, status: str) -> None:
    if status not in ("Completed", "Stopped"):
        reason = wrapper.describe().get("FailureReason", "")
        raise JobEndedError(f"{what} {name} ended with status {status}: {reason}".rstrip(": "))


class _V3Wrapper(SSHEnvironmentWrapper):
    """The shared wrapper base on a boto3 session: the SDK object's session (a v3 ``Session``
    has ``boto_session``), the one given to ``attach()``, else boto3's default."""

    def __init__(self, sdk_object: Any = None, boto_session: Any = None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__("", True, 0, None if boto_session is None
                         else _boto_session(boto_session))
        self._sdk_object = sdk_object
        self.env = dict(env or {})
        self.augmented = sdk_object is not None

    @property
    def sagemaker_session(self) -> Any:
        if self._sagemaker_session is None:
            session = getattr(self._sdk_object, "sagemaker_session", None)
            return session if session is not None else self._default_session()
        return self._sagemaker_session

    @sagemaker_session.setter
    def sagemaker_session(self, value: Any) -> None:
        self._sagemaker_session = value

    def _default_session(self) -> BotoSession:
        session = _boto_session(None)
        self._sagemaker_session = session
        return session

    def sagemaker_client(self) -> Any:
        return aws.client(self.boto_session, "sagemaker")


def _native_unsupported(model_trainer: Any) -> str | None:
    """Why SageMaker's remote debugging cannot serve the trainer's job (None: it can)."""
    if not hasattr(model_trainer, "with_remote_debug_config"):
        return "this SageMaker SDK has no remote debugging (with_remote_debug_config): upgrade it"
    if getattr(model_trainer, "algorithm_name", None):
        return "AWS offers no remote debugging for built-in or AWS Marketplace algorithms"
    networking = getattr(model_trainer, "networking", None)
    if getattr(networking, "enable_network_isolation", None) is True:
        return "AWS offers no remote debugging with network isolation"
    config = getattr(model_trainer, "_remote_debug_config", None)
    if config is not None and getattr(config, "enable_remote_debug", None) is False:
        return "the model trainer turns remote debugging off (RemoteDebugConfig)"
    return None


class SSHModelTrainerWrapper(_V3Wrapper, SSHJobWrapperBase):
    """SSH into the nodes of a training job started by ``ModelTrainer.train()`` (SDK v3)."""

    kind = "training"

    def __init__(self, model_trainer: Any = None, env: dict[str, str] | None = None,
                 ssh_instance_count: int = 1, training_job_name: str | None = None,
                 boto_session: Any = None) -> None:
        super().__init__(model_trainer, boto_session, env)
        self.ssh_instance_count = ssh_instance_count
        self._job_name = training_job_name

    @classmethod
    def create(cls, model_trainer: Any, connection_wait_time_seconds: int = WAIT_600,
               ssh_instance_count: int = 2, local_user_id: str | None = None,
               log_to_stdout: bool = False, *, connection_wait_time: timedelta | None = None,
               ssm_iam_role: str | None = None,
               keep_alive_on_failure_seconds: int = 0,
               transport: str = "hybrid") -> SSHModelTrainerWrapper:
        """Enable SSH for ``model_trainer``; call before ``train()``. ``transport`` as for
        SDK v2's ``SSHEstimatorWrapper.create``: ``"hybrid"``, ``"native"`` (SageMaker's
        remote debugging, ``with_remote_debug_config()``) or ``"auto"``."""
        if not sdk_class(model_trainer, "ModelTrainer", "sagemaker.train"):
            raise ValueError(sdk_versions.v3_only_message(cls.__name__, model_trainer))
        started = getattr(model_trainer, "_latest_training_job", None)
        if started is not None:
            raise ValueError(f"the model trainer already started training job "
                             f"{getattr(started, 'training_job_name', '?')}: call "
                             f"{cls.__name__}.create() before train()")
        if str(getattr(model_trainer.training_mode, "name", "")) == "LOCAL_CONTAINER":
            raise ValueError("the model trainer runs in local mode (Mode.LOCAL_CONTAINER): SSH "
                             "is for SageMaker training jobs")
        compute = model_trainer.compute
        count = resolve_ssh_instance_count(ssh_instance_count, getattr(compute, "instance_count",
                                                                       None),
                                           bool(getattr(compute, "instance_groups", None)))
        chosen = resolve_transport(transport, _native_unsupported(model_trainer))
        settings = build_settings(model_trainer, model_trainer.role, "model trainer",
                                  connection_wait_time_seconds, connection_wait_time,
                                  local_user_id, log_to_stdout, ssm_iam_role,
                                  instance_count=count,
                                  keep_alive_on_failure_seconds=keep_alive_on_failure_seconds,
                                  transport=chosen)
        if chosen == "native":  # SageMaker starts its SSM agent in the containers
            model_trainer.with_remote_debug_config(None)
        env = settings.environment()
        source_code = code_shipping.with_package(model_trainer.source_code, model_trainer)
        model_trainer.environment = merged(model_trainer.environment, env)
        if source_code is not None:
            model_trainer.source_code = source_code
        return cls(model_trainer, env, ssh_instance_count=count)

    @classmethod
    def attach(cls, training_job_name: str, boto_session: Any = None) -> SSHModelTrainerWrapper:
        """Wrap an existing training job, however it was launched (boto3 only)."""
        session = _boto_session(boto_session)
        client = aws.client(session.boto_session, "sagemaker")
        job = describe_existing(lambda name: client.describe_training_job(TrainingJobName=name),
                                training_job_name, "training job")
        env = dict(job.get("Environment") or {})
        count = int(env.get("SSH_INSTANCE_COUNT", "1"))
        return cls(None, env, ssh_instance_count=count, training_job_name=training_job_name,
                   boto_session=session.boto_session)

    @classmethod
    def attach_arn(cls, arn: str, boto_session: Any = None) -> SSHModelTrainerWrapper:
        name, region = _name_from_arn(arn, fqdn.kind(cls.kind).arn_type)
        if boto_session is None:
            boto_session = aws.boto_session(region=region)
        return cls.attach(name, boto_session)

    @property
    def model_trainer(self) -> Any:
        """The ModelTrainer given to create(); None for attached jobs."""
        return self._sdk_object

    def training_job_name(self) -> str:
        if self._job_name:
            return self._job_name
        job = getattr(self._sdk_object, "_latest_training_job", None)
        if job is None:
            raise ValueError("the training job has not started yet: call train() first")
        return str(job.training_job_name)

    resource_name = training_job_name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return self._native_lookup(name, timeout_in_sec, lambda: manager.get_training_instance_ids(
            name, timeout_in_sec=timeout_in_sec, expected_count=self.ssh_instance_count))

    def describe(self) -> dict[str, Any]:
        return _without_metadata(self.sagemaker_client().describe_training_job(
            TrainingJobName=self.training_job_name()))

    def wait_training_job_with_status(self, poll_seconds: float = 30.0) -> str:
        return self.wait_with_status(poll_seconds)

    def wait_training_job(self, poll_seconds: float = 30.0) -> None:
        """Wait for the job to end; raise ``JobEndedError`` if it failed."""
        _raise_unless_ok(self, "training job", self.training_job_name(),
                         self.wait_with_status(poll_seconds))

    def stop_training_job(self) -> None:
        self.sagemaker_client().stop_training_job(TrainingJobName=self.training_job_name())

    def rule_job_summary(self) -> list[dict[str, Any]]:
        """Debugger and Profiler rule evaluation statuses of the job."""
        job = self.describe()
        return list(job.get("DebugRuleEvaluationStatuses") or []) + \
            list(job.get("ProfilerRuleEvaluationStatuses") or [])


class SSHProcessorWrapper(_V3Wrapper, SSHJobWrapperBase):
    """SSH into the nodes of a processing job run by an SDK v3 processor
    (``sagemaker.core.processing``: ``Processor``, ``ScriptProcessor``, ``FrameworkProcessor``).
    Same name and use as the SDK v2 wrapper, which ``sagemaker_ssh_helper.wrapper`` gives under v2.
    """

    kind = "processing"

    def __init__(self, processor: Any = None, env: dict[str, str] | None = None,
                 ssh_instance_count: int = 1, processing_job_name: str | None = None,
                 boto_session: Any = None) -> None:
        super().__init__(processor, boto_session, env)
        self.ssh_instance_count = ssh_instance_count
        self._job_name = processing_job_name

    @classmethod
    def create(cls, processor: Any, connection_wait_time_seconds: int = WAIT_600,
               ssh_instance_count: int = 2, local_user_id: str | None = None,
               log_to_stdout: bool = False, *, connection_wait_time: timedelta | None = None,
               ssm_iam_role: str | None = None,
               keep_alive_on_failure_seconds: int = 0) -> SSHProcessorWrapper:
        """Enable SSH for ``processor``; call before ``run()``."""
        if not sdk_class(processor, "Processor", "sagemaker.core"):
            raise ValueError(sdk_versions.v3_only_message(cls.__name__, processor))
        if getattr(processor, "latest_job", None) is not None:
            raise ValueError(f"the processor already started a processing job: call "
                             f"{cls.__name__}.create() before run()")
        count = resolve_ssh_instance_count(ssh_instance_count, processor.instance_count, False)
        settings = build_settings(processor, processor.role, "processor",
                                  connection_wait_time_seconds, connection_wait_time,
                                  local_user_id, log_to_stdout, ssm_iam_role,
                                  instance_count=count,
                                  keep_alive_on_failure_seconds=keep_alive_on_failure_seconds)
        env = settings.environment()
        processor.env = merged(processor.env, env)
        return cls(processor, env, ssh_instance_count=count)

    @classmethod
    def attach(cls, processing_job_name: str, boto_session: Any = None) -> SSHProcessorWrapper:
        """Wrap an existing processing job, however it was launched (boto3 only)."""
        session = _boto_session(boto_session)
        client = aws.client(session.boto_session, "sagemaker")
        job = describe_existing(
            lambda name: client.describe_processing_job(ProcessingJobName=name),
            processing_job_name, "processing job")
        env = dict(job.get("Environment") or {})
        return cls(None, env, ssh_instance_count=int(env.get("SSH_INSTANCE_COUNT", "1")),
                   processing_job_name=processing_job_name, boto_session=session.boto_session)

    @classmethod
    def augmented_input(cls) -> Any:
        """A ``ProcessingInput`` that ships the package to the container under
        ``/opt/ml/processing/input``; the script runs
        ``sys.path.append("/opt/ml/processing/input")`` then ``import sagemaker_ssh_helper``."""
        from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

        return ProcessingInput(input_name="sagemaker_ssh_helper", s3_input=ProcessingS3Input(
            s3_uri=code_shipping.package_copy(), s3_data_type="S3Prefix",
            s3_input_mode="File",
            local_path=f"{PROCESSING_INPUT_PARENT}/{code_shipping.PACKAGE_DIR.name}"))

    def processing_job_name(self) -> str:
        if self._job_name:
            return self._job_name
        job = getattr(self._sdk_object, "latest_job", None)
        if job is None:
            raise ValueError("the processing job has not started yet: call run() first")
        return str(getattr(job, "processing_job_name", None) or job.job_name)

    resource_name = processing_job_name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return list(manager.get_processing_instance_ids(
            name, timeout_in_sec=timeout_in_sec, expected_count=self.ssh_instance_count))

    def describe(self) -> dict[str, Any]:
        return _without_metadata(self.sagemaker_client().describe_processing_job(
            ProcessingJobName=self.processing_job_name()))

    def wait_processing_job(self, poll_seconds: float = 30.0) -> None:
        """Wait for the job to end; raise ``JobEndedError`` if it failed."""
        _raise_unless_ok(self, "processing job", self.processing_job_name(),
                         self.wait_with_status(poll_seconds))

    def stop_processing_job(self) -> None:
        self.sagemaker_client().stop_processing_job(ProcessingJobName=self.processing_job_name())


def _endpoint_native_unsupported(model_builder: Any) -> str | None:
    """Why SSM access cannot serve the builder's endpoint (None: it may)."""
    network = getattr(model_builder, "network", None)
    return wrapper_hooks.endpoint_native_unsupported(
        getattr(network, "enable_network_isolation", None) is True
        or getattr(model_builder, "_enable_network_isolation", None) is True)


class SSHModelBuilderWrapper(_V3Wrapper):
    """SSH into the instances of an endpoint deployed by ``ModelBuilder.deploy()`` (SDK v3).

    ``build()`` creates the model, so its container environment is fixed before ``deploy()``
    names the endpoint. The wrapper hooks both: ``build()`` bakes in the name ``deploy()`` will
    use when given none; a ``deploy(endpoint_name=...)`` with another name re-creates that model
    (DeleteModel, then CreateModel with the same definition and the name in its environment)
    before the endpoint is created, so the container registers under the endpoint's name.
    """

    kind = "inference"
    transport = "hybrid"  # the one create() chose; "native": the variant's SSM access

    def __init__(self, model_builder: Any = None, env: dict[str, str] | None = None,
                 endpoint_name: str | None = None, boto_session: Any = None) -> None:
        super().__init__(model_builder, boto_session, env)
        self._endpoint_name = endpoint_name
        self._planned_name: str | None = None
        self._built_for: str | None = None  # the endpoint name the built model carries

    @classmethod
    def create(cls, model_builder: Any, connection_wait_time_seconds: int = WAIT_0,
               local_user_id: str | None = None, log_to_stdout: bool = False, *,
               connection_wait_time: timedelta | None = None,
               ssm_iam_role: str | None = None,
               transport: str = "hybrid") -> SSHModelBuilderWrapper:
        """Enable SSH for the endpoint ``model_builder`` deploys; call before ``deploy()``.
        ``transport`` as for SDK v2's ``SSHModelWrapper.create``: ``"hybrid"``, ``"native"``
        (``deploy()`` turns on the production variant's SSM access, ``EnableSSMAccess``) or
        ``"auto"`` (hybrid: the account's allowlisting shows only at deploy time)."""
        if not sdk_class(model_builder, "ModelBuilder", "sagemaker.serve"):
            raise ValueError(sdk_versions.v3_only_message(cls.__name__, model_builder))
        if getattr(model_builder, "_deployed", False):
            raise ValueError(f"the model builder already deployed endpoint "
                             f"{getattr(model_builder, 'endpoint_name', '?')}: call "
                             f"{cls.__name__}.create() before deploy()")
        chosen = resolve_transport(transport, _endpoint_native_unsupported(model_builder)
                                   if transport == "native" else
                                   "the account's allowlisting for SSM access cannot be "
                                   "checked before deploy()")
        settings = build_settings(model_builder, model_builder.role_arn, "model builder",
                                  connection_wait_time_seconds, connection_wait_time,
                                  local_user_id, log_to_stdout, ssm_iam_role,
                                  transport=chosen)
        env = settings.environment()
        source_code = code_shipping.with_package(model_builder.source_code, model_builder)
        model_builder.env_vars = merged(model_builder.env_vars, env)
        if source_code is not None:
            model_builder.source_code = source_code
            # ModelBuilder reads its script-mode folder from source_dir, set at construction.
            model_builder.source_dir = source_code.source_dir
        wrapper = cls(model_builder, env)
        wrapper.transport = chosen
        wrapper._hook(model_builder)
        return wrapper

    # -- the build()/deploy() hooks ---------------------------------------------------------
    def _hook(self, model_builder: Any) -> None:
        for method, hook in (("build", self._before_build), ("deploy", self._before_deploy)):
            original = getattr(model_builder, method)
            if getattr(original, "_sm_ssh_hooked", False):
                continue
            setattr(model_builder, method, _hooked(original, hook))

    def _before_build(self, call: inspect.BoundArguments) -> None:
        if self._planned_name is None:
            self._planned_name = f"endpoint-{uuid.uuid4().hex[:8]}"  # as deploy() names one
        self._set_name(self._planned_name)

    def _set_name(self, name: str) -> None:
        builder = self._sdk_object
        builder.env_vars = merged(builder.env_vars, {wrapper_hooks.ENDPOINT_NAME_VAR: name})
        self._built_for = name

    def _before_deploy(self, call: inspect.BoundArguments) -> None:
        name = call.arguments.get("endpoint_name")
        if not name or name == "endpoint":
            name = self._planned_name or f"endpoint-{uuid.uuid4().hex[:8]}"
            call.arguments["endpoint_name"] = name
        model = getattr(self._sdk_object, "built_model", None)
        if model is not None and self._built_for != name:
            self._recreate_model(str(model.model_name), str(name))
        self._set_name(str(name))
        logger.info("%s=%s is passed to the container", wrapper_hooks.ENDPOINT_NAME_VAR, name)
        session = getattr(self._sdk_object, "sagemaker_session", None)
        if self.transport == "native" and session is not None:  # SageMaker's agent
            builder = self._sdk_object
            wrapper_hooks.register_ssm_access(
                session.sagemaker_client,
                lambda: getattr(getattr(builder, "built_model", None), "model_name", None),
                builder)

    def _recreate_model(self, model_name: str, endpoint_name: str) -> None:
        """Re-create ``model_name`` with the SSH environment and ``endpoint_name`` in it."""
        client = self.sagemaker_client()
        model = client.describe_model(ModelName=model_name)
        tags = client.list_tags(ResourceArn=model["ModelArn"]).get("Tags") or []
        accepted = client.meta.service_model.operation_model("CreateModel").input_shape.members
        request = {k: v for k, v in model.items() if k in accepted}
        env = dict(self.env, **{wrapper_hooks.ENDPOINT_NAME_VAR: endpoint_name})
        for container in ([request["PrimaryContainer"]] if "PrimaryContainer" in request
                          else []) + list(request.get("Containers") or []):
            container["Environment"] = merged(container.get("Environment"), env)
        if tags:
            request["Tags"] = tags
        client.delete_model(ModelName=model_name)
        client.create_model(**request)
        logger.info("model %s re-created with %s=%s", model_name,
                    wrapper_hooks.ENDPOINT_NAME_VAR, endpoint_name)

    # -- attach and names -------------------------------------------------------------------
    @classmethod
    def attach(cls, endpoint_name: str, boto_session: Any = None) -> SSHModelBuilderWrapper:
        """Wrap an existing endpoint, however it was deployed (boto3 only)."""
        session = _boto_session(boto_session)
        client = aws.client(session.boto_session, "sagemaker")
        describe_existing(lambda name: client.describe_endpoint(EndpointName=name),
                          endpoint_name, "endpoint")
        return cls(None, None, endpoint_name=endpoint_name, boto_session=session.boto_session)

    @property
    def model_builder(self) -> Any:
        return self._sdk_object

    def endpoint_name(self) -> str:
        name = self._endpoint_name or getattr(self._sdk_object, "endpoint_name", None)
        if not name or not getattr(self._sdk_object, "_deployed", self._sdk_object is None):
            raise ValueError("the model is not deployed yet: call deploy() first")
        return str(name)

    resource_name = endpoint_name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return self._native_lookup(name, timeout_in_sec, lambda: manager.get_endpoint_instance_ids(
            name, timeout_in_sec=timeout_in_sec))

    def describe(self) -> dict[str, Any]:
        return _without_metadata(self.sagemaker_client().describe_endpoint(
            EndpointName=self.endpoint_name()))

    def get_instance_ids_from_logs(self, timeout_in_sec: int = DEFAULT_LOOKUP_TIMEOUT
                                   ) -> list[str]:
        """Managed instance IDs found in the endpoint's CloudWatch logs (Logs Insights)."""
        return self.ssh_log().get_endpoint_ssm_instance_ids(self.endpoint_name(),
                                                            timeout_in_sec=timeout_in_sec)


def _hooked(original: Callable[..., Any],
            before: Callable[[inspect.BoundArguments], None]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        call = signature.bind(*args, **kwargs)
        before(call)
        return original(*call.args, **call.kwargs)

    hooked.__doc__ = original.__doc__
    hooked.__wrapped__ = original  # type: ignore[attr-defined]
    hooked._sm_ssh_hooked = True  # type: ignore[attr-defined]
    return hooked
