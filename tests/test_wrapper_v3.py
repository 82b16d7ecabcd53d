"""Launch-side wrappers with real SageMaker SDK v3 objects (ModelTrainer, ModelBuilder) on moto.

Runs where SDK v3 is installed (``scripts/test`` runs it in ``.venv-v3``); skipped under v2.
As in test_wrapper.py, the tests assert what the SDK actually *sent*: a botocore
``provide-client-params`` hook on the boto3 session, registered before the SDK's Session is built
on it, records every SageMaker request. moto answers Describe* with empty shapes
(``VpcConfig: {}``) that SDK v3's models reject and the real service omits; an ``after-call``
hook drops them here (the sandbox does the same in its gateway).
"""
from __future__ import annotations

import copy
import gc
import io
import logging
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sagemaker.train", reason="SageMaker Python SDK v3 is not installed "
                    "(scripts/test runs this module in .venv-v3)")

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from sagemaker_ssh_helper import code_shipping  # noqa: E402
from sagemaker_ssh_helper.wrapper import (  # noqa: E402
    SSHModelBuilderWrapper,
    SSHModelTrainerWrapper,
)

REGION = "us-east-1"
BUCKET = "sm-ssh-helper-tests"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ssh-test:latest"
TRUST = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": '
         '{"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}')
ENTRY = "import sagemaker_ssh_helper\nsagemaker_ssh_helper.setup_and_start_ssh()\n"


def _drop_empty_shapes(parsed: dict[str, Any], **_: Any) -> None:
    for key in [k for k, v in parsed.items() if v == {}]:
        del parsed[key]


class SDK:
    """A v3 Session on moto plus a record of every SageMaker request's parameters."""

    def __init__(self, boto: Any, tmp_path: Path) -> None:
        from sagemaker.core.helper.session_helper import Session

        self.boto = boto
        self.tmp_path = tmp_path
        self.sent: dict[str, list[dict[str, Any]]] = defaultdict(list)
        boto.events.register("provide-client-params.sagemaker", self._record)
        boto.events.register("after-call.sagemaker", _drop_empty_shapes)
        self.session = Session(boto_session=boto, default_bucket=BUCKET)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.sent[model.name].append(copy.deepcopy(params))

    def last(self, operation: str) -> dict[str, Any]:
        assert self.sent[operation], f"the SDK did not call {operation}"
        return self.sent[operation][-1]

    def source(self, name: str, files: dict[str, str]) -> Path:
        folder = self.tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        return folder

    def trainer(self, instance_count: int = 1, **kwargs: Any) -> Any:
        from sagemaker.core.training.configs import Compute, SourceCode
        from sagemaker.train import ModelTrainer

        source = self.source("src", {"train.py": ENTRY, "requirements.txt": ""})
        args: dict[str, Any] = dict(
            training_image=IMAGE, role=ROLE, sagemaker_session=self.session,
            compute=Compute(instance_type="ml.m5.xlarge", instance_count=instance_count),
            source_code=SourceCode(source_dir=str(source), entry_script="train.py",
                                   requirements="requirements.txt"),
            base_job_name="ssh-v3")
        args.update(kwargs)
        return ModelTrainer(**args)

    def builder(self, **kwargs: Any) -> Any:
        from sagemaker.core.training.configs import SourceCode
        from sagemaker.serve import ModelBuilder
        from sagemaker.serve.mode.function_pointers import Mode

        source = self.source("serve", {"inference.py": ENTRY + "def model_fn(d):\n    return d\n"})
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            info = tarfile.TarInfo("weights.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"42"))
        self.boto.client("s3").put_object(Bucket=BUCKET, Key="model/model.tar.gz",
                                          Body=archive.getvalue())
        args: dict[str, Any] = dict(
            source_code=SourceCode(source_dir=str(source), entry_script="inference.py"),
            s3_model_data_url=f"s3://{BUCKET}/model/model.tar.gz", image_uri=IMAGE,
            role_arn=ROLE, sagemaker_session=self.session, instance_type="ml.m5.xlarge",
            mode=Mode.SAGEMAKER_ENDPOINT, env_vars={"USER_VAR": "kept"})
        args.update(kwargs)
        return ModelBuilder(**args)

    def s3_keys(self, uri: str) -> list[str]:
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        pages = self.boto.client("s3").get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix)
        return [o["Key"][len(prefix):].lstrip("/") for page in pages
                for o in page.get("Contents", [])]

    def tar_names(self, uri: str) -> list[str]:
        bucket, _, key = uri[len("s3://"):].partition("/")
        body = self.boto.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            return tar.getnames()


@pytest.fixture
def sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SDK]:
    config = tmp_path / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
    # With a config file the SDK re-checks its JSON schema on every config lookup (~0.25 s
    # each, dozens per build()); validate against one prepared validator instead, which checks
    # the same thing.
    import jsonschema
    from sagemaker.core.config.config_manager import SageMakerConfig
    from sagemaker.core.config.config_schema import SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA as SCHEMA

    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    monkeypatch.setattr(SageMakerConfig, "validate_sagemaker_config",
                        staticmethod(lambda sagemaker_config=None: validator.validate(
                            sagemaker_config)))
    # moto has no iam:SimulatePrincipalPolicy, which SDK v3 uses to check roles.
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    with mock_aws():
        boto = boto3.Session(region_name=REGION)
        boto.client("s3").create_bucket(Bucket=BUCKET)
        boto.client("iam").create_role(RoleName="SageMakerRole", AssumeRolePolicyDocument=TRUST)
        yield SDK(boto, tmp_path)


def caller_user_id() -> str:
    return str(boto3.client("sts", region_name=REGION).get_caller_identity()["UserId"])


def channel_uri(sent: dict[str, Any], name: str) -> str:
    channels = {c["ChannelName"]: c for c in sent["InputDataConfig"]}
    return str(channels[name]["DataSource"]["S3DataSource"]["S3Uri"])


# -- ModelTrainer -----------------------------------------------------------------------------
def test_model_trainer_env_is_sent_with_create_training_job(sdk: SDK) -> None:
    trainer = sdk.trainer(environment={"USER_VAR": "kept"})
    wrapper = SSHModelTrainerWrapper.create(trainer, connection_wait_time_seconds=1200)
    trainer.train(wait=False)

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
    assert wrapper.model_trainer is trainer


def test_model_trainer_keep_alive_on_failure_is_in_the_env_contract(sdk: SDK) -> None:
    trainer = sdk.trainer()
    SSHModelTrainerWrapper.create(trainer, keep_alive_on_failure_seconds=1200)
    trainer.train(wait=False)
    assert sdk.last("CreateTrainingJob")["Environment"][
        "SSH_KEEP_ALIVE_ON_FAILURE_SECONDS"] == "1200"


def test_code_channel_holds_the_entry_script_and_the_package(sdk: SDK) -> None:
    trainer = sdk.trainer()
    user_files = sorted(p.name for p in Path(trainer.source_code.source_dir).iterdir())
    SSHModelTrainerWrapper.create(trainer, log_to_stdout=True)
    trainer.train(wait=False)

    sent = sdk.last("CreateTrainingJob")
    code = sdk.s3_keys(channel_uri(sent, "code"))
    assert {"train.py", "requirements.txt", "sagemaker_ssh_helper/__init__.py",
            "sagemaker_ssh_helper/VERSION", "sagemaker_ssh_helper/bootstrap.py",
            "sagemaker_ssh_helper/sm-setup-ssh", "sagemaker_ssh_helper/sm-wait"} <= set(code)
    assert not [k for k in code if "/sandbox/" in k or "__pycache__" in k or "/cdk/" in k]
    # the SDK runs the entry script in the code channel, next to the package
    assert "sourcecode.json" in sdk.s3_keys(channel_uri(sent, "sm_drivers"))
    assert sent["Environment"]["SSH_LOG_TO_STDOUT"] == "true"
    # the user's folder is left as it was
    assert sorted(p.name for p in (sdk.tmp_path / "src").iterdir()) == user_files


def test_staged_code_goes_away_with_the_trainer(sdk: SDK) -> None:
    trainer = sdk.trainer()
    SSHModelTrainerWrapper.create(trainer)
    staged = Path(trainer.source_code.source_dir)
    assert (staged / "sagemaker_ssh_helper" / "__init__.py").is_file()
    assert staged != sdk.tmp_path / "src"
    del trainer
    gc.collect()
    assert not staged.exists()


def test_s3_source_is_left_as_it_is_with_a_hint(sdk: SDK, caplog: pytest.LogCaptureFixture
                                                ) -> None:
    from sagemaker.core.training.configs import SourceCode

    trainer = sdk.trainer(source_code=SourceCode(source_dir=f"s3://{BUCKET}/code/",
                                                 entry_script="train.py"))
    with caplog.at_level(logging.INFO, logger="sagemaker_ssh_helper"):
        SSHModelTrainerWrapper.create(trainer)
    assert trainer.source_code.source_dir == f"s3://{BUCKET}/code/"
    assert code_shipping.HINT in caplog.text
    assert trainer.environment["START_SSH"] == "true"


@pytest.mark.parametrize("instance_count, requested, expected", [(1, 2, "1"), (3, 2, "2")])
def test_ssh_instance_count_is_clipped(sdk: SDK, instance_count: int, requested: int,
                                       expected: str) -> None:
    trainer = sdk.trainer(instance_count=instance_count)
    wrapper = SSHModelTrainerWrapper.create(trainer, ssh_instance_count=requested)
    trainer.train(wait=False)
    assert sdk.last("CreateTrainingJob")["Environment"]["SSH_INSTANCE_COUNT"] == expected
    assert sdk.last("CreateTrainingJob")["ResourceConfig"]["InstanceCount"] == instance_count
    assert wrapper.ssh_instance_count == int(expected)


def test_bad_arguments_change_nothing(sdk: SDK) -> None:
    trainer = sdk.trainer(environment={"USER_VAR": "kept"})
    source = trainer.source_code.source_dir
    with pytest.raises(ValueError, match="connection_wait_time_seconds must be between 0"):
        SSHModelTrainerWrapper.create(trainer, connection_wait_time_seconds=-1)
    with pytest.raises(ValueError, match="pass 'SSMRole' instead of"):
        SSHModelTrainerWrapper.create(trainer,
                                      ssm_iam_role="arn:aws:iam::123456789012:role/SSMRole")
    assert trainer.environment == {"USER_VAR": "kept"}
    assert trainer.source_code.source_dir == source


def test_create_after_train_is_refused(sdk: SDK) -> None:
    trainer = sdk.trainer()
    trainer.train(wait=False)
    with pytest.raises(ValueError, match=r"create\(\) before train\(\)"):
        SSHModelTrainerWrapper.create(trainer)


def test_other_objects_are_refused_in_one_line(sdk: SDK) -> None:
    with pytest.raises(ValueError, match=r"takes a sagemaker ModelTrainer \(SDK v3\), not "
                                         r"'ModelBuilder'"):
        SSHModelTrainerWrapper.create(sdk.builder())
    with pytest.raises(ValueError, match=r"takes a sagemaker ModelBuilder"):
        SSHModelBuilderWrapper.create(sdk.trainer())


def test_attach_and_job_helpers(sdk: SDK) -> None:
    trainer = sdk.trainer()
    launched = SSHModelTrainerWrapper.create(trainer, local_user_id="owner-1")
    trainer.train(wait=False)
    name = launched.training_job_name()

    for wrapper in (SSHModelTrainerWrapper.attach(name),
                    SSHModelTrainerWrapper.attach_arn(
                        f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}")):
        assert wrapper.training_job_name() == name
        assert wrapper.model_trainer is None
        assert wrapper.wait_training_job_with_status(poll_seconds=0) == "Completed"
        wrapper.wait_training_job(poll_seconds=0)
        assert wrapper.rule_job_summary() == []
    assert launched.describe()["TrainingJobName"] == name
    with pytest.raises(ValueError, match="no training job named 'nope'"):
        SSHModelTrainerWrapper.attach("nope")


# -- ModelBuilder -----------------------------------------------------------------------------
def test_model_builder_sends_the_env_and_the_endpoint_name(sdk: SDK) -> None:
    builder = sdk.builder()
    wrapper = SSHModelBuilderWrapper.create(builder, connection_wait_time_seconds=30)
    builder.build()
    endpoint = builder.deploy(wait=False)

    create_model = sdk.last("CreateModel")
    env = create_model["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_ENDPOINT_NAME"] == sdk.last("CreateEndpoint")["EndpointName"] \
        == endpoint.endpoint_name == wrapper.endpoint_name()
    assert {k: env[k] for k in ("USER_VAR", "START_SSH", "SSH_SSM_ROLE", "SSH_OWNER_TAG",
                                "SSH_WAIT_TIME_SECONDS", "SSH_LOG_TO_STDOUT")} == {
        "USER_VAR": "kept", "START_SSH": "true", "SSH_SSM_ROLE": "SageMakerRole",
        "SSH_OWNER_TAG": caller_user_id(), "SSH_WAIT_TIME_SECONDS": "30",
        "SSH_LOG_TO_STDOUT": "false"}
    assert "SSH_INSTANCE_COUNT" not in env
    assert not sdk.sent["DeleteModel"]
    assert wrapper.fqdn() == f"{endpoint.endpoint_name}.inference.sagemaker"


def test_model_archive_holds_the_package_next_to_the_entry_script(sdk: SDK) -> None:
    builder = sdk.builder()
    SSHModelBuilderWrapper.create(builder)
    builder.build()
    container = sdk.last("CreateModel")["PrimaryContainer"]
    names = set(sdk.tar_names(container["ModelDataUrl"]))
    assert {"weights.txt", "code/inference.py", "code/sagemaker_ssh_helper/__init__.py",
            "code/sagemaker_ssh_helper/sm-setup-ssh"} <= names
    assert not [n for n in names if "/sandbox/" in n]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"


def test_deploy_with_its_own_name_recreates_the_model_with_that_name(sdk: SDK) -> None:
    builder = sdk.builder()
    wrapper = SSHModelBuilderWrapper.create(builder)
    builder.build()
    built = sdk.last("CreateModel")
    builder.deploy(endpoint_name="my-endpoint", wait=False)

    assert sdk.last("DeleteModel") == {"ModelName": built["ModelName"]}
    recreated = sdk.last("CreateModel")
    assert recreated["ModelName"] == built["ModelName"]
    assert recreated["PrimaryContainer"]["Environment"] == dict(
        built["PrimaryContainer"]["Environment"], SAGEMAKER_ENDPOINT_NAME="my-endpoint")
    assert recreated["PrimaryContainer"]["ModelDataUrl"] == \
        built["PrimaryContainer"]["ModelDataUrl"]
    assert recreated["ExecutionRoleArn"] == ROLE
    assert sdk.last("CreateEndpointConfig")["ProductionVariants"][0]["ModelName"] == \
        built["ModelName"]
    assert wrapper.endpoint_name() == sdk.last("CreateEndpoint")["EndpointName"] == "my-endpoint"


def test_model_built_before_create_gets_the_env_at_deploy(sdk: SDK) -> None:
    builder = sdk.builder()
    builder.build()
    assert "START_SSH" not in sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    wrapper = SSHModelBuilderWrapper.create(builder)
    builder.deploy(wait=False)
    env = sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["START_SSH"] == "true"
    assert env["SAGEMAKER_ENDPOINT_NAME"] == wrapper.endpoint_name()


def test_endpoint_name_before_deploy_and_attach(sdk: SDK) -> None:
    builder = sdk.builder()
    wrapper = SSHModelBuilderWrapper.create(builder)
    with pytest.raises(ValueError, match=r"call deploy\(\) first"):
        wrapper.endpoint_name()
    builder.build()
    builder.deploy(endpoint_name="ep-attach", wait=False)
    attached = SSHModelBuilderWrapper.attach("ep-attach")
    assert attached.endpoint_name() == "ep-attach"
    assert attached.describe()["EndpointName"] == "ep-attach"
    with pytest.raises(ValueError, match="no endpoint named 'nope'"):
        SSHModelBuilderWrapper.attach("nope")
    with pytest.raises(ValueError, match=r"create\(\) before deploy\(\)"):
        SSHModelBuilderWrapper.create(builder)


# -- processors (sagemaker.core.processing) ---------------------------------------------------
def test_processor_env_and_the_package_input_are_sent(sdk: SDK) -> None:
    from sagemaker.core.processing import ScriptProcessor

    from sagemaker_ssh_helper.wrapper import SSHProcessorWrapper

    script = sdk.source("proc", {"process.py": "import sys\n"})
    processor = ScriptProcessor(command=["python3"], image_uri=IMAGE, role=ROLE, instance_count=3,
                                instance_type="ml.m5.xlarge", sagemaker_session=sdk.session,
                                env={"USER_VAR": "kept"})
    wrapper = SSHProcessorWrapper.create(processor, connection_wait_time_seconds=300)
    processor.run(code=str(script / "process.py"), inputs=[SSHProcessorWrapper.augmented_input()],
                  wait=False, logs=False)

    sent = sdk.last("CreateProcessingJob")
    assert sent["Environment"] == {
        "USER_VAR": "kept", "START_SSH": "true", "SSH_SSM_ROLE": "SageMakerRole",
        "SSH_OWNER_TAG": caller_user_id(), "SSH_WAIT_TIME_SECONDS": "300",
        "SSH_INSTANCE_COUNT": "2", "SSH_LOG_TO_STDOUT": "false"}
    inputs = {i["InputName"]: i["S3Input"] for i in sent["ProcessingInputs"]}
    package = inputs["sagemaker_ssh_helper"]
    assert package["LocalPath"] == "/opt/ml/processing/input/sagemaker_ssh_helper"
    keys = sdk.s3_keys(package["S3Uri"])
    assert {"__init__.py", "bootstrap.py", "sm-setup-ssh", "VERSION"} <= set(keys)
    assert not [k for k in keys if k.startswith(("sandbox/", "cdk/")) or "__pycache__" in k]
    assert wrapper.processing_job_name() == sent["ProcessingJobName"]
    attached = SSHProcessorWrapper.attach(sent["ProcessingJobName"])
    assert attached.fqdn() == f"{sent['ProcessingJobName']}.processing.sagemaker"
    assert attached.describe()["ProcessingJobStatus"] in ("InProgress", "Completed")


# -- ModelBuilder over the variant's SSM access (transport="native") -------------------------
def test_model_builder_native_turns_on_ssm_access_and_says_so_in_the_env(sdk: SDK) -> None:
    builder = sdk.builder()
    wrapper = SSHModelBuilderWrapper.create(builder, transport="native")
    assert wrapper.transport == "native"
    builder.build()
    builder.deploy(endpoint_name="ep-native", wait=False)

    env = sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SSH_TRANSPORT"] == "native"
    assert env["SSH_AUTHORIZED_KEYS_PATH"] == \
        f"s3://sagemaker-{REGION}-123456789012/ssh-native-keys/"
    sm = sdk.boto.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(
        EndpointName="ep-native")["EndpointConfigName"])  # what the service received
    [variant] = config["ProductionVariants"]
    assert variant["EnableSSMAccess"] is True
    assert variant["ModelName"] == sdk.last("CreateModel")["ModelName"]


def test_model_builder_transport_choices(sdk: SDK) -> None:
    hybrid = sdk.builder()
    with pytest.raises(ValueError, match="transport must be one of"):
        SSHModelBuilderWrapper.create(hybrid, transport="ssm")
    assert SSHModelBuilderWrapper.create(hybrid, transport="auto").transport == "hybrid"
    hybrid.build()
    hybrid.deploy(endpoint_name="ep-auto", wait=False)
    assert "SSH_TRANSPORT" not in sdk.last("CreateModel")["PrimaryContainer"]["Environment"]
    sm = sdk.boto.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(
        EndpointName="ep-auto")["EndpointConfigName"])
    assert not config["ProductionVariants"][0].get("EnableSSMAccess")


def test_model_builder_native_refuses_network_isolation(sdk: SDK) -> None:
    from sagemaker.serve.configs import Network

    isolated = sdk.builder(network=Network(enable_network_isolation=True))
    with pytest.raises(ValueError, match=r"^transport='native' is not possible: AWS opens no "
                       r"SSM session into a model with network isolation; use "
                       r"transport='hybrid'$"):
        SSHModelBuilderWrapper.create(isolated, transport="native")
