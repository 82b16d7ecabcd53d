"""``sm-ssh``: list SageMaker resources with SSH, connect to them, or proxy ssh to them.

    sm-ssh [-v] [--profile P] [--region R] list [FQDN] [--output json]
    sm-ssh [-v] [--profile P] [--region R] connect FQDN [--index N | --node algo-2]
           [ssh options ...] [-- command ...]
    sm-ssh [-v] [--profile P] [--region R] start-proxy FQDN [--port N]
    sm-ssh [--profile P] [--region R] config
    sm-ssh sandbox ...

Errors are one line on stderr with a non-zero exit code; tracebacks appear only with ``-v`` or
``SM_SSH_DEBUG=true``.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from sagemaker_ssh_helper import aws, fqdn
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_WAIT = 180
_OPTION_VALUES = ("--profile", "--region")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (raised, so main() maps them to exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} -h`)")


def add_general_options(parser: argparse.ArgumentParser, top_level: bool) -> None:
    """``-v``, ``--profile`` and ``--region``: accepted before or after the subcommand."""
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=False if top_level else argparse.SUPPRESS,
                        help="debug logging and tracebacks (also SM_SSH_DEBUG=true)")
    parser.add_argument("--profile", default=default, help="AWS profile (default: AWS_PROFILE)")
    parser.add_argument("--region", default=default, help="AWS region (default: AWS_REGION)")


def _add_target_choice(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--index", type=int, help="pick instance N (0-based) of a multi-node "
                                                  "resource, in node-name order")
    choice.add_argument("--node", help="pick the instance with this host name (e.g. algo-2) "
                                       "or managed instance ID")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                        help=f"wait this long for the instance to come online "
                             f"(default {DEFAULT_WAIT})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sm-ssh", description="SSH into SageMaker jobs, endpoints, notebook instances and "
                                   "Studio apps over AWS Systems Manager.")
    add_general_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="{list,connect,start-proxy,config,sandbox}")
    sub.required = True
    p = sub.add_parser("list", help="resources and their SSH status")
    add_general_options(p, top_level=False)
    p.add_argument("fqdn", nargs="?", default=fqdn.SUFFIX,
                   help="what to list: sagemaker (default), training.sagemaker, "
                        "<user>.<domain>.studio.sagemaker, ...")
    p.add_argument("--output", choices=("table", "json"), default="table")
    p.add_argument("--days", type=int, default=30, help="jobs created in the last N days")
    p = sub.add_parser("connect", help="ssh to <name>.<kind>.sagemaker",
                       usage="sm-ssh connect [--index N | --node NAME] [--wait S] FQDN "
                             "[ssh options ...] [-- command ...]")
    add_general_options(p, top_level=False)
    _add_target_choice(p)
    p.add_argument("fqdn", nargs="?", help="<name>.training.sagemaker, <app>.studio.sagemaker, ...")
    p.add_argument("ssh_args", nargs=argparse.REMAINDER,
                   help="passed to ssh unchanged (-L, -R, -A, -N, -p, ...)")
    p = sub.add_parser("start-proxy", help="ProxyCommand for ~/.ssh/config (stdout = stream)")
    add_general_options(p, top_level=False)
    _add_target_choice(p)
    p.add_argument("fqdn")
    p.add_argument("-p", "--port", type=int, default=22, help="sshd port in the container")
    p = sub.add_parser("config", help="set up ~/.ssh/config for `ssh <name>.<kind>.sagemaker`")
    add_general_options(p, top_level=False)
    sub.add_parser("sandbox", help="the offline sandbox (sm-ssh sandbox -h)", add_help=False)
    return parser


def split_sandbox(argv: Sequence[str]) -> Optional[Tuple[List[str], List[str]]]:
    """If the subcommand is ``sandbox``, return (general options, everything after it)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "sandbox":
            return list(argv[:i]), list(argv[i + 1:])
        if arg in _OPTION_VALUES:
            i += 2
            continue
        if not arg.startswith("-"):
            return None
        i += 1
    return None


def split_command(args: List[str]) -> Tuple[List[str], List[str]]:
    """Split ssh arguments at the first ``--``: (ssh options, remote command)."""
    if "--" in args:
        at = args.index("--")
        return args[:at], args[at + 1:]
    return args, []


def pull_choice(args: argparse.Namespace) -> None:
    """Accept ``--index``/``--node``/``--wait`` after the FQDN too (ssh has no such options)."""
    rest: List[str] = []
    items = list(args.ssh_args)
    while items:
        item = items.pop(0)
        key, eq, value = item.partition("=")
        if key in ("--index", "--node", "--wait"):
            if not eq:
                if not items:
                    raise UsageError(f"{key} needs a value")
                value = items.pop(0)
            try:
                setattr(args, key[2:], int(value) if key == "--index" else
                        float(value) if key == "--wait" else value)
            except ValueError:
                raise UsageError(f"{key} needs a number, got {value!r}") from None
        else:
            rest.append(item)
    args.ssh_args = rest
    if args.index is not None and args.node is not None:
        raise UsageError("give either --index or --node, not both")


@dataclass
class Context:
    profile: Optional[str]
    region: Optional[str]
    _session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = aws.boto_session(self.profile, self.region)
        return self._session

    @property
    def region_name(self) -> str:
        return self.region or aws.session_region(self.session)

    _manager: Any = None

    def manager(self) -> Any:
        from sagemaker_ssh_helper.manager import SSMManager

        if self._manager is None:
            self._manager = SSMManager(region_name=self.region_name, session=self.session)
        return self._manager


def _natural(text: str) -> List[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def choose(instances: Sequence[Any], target: fqdn.Target, index: Optional[int],
           node: Optional[str]) -> Any:
    """One Online instance: the only one, or the one picked by ``index``/``node``."""
    online: dict = {}
    for inst in instances:  # newest first: keep the newest per host name
        if inst.online:
            online.setdefault(inst.computer_name or inst.instance_id, inst)
    ordered = sorted(online.values(), key=lambda i: _natural(i.computer_name or i.instance_id))
    if not ordered:
        latest = instances[0]
        since = f" since {latest.last_ping:%Y-%m-%d %H:%M:%S %Z}" if latest.last_ping else ""
        raise ResolutionError(
            f"{target.fqdn}: instance {latest.label} is {latest.ping_status or 'offline'}{since}"
            ": the container stopped or lost its connection to SSM (check the job's logs)")
    if node is not None:
        for inst in ordered:
            if node in (inst.computer_name, inst.instance_id):
                return inst
        raise UsageError(f"{target.fqdn} has no online node {node!r}: choose one of "
                         + ", ".join(i.label for i in ordered))
    if index is not None:
        if not 0 <= index < len(ordered):
            raise UsageError(f"--index {index} is out of range: {target.fqdn} has "
                             f"{len(ordered)} online instance(s)")
        return ordered[index]
    if len(ordered) > 1:
        raise UsageError(f"{target.fqdn} has {len(ordered)} online instances: "
                         + ", ".join(i.label for i in ordered)
                         + "; choose one with --node NAME or --index N")
    return ordered[0]


def resolve_one(ctx: Context, target: fqdn.Target, index: Optional[int], node: Optional[str],
                wait: float) -> Tuple[Any, bool]:
    """Find the instance to connect to; (instance, True if picked among several)."""
    from sagemaker_ssh_helper import resources

    manager = ctx.manager()
    needed = 1 if index is None else index + 1

    def accept(inst: Any) -> bool:
        return node is None or node in (inst.computer_name, inst.instance_id)

    found = manager.find(target)
    if sum(1 for i in found if i.online and accept(i)) < needed:
        resources.check_running(ctx.session, ctx.region_name, target)
        found = manager.resolve(target, timeout_in_sec=wait, expected_count=needed,
                                accept=accept)
    if not found:
        raise ResolutionError(f"no SSM instance registered for {target.fqdn} after {wait:.0f} s: "
                              + resources.logs_hint(ctx.session, ctx.region_name, target))
    inst = choose(found, target, index, node)
    several = len({i.computer_name or i.instance_id for i in found if i.online}) > 1
    return inst, several


def prepare(ctx: Context, args: argparse.Namespace, for_proxy: bool) -> Tuple[Any, Any]:
    """Resolve, check tools, push the key and pin host keys: (instance, keys.Authorized)."""
    from sagemaker_ssh_helper import keys, proxy, session

    target = fqdn.parse_resource(args.fqdn)
    session.find_plugin()
    if not for_proxy:
        proxy.find_ssh()
    inst, several = resolve_one(ctx, target, args.index, args.node, args.wait)
    # ssh config lookups use the FQDN (%h); a pick among several nodes gets its own alias.
    alias = f"{inst.instance_id}.{target.fqdn}" if several and not for_proxy else target.fqdn
    ssm = ctx.manager().ssm
    auth = keys.authorize(ssm, ctx.session, inst.instance_id, target.fqdn, alias)
    return inst, auth


def ssh_argv(ctx: Context, target: fqdn.Target, instance_id: str, auth: Any,
             ssh_args: Sequence[str], command: Sequence[str]) -> List[str]:
    """The complete ssh command line for ``connect``: our options, then the user's."""
    from sagemaker_ssh_helper import proxy

    user = "sagemaker-user" if target.kind.kind == "studio" else "root"
    options = proxy.ssh_options(
        identity_file=auth.key_path, known_hosts=auth.known_hosts,
        host_key_alias=auth.host_key_alias, user=user,
        proxy_cmd=proxy.proxy_command(instance_id, ctx.region_name, ctx.profile))
    argv = [proxy.find_ssh(), *options, *ssh_args, target.fqdn.lower()]
    return argv + (["--", *command] if command else [])


def local_ports(ssh_args: Sequence[str]) -> List[Tuple[str, int]]:
    """(bind address, port) of every ``-L``/``-D`` listener in ssh arguments."""
    ports = []
    for i, arg in enumerate(ssh_args):
        spec = None
        if arg in ("-L", "-D") and i + 1 < len(ssh_args):
            spec = ssh_args[i + 1]
        elif arg[:2] in ("-L", "-D") and len(arg) > 2 and not arg.startswith("--"):
            spec = arg[2:]
        if spec is None:
            continue
        bind = ""
        if spec.startswith("[") and "]:" in spec:  # [ipv6]:port:...
            bind, spec = spec[1:].split("]:", 1)
        fields = spec.split(":")
        if not bind and len(fields) > 1 and not fields[0].isdigit():
            bind, fields = fields[0], fields[1:]
        if fields[0].isdigit():
            ports.append(("127.0.0.1" if bind in ("localhost", "") else bind, int(fields[0])))
    return ports


def check_local_ports(ssh_args: Sequence[str]) -> None:
    """Fail early, in one line, when a local forwarding port is taken."""
    for host, port in local_ports(ssh_args):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh's listeners do
            try:
                s.bind(("" if host == "*" else host, port))
            except OSError as e:
                raise UsageError(f"local port {port} ({host}) is not available: "
                                 f"{e.strerror or e}; choose another port for -L/-D") from None


def cmd_connect(ctx: Context, args: argparse.Namespace, command: List[str]) -> int:
    if not args.fqdn:
        raise UsageError("connect needs a target: sm-ssh connect <name>.<kind>.sagemaker "
                         "[ssh options] [-- command]")
    pull_choice(args)
    check_local_ports(args.ssh_args)
    target = fqdn.parse_resource(args.fqdn)
    inst, auth = prepare(ctx, args, for_proxy=False)
    argv = ssh_argv(ctx, target, inst.instance_id, auth, args.ssh_args, command)
    logger.debug("exec %s", argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_start_proxy(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import session

    inst, _ = prepare(ctx, args, for_proxy=True)
    return session.start_ssh_session(inst.instance_id, args.port, session=ctx.session,
                                     region=ctx.region_name, profile=ctx.profile)


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import resources

    target = fqdn.parse(args.fqdn)
    rows = resources.list_rows(ctx.session, ctx.region_name, target, ctx.manager(), args.days)
    print(resources.render(rows, args.output))
    return 0


def cmd_config(ctx: Context) -> int:
    from sagemaker_ssh_helper import sshconfig

    path, added = sshconfig.install(ctx.profile, ctx.region)
    print(f"wrote {path}" + (f" and included it from {path.parents[1] / 'config'}" if added
                             else "") + "; try: ssh <name>.training.sagemaker", file=sys.stderr)
    return 0


def cmd_sandbox(rest: List[str]) -> int:
    import importlib

    try:
        cli = importlib.import_module("sagemaker_ssh_helper.sandbox.cli")
    except ImportError as e:
        raise SSHHelperError("the offline sandbox is not available in this installation: "
                             f"{e} (install sagemaker-ssh-helper[sandbox])") from e
    return int(cli.main(rest) or 0)


def _line(error: BaseException, limit: int = 400) -> str:
    """An error as one line (service messages can hold newlines or HTML)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _debug(verbose: bool) -> bool:
    return verbose or os.environ.get("SM_SSH_DEBUG", "").lower() == "true"


def run(argv: List[str], flags: Dict[str, bool]) -> int:
    sandbox = split_sandbox(argv)
    if sandbox is not None:
        return cmd_sandbox(sandbox[1])
    head, command = split_command(argv)
    args = build_parser().parse_args(head)
    flags["verbose"] = _debug(args.verbose)
    if flags["verbose"]:
        logging.getLogger().setLevel(logging.DEBUG)
    if args.command != "connect" and command:
        raise UsageError(f"'--' and a remote command only apply to connect, not {args.command}")
    ctx = Context(args.profile, args.region)
    handlers: Dict[str, Callable[[], int]] = {
        "list": lambda: cmd_list(ctx, args),
        "connect": lambda: cmd_connect(ctx, args, command),
        "start-proxy": lambda: cmd_start_proxy(ctx, args),
        "config": lambda: cmd_config(ctx),
    }
    return handlers[args.command]()


def main(argv: Optional[List[str]] = None) -> int:
    """The ``sm-ssh`` console entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {"verbose": _debug(False)}
    logging.basicConfig(level=logging.DEBUG if flags["verbose"] else logging.WARNING,
                        stream=sys.stderr, format="sm-ssh: %(levelname)s %(name)s: %(message)s")
    try:
        return run(argv, flags)
    except SSHHelperError as e:
        if flags["verbose"]:
            logger.exception("failed")
        print(f"sm-ssh: {_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sm-ssh: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # botocore errors that escaped a call site, and the unexpected
        if flags["verbose"]:
            logger.exception("failed")
        explained = aws.explain(e, "an AWS call")
        print(f"sm-ssh: {_line(explained)}", file=sys.stderr)
        return explained.exit_code if isinstance(explained, SSHHelperError) else 1

if __name__ == "__main__":
    sys.exit(main())
