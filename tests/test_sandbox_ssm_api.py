"""The SSM stand-in answers real botocore clients like AWS: shapes, pagination, errors, faults."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError
from test_sandbox_ssm_support import ssm_client

from sagemaker_ssh_sandbox.ssm.backend import SSMBackend
from sagemaker_ssh_sandbox.ssm.service import SSMServer, start_ssm_server
from sagemaker_ssh_sandbox.ssm.state import SSMError


@pytest.fixture
def server() -> Iterator[SSMServer]:
    srv = start_ssm_server(heartbeat_timeout=5.0)
    yield srv
    srv.shutdown()


@pytest.fixture
def ssm(server: SSMServer) -> Any:
    return ssm_client(server)


def _code(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def _job_tags(i: int) -> dict:
    return {"SSHResourceName": f"job-{i % 3}", "SSHOwner": "alice" if i < 100 else "bob"}


def test_paginator_walks_120_instances_with_tag_filters(server: SSMServer, ssm: Any) -> None:
    ids = server.backend.add_fake_instances(120, tags=_job_tags)
    server.backend.add_fake_instances(5, tags={"Other": "x"}, ping_status="ConnectionLost")
    pages = list(ssm.get_paginator("describe_instance_information").paginate(
        PaginationConfig={"PageSize": 50}))
    assert [len(p["InstanceInformationList"]) for p in pages] == [50, 50, 25]
    listed = [i["InstanceId"] for p in pages for i in p["InstanceInformationList"]]
    assert listed[:120] == ids and len(set(listed)) == 125

    job1 = ssm.get_paginator("describe_instance_information").paginate(
        Filters=[{"Key": "tag:SSHResourceName", "Values": ["job-1"]},
                 {"Key": "tag:SSHOwner", "Values": ["alice"]}],
        PaginationConfig={"PageSize": 5}).build_full_result()["InstanceInformationList"]
    assert [i["InstanceId"] for i in job1] == [ids[i] for i in range(1, 100, 3)]

    by_key = ssm.describe_instance_information(Filters=[{"Key": "tag-key", "Values": ["Other"]}],
                                               MaxResults=50)["InstanceInformationList"]
    assert {i["PingStatus"] for i in by_key} == {"ConnectionLost"} and len(by_key) == 5
    online = ssm.get_paginator("describe_instance_information").paginate(
        InstanceInformationFilterList=[{"key": "PingStatus", "valueSet": ["Online"]}]
    ).build_full_result()["InstanceInformationList"]
    assert len(online) == 120


def test_instance_shape_and_default_page_size(server: SSMServer, ssm: Any) -> None:
    server.backend.add_fake_instances(12, tags={"SSHOwner": "alice"})
    page = ssm.describe_instance_information()
    assert len(page["InstanceInformationList"]) == 10 and page["NextToken"]
    # The seed's client starts its own pagination with NextToken="", which AWS accepts.
    first = ssm.describe_instance_information(NextToken="")
    assert first["InstanceInformationList"] == page["InstanceInformationList"]
    info = page["InstanceInformationList"][0]
    assert info["InstanceId"].startswith("mi-") and len(info["InstanceId"]) == 20
    assert info["ResourceType"] == "ManagedInstance"
    assert info["SourceType"] == "AWS::SSM::ManagedInstance"
    assert info["PlatformType"] == "Linux" and info["PingStatus"] == "Online"
    assert info["LastPingDateTime"].year >= 2024 and info["RegistrationDate"].year >= 2024
    assert ssm.list_tags_for_resource(ResourceType="ManagedInstance",
                                      ResourceId=info["InstanceId"])["TagList"] == [
        {"Key": "SSHOwner", "Value": "alice"}]


def test_describe_errors_are_parsed_by_botocore(ssm: Any) -> None:
    with pytest.raises(ClientError) as e:
        ssm.describe_instance_information(Filters=[{"Key": "Bogus", "Values": ["x"]}])
    assert _code(e) == "InvalidFilterKey"
    with pytest.raises(ClientError) as e:
        ssm.describe_instance_information(MaxResults=51)
    assert _code(e) == "ValidationException"
    assert "less than or equal to 50" in e.value.response["Error"]["Message"]
    with pytest.raises(ParamValidationError):  # botocore itself enforces the minimum of 5
        ssm.describe_instance_information(MaxResults=4)
    with pytest.raises(ClientError) as e:
        ssm.describe_instance_information(NextToken="not-a-token")
    assert _code(e) == "InvalidNextToken"
    with pytest.raises(ClientError) as e:
        ssm.describe_instance_information(
            Filters=[{"Key": "PingStatus", "Values": ["Sleeping"]}])
    assert _code(e) == "InvalidInstanceInformationFilterValue"


def test_activations_create_describe_delete(ssm: Any) -> None:
    act = ssm.create_activation(IamRole="SageMakerRole", RegistrationLimit=2,
                                DefaultInstanceName="algo", Description="job",
                                Tags=[{"Key": "SSHOwner", "Value": "alice"}])
    listed = ssm.describe_activations(Filters=[
        {"FilterKey": "ActivationIds", "FilterValues": [act["ActivationId"]]}])["ActivationList"]
    assert listed[0]["RegistrationLimit"] == 2 and listed[0]["RegistrationsCount"] == 0
    assert listed[0]["Expired"] is False and listed[0]["Tags"][0]["Value"] == "alice"
    with pytest.raises(ClientError) as e:
        ssm.create_activation(IamRole="arn:aws:iam::123456789012:role/service-role/"
                                      "AmazonSageMakerServiceCatalogProductsUseRole")
    assert _code(e) == "ValidationException"
    ssm.delete_activation(ActivationId=act["ActivationId"])
    with pytest.raises(ClientError) as e:
        ssm.delete_activation(ActivationId=act["ActivationId"])
    assert _code(e) == "InvalidActivation"
    with pytest.raises(ClientError) as e:
        ssm.delete_activation(ActivationId="nope")
    assert _code(e) == "InvalidActivationId"


def test_tags_add_remove_and_errors(server: SSMServer, ssm: Any) -> None:
    (mi,) = server.backend.add_fake_instances(1, tags={"A": "1"})
    ssm.add_tags_to_resource(ResourceType="ManagedInstance", ResourceId=mi,
                             Tags=[{"Key": "B", "Value": "2"}, {"Key": "A", "Value": "3"}])
    ssm.remove_tags_from_resource(ResourceType="ManagedInstance", ResourceId=mi, TagKeys=["B"])
    assert ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=mi
                                      )["TagList"] == [{"Key": "A", "Value": "3"}]
    with pytest.raises(ClientError) as e:
        ssm.list_tags_for_resource(ResourceType="ManagedInstance",
                                   ResourceId="mi-00000000000000000")
    assert _code(e) == "InvalidResourceId"
    with pytest.raises(ClientError) as e:
        ssm.list_tags_for_resource(ResourceType="Document", ResourceId="x")
    assert _code(e) == "InvalidResourceType"


def test_targets_offline_or_unknown_are_rejected(server: SSMServer, ssm: Any) -> None:
    online, lost = server.backend.add_fake_instances(2)
    server.backend.expire_heartbeat(lost)
    for target in (lost, "mi-0123456789abcdef0"):
        with pytest.raises(ClientError) as e:
            ssm.send_command(InstanceIds=[target], DocumentName="AWS-RunShellScript",
                             Parameters={"commands": ["true"]})
        assert _code(e) == "InvalidInstanceId"
        with pytest.raises(ClientError) as e:
            ssm.start_session(Target=target, DocumentName="AWS-StartSSHSession",
                              Parameters={"portNumber": ["22"]})
        assert _code(e) == "TargetNotConnected"
        assert e.value.response["Error"]["Message"] == f"{target} is not connected."
    with pytest.raises(ClientError) as e:
        ssm.send_command(InstanceIds=[online], DocumentName="AWS-RunPowerShellScript",
                         Parameters={"commands": ["true"]})
    assert _code(e) == "InvalidDocument"
    ssm.deregister_managed_instance(InstanceId=online)
    with pytest.raises(ClientError) as e:
        ssm.deregister_managed_instance(InstanceId=online)
    assert _code(e) == "InvalidInstanceId"
    assert [i["InstanceId"] for i in ssm.describe_instance_information()[
        "InstanceInformationList"]] == [lost]


def test_delivery_timeout_with_injected_clock() -> None:
    now = [1_800_000_000.0]
    backend = SSMBackend(heartbeat_timeout=5.0, clock=lambda: now[0])
    backend.invocation_visibility_delay = 1.0
    (mi,) = backend.add_fake_instances(1)
    sent = backend.handle("SendCommand", {
        "InstanceIds": [mi], "DocumentName": "AWS-RunShellScript", "TimeoutSeconds": 30,
        "Parameters": {"commands": ["true"], "executionTimeout": ["10"]}})["Command"]
    get = {"CommandId": sent["CommandId"], "InstanceId": mi}
    with pytest.raises(SSMError) as e:  # not visible at once, like AWS
        backend.handle("GetCommandInvocation", get)
    assert e.value.code == "InvocationDoesNotExist"
    now[0] += 1.5
    assert backend.handle("GetCommandInvocation", get)["Status"] == "Pending"
    now[0] += 40
    inv = backend.handle("GetCommandInvocation", get)
    assert (inv["Status"], inv["StatusDetails"]) == ("TimedOut", "DeliveryTimedOut")
    command = backend.handle("ListCommands", {"CommandId": sent["CommandId"]})["Commands"][0]
    assert command["Status"] == "TimedOut" and command["DeliveryTimedOutCount"] == 1
    with pytest.raises(SSMError) as e:
        backend.handle("GetCommandInvocation", {"CommandId": sent["CommandId"],
                                                "InstanceId": "mi-00000000000000000"})
    assert e.value.code == "InvocationDoesNotExist"


def test_fault_injection_python_and_http(server: SSMServer, ssm: Any) -> None:
    server.backend.inject_fault("DescribeInstanceInformation", "ThrottlingException", count=2)
    for _ in range(2):
        with pytest.raises(ClientError) as e:
            ssm.describe_instance_information()
        assert _code(e) == "ThrottlingException"
    assert ssm.describe_instance_information()["InstanceInformationList"] == []
    # botocore's own retries absorb a short burst of throttling, as they do against AWS
    server.backend.inject_fault("DescribeInstanceInformation", "ThrottlingException", count=2)
    assert ssm_client(server, retries=5).describe_instance_information()[
        "ResponseMetadata"]["RetryAttempts"] == 2

    request = urllib.request.Request(
        f"{server.url}/_sandbox/faults", method="POST", data=json.dumps(
            {"operation": "SendCommand", "error_code": "AccessDeniedException"}).encode())
    with urllib.request.urlopen(request) as response:
        assert json.load(response)["Faults"][0]["operation"] == "SendCommand"
    with pytest.raises(ClientError) as e:
        ssm.send_command(InstanceIds=["mi-0123456789abcdef0"], DocumentName="AWS-RunShellScript",
                         Parameters={"commands": ["true"]})
    assert _code(e) == "AccessDeniedException" and "ssm:SendCommand" in str(e.value)


def test_call_counts_and_stats_endpoint(server: SSMServer, ssm: Any) -> None:
    server.backend.add_fake_instances(1000, tags=lambda i: {"SSHResourceName": f"job-{i}"})
    server.backend.reset_call_counts()
    found = ssm.describe_instance_information(
        Filters=[{"Key": "tag:SSHResourceName", "Values": ["job-777"]}])
    assert len(found["InstanceInformationList"]) == 1
    with urllib.request.urlopen(f"{server.url}/_sandbox/stats") as response:
        stats = json.load(response)
    assert stats["CallCounts"] == {"DescribeInstanceInformation": 1}
    assert stats["Instances"] == 1000
    assert server.backend.call_counts["DescribeInstanceInformation"] == 1


def test_state_dir_persists_activations_instances_and_tags(tmp_path: Path) -> None:
    first = start_ssm_server(state_dir=tmp_path)
    act = ssm_client(first).create_activation(IamRole="SageMakerRole")
    (mi,) = first.backend.add_fake_instances(1, tags={"SSHOwner": "alice"})
    first.shutdown()
    second = start_ssm_server(state_dir=tmp_path)
    try:
        ssm = ssm_client(second)
        assert ssm.describe_activations()["ActivationList"][0]["ActivationId"] == \
            act["ActivationId"]
        assert ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=mi
                                          )["TagList"] == [{"Key": "SSHOwner", "Value": "alice"}]
    finally:
        second.shutdown()


def test_unknown_operation_and_cli_module_runs(tmp_path: Path) -> None:
    backend = SSMBackend()
    with pytest.raises(SSMError) as e:
        backend.handle("CreateDocument", {})
    assert e.value.code == "UnknownOperationException"
    proc = subprocess.Popen([sys.executable, "-m", "sagemaker_ssh_sandbox.ssm.service",
                             "--port", "0", "--state-dir", str(tmp_path)],
                            cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip() if proc.stdout else ""
        with urllib.request.urlopen(f"{url}/_sandbox/health") as response:
            assert json.load(response)["Status"] == "ok"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
