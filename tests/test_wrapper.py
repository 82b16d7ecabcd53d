"""Launch-side wrappers with real SageMaker SDK v2 objects against moto (in-process).

moto drops ``Environment`` for training/processing jobs, so the tests assert what the SDK
actually *sent*: a botocore ``provide-client-params`` hook on the session's SageMaker client
records every request's parameters.
"""
from __future__ import annotations

import copy
import io
import logging
import re
import socket
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import jsonschema
import pytest
import sagemaker
import sagemaker.config.config
from moto import mock_aws
from sagemaker.config.config_schema import SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA
from sagemaker.estimator import Estimator
from sagemaker.exceptions import UnexpectedStatusException
from sagemaker.instance_group import InstanceGroup
from sagemaker.model import Model
from sagemaker.multidatamodel import MultiDataModel
from sagemaker.processing import FrameworkProcessor, ScriptProcessor
from sagemaker.pytorch import PyTorch, PyTorchModel

from sagemaker_ssh_helper import aws
from sagemaker_ssh_helper.detached_sagemaker import DetachedError, DetachedEstimator
from sagemaker_ssh_helper.log import REGISTRATION_TEXT
from sagemaker_ssh_helper.wrapper import (
    SSHEstimatorWrapper,
    SSHModelWrapper,
    SSHMultiModelWrapper,
    SSHProcessorWrapper,
    SSHTransformerWrapper,
    WrapperStateError,
)

REGION = "us-east-1"
BUCKET = "sm-ssh-helper-tests"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ssh-test:latest"
PACKAGE_DIR = Path(SSHEstimatorWrapper.dependency_dir())
_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to resolve or reach a non-local host (moto works without sockets)."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in _LOCAL_HOSTS:
            raise AssertionError(f"test tried the network: {address}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOCAL_HOSTS and host is not None:
            raise AssertionError(f"test tried to resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class SDK:
    """A SageMaker session on moto plus a record of the parameters of every SageMaker call."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.sent: dict[str, list[dict[str, Any]]] = defaultdict(list)
        session.sagemaker_client.meta.events.register(
            "provide-client-params.sagemaker", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.sent[model.name].append(copy.deepcopy(params))

    def last(self, operation: str) -> dict[str, Any]:
        assert self.sent[operation], f"the SDK did not call {operation}"
        return self.sent[operation][-1]

    def estimator(self, **kwargs: Any) -> Estimator:
        args: dict[str, Any] = dict(image_uri=IMAGE, role=ROLE, instance_count=1,
                                    instance_type="ml.m5.xlarge", sagemaker_session=self.session,
                                    output_path=f"s3://{BUCKET}/output")
        args.update(kwargs)
        return Estimator(**args)

    def model(self, **kwargs: Any) -> Model:
        args: dict[str, Any] = dict(image_uri=IMAGE, model_data=f"s3://{BUCKET}/model.tar.gz",
                                    role=ROLE, sagemaker_session=self.session)
        args.update(kwargs)
        return Model(**args)

    def s3_keys(self, prefix: str = "") -> list[str]:
        s3 = self.session.boto_session.client("s3")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SDK]:
    config = tmp_path / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    # With a config file the SDK re-checks its JSON schema on every config lookup (~0.4 s
    # each); validate against one prepared validator instead, which checks the same thing.
    validator = jsonschema.validators.validator_for(SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA)(
        SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA)
    for module in (sagemaker.utils, sagemaker.session, sagemaker.config.config):
        monkeypatch.setattr(module, "validate_sagemaker_config",
                            lambda config=None: validator.validate(config))
    with mock_aws():
        boto = boto3.Session(region_name=REGION)
        boto.client("s3").create_bucket(Bucket=BUCKET)
        yield SDK(sagemaker.Session(boto_session=boto, default_bucket=BUCKET))


def caller_user_id() -> str:
    return str(boto3.client("sts", region_name=REGION).get_caller_identity()["UserId"])


# -- estimators -------------------------------------------------------------------------------
def test_estimator_env_is_sent_with_create_training_job(sdk: SDK) -> None:
    estimator = sdk.estimator(environment={"USER_VAR": "kept"})
    wrapper = SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=1200)
    estimator.fit(wait=False)

    sent = sdk.last("CreateTrainingJob")
    assert sent["Environment"] == {
        "USER_VAR": "kept",
        "START_SSH": "true",
        "SSH_SSM_ROLE": "SageMakerRole",
        "SSH_OWNER_TAG": caller_user_id(),
        "SSH_WAIT_TIME_SECONDS": "1200",
        "SSH_INSTANCE_COUNT": "1",
        "SSH_LOG_TO_STDOUT": "false",
    }
    assert wrapper.training_job_name() == sent["TrainingJobName"]
    assert wrapper.fqdn() == f"{sent['TrainingJobName']}.training.sagemaker"


def test_keep_alive_on_failure_is_sent_in_the_env_contract(sdk: SDK) -> None:
    estimator = sdk.estimator()
    SSHEstimatorWrapper.create(estimator, keep_alive_on_failure_seconds=1800)
    estimator.fit(wait=False)
    assert sdk.last("CreateTrainingJob")["Environment"]["SSH_KEEP_ALIVE_ON_FAILURE_SECONDS"] \
        == "1800"

    processor = ScriptProcessor(image_uri=IMAGE, command=["python3"], role=ROLE,
                                instance_count=1, instance_type="ml.m5.xlarge",
                                sagemaker_session=sdk.session)
    SSHProcessorWrapper.create(processor, keep_alive_on_failure_seconds=timedelta(minutes=5))
    processor.run(code="s3://bucket/script.py", wait=False, logs=False)
    assert sdk.last("CreateProcessingJob")["Environment"][
        "SSH_KEEP_ALIVE_ON_FAILURE_SECONDS"] == "300"

    for bad in (-1, 1.5, "600", float("inf"), 29 * 24 * 3600):
        with pytest.raises(ValueError, match="keep_alive_on_failure_seconds"):
            SSHEstimatorWrapper.create(sdk.estimator(), keep_alive_on_failure_seconds=bad)


def test_framework_estimator_ships_the_package_as_a_dependency(sdk: SDK, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("import sagemaker_ssh_helper\n"
                                     "sagemaker_ssh_helper.setup_and_start_ssh()\n")
    estimator = PyTorch(entry_point="train.py", source_dir=str(source), role=ROLE,
                        dependencies=[SSHEstimatorWrapper.dependency_dir()],
                        framework_version="2.2", py_version="py310", instance_count=2,
                        instance_type="ml.m5.xlarge", sagemaker_session=sdk.session,
                        output_path=f"s3://{BUCKET}/output", code_location=f"s3://{BUCKET}/code")
    SSHEstimatorWrapper.create(estimator, log_to_stdout=True)
    estimator.fit(wait=False)

    sent = sdk.last("CreateTrainingJob")
    env = sent["Environment"]
    assert env["SSH_INSTANCE_COUNT"] == "2"
    assert env["SSH_WAIT_TIME_SECONDS"] == "600"
    assert env["SSH_LOG_TO_STDOUT"] == "true"
    submit_dir = sent["HyperParameters"]["sagemaker_submit_directory"].strip('"')
    bucket, key = submit_dir[len("s3://"):].split("/", 1)
    body = sdk.session.boto_session.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    with tarfile.open(fileobj=io.BytesIO(body.read())) as tar:
        names = set(tar.getnames())
    assert {"train.py", "sagemaker_ssh_helper/__init__.py", "sagemaker_ssh_helper/VERSION"} \
        <= names
    # what containers use, not the launch side, the laptop's commands or the CDK code
    shipped = {n.split("/", 1)[1] for n in names if n.startswith("sagemaker_ssh_helper/")
               and not n.endswith("/__pycache__") and "/__pycache__/" not in n}
    assert {"bootstrap.py", "init_ssm.py", "sm-setup-ssh", "sm-wait"} <= shipped
    assert not shipped & {"wrapper.py", "sm_ssh.py", "connect.py", "sm-local-ssh-training",
                          "cdk", "cdk/policies.py"}
    assert not [n for n in names if "sandbox" in n]


def test_dependency_dir_holds_what_containers_use(tmp_path: Path) -> None:
    """dependency_dir() is a folder named like the package with the container side only; a
    Python without site-packages imports every module of it from there (so nothing a container
    imports is left behind)."""
    import sagemaker_ssh_helper

    package = Path(sagemaker_ssh_helper.__file__).resolve().parent
    assert PACKAGE_DIR.name == "sagemaker_ssh_helper" and PACKAGE_DIR != package
    assert SSHProcessorWrapper.dependency_dir() == str(PACKAGE_DIR)
    files = sorted(p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    assert {"VERSION", "__init__.py", "bootstrap.py", "init_ssm.py", "wait.py", "save_env.py",
            "ide_container.py", "idle.py", "sm-setup-ssh", "sm-init-ssm", "sm-wait",
            "sm-save-env", "sm-ssh-ide"} <= set(files)
    assert not [f for f in files if f.startswith(("wrapper", "cdk/", "sm-local-", "sm_ssh"))]
    assert (PACKAGE_DIR / "VERSION").read_text() == (package / "VERSION").read_text()
    modules = [f[:-3] for f in files if f.endswith(".py") and f != "__init__.py"]
    code = ("import importlib, sagemaker_ssh_helper as p; print(p.__file__); "
            f"[importlib.import_module('sagemaker_ssh_helper.' + m) for m in {modules!r}]")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, text=True,
                          capture_output=True, env={"PYTHONPATH": str(PACKAGE_DIR.parent),
                                                         "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(PACKAGE_DIR / "__init__.py")


def test_create_after_fit_is_refused(sdk: SDK) -> None:
    estimator = sdk.estimator()
    estimator.fit(wait=False)
    with pytest.raises(ValueError, match=r"call SSHEstimatorWrapper.create\(\) before fit\(\)"):
        SSHEstimatorWrapper.create(estimator)
    assert "START_SSH" not in (sdk.last("CreateTrainingJob").get("Environment") or {})


@pytest.mark.parametrize("kwargs, expected", [
    ({}, "600"),
    ({"connection_wait_time_seconds": 0}, "0"),
    ({"connection_wait_time": timedelta(minutes=5)}, "300"),
    ({"connection_wait_time_seconds": 0, "connection_wait_time": timedelta(minutes=5)}, "0"),
    ({"connection_wait_time_seconds": 600, "connection_wait_time": timedelta(hours=1)}, "600"),
    ({"connection_wait_time_seconds": 45}, "45"),
])
def test_wait_time_precedence(sdk: SDK, kwargs: dict[str, Any], expected: str) -> None:
    estimator = sdk.estimator()
    SSHEstimatorWrapper.create(estimator, **kwargs)
    estimator.fit(wait=False)
    assert sdk.last("CreateTrainingJob")["Environment"]["SSH_WAIT_TIME_SECONDS"] == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"connection_wait_time_seconds": -1}, "between 0 and 2419200 seconds"),
    ({"connection_wait_time_seconds": float("nan")}, "between 0 and 2419200 seconds"),
    ({"connection_wait_time_seconds": float("inf")}, "between 0 and 2419200 seconds"),
    ({"connection_wait_time_seconds": 1e20}, "between 0 and 2419200 seconds"),
    ({"connection_wait_time": timedelta(days=-1)}, "connection_wait_time must be between"),
    ({"connection_wait_time_seconds": "600"}, "must be a number"),
    ({"connection_wait_time": 300}, "must be a datetime.timedelta"),
    ({"ssh_instance_count": 0}, "ssh_instance_count must be an integer >= 1"),
    ({"ssm_iam_role": "my role"}, "is not an IAM role name"),
    ({"ssm_iam_role": "Role\nX"}, "is not an IAM role name"),
    ({"ssm_iam_role": "a" * 65}, "is not an IAM role name"),
    ({"local_user_id": "AIDAEXAMPLE\nSSHOwner=victim"}, "local_user_id must be"),
    ({"local_user_id": " padded"}, "local_user_id must be"),
])
def test_bad_arguments_are_refused(sdk: SDK, kwargs: dict[str, Any], message: str) -> None:
    estimator = sdk.estimator()
    with pytest.raises(ValueError, match=message) as raised:
        SSHEstimatorWrapper.create(estimator, **kwargs)
    assert "\n" not in str(raised.value).replace("\\n", "")  # one line, whatever was passed
    assert not (estimator.environment or {})


@pytest.mark.parametrize("instance_count, requested, expected", [
    (1, 2, "1"), (3, 2, "2"), (3, 5, "3"), (4, 4, "4"), (2, 1, "1"),
])
def test_ssh_instance_count_is_clipped(sdk: SDK, instance_count: int, requested: int,
                                       expected: str) -> None:
    estimator = sdk.estimator(instance_count=instance_count)
    wrapper = SSHEstimatorWrapper.create(estimator, ssh_instance_count=requested)
    estimator.fit(wait=False)
    assert sdk.last("CreateTrainingJob")["Environment"]["SSH_INSTANCE_COUNT"] == expected
    assert wrapper.ssh_instance_count == int(expected)


def test_heterogeneous_cluster_gets_one_node_and_a_warning(
        sdk: SDK, caplog: pytest.LogCaptureFixture) -> None:
    groups = [InstanceGroup("cpu", "ml.c5.xlarge", 2), InstanceGroup("gpu", "ml.p3.2xlarge", 1)]
    estimator = sdk.estimator(instance_count=None, instance_type=None, instance_groups=groups)
    with caplog.at_level(logging.WARNING, logger="sagemaker_ssh_helper"):
        SSHEstimatorWrapper.create(estimator, ssh_instance_count=3)
    estimator.fit(wait=False)
    sent = sdk.last("CreateTrainingJob")
    assert sent["ResourceConfig"]["InstanceGroups"]
    assert sent["Environment"]["SSH_INSTANCE_COUNT"] == "1"
    assert "heterogeneous cluster" in caplog.text


@pytest.mark.parametrize("role, ssm_iam_role, expected", [
    ("arn:aws:iam::123456789012:role/SageMakerRole", None, "SageMakerRole"),
    ("arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-Exec", None,
     "service-role/AmazonSageMaker-Exec"),
    ("arn:aws-cn:iam::123456789012:role/CnRole", None, "CnRole"),
    ("arn:aws:iam::123456789012:role/SageMakerRole", "SSMInstanceRole", "SSMInstanceRole"),
])
def test_ssm_role_from_the_estimator_or_explicit(sdk: SDK, role: str, ssm_iam_role: Any,
                                                  expected: str) -> None:
    estimator = sdk.estimator(role=role)
    SSHEstimatorWrapper.create(estimator, ssm_iam_role=ssm_iam_role)
    assert estimator.environment["SSH_SSM_ROLE"] == expected


def test_full_arn_as_ssm_iam_role_is_refused(sdk: SDK) -> None:
    estimator = sdk.estimator()
    with pytest.raises(ValueError, match="pass 'SSMRole' instead of"):
        SSHEstimatorWrapper.create(
            estimator, ssm_iam_role="arn:aws:iam::123456789012:role/SSMRole")


def test_estimator_without_iam_role_is_refused(sdk: SDK) -> None:
    estimator = sdk.estimator()
    estimator.role = "arn:aws:sts::123456789012:assumed-role/X/session"
    with pytest.raises(ValueError, match="not an IAM role"):
        SSHEstimatorWrapper.create(estimator)


def test_local_user_id_wins_and_owner_is_logged_masked(
        sdk: SDK, caplog: pytest.LogCaptureFixture) -> None:
    estimator = sdk.estimator()
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper"):
        SSHEstimatorWrapper.create(estimator, local_user_id="AROAEXAMPLEID:alice@example.com")
    assert estimator.environment["SSH_OWNER_TAG"] == "AROAEXAMPLEID:alice@example.com"
    assert "alice@example.com" not in caplog.text
    assert aws.mask("AROAEXAMPLEID:alice@example.com") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper"):
        SSHEstimatorWrapper.create(sdk.estimator())
    assert caller_user_id() not in caplog.text
    assert aws.mask(caller_user_id()) in caplog.text


def test_estimator_without_session_uses_default_credentials(sdk: SDK) -> None:
    estimator = Estimator(image_uri=IMAGE, role=ROLE, instance_count=1,
                          instance_type="ml.m5.xlarge")
    SSHEstimatorWrapper.create(estimator)
    assert estimator.environment["SSH_OWNER_TAG"] == caller_user_id()


def test_attach_and_job_helpers(sdk: SDK) -> None:
    estimator = sdk.estimator()
    launched = SSHEstimatorWrapper.create(estimator)
    estimator.fit(wait=False)
    name = launched.training_job_name()

    for wrapper in (SSHEstimatorWrapper.attach(name, sdk.session),
                    SSHEstimatorWrapper.attach_arn(
                        f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
                        sdk.session)):
        assert wrapper.training_job_name() == name
        assert wrapper.is_job_in_progress() is False  # moto completes jobs at once
        assert wrapper.wait_training_job_with_status() == "Completed"
        wrapper.wait_training_job()
        assert wrapper.rule_job_summary() == []
        assert isinstance(wrapper.estimator, DetachedEstimator)
        with pytest.raises(DetachedError, match=f"training job {name}: it only knows"):
            wrapper.estimator.fit()
    assert launched.wait_training_job_with_status() == "Completed"
    assert launched.estimator is estimator


def test_wait_training_job_raises_on_failure(sdk: SDK) -> None:
    estimator = sdk.estimator()
    wrapper = SSHEstimatorWrapper.create(estimator)
    estimator.fit(wait=False)
    backend_job = moto_job("training", wrapper.training_job_name())
    backend_job.training_job_status = "Failed"
    assert wrapper.wait_training_job_with_status() == "Failed"
    with pytest.raises(UnexpectedStatusException, match="ended with status Failed"):
        wrapper.wait_training_job()


@pytest.mark.parametrize("arn, message", [
    ("not-an-arn", "not an ARN"),
    (f"arn:aws:sagemaker:{REGION}:123456789012:processing-job/x", "training-job ARN"),
    ("arn:aws:sagemaker:eu-west-1:123456789012:training-job/x", "is in eu-west-1"),
])
def test_attach_arn_refuses_wrong_arns(sdk: SDK, arn: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SSHEstimatorWrapper.attach_arn(arn, sdk.session)


@pytest.mark.parametrize("wrapper_cls, what", [
    (SSHEstimatorWrapper, "training job"), (SSHProcessorWrapper, "processing job"),
    (SSHTransformerWrapper, "transform job"),
])
def test_attach_is_lazy_and_a_missing_job_fails_at_first_use(
        sdk: SDK, wrapper_cls: Any, what: str, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper = wrapper_cls.attach("missing-job", sdk.session)
    assert not sdk.sent  # attaching made no API call
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"waited {s} s"))
    with pytest.raises(ValueError, match=f"no {what} named 'missing-job'"):
        wrapper.print_ssh_info()
    assert list(sdk.sent) == [f"Describe{what.title().replace(' ', '')}"]


@pytest.mark.parametrize("kind", ["training", "processing"])
def test_finished_job_fails_in_seconds_with_the_state(
        sdk: SDK, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """attach(<finished job>).print_ssh_info() says the job ended instead of waiting 900 s."""
    launched = start_job(sdk, tmp_path, kind)  # moto completes jobs at once
    name = launched.resource_name()
    cls = SSHEstimatorWrapper if kind == "training" else SSHProcessorWrapper
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"waited {s} s"))
    with pytest.raises(WrapperStateError, match=f"job {name} is Completed: SSH is available "
                                                "only while it runs"):
        cls.attach(name, sdk.session).print_ssh_info()
    with pytest.raises(ValueError, match="is Completed"):  # a ValueError, as in v2
        cls.attach(name, sdk.session).get_instance_ids(timeout_in_sec=600)


def test_training_job_name_before_fit_is_an_error(sdk: SDK) -> None:
    wrapper = SSHEstimatorWrapper.create(sdk.estimator())
    with pytest.raises(ValueError, match=r"call fit\(\) first"):
        wrapper.training_job_name()


def test_console_urls(sdk: SDK) -> None:
    estimator = sdk.estimator()
    wrapper = SSHEstimatorWrapper.create(estimator)
    estimator.fit(wait=False)
    name = wrapper.training_job_name()
    assert wrapper.get_metadata_url() == (
        f"https://{REGION}.console.aws.amazon.com/sagemaker/home?region={REGION}#/jobs/{name}")
    assert wrapper.get_cloudwatch_url() == (
        f"https://{REGION}.console.aws.amazon.com/cloudwatch/home?region={REGION}#logsV2:log-groups/"
        f"log-group/$252Faws$252Fsagemaker$252FTrainingJobs$3FlogStreamNameFilter$3D{name}$252F")


@pytest.fixture
def ssm_stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The sandbox's SSM service on loopback; SSM clients reach it via AWS_ENDPOINT_URL_SSM."""
    ssm_service = pytest.importorskip("sagemaker_ssh_sandbox.ssm.service")
    server = ssm_service.start_ssm_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    yield server
    server.shutdown()


def ssh_tags(name: str, arn_type: str, timestamp: int) -> dict[str, str]:
    return {"SSHResourceName": name, "SSHOwner": "owner", "SSHTimestamp": str(timestamp),
            "SSHResourceArn": f"arn:aws:sagemaker:{REGION}:123456789012:{arn_type}/{name}"}


def test_instance_lookups_through_ssm(sdk: SDK, ssm_stand_in: Any,
                                      capsys: pytest.CaptureFixture) -> None:
    estimator = sdk.estimator(instance_count=3)
    wrapper = SSHEstimatorWrapper.create(estimator)  # SSH on 2 of the 3 nodes
    estimator.fit(wait=False)
    name = wrapper.training_job_name()
    backend = ssm_stand_in.backend
    older = backend.add_fake_instances(1, tags=ssh_tags(name, "training-job", 1000))
    newer = backend.add_fake_instances(1, tags=ssh_tags(name, "training-job", 2000))
    backend.add_fake_instances(1, tags=ssh_tags(name, "processing-job", 3000))
    backend.add_fake_instances(1, tags=ssh_tags("other-job", "training-job", 4000))

    assert wrapper.get_instance_ids(timeout_in_sec=0) == newer + older
    assert wrapper.get_instance_id(timeout_in_sec=0, index=1) == older[0]
    assert wrapper.get_instance_id(None, 0, 1) == older[0]  # v2 order: retry, timeout, index
    with pytest.raises(ValueError, match="instance index 2 out of range"):
        wrapper.get_instance_id(timeout_in_sec=0, index=2)
    text = wrapper.print_ssh_info(timeout_in_sec=0)
    assert text in capsys.readouterr().out
    assert text.splitlines() == [
        f"Connect with: sm-ssh connect {name}.training.sagemaker",
        f"  instances: {newer[0]}, {older[0]}",
        f"  by id:     sm-local-start-ssh {newer[0]}",
        f"  by id:     sm-local-start-ssh {older[0]}",
    ]

    endpoint = SSHModelWrapper.attach("my-endpoint", sdk.session)
    assert endpoint.get_instance_ids(timeout_in_sec=0) == []
    with pytest.raises(ValueError, match="no SSM instance registered for "
                                         "my-endpoint.inference.sagemaker yet"):
        endpoint.get_instance_id(timeout_in_sec=0)
    mine = backend.add_fake_instances(1, tags=ssh_tags("my-endpoint", "endpoint", 5000))
    assert endpoint.get_instance_ids(timeout_in_sec=0) == mine


# -- models and endpoints ---------------------------------------------------------------------
def test_model_env_is_sent_with_create_model(sdk: SDK) -> None:
    model = sdk.model(env={"MODEL_VAR": "kept"})
    wrapper = SSHModelWrapper.create(model, connection_wait_time=timedelta(minutes=2))
    model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)

    env = sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    endpoint = sdk.last("CreateEndpoint")["EndpointName"]
    assert env == {"MODEL_VAR": "kept", "START_SSH": "true", "SSH_SSM_ROLE": "SageMakerRole",
                   "SSH_OWNER_TAG": caller_user_id(), "SSH_WAIT_TIME_SECONDS": "120",
                   "SSH_LOG_TO_STDOUT": "false", "SAGEMAKER_ENDPOINT_NAME": endpoint}
    assert endpoint.startswith("ssh-test-")  # named as the SDK would (from the image)
    assert wrapper.endpoint_name() == endpoint
    assert wrapper.fqdn() == f"{endpoint}.inference.sagemaker"
    with pytest.raises(ValueError, match=r"call SSHModelWrapper.create\(\) before deploy\(\)"):
        SSHModelWrapper.create(model)

    attached = SSHModelWrapper.attach(endpoint, sdk.session)
    assert attached.endpoint_name() == endpoint
    assert attached.get_metadata_url().endswith(f"#/endpoints/{endpoint}")
    assert attached.get_cloudwatch_url().endswith(
        f"log-group/$252Faws$252Fsagemaker$252FEndpoints$252F{endpoint}")


def test_the_endpoint_name_given_to_deploy_reaches_the_container(sdk: SDK) -> None:
    model = sdk.model()
    wrapper = SSHModelWrapper.create(model)
    # positionally: (initial_instance_count, instance_type, serializer, deserializer,
    # accelerator_type, endpoint_name)
    model.deploy(1, "ml.m5.xlarge", None, None, None, "My-Endpoint", wait=False)
    assert sdk.last("CreateEndpoint")["EndpointName"] == "My-Endpoint"
    env = sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_ENDPOINT_NAME"] == "My-Endpoint"
    assert wrapper.endpoint_name() == "My-Endpoint"


def test_framework_model_endpoint_is_named_after_its_serving_image(sdk: SDK,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    sdk.session.boto_session.client("s3").upload_file(str(archive), BUCKET, "model.tar.gz")
    model = PyTorchModel(model_data=f"s3://{BUCKET}/model.tar.gz", entry_point="inference.py",
                         source_dir=str(tmp_path), role=ROLE, framework_version="2.2",
                         py_version="py310", sagemaker_session=sdk.session)
    SSHModelWrapper.create(model)
    model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)
    endpoint = sdk.last("CreateEndpoint")["EndpointName"]
    assert endpoint.startswith("pytorch-inference-")
    env = sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_ENDPOINT_NAME"] == endpoint


def test_model_wait_time_defaults_to_zero(sdk: SDK) -> None:
    model = sdk.model()
    SSHModelWrapper.create(model)
    assert model.env["SSH_WAIT_TIME_SECONDS"] == "0"
    assert "SSH_INSTANCE_COUNT" not in model.env


def test_multi_data_model_with_model(sdk: SDK) -> None:
    inner = sdk.model(env={"INNER": "1"})
    mdm = MultiDataModel(name="mme-with-model", model_data_prefix=f"s3://{BUCKET}/mme/",
                         model=inner, sagemaker_session=sdk.session)
    SSHMultiModelWrapper.create(mdm, connection_wait_time_seconds=30)
    mdm.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)
    container = sdk.last("CreateModel")["PrimaryContainer"]
    assert container["Mode"] == "MultiModel"
    assert container["Environment"]["INNER"] == "1"
    assert sdk.last("CreateEndpoint")["EndpointName"] == "mme-with-model"
    assert container["Environment"]["SAGEMAKER_ENDPOINT_NAME"] == "mme-with-model"
    assert {k: container["Environment"][k] for k in ("START_SSH", "SSH_WAIT_TIME_SECONDS")} \
        == {"START_SSH": "true", "SSH_WAIT_TIME_SECONDS": "30"}


def test_multi_data_model_with_image_uri_only(sdk: SDK) -> None:
    mdm = MultiDataModel(name="mme-image-only", model_data_prefix=f"s3://{BUCKET}/mme/",
                         image_uri=IMAGE, role=ROLE, sagemaker_session=sdk.session)
    wrapper = SSHMultiModelWrapper.create(mdm, ssm_iam_role="SSMRole")
    mdm.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)
    container = sdk.last("CreateModel")["PrimaryContainer"]
    assert container["Mode"] == "MultiModel"
    assert container["Environment"]["START_SSH"] == "true"
    assert container["Environment"]["SSH_SSM_ROLE"] == "SSMRole"
    assert wrapper.endpoint_name() == sdk.last("CreateEndpoint")["EndpointName"]
    assert container["Environment"]["SAGEMAKER_ENDPOINT_NAME"] == wrapper.endpoint_name()
    with pytest.raises(ValueError, match="before deploy"):
        SSHMultiModelWrapper.create(mdm)


def test_model_wrappers_refuse_the_other_kind(sdk: SDK) -> None:
    mdm = MultiDataModel(name="mme", model_data_prefix=f"s3://{BUCKET}/mme/",
                         image_uri=IMAGE, role=ROLE, sagemaker_session=sdk.session)
    with pytest.raises(ValueError, match="use SSHMultiModelWrapper"):
        SSHModelWrapper.create(mdm)
    with pytest.raises(ValueError, match="use SSHModelWrapper"):
        SSHMultiModelWrapper.create(sdk.model())


# -- processors -------------------------------------------------------------------------------
def test_framework_processor(sdk: SDK, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "process.py").write_text("import sagemaker_ssh_helper\n")
    processor = FrameworkProcessor(
        estimator_cls=PyTorch, framework_version="2.2", py_version="py310", role=ROLE,
        instance_count=2, instance_type="ml.m5.xlarge", sagemaker_session=sdk.session,
        code_location=f"s3://{BUCKET}/code", env={"P": "1"})
    wrapper = SSHProcessorWrapper.create(processor, ssh_instance_count=3)
    processor.run(code="process.py", source_dir=str(source),
                  dependencies=[SSHProcessorWrapper.dependency_dir()], wait=False, logs=False)

    sent = sdk.last("CreateProcessingJob")
    assert {k: sent["Environment"].get(k) for k in ("P", "START_SSH", "SSH_INSTANCE_COUNT",
                                                    "SSH_WAIT_TIME_SECONDS")} \
        == {"P": "1", "START_SSH": "true", "SSH_INSTANCE_COUNT": "2",
            "SSH_WAIT_TIME_SECONDS": "600"}
    assert wrapper.processing_job_name() == sent["ProcessingJobName"]
    assert wrapper.fqdn() == f"{sent['ProcessingJobName']}.processing.sagemaker"
    assert any(k.endswith("sourcedir.tar.gz") for k in sdk.s3_keys())
    with pytest.raises(ValueError, match=r"before run\(\)"):
        SSHProcessorWrapper.create(processor)

    attached = SSHProcessorWrapper.attach(sent["ProcessingJobName"], sdk.session)
    assert attached.processing_job_name() == sent["ProcessingJobName"]
    assert attached.describe()["ProcessingJobName"] == sent["ProcessingJobName"]


def test_script_processor_augmented_input_is_importable(sdk: SDK, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("import sys\nsys.path.append('/opt/ml/processing/input')\n"
                      "import sagemaker_ssh_helper\n")
    processor = ScriptProcessor(image_uri=IMAGE, command=["python3"], role=ROLE,
                                instance_count=1, instance_type="ml.m5.xlarge",
                                sagemaker_session=sdk.session)
    SSHProcessorWrapper.create(processor, connection_wait_time_seconds=0)
    processor.run(code=str(script), inputs=[SSHProcessorWrapper.augmented_input()],
                  wait=False, logs=False)

    sent = sdk.last("CreateProcessingJob")
    assert sent["Environment"]["SSH_WAIT_TIME_SECONDS"] == "0"
    assert sent["Environment"]["SSH_INSTANCE_COUNT"] == "1"
    inputs = {i["InputName"]: i["S3Input"] for i in sent["ProcessingInputs"]}
    helper = inputs["sagemaker_ssh_helper"]
    assert helper["LocalPath"] == "/opt/ml/processing/input/sagemaker_ssh_helper"

    # Lay the uploaded input out as the container would and import it from there.
    root = tmp_path / "container"
    local = root / helper["LocalPath"].lstrip("/")
    bucket, prefix = helper["S3Uri"][len("s3://"):].split("/", 1)
    s3 = sdk.session.boto_session.client("s3")
    for key in sdk.s3_keys(prefix.rstrip("/") + "/"):
        target = local / key[len(prefix.rstrip("/")) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    probe = ("import sys; sys.path.append(sys.argv[1]); import sagemaker_ssh_helper as m; "
             "print(m.__file__, m.__version__)")
    done = subprocess.run([sys.executable, "-c", probe, str(local.parent)], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith(str(local / "__init__.py"))


def test_endpoint_instance_ids_from_the_logs(sdk: SDK) -> None:
    logs = sdk.session.boto_session.client("logs")
    group, stream = "/aws/sagemaker/Endpoints/my-endpoint", "AllTraffic/i-0123456789"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
        {"timestamp": now, "message": "starting the model server"},
        {"timestamp": now + 1, "message": f"{REGISTRATION_TEXT}: mi-0123456789abcdef0"}])
    wrapper = SSHModelWrapper.attach("my-endpoint", sdk.session)
    assert wrapper.get_instance_ids_from_logs(timeout_in_sec=0) == ["mi-0123456789abcdef0"]
    assert SSHModelWrapper.attach("other", sdk.session).get_instance_ids_from_logs(
        timeout_in_sec=0) == []


# -- batch transform --------------------------------------------------------------------------
def test_transformer_gets_the_model_env(sdk: SDK) -> None:
    model = sdk.model()
    model_wrapper = SSHModelWrapper.create(model, connection_wait_time_seconds=300)
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                    output_path=f"s3://{BUCKET}/transform-out", env={"T": "1"})
    assert sdk.last("CreateModel")["PrimaryContainer"]["Environment"]["START_SSH"] == "true"
    wrapper = SSHTransformerWrapper.create(transformer, model_wrapper)
    transformer.transform(f"s3://{BUCKET}/transform-in", wait=False, logs=False)

    sent = sdk.last("CreateTransformJob")
    assert sent["Environment"] == {"T": "1", **model_wrapper.env,
                                   "TRANSFORM_JOB_NAME": sent["TransformJobName"]}
    assert sent["TransformJobName"].startswith("ssh-test-")
    assert sent["Environment"]["SSH_WAIT_TIME_SECONDS"] == "300"
    assert wrapper.transform_job_name() == sent["TransformJobName"]
    assert wrapper.fqdn() == f"{sent['TransformJobName']}.transform.sagemaker"
    with pytest.raises(ValueError, match=r"before transform\(\)"):
        SSHTransformerWrapper.create(transformer, model_wrapper)
    attached = SSHTransformerWrapper.attach(sent["TransformJobName"], sdk.session)
    assert attached.transform_job_name() == sent["TransformJobName"]
    assert attached.get_metadata_url().endswith(f"#/transform-jobs/{sent['TransformJobName']}")


def test_each_transform_job_gets_its_own_name_in_the_env(sdk: SDK) -> None:
    model = sdk.model()
    model_wrapper = SSHModelWrapper.create(model)
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                    output_path=f"s3://{BUCKET}/transform-out")
    SSHTransformerWrapper.create(transformer, model_wrapper)
    transformer.transform(f"s3://{BUCKET}/transform-in", job_name="first", wait=False,
                          logs=False)
    assert sdk.last("CreateTransformJob")["Environment"]["TRANSFORM_JOB_NAME"] == "first"
    transformer.transform(f"s3://{BUCKET}/transform-in", wait=False, logs=False)
    second = sdk.last("CreateTransformJob")
    assert second["TransformJobName"] not in ("first", "")
    assert second["Environment"]["TRANSFORM_JOB_NAME"] == second["TransformJobName"]


def test_transformer_needs_a_model_wrapper(sdk: SDK) -> None:
    model = sdk.model()
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                    output_path=f"s3://{BUCKET}/transform-out")
    with pytest.raises(ValueError, match=r"SSHModelWrapper.create\(model\)"):
        SSHTransformerWrapper.create(transformer, None)  # type: ignore[arg-type]


# -- job status helpers (moto ends jobs at once; the test sets the status moto reports) -------
def start_job(sdk: SDK, tmp_path: Path, kind: str) -> Any:
    if kind == "training":
        estimator = sdk.estimator()
        wrapper: Any = SSHEstimatorWrapper.create(estimator)
        estimator.fit(wait=False)
        return wrapper
    if kind == "processing":
        script = tmp_path / "script.py"
        script.write_text("print('hello')\n")
        processor = ScriptProcessor(image_uri=IMAGE, command=["python3"], role=ROLE,
                                    instance_count=1, instance_type="ml.m5.xlarge",
                                    sagemaker_session=sdk.session)
        wrapper = SSHProcessorWrapper.create(processor)
        processor.run(code=str(script), wait=False, logs=False)
        return wrapper
    model = sdk.model()
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                    output_path=f"s3://{BUCKET}/transform-out")
    wrapper = SSHTransformerWrapper.create(transformer, SSHModelWrapper.create(model))
    transformer.transform(f"s3://{BUCKET}/transform-in", wait=False, logs=False)
    return wrapper


def moto_job(kind: str, name: str) -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    return getattr(sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION], f"{kind}_jobs")[name]


@pytest.mark.parametrize("kind, noun", [("training", "Training"), ("processing", "Processing"),
                                        ("transform", "Transform")])
def test_job_status_helpers(sdk: SDK, tmp_path: Path, kind: str, noun: str) -> None:
    wrapper = start_job(sdk, tmp_path, kind)
    name = wrapper.resource_name()
    job = moto_job(kind, name)
    wait = getattr(wrapper, f"wait_{kind}_job")
    status_attribute = f"{kind}_job_status"

    setattr(job, status_attribute, "InProgress")
    assert wrapper.is_job_in_progress() is True
    setattr(job, status_attribute, "Completed")
    assert wrapper.is_job_in_progress() is False
    assert wait(poll_seconds=0.01) is None
    setattr(job, status_attribute, "Failed")
    with pytest.raises(UnexpectedStatusException, match=f"job {name} ended with status Failed"):
        wait(poll_seconds=0.01)

    # moto has no Stop*Job: answer it here, after the SDK built the request.
    sdk.session.sagemaker_client.meta.events.register(
        f"before-call.sagemaker.Stop{noun}Job",
        lambda **_: (SimpleNamespace(status_code=200), {"ResponseMetadata": {}}))
    getattr(wrapper, f"stop_{kind}_job")()
    assert sdk.last(f"Stop{noun}Job") == {f"{noun}JobName": name}


# -- the native transport (SageMaker's remote debugging) --------------------------------------
def test_native_transport_turns_remote_debugging_on_and_creates_no_activation(
        sdk: SDK, monkeypatch: pytest.MonkeyPatch) -> None:
    estimator = sdk.estimator(instance_count=2)
    wrapper = SSHEstimatorWrapper.create(estimator, transport="native")
    estimator.fit(wait=False)
    sent = sdk.last("CreateTrainingJob")
    assert sent["RemoteDebugConfig"] == {"EnableRemoteDebug": True}
    env = sent["Environment"]
    assert env["SSH_TRANSPORT"] == "native" and env["SSH_OWNER_TAG"] == caller_user_id()
    account = boto3.client("sts", region_name=REGION).get_caller_identity()["Account"]
    assert env["SSH_AUTHORIZED_KEYS_PATH"] == \
        f"s3://sagemaker-{REGION}-{account}/ssh-native-keys/"
    assert wrapper.transport == "native"
    # the hybrid transport's key copy (every user may write there) is not the native folder
    monkeypatch.setenv("SSH_AUTHORIZED_KEYS_PATH", "s3://shared/keys/")
    monkeypatch.setenv("SSH_NATIVE_KEYS_PATH", "s3://team-keys/native")
    estimator = sdk.estimator()
    SSHEstimatorWrapper.create(estimator, transport="native")
    estimator.fit(wait=False)
    assert sdk.last("CreateTrainingJob")["Environment"]["SSH_AUTHORIZED_KEYS_PATH"] == \
        "s3://team-keys/native/"


def test_hybrid_stays_the_default_and_auto_picks_what_the_job_supports(sdk: SDK) -> None:
    estimator = sdk.estimator()
    SSHEstimatorWrapper.create(estimator)
    estimator.fit(wait=False)
    sent = sdk.last("CreateTrainingJob")
    assert "RemoteDebugConfig" not in sent and "SSH_TRANSPORT" not in sent["Environment"]

    estimator = sdk.estimator(enable_remote_debug=True)  # already on: auto goes native
    SSHEstimatorWrapper.create(estimator, transport="auto")
    estimator.fit(wait=False)
    assert sdk.last("CreateTrainingJob")["Environment"]["SSH_TRANSPORT"] == "native"

    estimator = sdk.estimator(enable_network_isolation=True)  # AWS: no remote debugging
    assert SSHEstimatorWrapper.create(estimator, transport="auto").transport == "hybrid"
    estimator.fit(wait=False)
    sent = sdk.last("CreateTrainingJob")
    assert "RemoteDebugConfig" not in sent and "SSH_TRANSPORT" not in sent["Environment"]


@pytest.mark.parametrize("kwargs, transport, message", [
    ({"enable_network_isolation": True}, "native",
     "transport='native' is not possible: AWS offers no remote debugging with network "
     "isolation; use transport='hybrid'"),
    ({"enable_remote_debug": False}, "native", "turns remote debugging off"),
    ({}, "ssm", "transport must be one of 'hybrid', 'native', 'auto', got 'ssm'"),
])
def test_impossible_transports_are_refused(sdk: SDK, kwargs: dict[str, Any], transport: str,
                                           message: str) -> None:
    estimator = sdk.estimator(**kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        SSHEstimatorWrapper.create(estimator, transport=transport)
    assert not (estimator.environment or {})


# -- the native transport for endpoints (the production variant's SSM access) ----------------
def test_native_model_deploys_with_ssm_access_and_auto_stays_hybrid(sdk: SDK) -> None:
    model = sdk.model()
    wrapper = SSHModelWrapper.create(model, transport="native")
    model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)
    [variant] = stored_variants(sdk)  # the field is added after the recorder's event
    assert variant["EnableSSMAccess"] is True and variant["ModelName"] == model.name
    env = sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SSH_TRANSPORT"] == "native" and env["SSH_AUTHORIZED_KEYS_PATH"].endswith(
        "/ssh-native-keys/") and wrapper.transport == "native"

    for transport in ("hybrid", "auto"):  # auto: the allowlisting is unknown before deploy()
        model = sdk.model()
        assert SSHModelWrapper.create(model, transport=transport).transport == "hybrid"
        model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)
        [variant] = stored_variants(sdk)
        assert "EnableSSMAccess" not in variant
        assert "SSH_TRANSPORT" not in sdk.last("CreateModel")["PrimaryContainer"]["Environment"]


def stored_variants(sdk: SDK) -> list[dict[str, Any]]:
    name = sdk.last("CreateEndpointConfig")["EndpointConfigName"]
    return list(sdk.session.sagemaker_client.describe_endpoint_config(
        EndpointConfigName=name)["ProductionVariants"])


def test_impossible_endpoint_transports_are_refused(sdk: SDK) -> None:
    model = sdk.model(enable_network_isolation=True)
    with pytest.raises(ValueError, match=re.escape(
            "transport='native' is not possible: AWS opens no SSM session into a model with "
            "network isolation; use transport='hybrid'")):
        SSHModelWrapper.create(model, transport="native")
    model = sdk.model()
    wrapper = SSHModelWrapper.create(model, transport="native")
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.xlarge")
    with pytest.raises(ValueError, match="batch transform jobs have no SSM access"):
        SSHTransformerWrapper.create(transformer, wrapper)
