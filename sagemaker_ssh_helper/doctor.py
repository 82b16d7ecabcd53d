"""``sm-ssh doctor [FQDN]``: check what SSH into SageMaker needs, one line per check, with the fix.

The set-up problems behind most "TargetNotConnected" errors and silent waits, checked from the
laptop: OpenSSH and session-manager-plugin (installed, recent enough), credentials, the region
and its partition, the STS endpoint, the advanced-instances tier, the IAM actions the client
needs (by ``iam:SimulatePrincipalPolicy`` when the caller may simulate, else by calls that
change nothing), and stale registrations piling up towards SSM's limit. With a FQDN it also says
why that resource is or is not connectable now: its status, nodes, their managed instances
Online or ConnectionLost, and the role its containers register with (trusting
``ssm.amazonaws.com``?).

A check is passed (✓), failed (✗, with the fix) or could not be made (?, with the reason);
the exit code is the number of failed checks.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Callable

from sagemaker_ssh_helper import aws, connect, fqdn
from sagemaker_ssh_helper.cdk import policies
from sagemaker_ssh_helper.connect import Context
from sagemaker_ssh_helper.errors import SSHHelperError

logger = logging.getLogger(__name__)

# SSM registers at most this many hybrid (mi-) instances per account and region in the
# standard tier; stale SSH Helper registrations count towards it.
REGISTRATION_LIMIT = 1000
DEFAULT_MAX_STALE = 50
SETUP = "IAM_SSM_Setup.md"
SAMPLE_INSTANCE = "mi-00000000000000000"  # for checks of permissions on managed instances


@dataclass
class Check:
    name: str
    ok: bool | None  # None: could not be checked
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "?"}[self.ok]
        text = f"{mark} {self.name}: {self.detail}"
        return text + (f" — fix: {self.fix}" if self.fix and self.ok is not True else "")


def failures(checks: Sequence[Check]) -> int:
    return sum(1 for c in checks if c.ok is False)


def render(checks: Sequence[Check], output: str) -> str:
    if output == "json":
        return json.dumps({"checks": [asdict(c) for c in checks],
                           "failures": failures(checks)}, indent=2, ensure_ascii=False)
    return "\n".join(c.line() for c in checks)


def _said(e: BaseException, action: str) -> str:
    """An AWS error as one line that says what to do."""
    return " ".join(str(aws.explain(e, action)).split())


# -- local tools -------------------------------------------------------------------------------
def check_ssh() -> Check:
    path = shutil.which("ssh")
    if not path:
        return Check("ssh", False, "ssh not found on PATH",
                     "install the OpenSSH client (apt-get install openssh-client, "
                     "or Windows' optional feature OpenSSH Client)")
    done = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10,
                          stdin=subprocess.DEVNULL, check=False)
    return Check("ssh", True, f"{path} ({(done.stderr or done.stdout).strip() or '?'})")


def check_plugin() -> Check:
    """The plugin is there and reads the StartSession response from the environment variable
    sm-ssh names in its first argument (the token never shows in ``ps``): ``session``'s rule."""
    from sagemaker_ssh_helper.session import MIN_PLUGIN, PLUGIN, PLUGIN_GUIDE, too_old

    path = shutil.which(PLUGIN)
    if not path:
        return Check("session-manager-plugin", False, "not found on PATH",
                     f"install it: sm-local-configure, or see {PLUGIN_GUIDE}")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL, check=False)
        text = (done.stdout or done.stderr).strip()
    except OSError as e:
        return Check("session-manager-plugin", False, f"{path} does not run: {e}",
                     f"reinstall it: sm-local-configure, or see {PLUGIN_GUIDE}")
    why = too_old(path, text)
    if why:
        wanted = ".".join(map(str, MIN_PLUGIN))
        return Check("session-manager-plugin", False, why,
                     f"update it to {wanted} or later: sm-local-configure, or see "
                     f"{PLUGIN_GUIDE}")
    return Check("session-manager-plugin", True, f"{path} ({text})")


# -- account, region, endpoints ------------------------------------------------------------------
def check_region(ctx: Context) -> Check:
    try:
        region = ctx.region_name
    except Exception as e:  # no region anywhere
        return Check("region", False, " ".join(str(e).split()),
                     "pass --region, or set AWS_REGION / the profile's region")
    import botocore.session

    partition = aws.partition_for_region(region)
    known = botocore.session.get_session().get_available_regions("ssm", partition)
    if region not in known and not os.environ.get("AWS_ENDPOINT_URL_SSM"):
        return Check("region", False, f"{region} ({ctx.region_source}) is not an SSM region "
                                      f"of partition {partition}",
                     "pass the region the resources run in: --region us-east-1, ...")
    return Check("region", True, f"{region} ({ctx.region_source}), partition {partition}")


def check_credentials(ctx: Context) -> tuple[Check, dict[str, Any] | None]:
    try:
        identity = aws.sts_client(ctx.session, ctx.region_name).get_caller_identity()
    except Exception as e:
        return Check("credentials", False, _said(e, "sts:GetCallerIdentity"),
                     "log in (aws sso login, aws configure) or pass --profile"), None
    return Check("credentials", True, f"{identity['Arn']}"), identity


def check_sts_endpoint(ctx: Context) -> Check:
    """The regional STS endpoint: containers in a VPC without internet reach STS only through
    a regional (VPC) endpoint, and the laptop should use the same one."""
    setting = os.environ.get("AWS_STS_REGIONAL_ENDPOINTS")
    if setting is None:
        try:
            setting = ctx.session._session.get_config_variable("sts_regional_endpoints")
        except Exception:
            setting = None
    if str(setting or "regional").lower() == "legacy":
        return Check("sts endpoint", False,
                     "AWS_STS_REGIONAL_ENDPOINTS / sts_regional_endpoints is 'legacy': STS "
                     "calls go to the global endpoint, which private VPCs and opt-in regions "
                     "cannot reach",
                     "unset it or set it to 'regional' (and give SageMaker VPCs an STS VPC "
                     "endpoint, com.amazonaws.<region>.sts)")
    try:
        region = ctx.region_name
    except Exception:
        return Check("sts endpoint", None, "no region")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_STS") or os.environ.get("AWS_ENDPOINT_URL") \
        or aws.sts_endpoint(region)
    return Check("sts endpoint", True, f"regional ({endpoint})")


def check_advanced_tier(ctx: Context) -> Check:
    setting = policies.ADVANCED_TIER_SETTING
    try:
        value = ctx.manager().ssm.get_service_setting(SettingId=setting)["ServiceSetting"] \
            ["SettingValue"]
    except Exception as e:
        return Check("advanced tier", None,
                     f"cannot read {setting}: {_said(e, 'ssm:GetServiceSetting')}",
                     "grant ssm:GetServiceSetting to check it, see " + SETUP)
    if str(value).lower() != "advanced":
        return Check("advanced tier", False,
                     f"{setting} is {value!r}: Session Manager refuses sessions to SageMaker "
                     f"containers (hybrid activations) in the standard tier",
                     f"deploy the advanced-tier stack, or `aws ssm update-service-setting "
                     f"--setting-id {setting} --setting-value advanced` (see {SETUP})")
    return Check("advanced tier", True, f"{setting} is advanced")


# -- IAM ------------------------------------------------------------------------------------------
def needed_actions() -> list[str]:
    """The actions ``sm-ssh connect``/``list`` call, from the client policy we document."""
    doc = policies.client_policy(policies.DOC_TARGET)
    actions: list[str] = []
    for statement in doc["Statement"]:
        for action in statement["Action"] if isinstance(statement["Action"], list) else \
                [statement["Action"]]:
            if action not in actions and not action.startswith(("s3:", "ssm:Resume",
                                                                 "ssm:ListCommand",
                                                                 "ssm:GetConnection",
                                                                 "ssm:DescribeSessions")):
                actions.append(action)
    return actions


def _principal_arn(identity: dict[str, Any]) -> str:
    """The IAM role or user ARN behind an STS caller ARN (an assumed role's session ARN)."""
    arn = str(identity["Arn"])
    m = re.match(r"^arn:([^:]+):sts::(\d+):assumed-role/([^/]+)/", arn)
    return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}" if m else arn


def _resources(action: str, region: str, account: str) -> list[str]:
    """Concrete ARNs to simulate ``action`` on (what the client's calls name)."""
    t = policies.Target(account=account, partition=aws.partition_for_region(region))
    instance = t.arn("ssm", f"managed-instance/{SAMPLE_INSTANCE}", region)
    documents = {"ssm:SendCommand": policies.RUN_SHELL_DOCUMENT,
                 "ssm:StartSession": policies.SSH_SESSION_DOCUMENT}
    if action in documents:
        return [instance, t.arn("ssm", f"document/{documents[action]}", region, account="")]
    if action == "ssm:GetServiceSetting":
        return [t.arn("ssm", f"servicesetting{policies.ADVANCED_TIER_SETTING}", region)]
    if action == "ssm:ListTagsForResource":
        return [instance]
    if action == "ssm:TerminateSession":
        return [t.arn("ssm", "session/${aws:userid}-0123456789abcdef0", region)]
    if action in ("logs:StartQuery", "logs:FilterLogEvents"):
        return [t.arn("logs", "log-group:/aws/sagemaker/TrainingJobs", region)]
    if action.startswith("sagemaker:Describe"):
        return [t.arn("sagemaker", "training-job/sample", region)]
    return ["*"]


def simulate(ctx: Context, identity: dict[str, Any], actions: Sequence[str]
             ) -> dict[str, str]:
    """action -> decision, by iam:SimulatePrincipalPolicy of the caller's own principal, with
    the caller's user ID as the owner of the sample managed instance (what the client policy's
    conditions compare)."""
    region = ctx.region_name
    account = str(identity["Account"])
    userid = str(identity["UserId"])
    # one attempt: a service that cannot simulate (or refuses) sends us to the dry calls
    iam = ctx.session.client("iam", region_name=region, config=aws.client_config(1))
    context = [
        {"ContextKeyName": "aws:userid", "ContextKeyValues": [userid],
         "ContextKeyType": "string"},
        {"ContextKeyName": "ssm:resourceTag/SSHOwner", "ContextKeyValues": [userid],
         "ContextKeyType": "string"},
        {"ContextKeyName": "ssm:SessionDocumentAccessCheck", "ContextKeyValues": ["true"],
         "ContextKeyType": "boolean"},
    ]
    decisions: dict[str, str] = {}
    for action in actions:
        resources = [r.replace("${aws:userid}", userid) for r in _resources(action, region,
                                                                              account)]
        answer = iam.simulate_principal_policy(
            PolicySourceArn=_principal_arn(identity), ActionNames=[action],
            ResourceArns=resources, ContextEntries=context)
        results = [r["EvalDecision"] for r in answer["EvaluationResults"]]
        decisions[action] = "allowed" if results and all(d == "allowed" for d in results) \
            else next((d for d in results if d != "allowed"), "implicitDeny")
    return decisions


def dry_calls(ctx: Context) -> dict[str, str]:
    """action -> "allowed"/"denied"/"unknown", by calls that change nothing: reads, and calls on
    a managed instance, command or session that does not exist (IAM answers before the
    service looks the resource up, so "not found" means allowed)."""
    ssm = ctx.manager().ssm
    sm = aws.client(ctx.session, "sagemaker", ctx.region_name)
    calls: dict[str, Callable[[], Any]] = {
        "ssm:DescribeInstanceInformation": lambda: ssm.describe_instance_information(
            MaxResults=5),
        "ssm:GetCommandInvocation": lambda: ssm.get_command_invocation(
            CommandId="00000000-0000-0000-0000-000000000000", InstanceId=SAMPLE_INSTANCE),
        "sagemaker:ListTrainingJobs": lambda: sm.list_training_jobs(MaxResults=1),
        "sagemaker:DescribeTrainingJob": lambda: sm.describe_training_job(
            TrainingJobName="sm-ssh-doctor-no-such-job"),
    }
    decisions: dict[str, str] = {}
    for action, call in calls.items():
        try:
            call()
            decisions[action] = "allowed"
        except Exception as e:
            code = aws.error_code(e)
            decisions[action] = "denied" if code in aws._DENIED_CODES else \
                "allowed" if code else "unknown"
    return decisions


def check_iam(ctx: Context, identity: dict[str, Any] | None) -> Check:
    if identity is None:
        return Check("iam", None, "no credentials to check")
    actions = needed_actions()
    how = "policy simulation"
    try:
        decisions = simulate(ctx, identity, actions)
    except Exception as e:
        logger.debug("SimulatePrincipalPolicy: %s", e)
        how = ("calls that change nothing (iam:SimulatePrincipalPolicy: "
               f"{aws.error_code(e) or type(e).__name__})")
        decisions = dry_calls(ctx)
    missing = [a for a, d in decisions.items() if d not in ("allowed", "unknown")]
    if missing:
        return Check("iam", False, f"{_principal_arn(identity)} may not call "
                                   f"{', '.join(missing)} ({how})",
                     f"attach the SSH client policy to it (the SSH-IAM-SSM stack, or the "
                     f"policy in {SETUP})")
    checked = sum(1 for d in decisions.values() if d == "allowed")
    return Check("iam", True, f"{checked} actions the client needs are allowed ({how})")


# -- registrations --------------------------------------------------------------------------------
def check_stale(ctx: Context, max_stale: int) -> Check:
    try:
        stale = ctx.manager().list_ssh_instances(ping_statuses=["ConnectionLost", "Inactive"])
    except Exception as e:
        return Check("stale registrations", None, _said(e, "ssm:DescribeInstanceInformation"))
    if len(stale) >= max_stale:
        return Check("stale registrations", False,
                     f"{len(stale)} SSH Helper managed instances are offline (the limit is "
                     f"{REGISTRATION_LIMIT} registrations per region in the standard tier; "
                     "advanced-tier instances are charged while registered)",
                     "remove them: sm-ssh-deregister-instances")
    return Check("stale registrations", True, f"{len(stale)} offline SSH Helper instance(s)")


# -- one resource ---------------------------------------------------------------------------------
def _environment(described: dict[str, Any]) -> dict[str, str]:
    env = described.get("Environment") or {}
    return {str(k): str(v) for k, v in env.items()}


def _node_count(described: dict[str, Any]) -> int | None:
    for path in (("ResourceConfig", "InstanceCount"),
                 ("ProcessingResources", "ClusterConfig", "InstanceCount"),
                 ("TransformResources", "InstanceCount")):
        value: Any = described
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int):
            return value
    return None


def check_resource(ctx: Context, target_text: str) -> list[Check]:
    """Why ``target_text`` is or is not connectable now."""
    from sagemaker_ssh_helper import resources

    target = fqdn.parse_resource(target_text)
    name = target.fqdn
    api = target.kind.api
    described: dict[str, Any] = {}
    status = None
    if api is not None and target.name is not None:
        sm = aws.client(ctx.session, "sagemaker", ctx.region_name)
        try:
            described = getattr(sm, api.describe_op)(**{api.name_key: target.name})
            status = str(described.get(api.status_key, ""))
        except Exception as e:
            status = "NotFound" if aws.not_found(e, said=True) else None
            if status is None:
                return [Check(name, None, _said(e, api.describe_op))]
    else:
        status = resources.resource_status(ctx.session, ctx.region_name, target)
    checks: list[Check] = []
    what = f"{target.kind.description} {target.name}"
    if status == "NotFound":
        return [Check(name, False, f"no {what} in {ctx.region_name} ({ctx.region_source})",
                      f"check the name (sm-ssh list {target.kind.kind}.{fqdn.SUFFIX}) or "
                      "pass --region")]
    running = status not in resources.FINISHED
    if running and target.kind.kind in ("training", "inference"):
        job = connect._native_job(ctx, target)
        if job is not None:  # SageMaker's own agent: no activation, tier or SSM trust
            return [_native_check(ctx, target, job, name, f"{what} is {status}")]
    env = _environment(described)
    nodes = _node_count(described)
    ssh_nodes = env.get("SSH_INSTANCE_COUNT")
    instances = ctx.manager().find(target)
    online = [i for i in instances if i.online]
    node_text = f"{nodes} node(s)" if nodes is not None else "nodes unknown"
    if ssh_nodes is not None and nodes is not None:
        node_text += f", {min(int(ssh_nodes or 0), nodes)} with SSH"
    listed = ", ".join(f"{i.computer_name or '?'} {i.instance_id} {i.ping_status}"
                       for i in instances) or "none"
    detail = f"{what} is {status or 'unknown'}, {node_text}; managed instances: {listed}"
    if not running:
        checks.append(Check(name, False, detail,
                            f"SSH works only while it runs: start a new {target.kind.description}"))
    elif "Environment" in described and env.get("START_SSH", "").lower() != "true" \
            and not instances:  # jobs carry the contract; endpoints' models do
        checks.append(Check(name, False, detail + "; it was not launched with SSH "
                                                  "(no START_SSH in its environment)",
                            "wrap the estimator/processor/model with the SSH wrapper's "
                            "create() before launching it (README.md)"))
    elif not online:
        fix = ("its containers have not registered yet or lost SSM: the entry point must call "
               "sagemaker_ssh_helper.setup_and_start_ssh(); check the job's logs for the SSM "
               "agent's errors") if not instances else \
            ("the container stopped or its agent lost SSM (ConnectionLost): check the logs; "
             "a network without a route to SSM needs VPC endpoints for ssm, ssmmessages, "
             "ec2messages and sts")
        checks.append(Check(name, False, detail, fix))
    else:
        checks.append(Check(name, True, detail + "; transport: SSM AWS-StartSSHSession over "
                                                 "a hybrid activation"))
    role = env.get("SSH_SSM_ROLE") or str(described.get("RoleArn", "")).rsplit("/", 1)[-1]
    if role:
        checks.append(check_trust(ctx, role))
    return checks


def _native_check(ctx: Context, target: fqdn.Target, job: Any, name: str, what: str) -> Check:
    """A resource on the native transport: connectable once SageMaker serves its targets."""
    from sagemaker_ssh_helper import native

    try:
        if isinstance(job, native.Endpoint):
            nodes = native.wait_endpoint(ctx, target, job, 0).node_names
        else:
            nodes = native.wait_training(ctx, target, job, 0).ssh_hosts
    except SSHHelperError as e:
        return Check(name, False, f"{what}; transport: native (SageMaker's SSM targets)",
                     " ".join(str(e).split()))
    return Check(name, True, f"{what}; transport: native (SageMaker's SSM targets), nodes with "
                             f"SSH: {', '.join(nodes)}")


def check_trust(ctx: Context, role: str) -> Check:
    """The role the containers register their managed instances with must trust SSM."""
    iam = aws.client(ctx.session, "iam", ctx.region_name)
    try:
        document = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    except Exception as e:
        return Check("ssm trust", None, f"cannot read role {role}: {_said(e, 'iam:GetRole')}")
    if isinstance(document, str):
        from urllib.parse import unquote

        document = json.loads(document if document.lstrip().startswith("{")
                              else unquote(document))
    trusted = False
    for statement in document.get("Statement", []):
        services = (statement.get("Principal") or {}).get("Service", [])
        services = [services] if isinstance(services, str) else services
        if statement.get("Effect") == "Allow" and "ssm.amazonaws.com" in services:
            trusted = True
    if not trusted:
        return Check("ssm trust", False,
                     f"role {role}'s trust policy does not name ssm.amazonaws.com: SSM cannot "
                     "register the containers' managed instances with it",
                     f"add the ssm.amazonaws.com statement of {SETUP} to role {role}'s trust "
                     "policy")
    return Check("ssm trust", True, f"role {role} trusts ssm.amazonaws.com")


# -- all together ---------------------------------------------------------------------------------
def run_checks(ctx: Context, target_text: str | None = None,
               max_stale: int = DEFAULT_MAX_STALE) -> list[Check]:
    checks = [check_ssh(), check_plugin()]
    credentials, identity = check_credentials(ctx)
    region = check_region(ctx)
    checks += [credentials, region, check_sts_endpoint(ctx)]
    if identity is None or region.ok is False:  # the other checks would only repeat it
        return checks
    checks += [check_advanced_tier(ctx), check_iam(ctx, identity), check_stale(ctx, max_stale)]
    if target_text:
        checks += check_resource(ctx, target_text)
    return checks
