"""IAM_SSM_Setup.md stays true: its policy JSON is what the CDK code builds, and every command,
flag, stack, context value and AWS CLI call it shows exists."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest

from sagemaker_ssh_helper import deregister_old_instances_from_ssm as dereg
from sagemaker_ssh_helper.cdk import policies

DOC = Path(__file__).resolve().parents[1] / "IAM_SSM_Setup.md"
TEXT = DOC.read_text()
PLACEHOLDERS = {"<region>": "eu-west-1", "<account-id>": "111122223333",
                "<role-name>": "SMExecution", "<topic-arn>": "arn:aws:sns:eu-west-1:1:t",
                "<sagemaker-role-name>": "SMExecution", "<user-role-name>": "Users"}
# keep in step with sagemaker_ssh_helper/cdk/app.py (checked below when aws_cdk is installed)
STACKS = {"SSH-IAM-SSM-Stack", "SSH-IAM-SSM-Advanced-Tier-Stack",
          "SSH-Low-GPU-Notification-Stack"}
CONTEXT_KEYS = {"sagemaker_role", "user_role", "authorized_keys_path",
                "sns_notification_topic_arn", "policy_name_suffix"}
AWS_CLI_GLOBAL = {"--region", "--profile", "--query", "--output"}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", text, re.S)


def commands(text: str) -> list[str]:
    """Shell commands of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("0 3 * * * "):  # a crontab line: the command after the schedule
                line = line[len("0 3 * * * "):]
            if line and not line.startswith("#"):
                out.append(line)
    return out


def substitute(command: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    return command


def test_policy_blocks_are_generated_from_the_code() -> None:
    blocks = policies.documented_blocks(TEXT)
    assert sorted(blocks) == sorted(policies.DOCUMENTED)
    for name, body in blocks.items():
        assert json.loads(body) == policies.DOCUMENTED[name](), (
            f"the {name} policy in {DOC.name} differs from the code: run "
            f"python -m sagemaker_ssh_helper.cdk.policies --update-doc {DOC.name}")
    assert policies.update_document(TEXT) == TEXT


def test_update_doc_rewrites_drifted_blocks(tmp_path: Path) -> None:
    drifted = TEXT.replace('"Sid": "PassOwnRoleToSSM"', '"Sid": "Edited"')
    assert drifted != TEXT
    copy = tmp_path / "doc.md"
    copy.write_text(drifted)
    done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.cdk.policies",
                           "--update-doc", str(copy)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert copy.read_text() == TEXT


def test_every_statement_is_explained() -> None:
    for name in ("server", "client"):
        for statement in policies.DOCUMENTED[name]()["Statement"]:
            assert f"`{statement['Sid']}`" in TEXT, statement["Sid"]


@pytest.mark.parametrize("line", [c for c in commands(TEXT)
                                  if c.startswith("sm-ssh-deregister-instances")])
def test_deregister_commands_parse(line: str) -> None:
    argv = shlex.split(substitute(line))[1:]
    args = dereg.build_parser().parse_args(argv)
    assert args.delete_older_than_n_days >= 0


def test_cdk_commands_name_real_stacks_and_context() -> None:
    cdk_lines = [c for c in commands(TEXT) if c.startswith("cdk -a")]
    assert len(cdk_lines) >= 3
    mentioned_stacks = set(re.findall(r"SSH-[A-Za-z-]+-Stack", TEXT))
    assert mentioned_stacks == STACKS
    mentioned_context = set(re.findall(r"-c (\w+)=", TEXT))
    assert mentioned_context <= CONTEXT_KEYS
    for key in CONTEXT_KEYS:
        assert f"`{key}`" in TEXT, key
    assert 'APP="python -m sagemaker_ssh_helper.cdk.app"' in TEXT


def test_constants_match_the_app() -> None:
    pytest.importorskip("aws_cdk")
    from sagemaker_ssh_helper.cdk import app

    assert set(app.STACKS) == STACKS and set(app.CONTEXT_KEYS) == CONTEXT_KEYS


@pytest.mark.parametrize("line", [c for c in commands(TEXT) if c.startswith("aws ")])
def test_aws_cli_calls_exist(line: str) -> None:
    words = shlex.split(substitute(line))
    service, operation, rest = words[1], words[2], words[3:]
    model = botocore.session.get_session().get_service_model(service)
    name = "".join(part.capitalize() for part in operation.split("-"))
    assert name in model.operation_names, line
    members = set(model.operation_model(name).input_shape.members)
    for word in rest:
        if word.startswith("--") and word not in AWS_CLI_GLOBAL:
            member = "".join(part.capitalize() for part in word[2:].split("-"))
            assert member in members, f"{word} is not a parameter of aws {service} {operation}"


def test_policies_module_invocations_work() -> None:
    for name in ("server", "client", "admin", "trust-statement"):
        assert f"`{name}`" in TEXT or f"policies {name}" in TEXT
    done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.cdk.policies", "server"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == policies.DOCUMENTED["server"]()


def anchors(text: str) -> dict[str, str]:
    out = {}
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out[slug] = heading
    return out


def test_internal_links_resolve() -> None:
    known = anchors(TEXT)
    for target in re.findall(r"\]\(#([^)]+)\)", TEXT):
        assert target in known, target
