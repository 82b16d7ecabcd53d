"""The IAM policies SSH Helper needs, as plain Python data: one source for the CDK stacks and
for the JSON printed in IAM_SSM_Setup.md.

No CDK import here: the stacks pass CloudFormation tokens as the ``partition``/``account``
values, the documentation passes placeholders such as ``<account-id>``.

* :func:`server_policy`: for the SageMaker execution role the containers run with. It lets a
  container create a one-time activation for its own role (tagged with the SSH Helper tags, with
  its own identity as ``SSHCreator``), delete that activation after registering, deregister the
  managed instances it created, and lets the SSM agent (running with the same role, assumed by
  ``ssm.amazonaws.com``) talk to Systems Manager. It never lets anyone change the tags of a
  managed instance.
* :func:`client_policy`: for the people (roles) who connect. They may send commands and start
  SSH sessions only to managed instances whose ``SSHOwner`` tag is their own ``aws:userid`` (what
  the launch side writes into ``SSH_OWNER_TAG``), and only with the two documents SSH Helper uses.
* :func:`admin_policy`: for ``sm-ssh-deregister-instances``.
* :func:`native_server_policy`: the job role's policy for the native transport alone (SageMaker's
  remote debugging: no activation); :func:`server_policy` includes it.
* :func:`remote_debug_deny_policy`: for principals who must not turn remote debugging on.
* :func:`ssm_trust_statement`: the statement that lets SSM assume the SageMaker role.

IAM is global, so ARNs use ``*`` for the region: one policy serves every region.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_helper import cli
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError

Policy = dict[str, Any]
Statement = dict[str, Any]

SSH_TAG_KEYS = ["SSHOwner", "SSHCreator", "SSHTimestamp", "SSHResourceName", "SSHResourceArn"]
RUN_SHELL_DOCUMENT = "AWS-RunShellScript"
SSH_SESSION_DOCUMENT = "AWS-StartSSHSession"
DEFAULT_KEYS_PREFIX = "ssh-authorized-keys/"
NATIVE_KEYS_PREFIX = "ssh-native-keys/"  # transport.DEFAULT_KEYS_FOLDER
ADVANCED_TIER_SETTING = "/ssm/managed-instance/activation-tier"


@dataclass(frozen=True)
class Target:
    """Where the policies apply. Every field may be a literal, a placeholder or a CDK token."""

    partition: str = "aws"
    account: str = "<account-id>"
    sagemaker_role: str = "<sagemaker-role-name>"  # may include a path: service-role/Name
    keys_bucket: str = ""                          # default: the SageMaker default buckets
    keys_prefix: str = DEFAULT_KEYS_PREFIX
    native_prefix: str = NATIVE_KEYS_PREFIX      # native transport: <prefix><owner>/<job>/

    def arn(self, service: str, resource: str, region: str = "*", account: str | None = None
            ) -> str:
        return f"arn:{self.partition}:{service}:{region}:" \
               f"{self.account if account is None else account}:{resource}"

    @property
    def role_arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{self.sagemaker_role}"

    @property
    def managed_instances(self) -> str:
        return self.arn("ssm", "managed-instance/*")

    def document(self, name: str) -> str:
        return self.arn("ssm", f"document/{name}", account="")

    @property
    def keys_bucket_arns(self) -> str:
        return f"arn:{self.partition}:s3:::{self.keys_bucket or f'sagemaker-*-{self.account}'}"

    @property
    def keys_objects(self) -> str:
        return f"{self.keys_bucket_arns}/{self.keys_prefix}*"

    def native_objects(self, owner: str = "*") -> str:
        """Native transport: the keys of ``owner``'s jobs, ``<prefix><owner>/<job>/...``."""
        return f"{self.keys_bucket_arns}/{self.native_prefix}{owner}/*"

    @property
    def host_keys_objects(self) -> str:
        """Where native jobs publish their host keys: ``<prefix><owner>/<job>/host-keys/<host>``."""
        return f"{self.keys_bucket_arns}/{self.native_prefix}*/host-keys/*"


def _statement(sid: str, actions: list[str], resources: list[str],
               condition: dict[str, Any] | None = None) -> Statement:
    out: Statement = {"Sid": sid, "Effect": "Allow",
                      "Action": actions[0] if len(actions) == 1 else actions,
                      "Resource": resources[0] if len(resources) == 1 else resources}
    if condition:
        out["Condition"] = condition
    return out


def _deny(sid: str, actions: list[str], resources: list[str]) -> Statement:
    return {**_statement(sid, actions, resources), "Effect": "Deny"}


def _policy(*statements: Statement) -> Policy:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def owned_by_caller(tag: str) -> dict[str, Any]:
    """The managed instance's ``tag`` must equal the caller's ``aws:userid``."""
    return {"StringEquals": {f"ssm:resourceTag/{tag}": "${aws:userid}"}}


def server_policy(t: Target) -> Policy:
    return _policy(
        _statement("PassOwnRoleToSSM", ["iam:PassRole"], [t.role_arn],
                   {"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}}),
        # An activation carries SSH Helper tags only, names its resource, and its SSHCreator
        # is the caller itself: so SSHCreator on a managed instance cannot be forged.
        _statement("CreateSSHActivations", ["ssm:CreateActivation"], ["*"],
                   {"StringEquals": {"aws:RequestTag/SSHCreator": "${aws:userid}"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": SSH_TAG_KEYS},
                    "Null": {"aws:RequestTag/SSHResourceArn": "false"}}),
        _statement("DeleteActivations", ["ssm:DeleteActivation"], ["*"]),
        # Tags are set on the activation when it is created (SSM copies them onto the
        # instance); nothing may tag a managed instance afterwards (the Deny below).
        _statement("TagActivationsWithSSHTags", ["ssm:AddTagsToResource"], ["*"],
                   {"ForAllValues:StringEquals": {"aws:TagKeys": SSH_TAG_KEYS}}),
        _deny("NoTagChangesOnManagedInstances",
              ["ssm:AddTagsToResource", "ssm:RemoveTagsFromResource"], [t.managed_instances]),
        _statement("DeregisterOwnInstances", ["ssm:DeregisterManagedInstance"],
                   [t.managed_instances],
                   {**owned_by_caller("SSHCreator"),
                    "StringLike": {"ssm:resourceTag/SSHResourceArn": "*"}}),
        _statement("AgentUpdatesSSHInstances", ["ssm:UpdateInstanceInformation"],
                   [t.managed_instances],
                   {"StringLike": {"ssm:resourceTag/SSHOwner": "*"}}),
        _statement("AgentSessionChannels",
                   ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"], ["*"]),
        _statement("AgentCommandMessages",
                   ["ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage",
                    "ec2messages:FailMessage", "ec2messages:GetEndpoint",
                    "ec2messages:GetMessages", "ec2messages:SendReply"], ["*"]),
        # the native transport too (its agent channels are AgentSessionChannels above)
        *native_server_statements(t)[1:],
    )


TRAINING_TARGETS = "sagemaker-training-job:*"
# Endpoint instances of production variants with EnableSSMAccess (AWS's "Access containers
# through SSM" shows ``ssm:StartSession`` on the endpoint's ARN as its way to scope them; how
# Session Manager evaluates that resource for these targets is not documented further, so we
# scope by the documented target-id condition key, as for training jobs).
ENDPOINT_TARGETS = "sagemaker-endpoint:*"
TARGET_ID_KEY = "ssm:resourceTag/aws:ssmmessages:target-id"


def native_server_statements(t: Target) -> list[Statement]:
    """What the job role needs for the native transport (SageMaker's remote debugging): its
    SSM agent's channels, and S3 for the keys: read the owner's public keys at login
    (``AuthorizedKeysCommand``), publish the host keys."""
    return [
        _statement("RemoteDebugAgentChannels",
                   ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"], ["*"]),
        _statement("ListNativeKeys", ["s3:ListBucket"], [t.keys_bucket_arns],
                   {"StringLike": {"s3:prefix": f"{t.native_prefix}*"}}),
        _statement("ReadNativeKeys", ["s3:GetObject"], [t.native_objects()]),
        _statement("PublishHostKeys", ["s3:PutObject"], [t.host_keys_objects]),
    ]


def native_server_policy(t: Target) -> Policy:
    """The job role's policy when only the native transport is used: no activation, no
    PassRole, no advanced tier."""
    return _policy(*native_server_statements(t))


def remote_debug_deny_policy(t: Target) -> Policy:
    """For principals who must not turn SageMaker's remote debugging on (and so cannot launch
    native jobs): the condition key SageMaker sets on CreateTrainingJob/UpdateTrainingJob."""
    return _policy(_deny_if("NoRemoteDebugging",
                            ["sagemaker:CreateTrainingJob", "sagemaker:UpdateTrainingJob"],
                            [t.arn("sagemaker", "training-job/*")],
                            {"Bool": {"sagemaker:EnableRemoteDebug": "true"}}))


def _deny_if(sid: str, actions: list[str], resources: list[str],
             condition: dict[str, Any]) -> Statement:
    return {**_statement(sid, actions, resources, condition), "Effect": "Deny"}


def client_policy(t: Target, owner: str = "${aws:userid}") -> Policy:
    """``owner``: the SSHOwner value the user may reach (a team's shared ``local_user_id``
    instead of each user's own ID)."""
    owned = {"StringEquals": {"ssm:resourceTag/SSHOwner": owner}}
    return _policy(
        _statement("FindInstancesAndCommands",
                   ["ssm:DescribeInstanceInformation", "ssm:DescribeInstanceProperties",
                    "ssm:GetCommandInvocation", "ssm:ListCommandInvocations",
                    "ssm:ListCommands", "ssm:DescribeSessions", "ssm:GetConnectionStatus"],
                   ["*"]),
        _statement("ReadInstanceTags", ["ssm:ListTagsForResource"], [t.managed_instances]),
        _statement("CommandsToOwnInstances", ["ssm:SendCommand"], [t.managed_instances],
                   owned),
        _statement("CommandDocument", ["ssm:SendCommand"],
                   [t.document(RUN_SHELL_DOCUMENT)]),
        _statement("SessionsToOwnInstances", ["ssm:StartSession"], [t.managed_instances],
                   {**owned, "BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}),
        _statement("SessionDocument", ["ssm:StartSession"],
                   [t.document(SSH_SESSION_DOCUMENT)]),
        _statement("EndOwnSessions", ["ssm:TerminateSession", "ssm:ResumeSession"],
                   [t.arn("ssm", "session/${aws:userid}-*"),
                    t.arn("ssm", "session/${aws:username}-*")]),
        _statement("FindRegistrationsInLogs", ["logs:StartQuery", "logs:FilterLogEvents"],
                   [t.arn("logs", "log-group:/aws/sagemaker/*")]),
        _statement("ReadLogQueries", ["logs:GetQueryResults", "logs:StopQuery"], ["*"]),
        _statement("ListSageMakerResources",
                   ["sagemaker:ListTrainingJobs", "sagemaker:ListProcessingJobs",
                    "sagemaker:ListTransformJobs", "sagemaker:ListEndpoints",
                    "sagemaker:ListNotebookInstances", "sagemaker:ListApps"], ["*"]),
        _statement("DescribeSageMakerResources",
                   ["sagemaker:DescribeTrainingJob", "sagemaker:DescribeProcessingJob",
                    "sagemaker:DescribeTransformJob", "sagemaker:DescribeEndpoint",
                    "sagemaker:DescribeNotebookInstance", "sagemaker:DescribeApp"],
                   [t.arn("sagemaker", "*")]),
        _statement("PublishOwnPublicKeys", ["s3:PutObject", "s3:GetObject"],
                   [t.keys_objects]),
        # Native transport: sessions to SageMaker's remote-debugging targets of training
        # jobs (named by SageMaker after the job and node, not tagged: who gets in is decided
        # by sshd, which takes the keys of the job owner's folder only, writable by that
        # owner alone).
        _statement("SessionsToRemoteDebugTrainingJobs", ["ssm:StartSession"], ["*"],
                   {"StringLike": {TARGET_ID_KEY: TRAINING_TARGETS}}),
        _statement("PublishOwnNativeKeys", ["s3:PutObject", "s3:GetObject"],
                   [t.native_objects(owner)]),
        # Native transport, endpoints: sessions to the instances of production variants with
        # SSM access, found through their SSM log streams (<variant>/<instance>/ssm); the
        # configuration and model tell whether the endpoint is native and where its keys are.
        _statement("SessionsToEndpointsWithSSMAccess", ["ssm:StartSession"], ["*"],
                   {"StringLike": {TARGET_ID_KEY: ENDPOINT_TARGETS}}),
        _statement("DescribeNativeEndpoints",
                   ["sagemaker:DescribeEndpointConfig", "sagemaker:DescribeModel"],
                   [t.arn("sagemaker", "endpoint-config/*"), t.arn("sagemaker", "model/*")]),
        _statement("FindEndpointInstances", ["logs:DescribeLogStreams"],
                   [t.arn("logs", "log-group:/aws/sagemaker/Endpoints/*")]),
        _statement("ReadNativeHostKeys", ["s3:ListBucket"], [t.keys_bucket_arns],
                   {"StringLike": {"s3:prefix": f"{t.native_prefix}{owner}/*"}}),
        # `sm-ssh doctor` reads the activation tier (sessions need the advanced tier).
        _statement("ReadActivationTier", ["ssm:GetServiceSetting"],
                   [t.arn("ssm", f"servicesetting{ADVANCED_TIER_SETTING}")]),
    )


def admin_policy(t: Target) -> Policy:
    return _policy(
        _statement("ListManagedInstances", ["ssm:DescribeInstanceInformation"], ["*"]),
        # activations left by registrations that failed (they expire after 24 hours)
        _statement("ListActivations", ["ssm:DescribeActivations"], ["*"]),
        # the two tags the command selects instances by (statements are OR-ed)
        _statement("DeregisterSSHInstances", ["ssm:DeregisterManagedInstance"],
                   [t.managed_instances],
                   {"StringLike": {"ssm:resourceTag/SSHResourceArn": "*"}}),
        _statement("DeregisterSSHInstancesWithTimestamp", ["ssm:DeregisterManagedInstance"],
                   [t.managed_instances],
                   {"StringLike": {"ssm:resourceTag/SSHTimestamp": "*"}}),
    )


def ssm_trust_statement(t: Target) -> Statement:
    """Lets SSM assume the role for the containers' managed instances (this account only)."""
    return {
        "Sid": "SageMakerSSHHelperSSM",
        "Effect": "Allow",
        "Principal": {"Service": "ssm.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": t.account},
                      "ArnLike": {"aws:SourceArn": t.arn("ssm", "*")}},
    }


def advanced_tier_setting_arn(partition: str, region: str, account: str) -> str:
    return f"arn:{partition}:ssm:{region}:{account}:servicesetting{ADVANCED_TIER_SETTING}"


# ---- documentation --------------------------------------------------------------------------

DOC_TARGET = Target()
DOCUMENTED: dict[str, Callable[[], Any]] = {
    "server": lambda: server_policy(DOC_TARGET),
    "client": lambda: client_policy(DOC_TARGET),
    "admin": lambda: admin_policy(DOC_TARGET),
    "trust-statement": lambda: ssm_trust_statement(DOC_TARGET),
    "native-server": lambda: native_server_policy(DOC_TARGET),
    "remote-debug-deny": lambda: remote_debug_deny_policy(DOC_TARGET),
}
BLOCK_RE = re.compile(r"(<!-- policy:(?P<name>[a-z-]+) -->\n```json\n)(?P<body>.*?)(\n```)",
                      re.S)


def render(name: str) -> str:
    return json.dumps(DOCUMENTED[name](), indent=2)


def documented_blocks(text: str) -> dict[str, str]:
    """``{name: json text}`` of every ``<!-- policy:name -->`` JSON block in ``text``."""
    return {m.group("name"): m.group("body") for m in BLOCK_RE.finditer(text)}


def update_document(text: str) -> str:
    """``text`` with every policy block replaced by the current rendering."""
    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in DOCUMENTED:
            raise KeyError(f"unknown policy block {name!r} (known: {', '.join(DOCUMENTED)})")
        return m.group(1) + render(name) + m.group(4)

    return BLOCK_RE.sub(replace, text)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="python -m sagemaker_ssh_helper.cdk.policies",
        description="Print an SSH Helper IAM policy, or refresh the policy blocks of a document.")
    parser.add_argument("name", nargs="?", choices=sorted(DOCUMENTED), help="policy to print")
    parser.add_argument("--update-doc", type=Path, metavar="FILE",
                        help="rewrite the <!-- policy:NAME --> JSON blocks of FILE")
    cli.add_general_options(parser, aws=False)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.update_doc:
        try:
            text = args.update_doc.read_text()
            args.update_doc.write_text(update_document(text))
        except (OSError, KeyError) as e:
            raise SSHHelperError(str(e)) from e
        return 0
    if not args.name:
        raise UsageError("name a policy or pass --update-doc FILE")
    print(render(args.name))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.guarded_main("policies", lambda frame: run(
        frame.parse(build_parser(), cli.argv_or_sys(argv))))


if __name__ == "__main__":
    sys.exit(main())
