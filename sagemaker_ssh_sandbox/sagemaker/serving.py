"""What an inference container sees (endpoints and batch transform): the host-side layout.

For the model's container definition (``DescribeModel``: ``PrimaryContainer``, or the only entry
of ``Containers``)::

    /opt/ml/model/                  ModelDataUrl (model.tar.gz) extracted, or the objects under
                                    ModelDataSource.S3DataSource.S3Uri (CompressionType None)
    /opt/ml/code/                   SAGEMAKER_SUBMIT_DIRECTORY when that is an s3:// tarball
    /run/sm-ssh-sandbox/transform/  batch transform only: input/ (this instance's share of the
                                    job's S3 objects) and output/ (``<name>.out`` files)

The container's process is :mod:`sagemaker_ssh_sandbox.sagemaker.model_server`; its environment is
the platform's, then the container definition's ``Environment``, then (batch transform) the job's
``Environment`` and the batch settings SageMaker passes (``SAGEMAKER_BATCH`` & co).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox.sagemaker import layout, model_server
from sagemaker_ssh_sandbox.sagemaker.container import PACKAGE_PARENT
from sagemaker_ssh_sandbox.sagemaker.layout import JobSetupError

TRANSFORM_DIR = "/run/sm-ssh-sandbox/transform"

# (bucket, key, key relative to the input prefix)
S3Object = tuple[str, str, str]


ROLE_KEY = "SandboxExecutionRoleArn"


def describe_model(sagemaker: Any, name: str) -> dict[str, Any]:
    try:
        return dict(sagemaker.describe_model(ModelName=name))
    except Exception as e:
        message = getattr(e, "response", {}).get("Error", {}).get("Message") or str(e)
        raise JobSetupError(message) from e


def container_definition(model: dict[str, Any]) -> dict[str, Any]:
    """The one container the sandbox runs for ``model`` (no inference pipelines)."""
    containers = list(model.get("Containers") or [])
    if model.get("PrimaryContainer"):
        containers = [model["PrimaryContainer"]] + containers
    if len(containers) != 1:
        raise JobSetupError(f"model {model.get('ModelName')} has {len(containers)} containers: "
                            "the sandbox runs single-container models only")
    # the container runs as the model's execution role
    return dict(containers[0], **{ROLE_KEY: model.get("ExecutionRoleArn")})


def _download_tarball(s3: Any, uri: str, dest: Path) -> None:
    bucket, key = layout.split_s3_uri(uri)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        try:
            s3.download_file(bucket, key, str(archive))
        except Exception as e:
            raise JobSetupError(f"cannot download {uri}: {e}") from e
        try:
            layout.extract_tarball(archive, dest)
        except Exception as e:
            raise JobSetupError(f"{uri} is not a readable tar.gz archive: {e}") from e


def prepare_model(s3: Any, opt_ml: Path, definition: dict[str, Any]) -> None:
    """Lay out /opt/ml/model (and /opt/ml/code) for ``definition``."""
    model_dir = opt_ml / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    source = (definition.get("ModelDataSource") or {}).get("S3DataSource") or {}
    if definition.get("ModelDataUrl"):
        url = str(definition["ModelDataUrl"])
        if url.endswith("/"):
            layout.download_prefix(s3, url, model_dir)
        else:
            _download_tarball(s3, url, model_dir)
    elif source.get("S3Uri"):
        if source.get("CompressionType", "None") == "Gzip":
            _download_tarball(s3, str(source["S3Uri"]), model_dir)
        else:
            layout.download_prefix(s3, str(source["S3Uri"]), model_dir)
    submit = str((definition.get("Environment") or {}).get("SAGEMAKER_SUBMIT_DIRECTORY") or "")
    if submit.startswith("s3://"):
        _download_tarball(s3, submit, opt_ml / "code")


def container_env(platform: layout.Platform, definition: dict[str, Any],
                  *extra: dict[str, str]) -> dict[str, str]:
    env = platform.env(definition.get(ROLE_KEY))
    env.update({str(k): str(v) for k, v in (definition.get("Environment") or {}).items()})
    for more in extra:
        env.update(more)
    # Only to start the model server module; it drops this entry before the model's code runs.
    env["PYTHONPATH"] = str(PACKAGE_PARENT)
    return env


def server_argv(platform: layout.Platform, mode: str, *args: str) -> list[str]:
    return [platform.python, "-m", model_server.MODULE, mode, *args]


def prepare_endpoint(s3: Any, opt_ml: Path, definition: dict[str, Any],
                     platform: layout.Platform) -> tuple[list[str], str, dict[str, str]]:
    """(argv, cwd, env) of an endpoint instance's container."""
    prepare_model(s3, opt_ml, definition)
    return server_argv(platform, "serve"), "/opt/ml/model", container_env(platform, definition)


# -- batch transform -------------------------------------------------------------------------------
def transform_inputs(s3: Any, request: dict[str, Any]) -> list[S3Object]:
    """The job's input objects, sorted by key (S3Prefix; ManifestFile lists keys in JSON)."""
    source = ((request.get("TransformInput") or {}).get("DataSource") or {}).get(
        "S3DataSource") or {}
    uri = str(source.get("S3Uri") or "")
    if source.get("S3DataType", "S3Prefix") != "S3Prefix":
        raise JobSetupError(f"S3DataType {source.get('S3DataType')}: the sandbox runs S3Prefix "
                            "inputs only")
    bucket, prefix = layout.split_s3_uri(uri)
    found: list[S3Object] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = layout.relative_key(obj["Key"], prefix)
            if rel and not rel.endswith("/") and ".." not in Path(rel).parts:
                found.append((bucket, obj["Key"], rel))
    if not found:
        raise JobSetupError(f"no S3 objects found under {uri}")
    return sorted(found, key=lambda o: o[1])


def batch_env(request: dict[str, Any]) -> dict[str, str]:
    env = {"SAGEMAKER_BATCH": "true"}
    for field, var in (("MaxPayloadInMB", "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
                       ("BatchStrategy", "SAGEMAKER_BATCH_STRATEGY"),
                       ("MaxConcurrentTransforms", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")):
        if request.get(field) is not None:
            env[var] = str(request[field])
    return env


def prepare_transform(s3: Any, root: Path, opt_ml: Path, definition: dict[str, Any],
                      request: dict[str, Any], share: list[S3Object],
                      platform: layout.Platform) -> tuple[list[str], str, dict[str, str]]:
    """(argv, cwd, env) of one transform instance's container, given its ``share`` of inputs.

    The caller binds ``root/transform`` on :data:`TRANSFORM_DIR`."""
    prepare_model(s3, opt_ml, definition)
    inputs, outputs = root / "transform" / "input", root / "transform" / "output"
    outputs.mkdir(parents=True, exist_ok=True)
    inputs.mkdir(parents=True, exist_ok=True)
    for bucket, key, rel in share:
        target = inputs / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    transform_input = request.get("TransformInput") or {}
    transform_output = request.get("TransformOutput") or {}
    args = ["--input-dir", f"{TRANSFORM_DIR}/input", "--output-dir", f"{TRANSFORM_DIR}/output",
            "--content-type", str(transform_input.get("ContentType") or "application/json"),
            "--accept", str(transform_output.get("Accept") or model_server.DEFAULT_ACCEPT),
            "--split-type", str(transform_input.get("SplitType") or "None"),
            "--assemble-with", str(transform_output.get("AssembleWith") or "None"),
            "--batch-strategy", str(request.get("BatchStrategy") or "MultiRecord")]
    job_env = {str(k): str(v) for k, v in (request.get("Environment") or {}).items()}
    env = container_env(platform, definition, job_env, batch_env(request))
    return server_argv(platform, "transform", *args), "/opt/ml/model", env


def upload_transform_outputs(s3: Any, roots: list[Path], request: dict[str, Any]) -> int:
    """Upload every instance's ``<name>.out`` files under TransformOutput.S3OutputPath."""
    uri = str((request.get("TransformOutput") or {}).get("S3OutputPath") or "")
    count = 0
    for root in roots:
        outputs = root / "transform" / "output"
        if outputs.is_dir():
            count += layout.upload_dir(s3, outputs, uri)
    return count
