"""The CDK stacks, synthesized offline once per module: the policy statements and conditions
they grant, the trust custom resource, the advanced-tier setting, the low-GPU wiring, the app."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
cdk = pytest.importorskip("aws_cdk")
assertions = pytest.importorskip("aws_cdk.assertions")

from sagemaker_ssh_helper.cdk import app as cdk_app  # noqa: E402
from sagemaker_ssh_helper.cdk import policies  # noqa: E402

ACCOUNT = "111122223333"
REGION = "eu-west-1"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:gpu-alerts"
CONTEXT = {"sagemaker_role": "service-role/SMExecution", "user_role": "DataScientist, MLOps",
           "sns_notification_topic_arn": TOPIC}
PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": ACCOUNT, "AWS::Region": REGION,
          "AWS::URLSuffix": "amazonaws.com"}


def resolve(value: Any) -> Any:
    """Evaluate the pseudo-parameter Refs and Fn::Joins CDK writes for tokens."""
    if isinstance(value, dict):
        if set(value) == {"Ref"} and value["Ref"] in PSEUDO:
            return PSEUDO[value["Ref"]]
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(str(resolve(p)) for p in parts)
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every stack of the app, synthesized once, as resolved CloudFormation templates."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = cdk_app.build_app(cdk.App(context=CONTEXT, outdir=str(outdir)))
    out = {}
    for stack in app.node.children:
        if isinstance(stack, cdk.Stack):
            out[stack.stack_name] = resolve(assertions.Template.from_stack(stack).to_json())
    return out


def resources(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in template["Resources"].values() if r["Type"] == kind]


def managed_policy(template: dict[str, Any], description_word: str) -> dict[str, Any]:
    [found] = [p["Properties"] for p in resources(template, "AWS::IAM::ManagedPolicy")
               if description_word in p["Properties"]["Description"]]
    return found


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy["PolicyDocument"]["Statement"])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def granting(policy: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in statements(policy)
            if s["Effect"] == "Allow" and action in as_list(s["Action"])]


MI = f"arn:aws:ssm:*:{ACCOUNT}:managed-instance/*"
EXPECTED_TARGET = policies.Target(partition="aws", account=ACCOUNT,
                                  sagemaker_role="service-role/SMExecution")


def test_app_has_the_three_stacks(templates: dict[str, Any]) -> None:
    assert sorted(templates) == sorted([cdk_app.IAM_STACK, cdk_app.ADVANCED_TIER_STACK,
                                        cdk_app.LOW_GPU_STACK])


def test_server_policy_is_the_documented_one_on_the_sagemaker_role(
        templates: dict[str, Any]) -> None:
    server = managed_policy(templates[cdk_app.IAM_STACK], "(server side)")
    assert server["Roles"] == ["SMExecution"]  # IAM wants the name without its path
    assert server["PolicyDocument"] == policies.server_policy(EXPECTED_TARGET)


def test_server_may_pass_only_its_own_role_and_only_to_ssm(templates: dict[str, Any]) -> None:
    server = managed_policy(templates[cdk_app.IAM_STACK], "(server side)")
    [passrole] = granting(server, "iam:PassRole")
    assert passrole["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/service-role/SMExecution"
    assert passrole["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}}
    [tagging] = granting(server, "ssm:AddTagsToResource")
    assert tagging["Condition"] == {"ForAllValues:StringEquals": {"aws:TagKeys": [
        "SSHOwner", "SSHCreator", "SSHTimestamp", "SSHResourceName", "SSHResourceArn"]}}
    [deregister] = granting(server, "ssm:DeregisterManagedInstance")
    assert deregister["Resource"] == MI
    assert deregister["Condition"] == {
        "StringEquals": {"ssm:resourceTag/SSHCreator": "${aws:userid}"},
        "StringLike": {"ssm:resourceTag/SSHResourceArn": "*"}}
    [create] = granting(server, "ssm:CreateActivation")
    assert create["Condition"]["StringEquals"] == {
        "aws:RequestTag/SSHCreator": "${aws:userid}"}
    [deny] = [s for s in server["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert (deny["Action"], deny["Resource"]) == (
        ["ssm:AddTagsToResource", "ssm:RemoveTagsFromResource"], MI)
    [update] = granting(server, "ssm:UpdateInstanceInformation")
    assert (update["Resource"], update["Condition"]) == (
        MI, {"StringLike": {"ssm:resourceTag/SSHOwner": "*"}})
    for action in ("ssm:CreateActivation", "ssm:DeleteActivation",
                   "ssmmessages:OpenDataChannel", "ec2messages:GetMessages"):
        assert granting(server, action), action
    # nothing for the client side on the server role
    for action in ("ssm:SendCommand", "ssm:StartSession"):
        assert granting(server, action) == []


def test_client_reaches_only_its_own_instances_with_two_documents(
        templates: dict[str, Any]) -> None:
    client = managed_policy(templates[cdk_app.IAM_STACK], "your own")
    assert client["Roles"] == ["DataScientist", "MLOps"]
    assert client["PolicyDocument"] == policies.client_policy(EXPECTED_TARGET)
    for action, document in (("ssm:SendCommand", "AWS-RunShellScript"),
                             ("ssm:StartSession", "AWS-StartSSHSession")):
        grants = [s for s in granting(client, action) if not native_targets_only(s)]
        by_resource = {r: s for s in grants for r in as_list(s["Resource"])}
        assert sorted(by_resource) == sorted([MI, f"arn:aws:ssm:*::document/{document}"])
        condition = by_resource[MI]["Condition"]
        assert condition["StringEquals"] == {"ssm:resourceTag/SSHOwner": "${aws:userid}"}
        assert "Condition" not in by_resource[f"arn:aws:ssm:*::document/{document}"]
    [start] = [s for s in granting(client, "ssm:StartSession") if s["Resource"] == MI]
    assert start["Condition"]["BoolIfExists"] == {"ssm:SessionDocumentAccessCheck": "true"}
    [terminate] = granting(client, "ssm:TerminateSession")
    assert "ssm:ResumeSession" in terminate["Action"]
    assert f"arn:aws:ssm:*:{ACCOUNT}:session/${{aws:userid}}-*" in terminate["Resource"]
    [query] = granting(client, "logs:StartQuery")
    assert query["Resource"] == f"arn:aws:logs:*:{ACCOUNT}:log-group:/aws/sagemaker/*"
    keys, native_keys = granting(client, "s3:PutObject")
    assert keys["Resource"] == f"arn:aws:s3:::sagemaker-*-{ACCOUNT}/ssh-authorized-keys/*"
    # native transport: each user writes keys under their own folder only
    assert native_keys["Resource"] == \
        f"arn:aws:s3:::sagemaker-*-{ACCOUNT}/ssh-native-keys/${{aws:userid}}/*"
    natives = [s for s in granting(client, "ssm:StartSession") if native_targets_only(s)]
    assert [s["Action"] for s in natives] == ["ssm:StartSession"] * 2  # training, endpoints
    for action in ("ssm:DescribeInstanceInformation", "ssm:DescribeInstanceProperties",
                   "ssm:GetCommandInvocation", "sagemaker:ListTrainingJobs",
                   "sagemaker:DescribeTrainingJob"):
        assert granting(client, action), action


def native_targets_only(statement: dict[str, Any]) -> bool:
    """A statement that reaches SageMaker's own targets only: training jobs' remote debugging or
    endpoints' SSM access (``*`` with the target-id condition, as AWS documents)."""
    like = statement.get("Condition", {}).get("StringLike", {})
    return like in ({"ssm:resourceTag/aws:ssmmessages:target-id": "sagemaker-training-job:*"},
                    {"ssm:resourceTag/aws:ssmmessages:target-id": "sagemaker-endpoint:*"})


def test_no_statement_grants_commands_or_sessions_everywhere(templates: dict[str, Any]) -> None:
    for policy in resources(templates[cdk_app.IAM_STACK], "AWS::IAM::ManagedPolicy"):
        for statement in statements(policy["Properties"]):
            risky = {"ssm:SendCommand", "ssm:StartSession", "ssm:*", "*"}
            if native_targets_only(statement):
                assert as_list(statement["Action"]) == ["ssm:StartSession"], statement
                continue
            if risky & set(as_list(statement["Action"])):
                assert "*" not in as_list(statement["Resource"]), statement


def test_admin_policy_deregisters_only_ssh_helper_instances(templates: dict[str, Any]) -> None:
    admin = managed_policy(templates[cdk_app.IAM_STACK], "stale")
    assert "Roles" not in admin
    assert admin["PolicyDocument"] == policies.admin_policy(EXPECTED_TARGET)
    conditions = [s["Condition"] for s in granting(admin, "ssm:DeregisterManagedInstance")]
    assert conditions == [{"StringLike": {"ssm:resourceTag/SSHResourceArn": "*"}},
                          {"StringLike": {"ssm:resourceTag/SSHTimestamp": "*"}}]


def test_trust_is_appended_by_a_custom_resource(templates: dict[str, Any]) -> None:
    template = templates[cdk_app.IAM_STACK]
    [trust] = resources(template, "Custom::SSHHelperSSMTrust")
    assert trust["Properties"]["RoleName"] == "SMExecution"
    assert trust["Properties"]["Statement"] == policies.ssm_trust_statement(EXPECTED_TARGET)
    assert trust["Properties"]["Statement"]["Condition"]["StringEquals"] == {
        "aws:SourceAccount": ACCOUNT}
    # no template resource owns (and could overwrite) the SageMaker role itself
    assert all(r["Properties"].get("RoleName") != "SMExecution"
               for r in resources(template, "AWS::IAM::Role"))
    [handler] = [f["Properties"] for f in resources(template, "AWS::Lambda::Function")
                 if f["Properties"].get("Handler") == "trust_policy.on_event"]
    assert handler["Runtime"] == "python3.13"
    [handler_policy] = [p["Properties"] for p in resources(template, "AWS::IAM::Policy")
                        if granting(p["Properties"], "iam:UpdateAssumeRolePolicy")]
    [grant] = granting(handler_policy, "iam:UpdateAssumeRolePolicy")
    assert sorted(as_list(grant["Action"])) == ["iam:GetRole", "iam:UpdateAssumeRolePolicy"]
    assert grant["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/service-role/SMExecution"


def test_advanced_tier_is_one_service_setting_call(templates: dict[str, Any]) -> None:
    template = templates[cdk_app.ADVANCED_TIER_STACK]
    [setting] = resources(template, "Custom::AWS")
    setting_arn = (f"arn:aws:ssm:{REGION}:{ACCOUNT}:servicesetting"
                   "/ssm/managed-instance/activation-tier")
    for phase in ("Create", "Update"):
        call = json.loads(setting["Properties"][phase])
        assert (call["service"], call["action"]) == ("SSM", "updateServiceSetting")
        assert call["parameters"] == {"SettingId": setting_arn, "SettingValue": "advanced"}
    assert "Delete" not in setting["Properties"]
    [policy] = resources(template, "AWS::IAM::Policy")
    assert statements(policy["Properties"]) == [
        {"Action": "ssm:UpdateServiceSetting", "Effect": "Allow", "Resource": setting_arn}]


def test_low_gpu_rule_feeds_the_handler_which_may_publish(templates: dict[str, Any]) -> None:
    template = templates[cdk_app.LOW_GPU_STACK]
    [rule] = resources(template, "AWS::Events::Rule")
    assert rule["Properties"]["EventPattern"] == {
        "source": ["aws.sagemaker"], "detail-type": ["SageMaker Processing Job State Change"]}
    [function_id] = [k for k, r in template["Resources"].items()
                     if r["Type"] == "AWS::Lambda::Function"]
    function = template["Resources"][function_id]["Properties"]
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert (function["Handler"], function["Runtime"]) == ("low_gpu.handler", "python3.13")
    assert function["Environment"]["Variables"] == {
        "SNS_NOTIFICATION_TOPIC_ARN": TOPIC, "LOW_GPU_RULE_NAME": "LowGPUUtilization"}
    [permission] = resources(template, "AWS::Lambda::Permission")
    assert permission["Properties"]["Principal"] == "events.amazonaws.com"
    [policy] = resources(template, "AWS::IAM::Policy")
    [publish] = granting(policy["Properties"], "sns:Publish")
    assert publish["Resource"] == TOPIC
    [describe] = granting(policy["Properties"], "sagemaker:DescribeTrainingJob")
    assert describe["Resource"] == [
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/*",
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/*"]


def test_role_arn_with_path_and_custom_keys_path(tmp_path: Path) -> None:
    context = {"sagemaker_role": f"arn:aws:iam::{ACCOUNT}:role/team/SM",
               "authorized_keys_path": "s3://keys-bucket/team/ssh"}
    app = cdk_app.build_app(cdk.App(context=context, outdir=str(tmp_path)))
    stack = app.node.find_child(cdk_app.IAM_STACK)
    template = resolve(assertions.Template.from_stack(stack).to_json())
    server = managed_policy(template, "(server side)")
    assert server["Roles"] == ["SM"]
    [passrole] = granting(server, "iam:PassRole")
    assert passrole["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/team/SM"
    keys, native_keys = granting(managed_policy(template, "your own"), "s3:PutObject")
    assert keys["Resource"] == "arn:aws:s3:::keys-bucket/team/ssh/*"
    assert native_keys["Resource"] == "arn:aws:s3:::keys-bucket/ssh-native-keys/${aws:userid}/*"
    [trust] = resources(template, "Custom::SSHHelperSSMTrust")
    assert trust["Properties"]["RoleName"] == "SM"


def test_bad_keys_path_is_refused(tmp_path: Path) -> None:
    context = {"sagemaker_role": "SM", "authorized_keys_path": "keys-bucket/ssh"}
    with pytest.raises(ValueError, match="must be an s3:// prefix"):
        cdk_app.build_app(cdk.App(context=context, outdir=str(tmp_path)))


def test_lambda_asset_holds_only_the_handlers() -> None:
    from sagemaker_ssh_helper.cdk.iam_ssm_stack import HANDLERS

    names = sorted(p.name for p in HANDLERS.iterdir() if p.suffix == ".py")
    assert names == ["__init__.py", "low_gpu.py", "trust_policy.py"]
    for path in HANDLERS.glob("*.py"):  # the Lambda has boto3, not this package
        assert "sagemaker_ssh_helper" not in path.read_text(), path


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("cli-synth")


def run_app(outdir: Path, context: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the app the way the CDK CLI does (context and output directory in the env)."""
    env = dict(os.environ, CDK_OUTDIR=str(outdir), CDK_CONTEXT_JSON=json.dumps(context),
               CDK_DEFAULT_ACCOUNT=ACCOUNT, CDK_DEFAULT_REGION=REGION)
    return subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.cdk.app"], env=env,
                          capture_output=True, text=True, timeout=300)


def test_app_module_synthesizes_like_cdk_synth(synth_dir: Path) -> None:
    done = run_app(synth_dir, {"sagemaker_role": "SMExecution"})
    assert done.returncode == 0, done.stderr
    produced = sorted(p.name for p in synth_dir.glob("*.template.json"))
    assert produced == [f"{cdk_app.ADVANCED_TIER_STACK}.template.json",
                        f"{cdk_app.IAM_STACK}.template.json"]
    assert f"{cdk_app.LOW_GPU_STACK} left out: pass -c sns_notification_topic_arn" \
        in done.stderr
    template = json.loads((synth_dir / f"{cdk_app.IAM_STACK}.template.json").read_text())
    client = [r["Properties"] for r in template["Resources"].values()
              if r["Type"] == "AWS::IAM::ManagedPolicy"
              and "your own" in r["Properties"]["Description"]]
    assert client and "Roles" not in client[0]  # no user_role given: attach it yourself


def test_importing_the_package_does_not_load_cdk() -> None:
    code = ("import sys, sagemaker_ssh_helper.cdk, sagemaker_ssh_helper.cdk.policies, "
            "sagemaker_ssh_helper.cdk.handlers.trust_policy, "
            "sagemaker_ssh_helper.cdk.handlers.low_gpu; "
            "print(any(m.startswith(('aws_cdk', 'jsii', 'boto3')) for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done.stderr
