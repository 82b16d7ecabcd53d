"""Which SageMaker Python SDK is installed, read from package metadata (never by importing it).

The package installs next to either SDK major (``pip install sagemaker-ssh-helper[v2]`` or
``[v3]``) and never changes the one the user has. Each wrapper works with one major:

- training jobs: ``SSHEstimatorWrapper`` (v2 ``Estimator``), ``SSHModelTrainerWrapper`` (v3
  ``ModelTrainer``);
- real-time endpoints: ``SSHModelWrapper`` (v2 ``Model``), ``SSHModelBuilderWrapper`` (v3
  ``ModelBuilder``);
- processing jobs: ``SSHProcessorWrapper``, same name and use with both (v3:
  ``sagemaker.core.processing``).

Batch transform jobs, multi-model endpoints, Studio apps and notebook instances have no v3
wrapper: with v3 (or plain boto3) launch them with the environment contract and connect with
``sm-ssh``.
This module says so in one line wherever a name of the other major is used.
"""
from __future__ import annotations

from importlib import metadata

# SDK v2 names of sagemaker_ssh_helper.wrapper -> what to use with SDK v3 instead.
V2_ONLY: dict[str, str] = {
    "SSHEstimatorWrapper": "SSHModelTrainerWrapper.create(model_trainer) for a ModelTrainer",
    "SSHModelWrapper": "SSHModelBuilderWrapper.create(model_builder) for a ModelBuilder",
    "SSHMultiModelWrapper": "SSHModelBuilderWrapper.create(model_builder) for a ModelBuilder",
    # SSHProcessorWrapper: the same name wraps SDK v3's processors (sagemaker.core.processing)
    "SSHProcessorWrapper": "SSHProcessorWrapper.create(processor) for sagemaker.core.processing",
    "SSHTransformerWrapper": "the environment contract with boto3's create_transform_job "
                             "(FAQ: I launch jobs with boto3), then sm-ssh connect",
    "SSHIDEWrapper": "sm-ssh connect <app>.<user-or-space>.<domain>.studio.sagemaker",
    "SSHNotebookInstanceWrapper": "sm-ssh connect <name>.notebook.sagemaker",
}
# SDK v3 names -> (the v3 class they wrap, what to use with SDK v2 instead).
V3_ONLY: dict[str, tuple[str, str]] = {
    "SSHModelTrainerWrapper": ("ModelTrainer", "SSHEstimatorWrapper.create(estimator)"),
    "SSHModelBuilderWrapper": ("ModelBuilder", "SSHModelWrapper.create(model)"),
    "SSHProcessorWrapper": ("Processor", "sagemaker.processing's processors"),
}


def installed_version() -> str | None:
    """The installed ``sagemaker`` distribution's version, or None."""
    try:
        return metadata.version("sagemaker")
    except metadata.PackageNotFoundError:
        return None


def installed_major() -> int | None:
    """2 or 3 (None without the SDK). SDK v3's parts installed without the ``sagemaker``
    meta-package (``sagemaker-train``, ``sagemaker-serve``) count as v3."""
    version = installed_version()
    if version is not None:
        try:
            return int(version.split(".")[0])
        except ValueError:
            return None
    for part in ("sagemaker-train", "sagemaker-serve"):
        try:
            metadata.version(part)
            return 3
        except metadata.PackageNotFoundError:
            continue
    return None


def _installed_text() -> str:
    version = installed_version()
    if version is not None:
        return f"sagemaker {version} is installed"
    if installed_major() == 3:
        return "SDK v3 parts are installed"
    return "no SageMaker SDK is installed"


def v2_only_message(name: str, error: BaseException | None = None) -> str:
    """One line: ``name`` needs SDK v2, and what to use instead (``error``: why the SDK v2
    import failed, shown when v2 is what is installed)."""
    if installed_major() == 2:
        return f"{name} needs the SageMaker Python SDK v2, which failed to import: {error}"
    return (f"{name} wraps SageMaker Python SDK v2 objects, but {_installed_text()}: with SDK v3 "
            f"use {V2_ONLY.get(name, 'the v3 wrappers')} (sagemaker_ssh_helper.wrapper)")


def v3_only_message(name: str, given: object) -> str:
    """One line: ``name`` takes an SDK v3 object, ``given`` is something else."""
    wrapped, v2_alternative = V3_ONLY[name]
    what = type(given).__name__
    if installed_major() == 3:
        return f"{name}.create() takes a sagemaker {wrapped} (SDK v3), not {what!r}"
    return (f"{name}.create() takes a {wrapped} of SageMaker Python SDK v3, but "
            f"{_installed_text()} and got {what!r}: with SDK v2 use {v2_alternative}")
