"""What a job's container sees: /opt/ml laid out as SageMaker does, the entry point, the env.

Training (per host ``algo-N``)::

    /opt/ml/input/config/resourceconfig.json    current_host, hosts, network_interface_name
    /opt/ml/input/config/hyperparameters.json   HyperParameters as sent (string values)
    /opt/ml/input/config/inputdataconfig.json   per-channel settings
    /opt/ml/input/config/trainingjobconfig.json the CreateTrainingJob request + TrainingJobArn
    /opt/ml/input/data/<channel>/               the channel's S3 objects
    /opt/ml/code/                               sourcedir.tar.gz from sagemaker_submit_directory
    /opt/ml/model/, /opt/ml/output/data/        uploaded after the job

and the entry point runs like the SageMaker training toolkit does it:
``python <sagemaker_program> --hp value ...`` in /opt/ml/code.

Processing: /opt/ml/config/processingjobconfig.json (request + ProcessingJobArn),
/opt/ml/config/resourceconfig.json, inputs downloaded to their LocalPath, outputs uploaded from
theirs, AppSpecification.ContainerEntrypoint + ContainerArguments as the command.
"""
from __future__ import annotations

import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

NETWORK_INTERFACE = "lo"  # the only interface a sandbox container has
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class JobSetupError(Exception):
    """The job cannot run in the sandbox; the message becomes its FailureReason."""


@dataclass
class Platform:
    """What every container gets from the (emulated) platform."""

    region: str
    account: str
    endpoint_url: str
    ssm_endpoint_url: str
    python: str
    path_dirs: list[str] = field(default_factory=list)
    credentials: dict[str, str] = field(default_factory=dict)
    # role ARN -> credentials of that role (containers run as their execution role when set)
    role_credentials: Callable[[str], dict[str, str]] | None = None

    def env(self, role_arn: str | None = None) -> dict[str, str]:
        env = {
            "PATH": os.pathsep.join(self.path_dirs + [CONTAINER_PATH]),
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "TRUE",
            "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "SAGEMAKER_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_SSM": self.ssm_endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "SM_SSH_PYTHON": self.python,
        }
        if role_arn and self.role_credentials is not None:
            env.update(self.role_credentials(role_arn))
        else:
            env.update(self.credentials)
        return env


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise JobSetupError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def relative_key(key: str, prefix: str) -> str:
    """``key`` relative to an S3Prefix ``prefix`` (the object's name for an exact match)."""
    if key == prefix:
        return os.path.basename(key)
    if not prefix or prefix.endswith("/"):
        return key[len(prefix):]
    if key.startswith(prefix + "/"):
        return key[len(prefix) + 1:]
    return key[len(prefix.rsplit("/", 1)[0]) + 1:] if "/" in prefix else key


_relative_key = relative_key  # earlier name


def download_prefix(s3: Any, uri: str, dest: Path) -> int:
    """Download every object under ``uri`` (S3Prefix semantics) into ``dest``; returns count."""
    bucket, prefix = split_s3_uri(uri)
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            rel = relative_key(key, prefix)
            if not rel or rel.endswith("/"):
                continue
            target = dest / rel
            if ".." in Path(rel).parts:
                raise JobSetupError(f"refusing S3 key outside the destination: {key!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            count += 1
    if count == 0:
        raise JobSetupError(f"ClientError: no S3 objects found under {uri}")
    return count


def upload_dir(s3: Any, src: Path, uri: str) -> int:
    bucket, prefix = split_s3_uri(uri)
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(src).as_posix()]))
        s3.upload_file(str(path), bucket, key)
        count += 1
    return count


def upload_tarball(s3: Any, src: Path, uri: str) -> None:
    """Upload the contents of ``src`` as a .tar.gz object at ``uri``."""
    bucket, key = split_s3_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(src.iterdir()) if src.is_dir() else []:
                tar.add(path, arcname=path.name)
        s3.upload_file(str(archive), bucket, key)


def extract_tarball(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters
            tar.extractall(dest)  # noqa: S202


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str))


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _as_arg(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def hosts_for(count: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, max(count, 1) + 1)]


def training_entry(request: dict[str, Any], python: str) -> list[str]:
    hps = {k: _decode(v) for k, v in (request.get("HyperParameters") or {}).items()}
    program = hps.get("sagemaker_program")
    user_args: list[str] = []
    for key in sorted(k for k in hps if not k.startswith("sagemaker_")):
        user_args += [f"--{key}", _as_arg(hps[key])]
    algo = request.get("AlgorithmSpecification") or {}
    if algo.get("ContainerEntrypoint"):
        return list(algo["ContainerEntrypoint"]) + list(algo.get("ContainerArguments") or [])
    if not program:
        raise JobSetupError(
            "the sandbox runs script-mode jobs only: set an entry point (hyperparameter "
            "sagemaker_program) or AlgorithmSpecification.ContainerEntrypoint")
    if str(program).endswith(".py"):
        return [python, str(program)] + user_args
    if str(program).endswith(".sh"):
        return ["/bin/sh", str(program)] + user_args
    return [f"/opt/ml/code/{program}"] + user_args


def prepare_training(s3: Any, opt_ml: Path, request: dict[str, Any], arn: str, host: str,
                     hosts: list[str], platform: Platform) -> tuple[list[str], str, dict[str, str]]:
    """Lay out ``opt_ml`` for ``host``; return (argv, cwd, env) for the container."""
    raw_hps = request.get("HyperParameters") or {}
    hps = {k: _decode(v) for k, v in raw_hps.items()}
    instance_type = (request.get("ResourceConfig") or {}).get("InstanceType", "ml.m5.large")
    resource = {
        "current_host": host, "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster", "hosts": hosts,
        "instance_groups": [{"instance_group_name": "homogeneousCluster",
                             "instance_type": instance_type, "hosts": hosts}],
        "network_interface_name": NETWORK_INTERFACE,
    }
    config = opt_ml / "input" / "config"
    _write_json(config / "resourceconfig.json", resource)
    _write_json(config / "hyperparameters.json", raw_hps)
    _write_json(config / "trainingjobconfig.json", dict(request, TrainingJobArn=arn))
    channels: dict[str, Any] = {}
    for channel in request.get("InputDataConfig") or []:
        name = channel["ChannelName"]
        s3_source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
        channels[name] = {
            "TrainingInputMode": channel.get("InputMode") or
            (request.get("AlgorithmSpecification") or {}).get("TrainingInputMode", "File"),
            "S3DistributionType": s3_source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        if channel.get("ContentType"):
            channels[name]["ContentType"] = channel["ContentType"]
        if not s3_source.get("S3Uri"):
            raise JobSetupError(f"channel {name!r}: only S3 data sources run in the sandbox")
        download_prefix(s3, s3_source["S3Uri"], opt_ml / "input" / "data" / name)
    _write_json(config / "inputdataconfig.json", channels)
    for sub in ("model", "output/data", "output/intermediate", "code"):
        (opt_ml / sub).mkdir(parents=True, exist_ok=True)
    submit_dir = hps.get("sagemaker_submit_directory")
    if isinstance(submit_dir, str) and submit_dir.startswith("s3://"):
        with tempfile.TemporaryDirectory() as tmp:
            bucket, key = split_s3_uri(submit_dir)
            archive = Path(tmp) / "sourcedir.tar.gz"
            s3.download_file(bucket, key, str(archive))
            extract_tarball(archive, opt_ml / "code")
    argv = training_entry(request, platform.python)
    env = platform.env(request.get("RoleArn"))
    env.update(request.get("Environment") or {})
    env.update(_training_vars(request, arn, host, hosts, hps, list(channels), argv))
    env["PYTHONPATH"] = ":".join(filter(None, ["/opt/ml/code", env.get("PYTHONPATH")]))
    return argv, "/opt/ml/code", env


def _training_vars(request: dict[str, Any], arn: str, host: str, hosts: list[str],
                   hps: dict[str, Any], channels: list[str], argv: list[str]) -> dict[str, str]:
    user_hps = {k: v for k, v in hps.items() if not k.startswith("sagemaker_")}
    program = str(hps.get("sagemaker_program") or "")
    values: dict[str, Any] = {
        "TRAINING_JOB_NAME": request["TrainingJobName"],
        "TRAINING_JOB_ARN": arn,
        "SM_CURRENT_HOST": host,
        "SM_HOSTS": json.dumps(hosts),
        "SM_NETWORK_INTERFACE_NAME": NETWORK_INTERFACE,
        "SM_CURRENT_INSTANCE_TYPE": (request.get("ResourceConfig") or {}).get("InstanceType", ""),
        "SM_MODEL_DIR": "/opt/ml/model",
        "SM_INPUT_DIR": "/opt/ml/input",
        "SM_INPUT_CONFIG_DIR": "/opt/ml/input/config",
        "SM_OUTPUT_DIR": "/opt/ml/output",
        "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
        "SM_OUTPUT_INTERMEDIATE_DIR": "/opt/ml/output/intermediate",
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_HPS": json.dumps(user_hps),
        "SM_NUM_GPUS": "0",
        "SM_NUM_NEURONS": "0",
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_LOG_LEVEL": "20",
        "SM_MODULE_DIR": str(hps.get("sagemaker_submit_directory") or ""),
        "SM_MODULE_NAME": program[:-3] if program.endswith(".py") else program,
        "SM_USER_ENTRY_POINT": program,
        "SM_USER_ARGS": json.dumps(argv[2:] if program.endswith(".py") else argv[1:]),
        "SM_FRAMEWORK_PARAMS": "{}",
    }
    for channel in channels:
        values[f"SM_CHANNEL_{channel.upper()}"] = f"/opt/ml/input/data/{channel}"
    for key, value in user_hps.items():
        values[f"SM_HP_{key.upper()}"] = _as_arg(value)
    values["SM_TRAINING_ENV"] = json.dumps({
        "current_host": host, "hosts": hosts, "job_name": request["TrainingJobName"],
        "hyperparameters": user_hps, "channel_input_dirs": {
            c: f"/opt/ml/input/data/{c}" for c in channels},
        "model_dir": "/opt/ml/model", "output_data_dir": "/opt/ml/output/data",
        "module_dir": values["SM_MODULE_DIR"], "user_entry_point": program,
        "num_gpus": 0, "num_cpus": int(values["SM_NUM_CPUS"]),
        "network_interface_name": NETWORK_INTERFACE,
    })
    return {k: str(v) for k, v in values.items()}


def _container_path(opt_ml: Path, local_path: str) -> Path:
    norm = os.path.normpath(local_path)
    if not norm.startswith("/opt/ml/"):
        raise JobSetupError(f"LocalPath must be under /opt/ml/processing: {local_path!r}")
    return opt_ml / norm[len("/opt/ml/"):]


def processing_io(request: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [i for i in request.get("ProcessingInputs") or []]
    outputs = list((request.get("ProcessingOutputConfig") or {}).get("Outputs") or [])
    return inputs, outputs


def prepare_processing(s3: Any, opt_ml: Path, request: dict[str, Any], arn: str, host: str,
                       hosts: list[str], platform: Platform
                       ) -> tuple[list[str], str, dict[str, str]]:
    config = opt_ml / "config"
    _write_json(config / "processingjobconfig.json", dict(request, ProcessingJobArn=arn))
    _write_json(config / "resourceconfig.json", {"current_host": host, "hosts": hosts})
    inputs, outputs = processing_io(request)
    for item in inputs:
        s3_input = item.get("S3Input")
        if not s3_input:
            raise JobSetupError(
                f"input {item.get('InputName')!r}: only S3Input runs in the sandbox")
        download_prefix(s3, s3_input["S3Uri"], _container_path(opt_ml, s3_input["LocalPath"]))
    for item in outputs:
        s3_output = item.get("S3Output") or {}
        if s3_output.get("LocalPath"):
            _container_path(opt_ml, s3_output["LocalPath"]).mkdir(parents=True, exist_ok=True)
    app = request.get("AppSpecification") or {}
    argv = list(app.get("ContainerEntrypoint") or []) + list(app.get("ContainerArguments") or [])
    if not app.get("ContainerEntrypoint"):
        raise JobSetupError("the sandbox needs AppSpecification.ContainerEntrypoint (there is no "
                            "image to take a default entry point from)")
    env = platform.env(request.get("RoleArn"))
    env.update(request.get("Environment") or {})
    return argv, "/", env


def upload_processing_outputs(s3: Any, opt_ml: Path, request: dict[str, Any]) -> int:
    count = 0
    for item in processing_io(request)[1]:
        s3_output = item.get("S3Output") or {}
        if s3_output.get("LocalPath") and s3_output.get("S3Uri"):
            src = _container_path(opt_ml, s3_output["LocalPath"])
            if src.is_dir():
                count += upload_dir(s3, src, s3_output["S3Uri"])
    return count
