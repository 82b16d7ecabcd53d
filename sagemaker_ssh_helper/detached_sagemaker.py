"""SageMaker SDK objects for jobs that already exist, built without any API call.

``SSHEstimatorWrapper.attach(name)`` and ``SSHProcessorWrapper.attach(name)`` wrap a
``DetachedEstimator`` / ``DetachedProcessor``: an SDK estimator or processor that only knows
its job's name. Attaching therefore works for a job that is still being created and for a
caller without ``DescribeTrainingJob``; the first call that needs the job's details (status,
instance lookup) reports a missing job as a one-line error. The SDK's own
``Estimator.attach()`` is not used: it describes the job and blocks until the job has ended.

The classes subclass the SDK's ``EstimatorBase`` / ``Processor``, so this module imports the
SageMaker SDK, but only when one of the two names is first used: importing
``sagemaker_ssh_helper.detached_sagemaker`` (or ``sagemaker_ssh_helper``) does not.

A detached object cannot start a job: ``fit()`` / ``run()`` raise ``DetachedError``. Its
``role`` is None (the SDK insists on a role at construction, so a placeholder is passed and
removed again).
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["DetachedEstimator", "DetachedProcessor", "DetachedError"]  # noqa: F822 - lazy

_PLACEHOLDER_ROLE = "arn:aws:iam::000000000000:role/sagemaker-ssh-helper-detached"
_built: dict[str, Any] = {}
_lock = threading.Lock()


class DetachedError(ValueError):
    """An operation a detached SDK object cannot do (it only knows a job's name)."""


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _build_estimator() -> Any:
    from sagemaker.estimator import EstimatorBase, _TrainingJob

    class DetachedEstimator(EstimatorBase):
        """An estimator attached to an existing training job by name only."""

        def __init__(self, training_job_name: str, sagemaker_session: Any) -> None:
            name = _check_name(training_job_name, "training_job_name")
            super().__init__(role=_PLACEHOLDER_ROLE, instance_count=0,
                             sagemaker_session=sagemaker_session)
            self.role = None
            self._current_job_name = name  # type: ignore[assignment]
            self.latest_training_job = _TrainingJob(  # type: ignore[assignment]
                self.sagemaker_session, name)

        def _refuse(self, what: str) -> DetachedError:
            return DetachedError(
                f"{what} is not available on the detached estimator of training job "
                f"{self._current_job_name}: it only knows the job's name (use "
                "sagemaker.estimator.Estimator.attach() for a full estimator of a finished job)")

        def training_image_uri(self) -> str:
            raise self._refuse("training_image_uri()")

        def hyperparameters(self) -> dict[str, Any]:
            raise self._refuse("hyperparameters()")

        def create_model(self, **kwargs: Any) -> Any:
            raise self._refuse("create_model()")

        def fit(self, *args: Any, **kwargs: Any) -> None:
            raise self._refuse("fit() (starting another job)")

        @classmethod
        def attach(cls, training_job_name: str, sagemaker_session: Any = None,
                   model_channel_name: str = "model") -> Any:
            """Attach by name: no API call (``model_channel_name`` is accepted and unused)."""
            if sagemaker_session is None:
                import sagemaker

                sagemaker_session = sagemaker.Session()
            return cls(training_job_name, sagemaker_session)

    DetachedEstimator.__module__ = __name__
    return DetachedEstimator


def _build_processor() -> Any:
    from sagemaker.processing import ProcessingJob, Processor

    class DetachedProcessor(Processor):
        """A processor attached to an existing processing job by name only."""

        def __init__(self, processing_job_name: str, sagemaker_session: Any) -> None:
            name = _check_name(processing_job_name, "processing_job_name")
            super().__init__(role=_PLACEHOLDER_ROLE, sagemaker_session=sagemaker_session)
            self.role = None
            self._current_job_name = name  # type: ignore[assignment]
            self.latest_job = ProcessingJob(  # type: ignore[assignment]
                self.sagemaker_session, name, [], [])

        def run(self, *args: Any, **kwargs: Any) -> None:
            raise DetachedError(
                f"run() is not available on the detached processor of processing job "
                f"{self._current_job_name}: it only knows the job's name")

        @classmethod
        def attach(cls, processing_job_name: str, sagemaker_session: Any = None) -> Any:
            """Attach by name: no API call."""
            if sagemaker_session is None:
                import sagemaker

                sagemaker_session = sagemaker.Session()
            return cls(processing_job_name, sagemaker_session)

    DetachedProcessor.__module__ = __name__
    return DetachedProcessor


_BUILDERS = {"DetachedEstimator": _build_estimator, "DetachedProcessor": _build_processor}


def __getattr__(name: str) -> Any:
    builder = _BUILDERS.get(name)
    if builder is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if name not in _built:
            cls = builder()
            cls.__qualname__ = name
            _built[name] = cls
            globals()[name] = cls
    return _built[name]
