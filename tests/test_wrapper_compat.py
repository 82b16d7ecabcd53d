"""SSH Helper v2 calls of the wrappers, with real SDK v2 objects against moto and the SSM
stand-in: constructed the old way (constructor + ``_augment()``, positional ``create()``) they
send the same environment as ``create()`` with keywords; ``retry=`` and ``timeout=`` map onto
the lookup deadline; the v2 helper methods answer from the resource."""
# ruff: noqa: F811 - the fixtures of test_wrapper are imported and then named as parameters
from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import FakeClock
from sagemaker.multidatamodel import MultiDataModel
from sagemaker.processing import ScriptProcessor
from test_wrapper import (  # noqa: F401 - fixtures
    BUCKET,
    IMAGE,
    REGION,
    ROLE,
    SDK,
    moto_job,
    no_network,
    sdk,
    ssh_tags,
    ssm_stand_in,
)

from sagemaker_ssh_helper.manager import SSMManager
from sagemaker_ssh_helper.wrapper import (
    SSHEnvironmentWrapper,
    SSHEstimatorWrapper,
    SSHIDEWrapper,
    SSHModelWrapper,
    SSHMultiModelWrapper,
    SSHNotebookInstanceWrapper,
    SSHProcessorWrapper,
    SSHTransformerWrapper,
)

OWNER = "AIDAEXAMPLEOWNER"


def processor(sdk: SDK) -> ScriptProcessor:
    return ScriptProcessor(image_uri=IMAGE, command=["python3"], role=ROLE, instance_count=2,
                           instance_type="ml.m5.xlarge", sagemaker_session=sdk.session)


def sent_env(sdk: SDK, operation: str) -> dict[str, str]:
    request = sdk.last(operation)
    if operation == "CreateModel":
        return dict(request["PrimaryContainer"]["Environment"])
    return dict(request["Environment"])


def launch(sdk: SDK, kind: str, old_way: bool, tmp_path: Path) -> dict[str, str]:
    """Wrap a fresh SDK object the v2 way or the keyword way, start it, return the env sent."""
    if kind == "training":
        estimator = sdk.estimator(instance_count=3)
        if old_way:
            wrapper = SSHEstimatorWrapper(estimator, "SSMRole", True, 300, 2, OWNER, True)
            wrapper._augment()
        else:
            SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=300,
                                       ssh_instance_count=2, local_user_id=OWNER,
                                       log_to_stdout=True, ssm_iam_role="SSMRole")
        estimator.fit(wait=False)
        return sent_env(sdk, "CreateTrainingJob")
    if kind == "processing":
        script = tmp_path / "p.py"
        script.write_text("print(1)\n")
        proc = processor(sdk)
        if old_way:
            SSHProcessorWrapper.create(proc, 300)  # v2: create(processor, seconds)
        else:
            SSHProcessorWrapper.create(proc, connection_wait_time_seconds=300)
        proc.run(code=str(script), wait=False, logs=False)
        return sent_env(sdk, "CreateProcessingJob")
    model = sdk.model()
    if kind == "inference":
        if old_way:
            SSHModelWrapper.create(model, 300)
        else:
            SSHModelWrapper.create(model, connection_wait_time_seconds=300)
        model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge",
                     endpoint_name=f"ep-{old_way}", wait=False)
        return sent_env(sdk, "CreateModel")
    if kind == "multimodel":
        mdm = MultiDataModel(name=f"mme-{old_way}", model_data_prefix=f"s3://{BUCKET}/mme/",
                             model=model, sagemaker_session=sdk.session)
        if old_way:
            SSHMultiModelWrapper.create(mdm, 300)
        else:
            SSHMultiModelWrapper.create(mdm, connection_wait_time_seconds=300)
        mdm.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", wait=False)
        return sent_env(sdk, "CreateModel")
    model_wrapper = SSHModelWrapper.create(model, connection_wait_time_seconds=300)
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.xlarge",
                                    output_path=f"s3://{BUCKET}/out")
    if old_way:
        SSHTransformerWrapper.create(transformer, model_wrapper)
    else:
        SSHTransformerWrapper.create(transformer=transformer, model_wrapper=model_wrapper)
    transformer.transform(f"s3://{BUCKET}/in", wait=False, logs=False, job_name=f"t-{old_way}")
    return sent_env(sdk, "CreateTransformJob")


NAME_VARS = ("SAGEMAKER_ENDPOINT_NAME", "TRANSFORM_JOB_NAME")


@pytest.mark.parametrize("kind", ["training", "processing", "inference", "multimodel",
                                  "transform"])
def test_old_and_new_way_send_the_same_environment(sdk: SDK, tmp_path: Path, kind: str) -> None:
    old = launch(sdk, kind, True, tmp_path)
    new = launch(sdk, kind, False, tmp_path)
    assert {k: v for k, v in old.items() if k not in NAME_VARS} == \
        {k: v for k, v in new.items() if k not in NAME_VARS}
    assert old["START_SSH"] == "true" and old["SSH_WAIT_TIME_SECONDS"] == "300"
    if kind == "training":
        assert (old["SSH_SSM_ROLE"], old["SSH_OWNER_TAG"], old["SSH_INSTANCE_COUNT"],
                old["SSH_LOG_TO_STDOUT"]) == ("SSMRole", OWNER, "2", "true")


def test_v2_constructor_keeps_its_attributes_and_sends_nothing(sdk: SDK) -> None:
    estimator = sdk.estimator(role="arn:aws:iam::123456789012:role/service-role/Exec")
    wrapper = SSHEstimatorWrapper(estimator, bootstrap_on_start=False)
    assert wrapper.ssm_iam_role == "service-role/Exec"  # from the estimator's role, as in v2
    assert (wrapper.bootstrap_on_start, wrapper.connection_wait_time_seconds,
            wrapper.ssh_instance_count, wrapper.augmented) == (False, 600, 1, False)
    assert not sdk.sent and not estimator.environment
    wrapper._augment()
    assert estimator.environment["START_SSH"] == "false"  # bootstrap_on_start=False
    assert wrapper.augmented and wrapper.region() == REGION
    assert SSHEnvironmentWrapper.ssm_role_from_iam_arn(
        "arn:aws:iam::123456789012:role/service-role/Exec") == "service-role/Exec"
    with pytest.raises(ValueError, match="must be an IAM role ARN"):
        SSHEnvironmentWrapper.ssm_role_from_iam_arn("Exec")


def test_v2_create_with_connection_wait_time_timedelta(sdk: SDK) -> None:
    estimator = sdk.estimator()
    SSHEstimatorWrapper.create(estimator, connection_wait_time=timedelta(minutes=3))
    assert estimator.environment["SSH_WAIT_TIME_SECONDS"] == "180"
    other = sdk.estimator()
    SSHEstimatorWrapper.create(other, 600, timedelta(minutes=10))  # v2 positional defaults
    assert other.environment["SSH_WAIT_TIME_SECONDS"] == "600"


def test_model_create_hold_defaults_to_zero_but_the_v2_value_still_works(sdk: SDK) -> None:
    model = sdk.model()
    assert SSHModelWrapper.create(model).env["SSH_WAIT_TIME_SECONDS"] == "0"
    held = sdk.model()
    assert SSHModelWrapper.create(held, 600).env["SSH_WAIT_TIME_SECONDS"] == "600"


@pytest.fixture
def clocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """Wrappers' SSM lookups run on a fake clock (no real waiting)."""
    clock = FakeClock()

    def manager(self: Any) -> SSMManager:
        return SSMManager(region_name=REGION, session=self.boto_session, clock=clock,
                          sleep=clock.sleep, progress=None)

    monkeypatch.setattr(SSHEnvironmentWrapper, "ssm_manager", manager)
    yield clock


def running_job(sdk: SDK) -> SSHEstimatorWrapper:
    estimator = sdk.estimator()
    wrapper = SSHEstimatorWrapper.create(estimator)
    estimator.fit(wait=False)
    moto_job("training", wrapper.training_job_name()).training_job_status = "InProgress"
    return wrapper


@pytest.mark.parametrize("call, waited", [
    (lambda w: w.get_instance_ids(), 900),
    (lambda w: w.get_instance_ids(timeout_in_sec=45), 45),
    (lambda w: w.get_instance_ids(3), 30),                   # v2: retry=3 means 3 x 10 s
    (lambda w: w.get_instance_ids(retry=6, timeout_in_sec=5), 60),
    (lambda w: w.get_instance_id(None, 20, 0), 20),
    (lambda w: w.start_ssm_connection(1, timeout=timedelta(seconds=70)), 70),
    (lambda w: w.start_ssm_connection(1, timeout_in_sec=80), 80),
    (lambda w: w.start_ssm_connection_and_continue(1, 2), 20),
    (lambda w: w.start_ssm_connection_and_continue(1, timeout=timedelta(minutes=2)), 120),
    (lambda w: w.start_ssm_connection_and_continue(1, None, 30, timedelta(minutes=2)), 30),
])
def test_retry_and_timeout_map_onto_the_lookup_deadline(
        sdk: SDK, ssm_stand_in: Any, clocked: FakeClock, call: Callable[[Any], Any],
        waited: int) -> None:
    wrapper = running_job(sdk)
    try:
        result = call(wrapper)
    except ValueError as e:  # no instance ever registered
        assert f"no SSM instance registered for {wrapper.fqdn()}" in str(e)
    else:
        assert result == []
    assert sum(clocked.sleeps) == pytest.approx(waited)


def test_deprecated_retry_warns(sdk: SDK, ssm_stand_in: Any, clocked: FakeClock,
                                caplog: pytest.LogCaptureFixture) -> None:
    wrapper = running_job(sdk)
    with caplog.at_level(logging.WARNING):
        assert wrapper.get_instance_ids(retry=2) == []
    assert "retry is deprecated, use timeout_in_sec instead" in caplog.text
    assert sum(clocked.sleeps) == pytest.approx(20)


def test_v2_helpers_of_the_wrappers(sdk: SDK, ssm_stand_in: Any,
                                    capsys: pytest.CaptureFixture) -> None:
    proc = processor(sdk)
    wrapper = SSHProcessorWrapper.create(proc)
    assert wrapper.ssh_instance_count == 2
    model = sdk.model(name="my-model")
    model_wrapper = SSHModelWrapper.create(model)
    model.deploy(initial_instance_count=1, instance_type="ml.m5.xlarge", endpoint_name="ep-x",
                 wait=False)
    base = f"https://{REGION}.console.aws.amazon.com/sagemaker/home?region={REGION}#/"
    assert model_wrapper.get_config_metadata_url() == base + "endpointConfig/ep-x"
    assert model_wrapper.get_model_metadata_url() == base + "models/my-model"
    attached = SSHModelWrapper.attach("ep-x", sdk.session)
    assert attached.get_model_metadata_url() == base + "models/my-model"  # via the endpoint
    assert attached.endpoint_is_online() is True  # moto endpoints are InService at once
    attached.wait_for_endpoint(poll_seconds=0)
    with pytest.raises(ValueError, match="no endpoint named 'nope'"):
        SSHModelWrapper.attach("nope", sdk.session).endpoint_is_online()

    by_fqdn = SSHEnvironmentWrapper.attach_to_resource("ep-x.inference.sagemaker",
                                                       sagemaker_session=sdk.session)
    assert isinstance(by_fqdn, SSHModelWrapper) and by_fqdn.endpoint_name() == "ep-x"
    job = SSHEnvironmentWrapper.attach_to_resource("j-1.training.sagemaker",
                                                   sagemaker_session=sdk.session)
    assert isinstance(job, SSHEstimatorWrapper) and job.training_job_name() == "j-1"
    app = SSHEnvironmentWrapper.attach_to_resource("default.studio.sagemaker", "d-abc",
                                                   "alice", sdk.session)
    assert isinstance(app, SSHIDEWrapper)
    assert app.fqdn() == "default.alice.d-abc.studio.sagemaker"
    with pytest.raises(ValueError, match="does not name the user and domain"):
        SSHEnvironmentWrapper.attach_to_resource("default.studio.sagemaker",
                                                 sagemaker_session=sdk.session)
    app.print_connect_info(app.fqdn())
    assert "sm-ssh connect default.alice.d-abc.studio.sagemaker" in capsys.readouterr().out


def test_ide_and_notebook_wrappers_hold_v2_objects(sdk: SDK, ssm_stand_in: Any) -> None:
    backend = ssm_stand_in.backend
    arn = f"arn:aws:sagemaker:{REGION}:123456789012:app/d-abc/alice/JupyterLab/default"
    old = backend.add_fake_instances(1, tags={**ssh_tags("default", "app", 1000),
                                              "SSHResourceArn": arn})
    new = backend.add_fake_instances(1, tags={**ssh_tags("default", "app", 2000),
                                              "SSHResourceArn": arn})
    app = SSHIDEWrapper.attach("d-abc", "alice", "default", sdk.session)
    assert app.ide.domain_id == "d-abc" and app.ide.user == "alice"
    assert app.get_instance_ids(timeout_in_sec=0) == new + old
    later = SSHIDEWrapper.attach("d-abc", "alice", "default", sdk.session,
                                 not_earlier_than_timestamp=1500)
    assert later.get_instance_ids(timeout_in_sec=0) == new
    assert app.get_metadata_url().endswith("#/studio/d-abc/user/alice")
    assert "logStreamNameFilter$3Dd-abc$252Falice$252FJupyterServer$252Fdefault" in \
        app.get_cloudwatch_url()

    notebook = SSHNotebookInstanceWrapper.attach("nb-1", sdk.session)
    assert notebook.notebook_instance.name == "nb-1"
    assert notebook.get_metadata_url().endswith("#/notebook-instances/nb-1")
    mine = backend.add_fake_instances(1, tags=ssh_tags("nb-1", "notebook-instance", 3000))
    assert notebook.notebook_instance.get_instance_ids() == mine


def test_transformer_refuses_a_model_wrapper_that_was_not_created(sdk: SDK) -> None:
    model = sdk.model()
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.xlarge")
    with pytest.raises(ValueError, match=r"returned by SSHModelWrapper.create\(model\)"):
        SSHTransformerWrapper.create(transformer, SSHModelWrapper(model))
