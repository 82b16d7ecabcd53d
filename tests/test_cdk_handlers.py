"""The trust-policy custom resource handler against moto's IAM: it appends the SSM statement,
keeps every existing statement, is idempotent, and removes only what it added."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from sagemaker_ssh_helper.cdk import policies
from sagemaker_ssh_helper.cdk.handlers import trust_policy

moto = pytest.importorskip("moto")

ACCOUNT = "123456789012"  # moto's default account
STATEMENT = policies.ssm_trust_statement(policies.Target(account=ACCOUNT))
SAGEMAKER_TRUST: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
         "Action": "sts:AssumeRole"},
        {"Sid": "CrossAccountCI", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::999999999999:root"}, "Action": "sts:AssumeRole",
         "Condition": {"StringEquals": {"sts:ExternalId": "ci"}}},
    ],
}


@pytest.fixture
def iam() -> Iterator[Any]:
    with moto.mock_aws():
        client = boto3.client("iam", region_name="us-east-1")
        client.create_role(RoleName="SMExecution", Path="/service-role/",
                           AssumeRolePolicyDocument=json.dumps(SAGEMAKER_TRUST))
        yield client


def trust(iam: Any, role: str = "SMExecution") -> dict[str, Any]:
    return trust_policy.read_trust(iam, role)


def event(request: str, role: str = "SMExecution", physical: str = "",
          statement: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"RequestType": request, "ResourceProperties": {
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:x",
        "RoleName": role, "Statement": STATEMENT if statement is None else statement}}
    if physical:
        out["PhysicalResourceId"] = physical
    return out


def test_create_appends_and_keeps_existing_statements(iam: Any) -> None:
    result = trust_policy.on_event(event("Create"), iam=iam)
    assert result == {"PhysicalResourceId": "ssm-trust:SMExecution:added",
                      "Data": {"State": "added"}}
    assert trust(iam)["Statement"] == SAGEMAKER_TRUST["Statement"] + [STATEMENT]


def test_create_twice_and_update_are_idempotent(iam: Any) -> None:
    trust_policy.on_event(event("Create"), iam=iam)
    again = trust_policy.on_event(event("Update", physical="ssm-trust:SMExecution:added"),
                                  iam=iam)
    assert again["PhysicalResourceId"] == "ssm-trust:SMExecution:added"
    assert trust(iam)["Statement"] == SAGEMAKER_TRUST["Statement"] + [STATEMENT]


def test_changed_statement_replaces_only_ours(iam: Any) -> None:
    trust_policy.on_event(event("Create"), iam=iam)
    changed = dict(STATEMENT, Condition={"StringEquals": {"aws:SourceAccount": "000000000000"}})
    trust_policy.on_event(event("Update", statement=json.dumps(changed)), iam=iam)
    assert trust(iam)["Statement"] == SAGEMAKER_TRUST["Statement"] + [changed]


def test_delete_restores_the_original_trust(iam: Any) -> None:
    created = trust_policy.on_event(event("Create"), iam=iam)
    trust_policy.on_event(event("Delete", physical=created["PhysicalResourceId"]), iam=iam)
    assert trust(iam) == SAGEMAKER_TRUST


def test_role_that_already_trusts_ssm_is_left_alone(iam: Any) -> None:
    document = json.loads(json.dumps(SAGEMAKER_TRUST))
    document["Statement"][0]["Principal"]["Service"] = ["sagemaker.amazonaws.com",
                                                        "ssm.amazonaws.com"]
    iam.update_assume_role_policy(RoleName="SMExecution", PolicyDocument=json.dumps(document))
    created = trust_policy.on_event(event("Create"), iam=iam)
    assert created["PhysicalResourceId"] == "ssm-trust:SMExecution:present"
    assert trust(iam) == document
    trust_policy.on_event(event("Delete", physical=created["PhysicalResourceId"]), iam=iam)
    assert trust(iam) == document  # it was there before the stack; it stays


def test_switching_roles_moves_the_statement(iam: Any) -> None:
    iam.create_role(RoleName="Other", AssumeRolePolicyDocument=json.dumps(SAGEMAKER_TRUST))
    first = trust_policy.on_event(event("Create"), iam=iam)
    second = trust_policy.on_event(event("Update", role="Other",
                                         physical=first["PhysicalResourceId"]), iam=iam)
    assert second["PhysicalResourceId"] == "ssm-trust:Other:added"
    # CloudFormation then deletes the old physical resource
    trust_policy.on_event(event("Delete", physical=first["PhysicalResourceId"]), iam=iam)
    assert trust(iam) == SAGEMAKER_TRUST
    assert trust(iam, "Other")["Statement"][-1] == STATEMENT


def test_delete_after_the_role_is_gone_succeeds(iam: Any) -> None:
    created = trust_policy.on_event(event("Create"), iam=iam)
    iam.delete_role(RoleName="SMExecution")
    result = trust_policy.on_event(event("Delete", physical=created["PhysicalResourceId"]),
                                   iam=iam)
    assert result["PhysicalResourceId"] == created["PhysicalResourceId"]


def test_delete_of_a_failed_create_does_nothing(iam: Any) -> None:
    # a failed Create reaches Delete with a physical id the provider framework made up
    trust_policy.on_event(event("Delete", physical="some-request-id"), iam=iam)
    assert trust(iam) == SAGEMAKER_TRUST


def test_create_for_a_missing_role_fails(iam: Any) -> None:
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        trust_policy.on_event(event("Create", role="NoSuchRole"), iam=iam)


@pytest.mark.parametrize("statement, expected", [
    ({"Effect": "Allow", "Principal": {"Service": "ssm.amazonaws.com"},
      "Action": "sts:AssumeRole"}, True),
    ({"Effect": "Allow", "Principal": {"Service": ["a.amazonaws.com", "ssm.amazonaws.com"]},
      "Action": ["sts:TagSession", "sts:AssumeRole"]}, True),
    ({"Effect": "Deny", "Principal": {"Service": "ssm.amazonaws.com"},
      "Action": "sts:AssumeRole"}, False),
    ({"Effect": "Allow", "Principal": {"Service": "ssm.amazonaws.com"},
      "Action": "sts:TagSession"}, False),
    ({"Effect": "Allow", "Principal": "*", "Action": "sts:AssumeRole"}, False),
])
def test_trusts_service(statement: dict[str, Any], expected: bool) -> None:
    assert trust_policy.trusts_service(statement, "ssm.amazonaws.com") is expected
