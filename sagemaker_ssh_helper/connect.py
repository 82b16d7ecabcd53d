"""Connecting to one instance: pick it, prepare it, then run ``ssh`` and explain its failures.

Used by ``sm-ssh connect`` and the ``sm-local-*`` commands. The steps:

1. resolve ``<name>.<kind>.sagemaker`` (or take a managed instance ID) and check it is Online;
2. push this client's key and pin the container's host keys (``keys.authorize``);
3. run ``ssh`` with the user's options FIRST (ssh keeps the first value of an option, so users
   can override any of ours), then our option list, then the destination and remote command.

ssh runs as a child rather than through ``exec`` so that a failure is reported as one line:
ssh's own diagnostics go to a log file (``-E``), read after ssh exits with 255. The SSM session
is started here too, so its errors are explained the same way.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sagemaker_ssh_helper import aws, fqdn, options
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError, UsageError
from sagemaker_ssh_helper.sshrun import (  # noqa: F401 (used by sm_ssh and sm_local)
    SSH_FAILED,
    SSH_FLAGS_WITH_VALUE,
    LogEcho,
    SshPlan,
    check_local_ports,
    plan_ssh,
    run_ssh,
    ssh_port,
    wants_own_log,
)

if TYPE_CHECKING:  # imported where used: the commands that need no instance stay fast
    from sagemaker_ssh_helper.keys import Authorized
    from sagemaker_ssh_helper.manager import ManagedInstance, SSMManager
    from sagemaker_ssh_helper.native import Endpoint, Job
    from sagemaker_ssh_helper.verify import Verifier

logger = logging.getLogger(__name__)

DEFAULT_WAIT = 180.0  # seconds to wait for a resource's instance to come online


@dataclass
class Context:
    """Options shared by every command: profile and region, with a lazy boto3 session."""

    profile: str | None
    region: str | None
    _session: Any = None
    _manager: SSMManager | None = None
    # checks of the chosen instance still running in the background (see resolve_one)
    pending: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    # descriptions already read (resource name, lowercased -> Describe* answer), for the checks
    described: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def finish_checks(self) -> None:
        while self.pending:
            self.pending.pop(0)()

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = aws.boto_session(self.profile, self.region)
        return self._session

    @property
    def region_name(self) -> str:
        return self.region or aws.session_region(self.session)

    @property
    def region_source(self) -> str:
        return "from --region" if self.region else "the default region"

    def manager(self) -> SSMManager:
        from sagemaker_ssh_helper.manager import SSMManager

        if self._manager is None:
            self._manager = SSMManager(region_name=self.region_name, session=self.session)
        return self._manager


@dataclass
class Choice:
    """Which instance of a multi-node resource, and how long to wait for it. ``instance`` names
    a managed instance the user checked to be the resource's: it is taken even when the
    resource's log cannot confirm it (see ``verify``)."""

    index: int | None = None
    node: str | None = None
    wait: float = DEFAULT_WAIT
    instance: str | None = None


def _wait_seconds(text: str) -> float:
    try:
        return seconds(text)
    except UsageError as e:
        raise UsageError(f"--wait: {e}") from None


def _instance_id(text: str) -> str:
    check_instance_id(text)
    return text


# Which instance of the target (the fields of Choice, by name); sm-ssh's own argparse options
# before the target have the same names.
CHOICE_OPTIONS = (
    options.Option(("--index",), "int", help="the instance at this place in name order"),
    options.Option(("--node",), "str", help="the instance of this node (algo-2, ...)"),
    options.Option(("--wait",), "float", validator=_wait_seconds,
                   help="seconds to wait for the instance to come online"),
    options.Option(("--instance",), "str", validator=_instance_id,
                   help="this managed instance ID (mi-...)"),
)
OUR_OPTIONS = options.names(CHOICE_OPTIONS)


def split_connect_args(args: Sequence[str], choice: Choice,
                       extra: Sequence[options.Option] = ()
                       ) -> tuple[list[str], list[str], options.Values]:
    """Split what follows the target into (ssh options, remote command, our values), as ssh
    would.

    ``--index``/``--node``/``--wait``/``--instance`` (ssh has no long options) go into
    ``choice``; the options of ``extra`` are taken out into the values returned (their
    defaults when not given).
    """
    values = options.Values(extra)
    found: list[str] = []
    items = list(args)
    while items:
        item = items.pop(0)
        if item == "--":
            return found, items, values
        key = item.partition("=")[0]
        spec = options.lookup(extra, key)
        if spec is not None:
            values.set(spec, options.take(spec, item, items))
            continue
        spec = options.lookup(CHOICE_OPTIONS, key)
        if spec is not None:
            store_choice(choice, spec, options.take(spec, item, items))
            continue
        if not item.startswith("-") or item == "-":
            return found, [item, *items], values
        found.append(item)
        for at, flag in enumerate(item[1:], start=1):
            if flag in SSH_FLAGS_WITH_VALUE:
                if at == len(item) - 1:  # "-L" "spec": the value is the next argument
                    if not items:
                        raise UsageError(f"ssh option {item} needs a value")
                    found.append(items.pop(0))
                break
    return found, [], values


def seconds(value: str) -> float:
    """A number of seconds >= 0 (not nan, not inf), or a one-line usage error."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise UsageError(f"expected a number of seconds >= 0, got {value!r}")
    return number


def set_choice(choice: Choice, key: str, value: str) -> None:
    """Store ``--index/--node/--wait/--instance`` given as text."""
    spec = options.lookup(CHOICE_OPTIONS, key)
    if spec is None:
        raise UsageError(f"unknown option {key}")
    store_choice(choice, spec, spec.convert(key, value))


def store_choice(choice: Choice, spec: options.Option, value: options.Value) -> None:
    """Store the (converted) value of one of CHOICE_OPTIONS; at most one of index, node and
    instance."""
    setattr(choice, spec.name[2:], value)
    if sum(x is not None for x in (choice.index, choice.node, choice.instance)) > 1:
        raise UsageError("give either --index, --node or --instance, not several")


def apply_choice(choice: Choice, values: options.Values) -> None:
    """The CHOICE_OPTIONS given in ``values`` (sm-local-start-ssh's leading options)."""
    for spec in CHOICE_OPTIONS:
        if spec.name in values:
            store_choice(choice, spec, values.get(spec.name))


# -- picking one instance ----------------------------------------------------------------------
def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def choose(instances: Sequence[ManagedInstance], target_name: str, index: int | None,
           node: str | None) -> ManagedInstance:
    """One Online instance: the only one, or the one picked by ``index``/``node``.

    Two Online instances claiming one node (host name) are refused, never ranked: which one is
    genuine cannot be told from what the registrant set (its tags, its time stamp).
    """
    by_node: dict[str, list[ManagedInstance]] = {}
    for inst in instances:
        if inst.online:
            by_node.setdefault(inst.computer_name or inst.instance_id, []).append(inst)
    for name, claimants in sorted(by_node.items()):
        if len(claimants) > 1 and node in (None, name):
            raise UsageError(
                f"{target_name}: {len(claimants)} online instances claim node {name}: "
                + ", ".join(i.instance_id for i in claimants)
                + "; connect to the one you checked with --instance mi-...")
    ordered = sorted((group[0] for group in by_node.values()),
                     key=lambda i: _natural(i.computer_name or i.instance_id))
    if not ordered:
        latest = instances[0]
        since = f" since {latest.last_ping:%Y-%m-%d %H:%M:%S %Z}" if latest.last_ping else ""
        raise ResolutionError(
            f"{target_name}: instance {latest.label} is {latest.ping_status or 'offline'}{since}"
            ": the container stopped or lost its connection to SSM (check the job's logs)")
    if node is not None:
        for inst in ordered:
            if node in (inst.computer_name, inst.instance_id):
                return inst
        raise UsageError(f"{target_name} has no online node {node!r}: choose one of "
                         + ", ".join(i.label for i in ordered))
    if index is not None:
        if not 0 <= index < len(ordered):
            raise UsageError(f"--index {index} is out of range: {target_name} has "
                             f"{len(ordered)} online instance(s)")
        return ordered[index]
    if len(ordered) > 1:
        raise UsageError(f"{target_name} has {len(ordered)} online instances: "
                         + ", ".join(i.label for i in ordered)
                         + "; choose one with --node NAME or --index N")
    return ordered[0]


def _pick(found: list[ManagedInstance], target: fqdn.Target, choice: Choice,
          verifier: Verifier | None) -> tuple[ManagedInstance, bool]:
    """The instance ``--instance`` names among ``found``, else one of the verified ones."""
    if choice.instance is not None:
        picked = [i for i in found if i.instance_id == choice.instance]
        if not picked:
            raise ResolutionError(
                f"{choice.instance} is not an instance of {target.fqdn}: its instances are "
                + ", ".join(i.instance_id for i in found))
        return choose(picked, target.fqdn, None, None), False
    candidates = verifier.keep_verified(found) if verifier is not None else found
    inst = choose(candidates, target.fqdn, choice.index, choice.node)
    return inst, len({i.computer_name or i.instance_id for i in candidates if i.online}) > 1


def resolve_one(ctx: Context, target: fqdn.Target, choice: Choice,
                defer: bool = False) -> tuple[ManagedInstance, bool]:
    """Find the instance to connect to; (instance, True if picked among several).

    For jobs and endpoints only instances the resource's own log names are taken (``verify``);
    an instance given with ``--instance`` is taken as the user checked it. The resource's
    description (still running? the instance not older than it?) is checked before returning,
    or, with ``defer``, by ``ctx.finish_checks()`` (``prepare`` calls it after the key push, so
    that loading the SageMaker client overlaps it; no session is started before it passed).
    """
    found, target, verifier = _lookup(ctx, target, choice)
    inst, several = _pick(found, target, choice, verifier)
    if verifier is not None:
        checked = verifier
        checked.describe_later()
        if choice.instance is not None:  # the user vouched for the instance, not for the job
            ctx.pending.append(lambda: checked.check_running(ctx.region_source))
        else:
            ctx.pending.append(lambda: checked.confirm(inst, ctx.region_source))
    if not defer:
        ctx.finish_checks()
    return inst, several


def _lookup(ctx: Context, target: fqdn.Target, choice: Choice
            ) -> tuple[list[ManagedInstance], fqdn.Target, Verifier | None]:
    """Wait for the instances ``choice`` needs: (all found, the target as the resource spells
    it, the verifier or None)."""
    from sagemaker_ssh_helper import resources, verify

    manager = ctx.manager()
    needed = 1 if choice.index is None else choice.index + 1

    def verifier_for(t: fqdn.Target) -> Verifier:
        creds = ctx.session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
        return verify.Verifier(ctx.session, ctx.region_name, t,
                               lambda: aws.boto_session(ctx.profile, ctx.region_name, frozen),
                               described=ctx.described.get((t.name or "").lower()))

    verifier = verifier_for(target) if verify.verifiable(target) else None

    def accept(inst: ManagedInstance) -> bool:
        if choice.instance is not None:
            return inst.instance_id == choice.instance
        if choice.node is not None and choice.node not in (inst.computer_name, inst.instance_id):
            return False
        return verifier is None or verifier.accepts(inst)

    found = manager.find(target)
    spelled = {i.resource_name for i in found} - {target.name}
    if verifier is not None and len(spelled) == 1:  # ssh lowercased the name (%h)
        target = dataclasses.replace(target, name=spelled.pop())
        verifier = verifier_for(target)
    if sum(1 for i in found if i.online and accept(i)) < needed:
        if verifier is None:
            resources.check_running(ctx.session, ctx.region_name, target, ctx.region_source)
        else:
            verifier.check_running(ctx.region_source)
        found = manager.resolve(target, timeout_in_sec=choice.wait, expected_count=needed,
                                accept=accept)
    if not found:
        raise ResolutionError(
            f"no SSM instance registered for {target.fqdn} in {ctx.region_name} after "
            f"{choice.wait:.0f} s: " + resources.logs_hint(ctx.session, ctx.region_name, target))
    return found, target, verifier


def release_targets(ctx: Context, target_text: str, choice: Choice
                    ) -> list[ManagedInstance]:
    """The instances ``stop-waiting`` releases: the one ``choice`` picks, else every online
    node of the resource whose log names it (each node waits in its own ``sm-wait``)."""
    if is_instance_id(target_text):
        return [describe_instance(ctx, target_text)]
    target = fqdn.parse_resource(target_text)
    if choice.index is not None or choice.node is not None or choice.instance is not None:
        return [resolve_one(ctx, target, choice)[0]]
    found, target, verifier = _lookup(ctx, target, choice)
    candidates = verifier.keep_verified(found) if verifier is not None else found
    count = len({i.computer_name or i.instance_id for i in candidates if i.online})
    picked = [choose(candidates, target.fqdn, index, None) for index in range(max(count, 1))]
    if verifier is not None:
        verifier.check_running(ctx.region_source)
    return picked


def is_instance_id(text: str) -> bool:
    """``mi-...`` given instead of ``<name>.<kind>.sagemaker`` (a job may be named mi-x)."""
    return text.startswith("mi-") and not text.lower().rstrip(".").endswith(f".{fqdn.SUFFIX}")


def check_instance_id(text: str) -> None:
    if not re.match(r"^mi-[0-9a-f]{8,}$", text):
        raise UsageError(f"{text!r} is not a managed instance ID (mi-...) nor a "
                         "<name>.<kind>.sagemaker name")


def describe_instance(ctx: Context, instance_id: str) -> ManagedInstance:
    """The managed instance ``instance_id``, which must be Online."""
    from sagemaker_ssh_helper.manager import ManagedInstance

    check_instance_id(instance_id)
    infos = ctx.manager().describe([{"Key": "InstanceIds", "Values": [instance_id]}])
    if not infos:
        raise ResolutionError(f"{instance_id} is not registered with SSM in {ctx.region_name} "
                              f"({ctx.region_source}): check the ID, or pass --region")
    inst = ManagedInstance.from_info(infos[0])
    return choose([inst], instance_id, None, None)


def check_tools() -> None:
    """The session-manager-plugin and ssh are on PATH (one line naming the missing one)."""
    from sagemaker_ssh_helper import proxy, session

    session.find_plugin()
    proxy.find_ssh()


def destination(target_text: str) -> str:
    """The name ssh connects to for ``target_text`` (``Prepared.destination``), known before
    anything is resolved: the FQDN in lower case (as ssh's ``%h``), or the instance ID."""
    if is_instance_id(target_text):
        check_instance_id(target_text)
        return target_text
    return fqdn.parse_resource(target_text).fqdn.lower()


def user_for(target: fqdn.Target) -> str:
    """SageMaker containers run as root; Studio apps as sagemaker-user."""
    return "sagemaker-user" if target.kind.kind == "studio" else "root"


# -- preparing the instance ----------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything ssh needs for one instance: where to go and with which key."""

    instance_id: str
    destination: str  # the name ssh connects to (and the host-key alias)
    user: str
    auth: Authorized


def prepare(ctx: Context, target_text: str, choice: Choice, for_proxy: bool = False,
            check_ssh: bool = True, reuse: Prepared | None = None,
            optimistic: bool = False) -> Prepared:
    """Resolve ``target_text`` (FQDN or ``mi-...``), check the tools, push the key and pin the
    host keys. ``reuse`` (a tunnel coming back) is returned as it is when the target still
    resolves to its instance: the key is there already. With ``optimistic``, the push is
    skipped when this key was pushed to the chosen instance before and its host keys are
    pinned (``auth.pushed`` is then False: the caller pushes with ``authorize`` if the
    container refuses the key)."""
    from sagemaker_ssh_helper import keys, proxy, session

    target = None if is_instance_id(target_text) else fqdn.parse_resource(target_text)
    if target is None:
        check_instance_id(target_text)
    session.find_plugin()
    if check_ssh and not for_proxy:
        proxy.find_ssh()
    if target is None:
        inst = describe_instance(ctx, target_text)
        name, alias, user = inst.instance_id, inst.instance_id, "root"
    elif (job := _native_job(ctx, target)) is not None:
        from sagemaker_ssh_helper import native  # SageMaker's own SSM targets

        return native.prepare(ctx, target, job, choice, for_proxy)
    else:
        inst, several = resolve_one(ctx, target, choice, defer=True)
        # ssh config lookups use the FQDN (%h); a pick among several nodes gets its own alias.
        name = target.fqdn
        alias = f"{inst.instance_id}.{name}" if several and not for_proxy else name
        user = user_for(target)
    if reuse is not None and reuse.instance_id == inst.instance_id:
        ctx.finish_checks()
        return reuse
    try:
        auth = keys.authorized_before(inst.instance_id, name, alias) if optimistic else None
        if auth is None:
            auth = keys.authorize(ctx.manager().ssm, ctx.session, inst.instance_id, name, alias)
    except SSHHelperError:
        ctx.finish_checks()  # e.g. "the job is Completed" explains a failed key push best
        raise
    ctx.finish_checks()  # before any session is started
    return Prepared(inst.instance_id, name.lower(), user, auth)


def _native_job(ctx: Context, target: fqdn.Target) -> Job | Endpoint | None:
    """The training job if it uses the native transport (see ``native``), else None (its
    description then serves the hybrid path's checks: no second DescribeTrainingJob).
    An endpoint reached over its variants' SSM access is native as well."""
    from sagemaker_ssh_helper import native

    if target.kind.kind == "inference" and target.name is not None:
        endpoint = native.describe_endpoint(ctx, target)
        if endpoint is None or endpoint.native:
            return endpoint
        ctx.described[target.name.lower()] = endpoint.described
        return None
    if target.kind.kind != "training" or target.name is None:
        return None

    job = native.describe(ctx, target)
    if job is None:
        return None
    if job.native:
        return job
    ctx.described[target.name.lower()] = job.described
    return None


def authorize(ctx: Context, prepared: Prepared) -> Prepared:
    """``prepared`` after pushing the key to its instance (and pinning its host keys)."""
    from sagemaker_ssh_helper import keys

    auth = keys.authorize(ctx.manager().ssm, ctx.session, prepared.instance_id,
                          prepared.destination, prepared.auth.host_key_alias)
    return dataclasses.replace(prepared, auth=auth)


# -- the ssh command line --------------------------------------------------------------------------
def ssh_argv(ctx: Context, prepared: Prepared, user_options: Sequence[str],
             command: Sequence[str], log_file: Path | None = None,
             proxy_cmd: str | None = None, control: Sequence[str] = ()) -> list[str]:
    """The complete ssh command line: the user's options first (they win), ours, the
    destination, then the remote command. The ProxyCommand defaults to our session module;
    ``control`` is the connection sharing (``proxy.control_options``)."""
    from sagemaker_ssh_helper import proxy

    auth = prepared.auth
    options = proxy.ssh_options(
        identity_file=auth.key_path, known_hosts=auth.known_hosts,
        host_key_alias=auth.host_key_alias, user=prepared.user,
        proxy_cmd=proxy_cmd or proxy.proxy_command(prepared.instance_id, ctx.region_name,
                                                   ctx.profile), control=control)
    log = ["-E", str(log_file)] if log_file is not None else []
    argv = [proxy.find_ssh(), *user_options, *log, *options, prepared.destination]
    return argv + (["--", *command] if command else [])


def run_and_explain(ctx: Context, prepared: Prepared, user_options: Sequence[str],
                    command: Sequence[str], plan: SshPlan | None = None) -> int:
    """Run ssh for ``prepared``; return the remote command's exit code, or raise one
    explained error when ssh itself failed.

    The SSM session is started here, before ssh runs (its errors are ours to explain, and the
    ProxyCommand is then just the plugin: no second Python process importing boto3); the
    response reaches the plugin through ssh's environment, never its command line. ssh's own
    messages are shown while it runs (``LogEcho``); a failure is explained in one line.
    """
    from sagemaker_ssh_helper import proxy, session

    ssm = ctx.manager().ssm
    port = (plan or plan_ssh(user_options, prepared.destination)).port
    started = session.open_session(ssm, prepared.instance_id, port, ctx.profile)
    env = dict(os.environ, **{session.RESPONSE_ENV: started.response_env})
    returncode, text, unshown = SSH_FAILED, "", ""
    try:
        returncode, text, unshown = run_logged(
            ctx, prepared, user_options, command, env,
            proxy_cmd=proxy.shell_command(started.plugin_argv),
            control=proxy.control_options("none"))
    finally:
        if returncode == SSH_FAILED:  # the session may never have been used: free the agent
            session.terminate_session(ssm, started.session_id)
    if returncode == SSH_FAILED and text.strip():
        raise explain_failure(text, prepared)
    sys.stderr.write(unshown)  # ssh's last notices, shown as ssh would have
    return returncode


def run_logged(ctx: Context, prepared: Prepared, user_options: Sequence[str],
               command: Sequence[str], env: dict[str, str] | None = None, *,
               proxy_cmd: str | None = None, control: Sequence[str] = (),
               also_show: Path | None = None) -> tuple[int, str, str]:
    """Run ssh in the foreground with its messages shown while it runs (``LogEcho``);
    ``also_show``: another log to show from its end on (a shared connection's). Returns
    (exit code, ssh's log, the part of it not shown yet)."""
    with tempfile.TemporaryDirectory(prefix="sm-ssh-") as tmp:
        log = None if wants_own_log(user_options) else Path(tmp) / "ssh.log"
        argv = ssh_argv(ctx, prepared, user_options, command, log, proxy_cmd, control)
        logger.debug("running %s", argv)
        echoes = [LogEcho(path, from_end=path == also_show)
                  for path in (log, also_show) if path is not None]
        try:
            returncode = run_ssh(argv, env)
        finally:
            unshown = "".join(echo.stop() for echo in echoes)
        text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    return returncode, text, unshown


def explain_failure(ssh_log: str, prepared: Prepared) -> SSHHelperError:
    """One line for a failed ssh run; a refused key is checked for local causes first."""
    from sagemaker_ssh_helper import keyfile, proxy

    what = f"ssh to {prepared.destination}"
    if "Permission denied" in ssh_log or "UNPROTECTED PRIVATE KEY" in ssh_log:
        hint = keyfile.refusal_hint(prepared.auth.key_path, ssh_log)
        if hint:
            return SSHHelperError(f"{what} failed: {hint}", SSH_FAILED)
    return proxy.ssh_error(ssh_log, what, SSH_FAILED)
