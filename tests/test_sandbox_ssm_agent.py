"""The agent stand-in (run through its bash shim) registers, heartbeats and runs real commands."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, WaiterError
from test_sandbox_ssm_support import (
    AGENT,
    agent_env,
    agent_log,
    online_agent,
    ping_status,
    register,
    running_agent,
    ssm_client,
    wait_for,
)

from sagemaker_ssh_sandbox.ssm.service import start_ssm_server

RUN = "AWS-RunShellScript"


def _wait_command(ssm: Any, command_id: str, instance_id: str) -> dict:
    def finished() -> Any:
        try:
            inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as e:
            assert e.response["Error"]["Code"] == "InvocationDoesNotExist"
            return None
        return inv if inv["Status"] not in ("Pending", "InProgress", "Delayed") else None

    return wait_for(finished, what=f"command {command_id}")


def test_register_run_commands_and_deregister(tmp_path: Path) -> None:
    tags = {"SSHOwner": "alice", "SSHResourceName": "job-1"}
    with online_agent(tmp_path, tags=tags) as (server, ssm, mi, agent, env):
        registration = json.loads((tmp_path / "agent-state" / "registration").read_text())
        assert registration == {"ManagedInstanceID": mi, "Region": "us-east-1"}
        (info,) = ssm.describe_instance_information(
            Filters=[{"Key": "tag:SSHResourceName", "Values": ["job-1"]}]
        )["InstanceInformationList"]
        assert info["InstanceId"] == mi and info["ComputerName"] == socket.gethostname()
        assert info["IamRole"] == "SageMakerRole" and info["IPAddress"]
        assert ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=mi
                                          )["TagList"] == [{"Key": k, "Value": v}
                                                           for k, v in tags.items()]

        sent = ssm.send_command(InstanceIds=[mi], DocumentName=RUN, Comment="exit code",
                                Parameters={"commands": ["echo hi", "echo oops >&2", "exit 3"]})
        command_id = sent["Command"]["CommandId"]
        assert sent["Command"]["Status"] == "Pending"
        with pytest.raises(WaiterError) as waiter_error:
            ssm.get_waiter("command_executed").wait(
                CommandId=command_id, InstanceId=mi, WaiterConfig={"Delay": 1, "MaxAttempts": 20})
        assert "Failed" in str(waiter_error.value)
        inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=mi)
        assert (inv["Status"], inv["ResponseCode"]) == ("Failed", 3)
        assert inv["StandardOutputContent"] == "hi\n"
        assert inv["StandardErrorContent"] == "oops\nfailed to run commands: exit status 3"
        (listed,) = ssm.list_commands(InstanceId=mi)["Commands"]
        assert (listed["Status"], listed["ErrorCount"], listed["Comment"]) == ("Failed", 1,
                                                                               "exit code")

        ok = ssm.send_command(InstanceIds=[mi], DocumentName=RUN, Parameters={
            "commands": ["pwd", "id -u"], "workingDirectory": [str(tmp_path)]})
        ssm.get_waiter("command_executed").wait(
            CommandId=ok["Command"]["CommandId"], InstanceId=mi, WaiterConfig={"Delay": 1})
        inv = ssm.get_command_invocation(CommandId=ok["Command"]["CommandId"], InstanceId=mi)
        assert inv["Status"] == "Success" and inv["ResponseCode"] == 0
        assert inv["StandardOutputContent"] == f"{tmp_path}\n0\n"

        ssm.deregister_managed_instance(InstanceId=mi)
        assert agent.wait(15) == 0
        assert ssm.describe_instance_information()["InstanceInformationList"] == []


def test_execution_timeout_kills_the_command(tmp_path: Path) -> None:
    with online_agent(tmp_path) as (server, ssm, mi, agent, env):
        marker = tmp_path / "still-running"
        sent = ssm.send_command(InstanceIds=[mi], DocumentName=RUN, Parameters={
            "commands": ["echo started", f"sleep 30; touch {marker}"],
            "executionTimeout": ["1"]})
        inv = _wait_command(ssm, sent["Command"]["CommandId"], mi)
        assert (inv["Status"], inv["StatusDetails"]) == ("TimedOut", "ExecutionTimedOut")
        assert inv["StandardOutputContent"] == "started\n"
        assert ssm.list_commands(CommandId=sent["Command"]["CommandId"]
                                 )["Commands"][0]["Status"] == "TimedOut"
        assert not marker.exists()


def test_heartbeat_loss_is_connection_lost(tmp_path: Path) -> None:
    with online_agent(tmp_path, heartbeat_timeout=1.0) as (server, ssm, mi, agent, env):
        agent.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: ping_status(ssm, mi) == "ConnectionLost", what="ConnectionLost")
            lost = ssm.describe_instance_information(Filters=[
                {"Key": "PingStatus", "Values": ["ConnectionLost"]}])["InstanceInformationList"]
            assert [i["InstanceId"] for i in lost] == [mi]
            with pytest.raises(ClientError) as e:
                ssm.start_session(Target=mi, DocumentName="AWS-StartSSHSession")
            assert e.value.response["Error"]["Code"] == "TargetNotConnected"
        finally:
            agent.send_signal(signal.SIGCONT)
        wait_for(lambda: ping_status(ssm, mi) == "Online", what="Online again")


def test_registration_errors_print_one_line_and_exit_1(tmp_path: Path) -> None:
    server = start_ssm_server()
    try:
        ssm = ssm_client(server)
        env = agent_env(server, tmp_path / "state")
        _, act = register(ssm, env, RegistrationLimit=1)

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(AGENT), *args], env=env, capture_output=True,
                                  text=True, timeout=30)

        base = ["-register", "-id", act["ActivationId"], "-region", "us-east-1", "-y"]
        limited = run("-code", act["ActivationCode"], *base)
        assert limited.returncode == 1 and limited.stdout == ""
        assert limited.stderr.startswith("Registration failed due to error registering the "
                                         "instance with AWS SSM. InvalidActivation: ")
        assert "registration limit" in limited.stderr
        wrong = run("-code", "-wrong", *base)  # a value may start with "-", as with the real agent
        assert wrong.returncode == 1 and "InvalidActivation: " in wrong.stderr

        act2 = ssm.create_activation(IamRole="SageMakerRole")
        server.backend.inject_fault("RegisterManagedInstance", "ThrottlingException")
        base2 = ["-register", "-code", act2["ActivationCode"], "-id", act2["ActivationId"],
                 "-region", "us-east-1"]
        throttled = run(*base2)
        assert throttled.returncode == 1 and "ThrottlingException: Rate exceeded" in \
            throttled.stderr
        assert run(*base2[:-1], "eu-west-1").returncode == 1  # activation is regional
        server.backend.activations[act2["ActivationId"]].expiration = 0
        expired = run(*base2)
        assert expired.returncode == 1 and "ActivationExpired" in expired.stderr

        usage = run("-register", "-code", "x")
        assert usage.returncode == 1 and "-register needs" in usage.stderr
        assert run("-version").stdout.startswith("SSM Agent version: ")
        unregistered = dict(env, SSM_AGENT_STATE_DIR=str(tmp_path / "empty"))
        with running_agent(unregistered) as proc:
            assert proc.wait(15) == 1
        assert "not registered" in agent_log(unregistered).read_text()
    finally:
        server.shutdown()
