"""Sandbox endpoints and inference layouts against moto (no containers are started here):
the endpoint API's validation, listing, tags and lifecycle when a model is missing; how
/opt/ml/model, the transform inputs and the container environment are laid out; and transform
jobs that cannot start."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest
from e2e_helpers import tarball

from sagemaker_ssh_sandbox.sagemaker import serving
from sagemaker_ssh_sandbox.sagemaker.container import PACKAGE_PARENT
from sagemaker_ssh_sandbox.sagemaker.endpoints import Endpoint, EndpointsAPI, Instance
from sagemaker_ssh_sandbox.sagemaker.jobs import ApiError, JobsAPI
from sagemaker_ssh_sandbox.sagemaker.layout import JobSetupError, Platform
from sagemaker_ssh_sandbox.sagemaker.runner import JobRunner

REGION, ACCOUNT, BUCKET = "us-east-1", "123456789012", "models"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"


def _client(service: str, url: str) -> Any:
    # Module-scoped clients are made before the per-test fake credentials are set.
    return boto3.client(service, region_name=REGION, endpoint_url=url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    client = _client("s3", moto_url)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def sagemaker(moto_url: str) -> Any:
    return _client("sagemaker", moto_url)


@pytest.fixture
def platform() -> Platform:
    return Platform(region=REGION, account=ACCOUNT, endpoint_url="http://127.0.0.1:1",
                    ssm_endpoint_url="http://127.0.0.1:2", python="/usr/bin/python3",
                    credentials={"AWS_ACCESS_KEY_ID": "testing"})


@pytest.fixture
def api(sagemaker: Any, s3: Any, platform: Platform, tmp_path: Path) -> Iterator[EndpointsAPI]:
    endpoints = EndpointsAPI(REGION, ACCOUNT, sagemaker, s3, platform, tmp_path, {})
    yield endpoints
    endpoints.shutdown(10)


def until(check: Callable[[], Any], timeout: float = 10) -> Any:
    deadline, delay = time.monotonic() + timeout, 0.01
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def config_for(sagemaker: Any, name: str, model: str) -> str:
    """An endpoint config whose model has been deleted since (so no container starts)."""
    sagemaker.create_model(ModelName=model, ExecutionRoleArn=ROLE,
                           PrimaryContainer={"Image": "img"})
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 2,
         "InstanceType": "ml.m5.large"}])
    sagemaker.delete_model(ModelName=model)
    return name


# -- the endpoint API -----------------------------------------------------------------------------
def test_create_validates_the_name_the_config_and_uniqueness(api: EndpointsAPI,
                                                             sagemaker: Any) -> None:
    with pytest.raises(ApiError, match="failed to satisfy constraint"):
        api.handle("CreateEndpoint", {"EndpointName": "no_underscores",
                                      "EndpointConfigName": "x"})
    with pytest.raises(ApiError, match="Could not find endpoint configuration") as missing:
        api.handle("CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "nope"})
    assert missing.value.code == "ValidationException"
    config = config_for(sagemaker, "unique-config", "no-such-model")
    arn = api.handle("CreateEndpoint", {"EndpointName": "Unique-EP",
                                        "EndpointConfigName": config})["EndpointArn"]
    assert arn == f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/unique-ep"
    with pytest.raises(ApiError, match=f'Cannot create already existing endpoint "{arn}"'):
        api.handle("CreateEndpoint", {"EndpointName": "Unique-EP", "EndpointConfigName": config})


def test_a_missing_model_fails_the_endpoint_then_delete_removes_it(api: EndpointsAPI,
                                                                   sagemaker: Any) -> None:
    config = config_for(sagemaker, "missing-model-config", "missing-model")
    api.handle("CreateEndpoint", {"EndpointName": "lost", "EndpointConfigName": config})
    described = until(lambda: (lambda d: d if d["EndpointStatus"] != "Creating" else None)(
        api.handle("DescribeEndpoint", {"EndpointName": "lost"})))
    assert described["EndpointStatus"] == "Failed"
    assert "Could not find model" in described["FailureReason"]
    assert described["EndpointConfigName"] == config
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 0
    assert described["ProductionVariants"][0]["DesiredInstanceCount"] == 2
    assert api.containers() == []
    assert api.handle("DeleteEndpoint", {"EndpointName": "lost"}) == {}
    assert until(lambda: not api.endpoints())
    with pytest.raises(ApiError, match='Could not find endpoint "arn:aws:sagemaker:us-east-1:'
                                       f'{ACCOUNT}:endpoint/lost"'):
        api.handle("DescribeEndpoint", {"EndpointName": "lost"})
    with pytest.raises(ApiError, match="Could not find endpoint"):
        api.handle("DeleteEndpoint", {"EndpointName": "lost"})


def test_list_filters_sorts_and_pages(api: EndpointsAPI, sagemaker: Any) -> None:
    config = config_for(sagemaker, "list-config", "absent-1")
    for name in ("list-b", "list-a", "other-c"):
        api.handle("CreateEndpoint", {"EndpointName": name, "EndpointConfigName": config})
    assert until(lambda: all(e.status == "Failed" for e in api.endpoints()))

    def names(**body: Any) -> list:
        return [e["EndpointName"] for e in api.handle("ListEndpoints", body)["Endpoints"]]

    assert names() == ["other-c", "list-a", "list-b"]  # newest first by default
    assert names(NameContains="LIST", SortBy="Name", SortOrder="Ascending") \
        == ["list-a", "list-b"]
    assert names(StatusEquals="InService") == []
    first = api.handle("ListEndpoints", {"SortBy": "Name", "SortOrder": "Ascending",
                                         "MaxResults": 2})
    assert [e["EndpointName"] for e in first["Endpoints"]] == ["list-a", "list-b"]
    rest = api.handle("ListEndpoints", {"SortBy": "Name", "SortOrder": "Ascending",
                                        "MaxResults": 2, "NextToken": first["NextToken"]})
    assert [e["EndpointName"] for e in rest["Endpoints"]] == ["other-c"]
    assert "NextToken" not in rest
    summary = rest["Endpoints"][0]
    assert set(summary) == {"EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime",
                            "EndpointStatus"}


def test_tags_on_endpoint_arns_only(api: EndpointsAPI, sagemaker: Any) -> None:
    config = config_for(sagemaker, "tags-config", "absent-2")
    arn = api.handle("CreateEndpoint", {"EndpointName": "tagged", "EndpointConfigName": config,
                                        "Tags": [{"Key": "team", "Value": "ml"}]})["EndpointArn"]
    assert api.handles("ListTags", {"ResourceArn": arn})
    assert not api.handles("ListTags", {"ResourceArn": arn.replace("tagged", "other")})
    assert not api.handles("CreateModel", {})
    api.handle("AddTags", {"ResourceArn": arn, "Tags": [{"Key": "SSHOwner", "Value": "me"}]})
    api.handle("DeleteTags", {"ResourceArn": arn, "TagKeys": ["team"]})
    assert api.handle("ListTags", {"ResourceArn": arn}) == {
        "Tags": [{"Key": "SSHOwner", "Value": "me"}]}


def _watched(api: EndpointsAPI, variants: list, instances: int) -> Endpoint:
    """An endpoint in Creating whose instances are tracked (no containers), watched by
    ``_watch`` in a thread as the endpoint's life thread does after starting them."""
    endpoint = Endpoint(name="watched", arn="arn", config_name="c", variants=variants)
    endpoint.instances = [Instance(id=f"i-{n}", variant=variants[0]["VariantName"])
                          for n in range(instances)]
    threading.Thread(target=api._watch, args=(endpoint,), daemon=True).start()
    return endpoint


def test_in_service_once_every_instance_is_ready_and_failed_when_one_exits_first(
        api: EndpointsAPI) -> None:
    variants = [{"VariantName": "AllTraffic", "InitialInstanceCount": 2}]
    endpoint = _watched(api, variants, 2)
    endpoint.events.put(("ready", endpoint.instances[0], None))
    assert until(lambda: endpoint.instances[0].ready)
    assert endpoint.status == "Creating"
    endpoint.events.put(("ready", endpoint.instances[1], None))
    assert until(lambda: endpoint.status == "InService")
    assert endpoint.describe()["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    endpoint.events.put(("exit", endpoint.instances[0], 1))  # not replaced, still InService
    assert until(lambda: endpoint.instances[0].exit_code == 1)
    assert endpoint.status == "InService"
    assert endpoint.describe()["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    endpoint.set_status("Deleting")
    endpoint.events.put(("delete", None, None))

    failing = _watched(api, variants, 2)
    failing.events.put(("ready", failing.instances[0], None))
    failing.events.put(("exit", failing.instances[1], 137))
    assert until(lambda: failing.status == "Failed")
    assert failing.failure_reason == (
        "The primary container for production variant AllTraffic did not pass the ping health "
        "check: its process exited with code 137. Please check the CloudWatch logs of this "
        "endpoint (/aws/sagemaker/Endpoints/watched).")
    failing.set_status("Deleting")
    failing.events.put(("delete", None, None))


def test_failed_when_not_ready_within_the_startup_health_check_timeout(
        api: EndpointsAPI) -> None:
    endpoint = _watched(api, [{"VariantName": "Slow", "InitialInstanceCount": 1,
                               "ContainerStartupHealthCheckTimeoutInSeconds": 0.2}], 1)
    assert until(lambda: endpoint.status == "Failed")
    assert str(endpoint.failure_reason).startswith(
        "The primary container for production variant Slow did not pass the ping health check "
        "within ContainerStartupHealthCheckTimeoutInSeconds.")
    endpoint.set_status("Deleting")
    endpoint.events.put(("delete", None, None))


# -- inference layouts -----------------------------------------------------------------------------
def test_container_definition_is_the_only_container() -> None:
    role = "arn:aws:iam::123456789012:role/R"  # the container runs as the model's role
    assert serving.container_definition({"PrimaryContainer": {"Image": "a"}, "Containers": [],
                                         "ExecutionRoleArn": role}) \
        == {"Image": "a", serving.ROLE_KEY: role}
    assert serving.container_definition({"Containers": [{"Image": "b"}]}) == {
        "Image": "b", serving.ROLE_KEY: None}
    with pytest.raises(JobSetupError, match="has 2 containers: the sandbox runs single-container"):
        serving.container_definition({"ModelName": "m", "Containers": [{}, {}]})


def test_model_data_and_an_s3_source_dir_are_laid_out(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=tarball({
        "weights.json": "{}", "code/inference.py": "x = 1\n"}))
    s3.put_object(Bucket=BUCKET, Key="m/sourcedir.tar.gz", Body=tarball({"serve.py": "y = 2\n"}))
    s3.put_object(Bucket=BUCKET, Key="plain/w/part-0", Body=b"raw")
    opt_ml = tmp_path / "opt_ml"
    serving.prepare_model(s3, opt_ml, {
        "ModelDataUrl": f"s3://{BUCKET}/m/model.tar.gz",
        "Environment": {"SAGEMAKER_SUBMIT_DIRECTORY": f"s3://{BUCKET}/m/sourcedir.tar.gz"}})
    assert (opt_ml / "model" / "code" / "inference.py").read_text() == "x = 1\n"
    assert (opt_ml / "code" / "serve.py").read_text() == "y = 2\n"
    uncompressed = tmp_path / "uncompressed"
    serving.prepare_model(s3, uncompressed, {"ModelDataSource": {"S3DataSource": {
        "S3Uri": f"s3://{BUCKET}/plain/", "S3DataType": "S3Prefix", "CompressionType": "None"}}})
    assert (uncompressed / "model" / "w" / "part-0").read_bytes() == b"raw"
    with pytest.raises(JobSetupError, match=f"cannot download s3://{BUCKET}/m/missing.tar.gz"):
        serving.prepare_model(s3, tmp_path / "x", {
            "ModelDataUrl": f"s3://{BUCKET}/m/missing.tar.gz"})


def test_transform_layout_shares_inputs_and_stacks_the_environment(
        s3: Any, platform: Platform, tmp_path: Path) -> None:
    for key in ("batch/in/b.csv", "batch/in/a.csv", "batch/in/deep/c.csv"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    request = {"TransformJobName": "tj", "ModelName": "m",
               "TransformInput": {"DataSource": {"S3DataSource": {
                   "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/batch/in"}},
                   "ContentType": "text/csv", "SplitType": "Line"},
               "TransformOutput": {"S3OutputPath": f"s3://{BUCKET}/batch/out",
                                   "AssembleWith": "Line"},
               "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 6,
               "Environment": {"SHARED": "from the job", "START_SSH": "true"}}
    inputs = serving.transform_inputs(s3, request)
    assert [rel for _, _, rel in inputs] == ["a.csv", "b.csv", "deep/c.csv"]
    root = tmp_path / "algo-1"
    definition = {"Image": "img", "Environment": {"SHARED": "from the model", "MODEL_ONLY": "1",
                                                  "AWS_REGION": "model-region"}}
    argv, cwd, env = serving.prepare_transform(s3, root, root / "opt_ml", definition, request,
                                               inputs[0::2], platform)
    assert sorted(p.relative_to(root / "transform" / "input").as_posix()
                  for p in (root / "transform" / "input").rglob("*") if p.is_file()) \
        == ["a.csv", "deep/c.csv"]
    assert argv[:4] == ["/usr/bin/python3", "-m", "sagemaker_ssh_sandbox.sagemaker.model_server",
                        "transform"]
    options = dict(zip(argv[4::2], argv[5::2]))
    assert options == {"--input-dir": f"{serving.TRANSFORM_DIR}/input",
                       "--output-dir": f"{serving.TRANSFORM_DIR}/output",
                       "--content-type": "text/csv", "--accept": "application/json",
                       "--split-type": "Line", "--assemble-with": "Line",
                       "--batch-strategy": "SingleRecord"}
    assert cwd == "/opt/ml/model"
    assert (env["SHARED"], env["MODEL_ONLY"], env["AWS_REGION"]) == (
        "from the job", "1", "model-region")
    assert (env["SAGEMAKER_BATCH"], env["SAGEMAKER_MAX_PAYLOAD_IN_MB"]) == ("true", "6")
    assert env["AWS_ENDPOINT_URL"] == platform.endpoint_url
    assert env["PYTHONPATH"] == str(PACKAGE_PARENT)
    # The container learns its job's name only from what the launcher sent.
    assert "TRANSFORM_JOB_NAME" not in env and "SAGEMAKER_ENDPOINT_NAME" not in env
    (root / "transform" / "output" / "deep").mkdir(parents=True)
    (root / "transform" / "output" / "deep" / "c.csv.out").write_text("42\n")
    assert serving.upload_transform_outputs(s3, [root], request) == 1
    assert s3.get_object(Bucket=BUCKET, Key="batch/out/deep/c.csv.out")["Body"].read() == b"42\n"


def test_transform_inputs_must_exist_and_be_a_prefix(s3: Any) -> None:
    def request(uri: str, data_type: str = "S3Prefix") -> dict[str, Any]:
        return {"TransformInput": {"DataSource": {"S3DataSource": {
            "S3DataType": data_type, "S3Uri": uri}}}}

    with pytest.raises(JobSetupError, match=f"no S3 objects found under s3://{BUCKET}/void/"):
        serving.transform_inputs(s3, request(f"s3://{BUCKET}/void/"))
    with pytest.raises(JobSetupError, match="ManifestFile: the sandbox runs S3Prefix inputs only"):
        serving.transform_inputs(s3, request(f"s3://{BUCKET}/m.json", "ManifestFile"))


# -- transform jobs that cannot start --------------------------------------------------------------
def test_transform_jobs_without_their_model_or_inputs_fail_with_a_client_error(
        s3: Any, sagemaker: Any, platform: Platform, tmp_path: Path) -> None:
    runner = JobRunner(tmp_path, platform, s3, {}, sagemaker=sagemaker)
    jobs = JobsAPI(REGION, ACCOUNT, runner, tmp_path)
    runner.save = jobs.save
    sagemaker.create_model(ModelName="present", ExecutionRoleArn=ROLE,
                           PrimaryContainer={"Image": "img"})

    def create(name: str, model: str) -> dict[str, Any]:
        jobs.handle("CreateTransformJob", {
            "TransformJobName": name, "ModelName": model,
            "TransformInput": {"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/nothing-here/"}}},
            "TransformOutput": {"S3OutputPath": f"s3://{BUCKET}/out"},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}})
        done = until(lambda: (lambda d: d if d["TransformJobStatus"] != "InProgress" else None)(
            jobs.handle("DescribeTransformJob", {"TransformJobName": name})))
        assert done, f"{name} still InProgress"
        return dict(done)

    no_model = create("no-model", "absent-model")
    assert no_model["TransformJobStatus"] == "Failed"
    assert no_model["FailureReason"].startswith("ClientError: Could not find model")
    no_inputs = create("no-inputs", "present")
    assert no_inputs["TransformJobStatus"] == "Failed"
    assert no_inputs["FailureReason"] == (
        f"ClientError: no S3 objects found under s3://{BUCKET}/nothing-here/")
    saved = tmp_path / "jobs" / "transform" / "no-inputs" / "job.json"
    assert until(lambda: json.loads(saved.read_text())["TransformJobStatus"] == "Failed")


# -- sandbox status ------------------------------------------------------------------------------
def test_status_gathers_and_prints_endpoints_and_every_kind_of_container(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sagemaker_ssh_sandbox.cli import _format_status
    from sagemaker_ssh_sandbox.server import Daemon

    def entry(name: str, kind: str, job: str) -> dict[str, Any]:
        return {"name": name, "hostname": "h", "state": "Running", "init_pid": 7,
                "log": f"/logs/{name}", "job": job, "kind": kind}

    daemon = Daemon(tmp_path, REGION)
    daemon._runner = SimpleNamespace(  # type: ignore[assignment]
        containers=lambda: [entry("train-algo-1", "training", "train")])

    def broken() -> list:
        raise RuntimeError("listing failed")

    daemon._gateway = SimpleNamespace(apis=[  # type: ignore[assignment]
        SimpleNamespace(containers=lambda: [entry("ep-i-1", "endpoint", "ep")]),
        SimpleNamespace(handles=lambda op, body: False),  # an API without containers
        SimpleNamespace(containers=broken),
        SimpleNamespace(containers=lambda: [entry("app-c", "studio", "default")])])
    containers = daemon.containers()
    assert [c["name"] for c in containers] == ["train-algo-1", "ep-i-1", "app-c"]
    state = {"pid": 1, "state_dir": str(tmp_path), "endpoint_url": "http://aws",
             "ssm_endpoint_url": "http://ssm", "region": REGION, "role_arn": ROLE}
    lines = _format_status(state, {"uptime": 3, "jobs": [], "containers": containers,
                                   "endpoints": [{"EndpointName": "ep",
                                                  "EndpointStatus": "InService"}]})
    assert lines[lines.index("endpoints (1):") + 1].split() == ["ep", "InService"]
    rows = [line.split() for line in lines[lines.index("containers (3):") + 1:]]
    assert [(r[0], r[5], r[6]) for r in rows] == [
        ("train-algo-1", "training", "train"), ("ep-i-1", "endpoint", "ep"),
        ("app-c", "studio", "default")]


def test_update_endpoint_rules_and_a_failed_update_keeps_the_old_fleet(
        api: EndpointsAPI, sagemaker: Any) -> None:
    """UpdateEndpoint: only an InService endpoint, an existing configuration; an update whose
    new fleet cannot start leaves the endpoint InService on its old configuration, with a
    FailureReason, and its instances untouched."""
    variants = [{"VariantName": "AllTraffic", "InitialInstanceCount": 1}]
    endpoint = _watched(api, variants, 1)
    api._endpoints[endpoint.name] = endpoint
    config = config_for(sagemaker, "update-config", "absent-update")
    with pytest.raises(ApiError, match=r'^Cannot update in-progress endpoint "arn"\.$'):
        api.handle("UpdateEndpoint", {"EndpointName": "watched", "EndpointConfigName": config})
    endpoint.events.put(("ready", endpoint.instances[0], None))
    assert until(lambda: endpoint.status == "InService")
    with pytest.raises(ApiError, match="Could not find endpoint configuration"):
        api.handle("UpdateEndpoint", {"EndpointName": "watched", "EndpointConfigName": "nope"})

    api.handle("UpdateEndpoint", {"EndpointName": "watched", "EndpointConfigName": config})
    assert until(lambda: endpoint.failure_reason)
    described = api.handle("DescribeEndpoint", {"EndpointName": "watched"})
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "c")
    assert "absent-update" in described["FailureReason"]
    assert "PendingDeploymentSummary" not in described
    assert not endpoint.instances[0].retired
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    endpoint.set_status("Deleting")
    endpoint.events.put(("delete", None, None))
