"""SSH Helper v2's client-side classes against the sandbox's SSM service and moto: SSMManager's
old knobs, the Studio user filter, ``interactive_sagemaker`` on one filtered scan (API calls
counted), ``SageMakerSecureShellHelper`` parsing, ``sm-ssh --version``, and the small helpers
(``env``, ``aws.AWS``, ``deregister_old_instances_from_ssm``)."""
# ruff: noqa: F811 - the ``ssm`` fixture of test_manager is imported and named as a parameter
from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import boto3
import pytest
from conftest import FakeClock, create_training_job
from test_manager import ssm  # noqa: F401 - the SSM stand-in + moto fixture

from sagemaker_ssh_helper import deregister_old_instances_from_ssm as dereg
from sagemaker_ssh_helper import env
from sagemaker_ssh_helper.interactive_sagemaker import (
    InteractiveSageMaker,
    SageMaker,
    SageMakerTrainingJob,
)
from sagemaker_ssh_helper.manager import SSMManager, SSMManagerBase
from sagemaker_ssh_helper.sm_ssh import SageMakerSecureShellHelper, read_version

pytest.importorskip("sagemaker_ssh_sandbox.ssm.service")

ACCOUNT = "123456789012"
REGION = "us-east-1"


def arn(resource: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{resource}"


def tags(name: str, resource: str, ts: int = 1000) -> dict[str, str]:
    return {"SSHResourceName": name, "SSHResourceArn": arn(resource), "SSHTimestamp": str(ts),
            "SSHOwner": "owner-id"}


# -- SSMManager -------------------------------------------------------------------------------
def test_studio_user_filter_without_domain(ssm: Any) -> None:
    """get_studio_user_kgw_instance_ids("", user, app) returns that user's apps only."""
    b = ssm.backend
    alice_1 = b.add_fake_instances(1, tags=tags("default", "app/d-1/alice/JupyterLab/default"))
    alice_2 = b.add_fake_instances(1, tags=tags("default", "app/d-2/alice/JupyterLab/default",
                                                2000))
    b.add_fake_instances(1, tags=tags("default", "app/d-1/bob/JupyterLab/default", 3000))
    manager = SSMManager(REGION, progress=None)
    assert manager.get_studio_user_kgw_instance_ids("", "alice", "default") == alice_2 + alice_1
    assert manager.get_studio_user_kgw_instance_ids("d-1", "alice", "default") == alice_1
    assert len(manager.get_studio_kgw_instance_ids("default")) == 3
    with pytest.raises(ValueError, match="user_profile_name is empty"):
        manager.get_studio_user_kgw_instance_ids("d-1", "", "default")


def test_v2_knobs_map_onto_the_deadline(ssm: Any) -> None:
    b = ssm.backend
    first = b.add_fake_instances(1, tags=tags("job-a", "training-job/job-a"))
    clock = FakeClock()
    # sleep_between_retries_in_seconds caps the poll interval; 5 retries wait for both nodes
    patient = SSMManager(REGION, 4, 5, clock=clock, sleep=clock.sleep, progress=None)
    assert isinstance(patient, SSMManagerBase)
    assert patient.get_training_instance_ids("job-a", timeout_in_sec=60, expected_count=2) \
        == first
    assert sum(clock.sleeps) == pytest.approx(60) and max(clock.sleeps) <= 4
    # redo_attempts=0 (what v2's sm-ssh list used): one instance is enough
    eager = SSMManager(REGION, 10, 0, clock=clock, sleep=clock.sleep, progress=None)
    clock.sleeps.clear()
    assert eager.get_training_instance_ids("job-a", timeout_in_sec=60, expected_count=2) \
        == first
    assert clock.sleeps == []
    with pytest.raises(ValueError, match="redo_attempts must be an integer >= 0"):
        SSMManager(REGION, 10, -1)
    with pytest.raises(ValueError, match="sleep_between_retries_in_seconds must be"):
        SSMManager(REGION, float("nan"))


def test_get_instance_ids_once_and_the_generic_lookup(ssm: Any) -> None:
    b = ssm.backend
    mine = b.add_fake_instances(1, tags=tags("default", "app/d-1/alice/KernelGateway/default"))
    b.add_fake_instances(1, tags=tags("default", "app/d-1/bob/KernelGateway/default", 2000))
    b.add_fake_instances(1, tags=tags("default", "app/d-1/carol/KernelGateway/default", 500),
                         ping_status="ConnectionLost")
    manager = SSMManager(REGION, progress=None)
    assert manager.get_instance_ids_once("app", "default", ":app/d-1/alice/") == mine
    assert len(manager.get_instance_ids_once("app", "default")) == 2  # Online ones
    assert manager.get_instance_ids("app", "default", 0, 1, ":app/d-1/alice/") == mine
    assert manager.get_instance_ids_once("app", "default", not_earlier_than_timestamp=1500) \
        != mine
    with pytest.raises(ValueError, match="unknown ARN resource type 'job'"):
        manager.get_instance_ids_once("job", "x")


def test_list_all_instances_and_fetch_tags_is_what_it_says(ssm: Any) -> None:
    b = ssm.backend
    ssh = b.add_fake_instances(2, tags=lambda i: tags(f"j{i}", f"training-job/j{i}"))
    other = b.add_fake_instances(3)  # not SSH Helper's
    b.reset_call_counts()
    everything = SSMManager(REGION, progress=None).list_all_instances_and_fetch_tags()
    assert set(everything) == set(ssh + other)
    assert everything[ssh[0]]["SSHResourceName"] == "j0"
    assert everything[other[0]][SSMManager.PING_STATUS] == "Online"
    assert b.stats()["CallCounts"] == {"DescribeInstanceInformation": 1,
                                       "ListTagsForResource": 5}  # one per instance
    b.reset_call_counts()
    only_ssh = SSMManager(REGION, progress=None).ssh_instances_and_tags()
    assert set(only_ssh) == set(ssh)
    assert b.stats()["CallCounts"]["ListTagsForResource"] == 2  # the SSH ones only


def test_expired_instances_use_clock_timestamp_override(ssm: Any) -> None:
    b = ssm.backend
    lost = b.add_fake_instances(1, tags=tags("j", "training-job/j"), ping_status="ConnectionLost")
    b.add_fake_instances(1, tags=tags("k", "training-job/k"))
    now = SSMManager(REGION, progress=None)
    assert now.list_expired_ssh_instances(0) == lost
    past = SSMManager(REGION, 10, 5, 0, progress=None)  # "now" is 1970: nothing expired yet
    assert past.list_expired_ssh_instances(1) == []
    assert now.get_ssh_instance_timestamp(lost[0]) == 1000


# -- interactive_sagemaker ------------------------------------------------------------------
def create_training_jobs(names: list[str]) -> None:
    for name in names:
        create_training_job(name)


def counted(client: Any) -> Counter:
    calls: Counter = Counter()
    client.meta.events.register("before-call", lambda model, **_: calls.update([model.name]))
    return calls


def listing_calls(ssm: Any, jobs: int, other_instances: int) -> dict[str, int]:
    names = [f"job-{jobs}-{i}" for i in range(jobs)]
    create_training_jobs(names)
    b = ssm.backend
    for i, name in enumerate(names[:3]):
        ids = b.add_fake_instances(1, tags=tags(name, f"training-job/{name}", 1000 + i))
        with b.lock:  # as the containers register it: the instance name is the resource ARN
            b.instances[ids[0]].name = arn(f"training-job/{name}")
    b.add_fake_instances(other_instances)
    b.reset_call_counts()
    sagemaker = SageMaker(REGION)
    sm_calls = counted(sagemaker.sagemaker_client)
    interactive = InteractiveSageMaker(sagemaker, SSMManager(REGION, progress=None))
    jobs_listed = interactive.list_training_jobs(interactive.managed_instances())
    mine = [j for j in jobs_listed if j.training_job_name in names]
    assert len(mine) == jobs
    online = [j for j in mine if j.ssm_instance_id]
    assert len(online) == 3 and all(j.ping_status == "Online" for j in online)
    return {**dict(sm_calls), **b.stats()["CallCounts"]}


def test_interactive_listing_is_one_scan_whatever_the_account_holds(ssm: Any) -> None:
    small = listing_calls(ssm, 5, 0)
    large = listing_calls(ssm, 60, 300)
    assert small == {"ListTrainingJobs": 1, "DescribeInstanceProperties": 1}
    # more jobs only add list pages; more managed instances add nothing
    assert large == {"ListTrainingJobs": 1, "DescribeInstanceProperties": 1}  # 100 per page
    print(f"interactive listing API calls: {small} (5 jobs) / {large} (65 jobs, "
          f"306 instances)")


def test_sm_ssh_list_pages_at_the_apis_maximum_and_reads_tags_only_where_needed(
        ssm: Any) -> None:
    """150 jobs are 2 ListTrainingJobs pages (their default page is 10); instances named by
    their resource ARN need no tag reads, one registered by SSH Helper v2 needs one."""
    from sagemaker_ssh_helper import fqdn, resources

    names = [f"paged-{i:03d}" for i in range(150)]
    create_training_jobs(names)
    b = ssm.backend
    for i, name in enumerate(names[:3]):
        ids = b.add_fake_instances(1, tags=tags(name, f"training-job/{name}", 1000 + i))
        if i:  # the first as SSH Helper v2 registered it: no ARN as its name
            with b.lock:
                b.instances[ids[0]].name = arn(f"training-job/{name}")
    b.add_fake_instances(100)  # other tools' instances: not scanned
    session = boto3.Session(region_name=REGION)
    calls: Counter = Counter()
    session.events.register("before-call", lambda model, **_: calls.update([model.name]))
    rows = resources.list_rows(session, REGION, fqdn.parse("training.sagemaker"),
                               SSMManager(REGION, session=session, progress=None))
    mine = [r for r in rows if r.name in names]
    assert len(mine) == 150 and sum(r.ssh == "Online" for r in mine) == 3
    with b.lock:  # SSH instances of this module's other tests, too
        ssh = [i for i in b.instances.values() if "SSHResourceArn" in i.tags
               and not i.deregistered]
    # running jobs without managed instances: a few are described (native or not), never all
    from sagemaker_ssh_helper import native

    running_bare = sum(r.status == "InProgress" and not r.instances for r in rows)
    assert calls.pop("DescribeTrainingJob", 0) == min(running_bare, native.LIST_DESCRIBES)
    assert dict(calls) == {"ListTrainingJobs": math.ceil(len(rows) / 100),
                           "DescribeInstanceProperties": math.ceil(len(ssh) / 1000),
                           "ListTagsForResource": sum(not i.name.startswith("arn:")
                                                      for i in ssh)}
    assert calls["ListTrainingJobs"] < 5 and calls["ListTagsForResource"] < 5


def test_describe_instance_properties_stand_in_pages_and_filters_like_ssm(ssm: Any) -> None:
    """The real boto3 client against the stand-in: 1,000 per page at most (MaxResults 5 to
    1000, botocore checks the minimum, the service the maximum), tokens bound to their
    filters, FiltersWithOperator with tag keys and operators, unknown keys refused."""
    from botocore.config import Config
    from botocore.exceptions import ClientError

    b = ssm.backend
    ssh = b.add_fake_instances(1203, tags=lambda i: tags(f"p{i}", f"training-job/p{i}"))
    lost = b.add_fake_instances(2, tags=tags("lost", "training-job/lost"),
                                ping_status="ConnectionLost")
    other = b.add_fake_instances(3)
    client = boto3.client("ssm", region_name=REGION)
    tagged = [{"Key": "tag-key", "Values": ["SSHResourceArn"], "Operator": "Equal"}]
    b.reset_call_counts()
    pages = list(client.get_paginator("describe_instance_properties").paginate(
        FiltersWithOperator=tagged, PaginationConfig={"PageSize": 1000}))
    assert [len(p["InstanceProperties"]) for p in pages] == [1000, 205]
    assert b.stats()["CallCounts"] == {"DescribeInstanceProperties": 2}
    first = pages[0]["InstanceProperties"][0]
    assert first["InstanceId"] == ssh[0] and first["PingStatus"] == "Online"
    assert first["ResourceType"] == "ManagedInstance" and "IsLatestVersion" not in first
    assert "RegistrationDate" in first and "ComputerName" in first
    found = {i["InstanceId"] for p in pages for i in p["InstanceProperties"]}
    assert found == set(ssh + lost) and not found & set(other)

    def ids(**kwargs: Any) -> list[str]:
        return [i["InstanceId"] for i in client.describe_instance_properties(
            MaxResults=1000, **kwargs)["InstanceProperties"]]

    assert ids(FiltersWithOperator=[*tagged, {"Key": "PingStatus", "Values": ["Online"],
                                              "Operator": "NotEqual"}]) == lost
    assert ids(FiltersWithOperator=[{"Key": "tag:SSHResourceName", "Values": ["lost", "p12"],
                                     "Operator": "Equal"}]) == [ssh[12]] + lost
    assert len(ids(FiltersWithOperator=[{"Key": "tag:SSHResourceName", "Values": ["p12"],
                                         "Operator": "BeginWith"}])) == 1 + 10 + 3  # p12[x[x]]
    assert ids(InstancePropertyFilterList=[{"key": "InstanceIds",
                                            "valueSet": other[:2]}]) == other[:2]
    unchecked = boto3.client("ssm", region_name=REGION,
                             config=Config(parameter_validation=False))
    for bad, code in (({"MaxResults": 1001}, "ValidationException"),
                      ({"MaxResults": 4}, "ValidationException"),
                      ({"FiltersWithOperator": [{"Key": "Name", "Values": ["x"]}]},
                       "InvalidFilterKey"),
                      ({"FiltersWithOperator": [{"Key": "tag-key", "Values": []}]},
                       "InvalidInstancePropertyFilterValue"),
                      ({"FiltersWithOperator": tagged, "NextToken": pages[0]["NextToken"]},
                       None),
                      ({"NextToken": pages[0]["NextToken"]}, "InvalidNextToken")):
        if code is None:  # the token replayed with its own filters is fine
            assert len(unchecked.describe_instance_properties(
                MaxResults=1000, **bad)["InstanceProperties"]) == 205
            continue
        with pytest.raises(ClientError) as info:
            unchecked.describe_instance_properties(**bad)
        assert info.value.response["Error"]["Code"] == code, bad


def test_sm_ssh_list_falls_back_when_the_policy_lacks_describe_instance_properties(
        ssm: Any, caplog: pytest.LogCaptureFixture) -> None:
    """IAM enforced in the stand-in: the documented client policy lists with one
    DescribeInstanceProperties; a policy written before it (no such action) gets one
    AccessDeniedException, one debug line, and the DescribeInstanceInformation scan; the same
    manager does not ask again."""
    import logging

    from sagemaker_ssh_helper.cdk import policies
    from sagemaker_ssh_sandbox.ssm.iam import Authorizer, Principal

    full = policies.client_policy(policies.Target(account=ACCOUNT))
    older = json_copy(full)
    for statement in older["Statement"]:
        if isinstance(statement["Action"], list):
            statement["Action"] = [a for a in statement["Action"]
                                   if a != "ssm:DescribeInstanceProperties"]

    class Principals:
        policy: dict[str, Any] = full

        def principal(self, access_key_id: str) -> Principal:
            return Principal(f"arn:aws:iam::{ACCOUNT}:user/alice", "AIDAALICE", ACCOUNT,
                             "alice", "alice", [self.policy])

    b = ssm.backend
    for name in ("fb-1", "fb-2"):
        ids = b.add_fake_instances(1, tags=tags(name, f"training-job/{name}"))
        with b.lock:
            b.instances[ids[0]].name = arn(f"training-job/{name}")
    principals = Principals()
    b.authorizer = Authorizer(principals)
    try:
        b.reset_call_counts()
        listed = SSMManager(REGION, progress=None).list_ssh_instances()
        assert {"fb-1", "fb-2"} <= {i.resource_name for i in listed}
        assert b.stats()["CallCounts"] == {"DescribeInstanceProperties": 1}
        principals.policy = older
        b.reset_call_counts()
        manager = SSMManager(REGION, progress=None)
        with caplog.at_level(logging.DEBUG, logger="sagemaker_ssh_helper.manager"):
            again = manager.list_ssh_instances()
        assert [i.instance_id for i in again] == [i.instance_id for i in listed]
        assert b.stats()["CallCounts"] == {"DescribeInstanceProperties": 1,
                                           "DescribeInstanceInformation": 1}
        lines = [r.getMessage() for r in caplog.records
                 if "DescribeInstanceProperties" in r.getMessage()]
        assert lines == ["ssm:DescribeInstanceProperties refused (AccessDeniedException): "
                         "listing with ssm:DescribeInstanceInformation"]
        assert caplog.records[-1].levelno == logging.DEBUG
        b.reset_call_counts()
        manager.list_ssh_instances()
        assert b.stats()["CallCounts"] == {"DescribeInstanceInformation": 1}
    finally:
        b.authorizer = None


def json_copy(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def test_interactive_records_print_like_sm_ssh_list(ssm: Any,
                                                   capsys: pytest.CaptureFixture) -> None:
    create_training_jobs(["shown-job"])
    ssm.backend.add_fake_instances(1, tags=tags("shown-job", "training-job/shown-job"))
    interactive = InteractiveSageMaker(SageMaker(REGION), SSMManager(REGION, progress=None))
    interactive.print_training_jobs()
    line = [x for x in capsys.readouterr().out.splitlines() if "shown-job" in x][0]
    assert line.split() == ["Online", "TrainingJob", "Completed",
                            "shown-job.training.sagemaker"]
    record = SageMakerTrainingJob("idle", "InProgress")
    assert str(record).split() == ["ssh:NotFound", "TrainingJob", "InProgress",
                                   "idle.training.sagemaker"]
    assert interactive.list_endpoints({}) == []  # (moto has no ListApps: Studio is e2e)


# -- sm_ssh -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fqdn, kind, name, domain, user", [
    ("my-job.training.sagemaker", "training", "my-job", "", ""),
    ("ep.inference.sagemaker", "inference", "ep", "", ""),
    ("nb.notebook.sagemaker", "notebook", "nb", "", ""),
    ("t.transform.sagemaker", "transform", "t", "", ""),
    ("p.processing.sagemaker", "processing", "p", "", ""),
    ("default.studio.sagemaker", "ide", "default", "", ""),
    ("alice.d-abc.studio.sagemaker", "ide", "alice", "d-abc", "alice"),
    ("default.alice.d-abc.studio.sagemaker", "ide", "default", "d-abc", "alice"),
    ("lab.team.d-abc.space.sagemaker", "ide-space", "lab", "d-abc", "team"),
    ("training.sagemaker", "training", "", "", ""),
    ("sagemaker", "all", "", "", ""),
    ("example.com", "all", "", "", ""),
])
def test_secure_shell_helper_parsing(fqdn: str, kind: str, name: str, domain: str,
                                     user: str) -> None:
    helper = SageMakerSecureShellHelper
    assert helper.fqdn_to_type(fqdn) == kind
    assert helper.fqdn_to_name(fqdn) == name
    assert helper.fqdn_to_studio_domain_id(fqdn) == domain
    assert helper.fqdn_to_studio_user_name(fqdn) == user
    if kind != "all":
        assert helper.fqdn_to_type(helper.type_to_fqdn(kind)) == kind
    with pytest.raises(ValueError, match="unknown resource type 'all'"):
        helper.type_to_fqdn("all")


def test_version_flag(capsys: pytest.CaptureFixture) -> None:
    def sm_ssh(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    for args in (["--version"], ["-v"], ["--region", "eu-west-1", "--version"]):
        done = sm_ssh(*args)
        assert (done.returncode, done.stdout) == (0, f"sm-ssh v{read_version()}\n"), args
    verbose = sm_ssh("-v", "list", "bad")  # with a subcommand, -v is verbose
    assert verbose.returncode == 2 and "malformed name 'bad'" in verbose.stderr
    assert "Traceback" in verbose.stderr
    SageMakerSecureShellHelper.print_version()
    assert capsys.readouterr().out == f"SageMaker SSH Helper v{read_version()}\n"


def test_secure_shell_helper_list_runs_sm_ssh_list(ssm: Any,
                                                   capsys: pytest.CaptureFixture) -> None:
    create_training_jobs(["helper-listed"])
    SageMakerSecureShellHelper().list("helper-listed.training.sagemaker")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("SageMaker SSH Helper v")
    assert out[2].split()[:2] == ["helper-listed.training.sagemaker", "Completed"]


# -- small helpers ----------------------------------------------------------------------------
def test_env_helpers(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(
        '{"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"]}')
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert env.sm_get_node_rank() == 1

    assert env.get_caller_script_name() == os.path.basename(__file__)  # who calls it
    assert env.get_caller_script_name(0) == "env.py"
    script = tmp_path / "launch.py"
    script.write_text("from sagemaker_ssh_helper import env\n"
                      "def helper():\n    return env.get_caller_script_name(2)\n"
                      "print(helper())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.stdout.strip() == "launch.py"
    with pytest.raises(ValueError, match="trace_back must be an integer >= 0"):
        env.get_caller_script_name(-1)


def test_deregister_helpers(ssm: Any) -> None:
    assert dereg.is_approved_to_deregister(3, ["prog", "--preapproving-deregistration"])
    assert not dereg.is_approved_to_deregister(3, ["prog"], stdin=io.StringIO("y\n"))  # no tty
    b = ssm.backend
    stale = b.add_fake_instances(2, tags=tags("j", "training-job/j"),
                                 ping_status="ConnectionLost")
    out = io.StringIO()
    outcome = dereg.deregister(stale + ["mi-00000000000000000"], out=out, err=io.StringIO())
    assert (outcome.deregistered, outcome.gone, outcome.failed) == (2, 1, 0)
    assert out.getvalue() == "Deregistered 2, already gone 1, failed 0 (of 3).\n"
    assert not set(stale) & set(SSMManager(REGION, progress=None)
                                .list_all_instances_and_fetch_tags())


def test_ide_images_and_kernel_image_arns() -> None:
    """Image calls moto does not emulate, on a stubbed SageMaker client (botocore's Stubber
    checks every request against the API model)."""
    from botocore.stub import ANY, Stubber
    from moto import mock_aws

    from sagemaker_ssh_helper.ide import SSHIDE, Image

    with mock_aws():  # STS (the account) from moto
        ide = SSHIDE("d-abc", "alice", REGION)
        aws_images = "arn:aws:sagemaker:us-east-1:081325390199:image"
        with Stubber(ide.client) as stub:
            missing = {"service_error_code": "ResourceNotFound", "service_message": "no"}
            stub.add_client_error("describe_image", **missing)
            stub.add_response("describe_domain", {"DefaultUserSettings": {
                "JupyterServerAppSettings": {"DefaultResourceSpec": {
                    "SageMakerImageArn": f"{aws_images}/jupyter-server-3"}}}},
                {"DomainId": "d-abc"})
            assert ide.resolve_sagemaker_kernel_image_arn("sagemaker-base-python-310") == \
                f"{aws_images}/sagemaker-base-python-310"

            stub.add_response("describe_image", {"ImageStatus": "CREATED"}, {"ImageName": "x"})
            stub.add_response("delete_image", {}, {"ImageName": "x"})
            stub.add_client_error("describe_image", **missing)
            mine = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:image/x"
            stub.add_response("create_image", {"ImageArn": mine}, {"ImageName": "x",
                                                                    "RoleArn": ANY})
            stub.add_response("describe_image", {"ImageStatus": "CREATED"}, {"ImageName": "x"})
            stub.add_response("create_image_version", {"ImageVersionArn": f"{mine}/3"}, {
                "ImageName": "x", "JobType": "NOTEBOOK_KERNEL",
                "BaseImage": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/repo:tag"})
            stub.add_response("describe_image_version", {"ImageVersionStatus": "CREATED"},
                              {"ImageName": "x"})
            stub.add_response("delete_app_image_config", {}, {"AppImageConfigName": "cfg"})
            stub.add_response("create_app_image_config", {}, {
                "AppImageConfigName": "cfg", "KernelGatewayImageConfig": {
                    "KernelSpecs": [{"Name": "python3"}], "FileSystemConfig": {}}})
            stub.add_response("update_domain", {}, {"DomainId": "d-abc", "DefaultUserSettings": {
                "KernelGatewayAppSettings": {"CustomImages": [{
                    "ImageName": "x", "ImageVersionNumber": 3, "AppImageConfigName": "cfg"}]}}})
            image = ide.create_and_attach_image("x", "repo:tag", f"arn:aws:iam::{ACCOUNT}:role/R",
                                                "cfg", [{"Name": "python3"}], {})
            assert image == Image(mine, f"{mine}/3")
            stub.assert_no_pending_responses()
