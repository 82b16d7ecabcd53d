"""``sm-ssh``: list SageMaker resources with SSH, connect to them, or proxy ssh to them.

    sm-ssh [-v] [--profile P] [--region R] list [FQDN] [--output json]
    sm-ssh [-v] [--profile P] [--region R] connect FQDN|mi-ID
           [--index N | --node algo-2 | --instance mi-ID] [ssh options ...] [[--] command ...]
    sm-ssh [-v] [--profile P] [--region R] tunnel FQDN|mi-ID [--index N | --node algo-2]
           -L LOCAL:HOST:PORT ... [ssh options ...]   (comes back after drops; connect -N
           --keep-alive is the same)
    sm-ssh [-v] [--profile P] [--region R] start-proxy FQDN [--port N] [--instance mi-ID]
    sm-ssh [-v] [--profile P] [--region R] stop-waiting FQDN|mi-ID [--index N | --node algo-2]
    sm-ssh [-v] [--profile P] [--region R] shell FQDN [--index N | --node algo-2]
    sm-ssh [-v] [--profile P] [--region R] exec FQDN|mi-ID [--node algo-1,algo-2 ...]
           [--output text|json] [--parallel N] [--rate R] [--wait S] -- command ...
    sm-ssh [-v] [--profile P] [--region R] doctor [FQDN] [--output text|json] [--max-stale N]
    sm-ssh [--profile P] [--region R] config [--inline]
    sm-ssh [--profile P] [--region R] stage-wheel [--s3 s3://bucket/prefix/]
    sm-ssh sandbox ...
    sm-ssh [-v] [--profile P] [--region R] cp [--via auto|s3|scp] [--s3 S3_PREFIX] SOURCE DEST
    sm-ssh [-v] [--profile P] [--region R] sync [--s3 S3_PREFIX] SOURCE_DIR DEST_DIR
    sm-ssh --version        (also ``sm-ssh -v`` alone; with a subcommand ``-v`` is verbose)

Errors are one line on stderr with a non-zero exit code; tracebacks appear only with ``-v`` or
``SM_SSH_DEBUG=true``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

from sagemaker_ssh_helper import cli, fqdn
from sagemaker_ssh_helper.cli import OneLineParser, add_general_options
from sagemaker_ssh_helper.connect import Choice, Context
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError
from sagemaker_ssh_helper.options import Option
from sagemaker_ssh_helper.sm_ssh_compat import (  # noqa: F401 - SSH Helper v2 names
    SageMakerSecureShellHelper,
    read_version,
)

if TYPE_CHECKING:
    from sagemaker_ssh_helper.sshrun import SshPlan

logger = logging.getLogger(__name__)

# connect's option, before the target (argparse) or after it, among ssh's (split_connect_args)
KEEP_ALIVE = Option(("--keep-alive",), "flag", False,
                    help="with -N: re-establish the session and the forwards after a drop")
DEFAULT_WAIT = 180  # the same as connect.DEFAULT_WAIT, without importing it for -h
_OPTION_VALUES = ("--profile", "--region")


def _checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a converter raising ``UsageError`` (one message, no echo)."""
    def parse(value: str) -> Any:
        try:
            return convert(value)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _seconds(value: str) -> float:
    from sagemaker_ssh_helper.connect import seconds

    return seconds(value)


def _whole(minimum: int, maximum: int | None, what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.strip().isdigit() or int(value) < minimum or \
                (maximum is not None and int(value) > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise UsageError(f"expected {what} ({bound}), got {value!r}")
        return int(value)
    return parse


def _add_target_choice(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--index", type=int, help="pick instance N (0-based) of a multi-node "
                                                  "resource, in node-name order")
    choice.add_argument("--node", help="pick the instance with this host name (e.g. algo-2) "
                                       "or managed instance ID")
    choice.add_argument("--instance", metavar="MI_ID",
                        help="connect to this managed instance of the resource even if its log "
                             "cannot confirm it (after you checked it, e.g. in the job's log)")
    parser.add_argument("--wait", type=_checked(_seconds), default=DEFAULT_WAIT,
                        metavar="SECONDS", help=f"wait this long for the instance to come "
                                                f"online (default {DEFAULT_WAIT})")


def _subcommand(sub: Any, name: str, target: bool = False, **kwargs: Any
                ) -> argparse.ArgumentParser:
    """A subcommand's parser with the general options and, for a command that works on one
    resource (``target``), the choice of its node and ``--wait``."""
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    add_general_options(p, top_level=False)
    if target:
        _add_target_choice(p)
    return p


def _add_ssh_parser(sub: Any, name: str, ssh_help: str, **kwargs: Any
                    ) -> argparse.ArgumentParser:
    """``connect`` and ``tunnel``: one resource, then ssh's own options (and command)."""
    p = _subcommand(sub, name, target=True, **kwargs)
    p.add_argument("fqdn", nargs="?", help="<name>.training.sagemaker, <app>.studio.sagemaker, ...")
    p.add_argument("ssh_args", nargs=argparse.REMAINDER, help=ssh_help)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sm-ssh", description="SSH into SageMaker jobs, endpoints, notebook instances and "
                                   "Studio apps over AWS Systems Manager.")
    add_general_options(parser, top_level=True)
    parser.add_argument("--version", action="store_true",
                        help="print the version and exit (so does -v alone)")
    sub = parser.add_subparsers(
        dest="command",
        metavar="{list,connect,tunnel,exec,doctor,start-proxy,stop-waiting,shell,config,"
                "stage-wheel,sandbox,cp,sync}")
    sub.required = True
    p = _subcommand(sub, "list", help="resources and their SSH status")
    p.add_argument("fqdn", nargs="?", default=fqdn.SUFFIX,
                   help="what to list: sagemaker (default), training.sagemaker, "
                        "<user>.<domain>.studio.sagemaker, ...")
    p.add_argument("--output", choices=("table", "json"), default="table")
    p.add_argument("--days", type=_checked(_whole(0, None, "a whole number of days")),
                   default=30, help="jobs created in the last N days")
    p = _add_ssh_parser(sub, "connect", help="ssh to <name>.<kind>.sagemaker",
                        usage="sm-ssh connect [--index N | --node NAME | --instance MI_ID] "
                              "[--wait S] FQDN "
                              "[ssh options ...] [-- command ...]",
                        ssh_help="ssh options, passed to ssh before ours so they win (-L, -R, "
                                 "-A, -N, -o, -l, ...), then the remote command")
    p.add_argument(KEEP_ALIVE.name, action="store_true", help=KEEP_ALIVE.help)
    _add_ssh_parser(sub, "tunnel", help="forward ports (-L/-R/-D) and re-establish them after "
                                        "a drop",
                    usage="sm-ssh tunnel [--index N | --node NAME | --instance MI_ID] "
                          "[--wait S] FQDN -L LOCAL:HOST:PORT ... [ssh options ...]",
                    ssh_help="-L, -R, -D and other ssh options; --wait also bounds how long a "
                             "dropped tunnel is tried again")
    p = _subcommand(sub, "start-proxy", target=True,
                    help="ProxyCommand for ~/.ssh/config (stdout = stream)")
    p.add_argument("fqdn")
    p.add_argument("-p", "--port", type=_checked(_whole(1, 65535, "a port number")), default=22,
                   help="sshd port in the container")
    p = _subcommand(sub, "stop-waiting", target=True,
                    help="release the container's `sm-wait` (every node, or the one chosen) "
                         "through SSM, without ssh")
    p.add_argument("fqdn", metavar="FQDN|mi-ID")
    p = _subcommand(sub, "shell", target=True,
                    help="a plain shell in a training job with SageMaker's remote debugging "
                         "on, or an endpoint with SSM access (no SSH server needed)")
    p.add_argument("fqdn", metavar="FQDN",
                   help="<name>.training.sagemaker or <name>.inference.sagemaker")
    p = _subcommand(sub, "config", help="set up ~/.ssh/config for `ssh <name>.<kind>.sagemaker`")
    p.add_argument("--inline", action="store_true",
                   help="write the host blocks into ~/.ssh/config itself rather than an "
                        "Include of ~/.ssh/sm-ssh/config (paramiko and Fabric ignore Include)")
    p = _subcommand(sub, "stage-wheel", help="upload this version's wheel to S3 for Studio, "
                                             "notebook instances and lifecycle configs")
    p.add_argument("--s3", metavar="S3_PREFIX",
                   help="where to put it (default: s3://sagemaker-<region>-<account>/"
                        "sagemaker-ssh-helper/)")
    _add_exec_parser(sub)
    _add_doctor_parser(sub)
    sub.add_parser("sandbox", help="the offline sandbox (sm-ssh sandbox -h)", add_help=False)
    add_cp_parser(sub)
    return parser


def _size(value: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    text = value.strip().upper().rstrip("B").rstrip("I")
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit():
        raise UsageError(f"expected a size in bytes (e.g. 1048576 or 1M), got {value!r}")
    return int(number) * scale


def add_cp_parser(sub: Any) -> None:
    p = _subcommand(sub, "cp", target=True,
                    help="copy a file to or from a container (big files through S3)",
                    usage="sm-ssh cp [--via auto|s3|scp] [--s3 S3_PREFIX] "
                          "[--s3-threshold SIZE] [--index N | --node NAME | --instance MI_ID] "
                          "SOURCE DESTINATION")
    p.add_argument("source", help="a local file, or <name>.<kind>.sagemaker:/path")
    p.add_argument("destination", help="<name>.<kind>.sagemaker:/path (a file or folder), "
                                       "or a local path")
    p.add_argument("--via", choices=("auto", "s3", "scp"), default="auto",
                   help="auto (default): S3 from --s3-threshold up, scp below")
    p.add_argument("--s3", metavar="S3_PREFIX",
                   help="where temporary objects go (default: s3://sagemaker-<region>-"
                        "<account>/sagemaker-ssh-helper/transfers/); deleted after the copy")
    p.add_argument("--s3-threshold", type=_checked(_size), default=1024 * 1024, metavar="SIZE",
                   help="files from this size go through S3 (default 1M)")


    p = _subcommand(sub, "sync", target=True,
                    help="copy a folder's new and changed files to or from a container, "
                         "through S3",
                    usage="sm-ssh sync [--s3 S3_PREFIX] [--index N | --node NAME | "
                          "--instance MI_ID] SOURCE_DIR DESTINATION_DIR")
    p.add_argument("source", help="a local folder, or <name>.<kind>.sagemaker:/folder")
    p.add_argument("destination", help="<name>.<kind>.sagemaker:/folder, or a local folder")
    p.add_argument("--s3", metavar="S3_PREFIX", help="where the temporary archive goes (as cp)")


def cmd_sync(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import transfer

    return transfer.sync(ctx, args.source, args.destination, _choice(args), args.s3)


def cmd_cp(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import transfer

    return transfer.copy(ctx, args.source, args.destination, _choice(args), args.via,
                         args.s3_threshold, args.s3)
def _add_exec_parser(sub: Any) -> None:
    from sagemaker_ssh_helper.fanout import DEFAULT_PARALLEL, DEFAULT_RATE

    p = _subcommand(sub, "exec", help="run a command on every node of a resource at once",
                    usage="sm-ssh exec [--node NAME[,NAME...]] [--output text|json] "
                          "[--parallel N] [--rate R] [--wait S] FQDN -- command ...")
    p.add_argument("fqdn", metavar="FQDN|mi-ID")
    p.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--node", action="append", metavar="NAME[,NAME...]",
                   help="only these nodes (host name such as algo-2, or mi-ID); repeat or "
                        "separate with commas (default: every online node)")
    p.add_argument("--output", choices=("text", "json"), default="text",
                   help="text: each line prefixed with its node (default); json: one document "
                        "with each node's exit code, stdout, stderr and seconds")
    p.add_argument("--parallel", type=_checked(_whole(1, 256, "a number of nodes")),
                   default=DEFAULT_PARALLEL,
                   help=f"nodes worked on at the same time (default {DEFAULT_PARALLEL})")
    p.add_argument("--rate", type=_checked(_rate), default=DEFAULT_RATE,
                   help="calls per second of each of SendCommand and StartSession, to stay "
                        f"under the account's request rates (default {DEFAULT_RATE:g})")
    p.add_argument("--wait", type=_checked(_seconds), default=DEFAULT_WAIT, metavar="SECONDS",
                   help=f"wait this long for the resource to come online (default "
                        f"{DEFAULT_WAIT})")


def _add_doctor_parser(sub: Any) -> None:
    p = _subcommand(sub, "doctor", help="check the set-up (tools, credentials, region, IAM, SSM "
                                        "tier, stale registrations) and why FQDN is or is not "
                                        "connectable")
    p.add_argument("fqdn", nargs="?", metavar="FQDN",
                   help="also explain why <name>.<kind>.sagemaker is or is not connectable now")
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.add_argument("--max-stale", type=_checked(_whole(1, None, "a number of instances")),
                   default=50, help="fail when this many SSH Helper managed instances are "
                                    "offline (default 50)")


def cmd_doctor(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import doctor

    checks = doctor.run_checks(ctx, args.fqdn, max_stale=args.max_stale)
    print(doctor.render(checks, args.output), flush=True)
    return doctor.failures(checks)


def _rate(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise UsageError(f"expected a number of calls per second > 0, got {value!r}")
    return number


def cmd_exec(ctx: Context, args: argparse.Namespace, command: list[str]) -> int:
    from sagemaker_ssh_helper import fanout

    the_plan = fanout.plan(ctx, args.fqdn, fanout.parse_nodes(args.node),
                           list(args.words) + command, args.wait)
    results = fanout.run(ctx, the_plan, parallel=args.parallel, rate=args.rate,
                         as_json=args.output == "json")
    if args.output == "json":
        print(fanout.render_json(results), flush=True)
    failed = fanout.summary(results)
    if failed:
        print(f"sm-ssh: {failed}", file=sys.stderr, flush=True)
    return fanout.exit_code(results)


def split_sandbox(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
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


def subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand's name: the first argument that is neither a general option nor its
    value."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in _OPTION_VALUES else 1
    return argv[i] if i < len(argv) else None


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(what the parser reads, the remote command). For connect and exec, ``--`` starts the
    remote command; cp and sync take it as POSIX tools do, the end of the options, what follows
    being operands even when they start with '-' (``sm-ssh cp -- -file job…:/tmp/``)."""
    if subcommand(argv) in ("cp", "sync"):
        return list(argv), []
    return split_command(argv)


def split_command(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ssh arguments at the first ``--``: (ssh options, remote command)."""
    if "--" in args:
        at = args.index("--")
        return args[:at], args[at + 1:]
    return args, []


def cmd_connect(ctx: Context, args: argparse.Namespace, command: list[str]) -> int:
    from sagemaker_ssh_helper import connect

    if not args.fqdn:
        raise UsageError("connect needs a target: sm-ssh connect <name>.<kind>.sagemaker "
                         "[ssh options] [-- command]")
    choice = _choice(args)
    options, positional, ours = connect.split_connect_args(args.ssh_args, choice, (KEEP_ALIVE,))
    dest = connect.destination(args.fqdn)
    connect.check_tools()
    plan = connect.plan_ssh(options, dest)
    if args.keep_alive or ours.flag("--keep-alive"):
        from sagemaker_ssh_helper import tunnel

        if positional or command or not tunnel.no_session(plan, options):
            raise UsageError("--keep-alive re-establishes forwards, not commands: use it with "
                             "-N and no remote command (or sm-ssh tunnel)")
        return keep_tunnel(ctx, args.fqdn, choice, options, plan)
    connect.check_local_ports(plan.listeners)
    from sagemaker_ssh_helper import reuse  # a shared connection per target (SM_SSH_REUSE)

    return reuse.run(ctx, args.fqdn, choice, options, positional + command, plan)


def cmd_tunnel(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import connect, tunnel

    if not args.fqdn:
        raise UsageError("tunnel needs a target: sm-ssh tunnel <name>.<kind>.sagemaker "
                         "-L LOCAL_PORT:HOST:PORT")
    choice = _choice(args)
    options, positional, _ = connect.split_connect_args(args.ssh_args, choice)
    dest = connect.destination(args.fqdn)
    connect.check_tools()
    plan = connect.plan_ssh(options, dest)
    tunnel.needs_forward(plan)
    if positional:
        raise UsageError(f"a tunnel runs no remote command, got {' '.join(positional)!r}: "
                         "use sm-ssh connect for commands")
    if not tunnel.no_session(plan, options):
        options = ["-N", *options]
    return keep_tunnel(ctx, args.fqdn, choice, options, plan)


def keep_tunnel(ctx: Context, target_text: str, choice: Choice, options: list[str],
                plan: SshPlan) -> int:
    """``sm-ssh tunnel`` and ``connect -N --keep-alive``: ssh without a remote command, run
    again after every drop until Ctrl-C."""
    from sagemaker_ssh_helper import connect, tunnel

    tunnel.not_in_background(plan, options)
    connect.check_local_ports(plan.listeners)
    return tunnel.keep_alive(ctx, target_text, choice, options, plan.port,
                             lambda message: cli.progress(f"sm-ssh: {message}"))


def _choice(args: argparse.Namespace) -> Choice:
    """The instance choice of ``--index/--node/--instance/--wait``."""
    from sagemaker_ssh_helper import connect

    choice = connect.Choice(args.index, args.node, args.wait)
    if args.instance:
        connect.set_choice(choice, "--instance", args.instance)
    return choice


def cmd_start_proxy(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import connect, session

    prepared = connect.prepare(ctx, args.fqdn, _choice(args), for_proxy=True)
    return session.start_ssh_session(prepared.instance_id, args.port, session=ctx.session,
                                     region=ctx.region_name, profile=ctx.profile)


def stop_waiting(ctx: Context, target_text: str, choice: Choice) -> int:
    """Run ``sm-wait stop`` through SendCommand on every online node of the target (or the
    one ``choice`` picks): it needs neither sshd nor a key, so it releases a job whose sshd
    is gone. Prints one line per node released."""
    from sagemaker_ssh_helper import connect, keys, proxy

    if not connect.is_instance_id(target_text):
        target = fqdn.parse_resource(target_text)
        job = connect._native_job(ctx, target)
        if job is not None:  # SageMaker's targets take no SendCommand: over ssh
            from sagemaker_ssh_helper import native

            return native.stop_waiting(ctx, target, job, choice)
    ssm = ctx.manager().ssm
    for inst in connect.release_targets(ctx, target_text, choice):
        output = keys.run_shell_command(ssm, inst.instance_id, proxy.STOP_WAITING, timeout=60,
                                        comment="sm-ssh: sm-wait stop")
        said = " ".join(output.split()) or "done"
        print(f"{inst.computer_name or '?'} ({inst.instance_id}): {said}", flush=True)
    return 0


def cmd_shell(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import native, session

    target = fqdn.parse_resource(args.fqdn)
    if target.kind.kind not in ("training", "inference"):
        raise UsageError(f"sm-ssh shell opens SageMaker's own shell of training jobs (remote "
                         f"debugging) and endpoints (SSM access) only, not of "
                         f"{target.kind.description}s: use sm-ssh connect")
    session.find_plugin()
    return native.shell(ctx, target, _choice(args))


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    from sagemaker_ssh_helper import resources

    target = fqdn.parse(args.fqdn)
    rows = resources.list_rows(ctx.session, ctx.region_name, target, ctx.manager(), args.days)
    print(resources.render(rows, args.output))
    return 0


def cmd_config(ctx: Context, inline: bool) -> int:
    from sagemaker_ssh_helper import sshconfig

    sshconfig.check_options(ctx.profile, ctx.region)
    warning = sshconfig.home_warning()
    if warning:
        print(f"sm-ssh: warning: {warning}", file=sys.stderr)
    path, changed = sshconfig.install(ctx.profile, ctx.region, inline=inline)
    if inline:
        done = f"wrote the sm-ssh host blocks into {path}"
    else:
        done = f"wrote {path}" + (f" and included it from {path.parents[1] / 'config'}"
                                  if changed else "")
    print(f"{done}; try: ssh <name>.training.sagemaker", file=sys.stderr)
    return 0


def cmd_stage_wheel(ctx: Context, prefix: str | None) -> int:
    from sagemaker_ssh_helper import dist

    url = dist.stage(ctx.session, ctx.region_name, prefix)
    print(f"sm-ssh: staged {dist.NAME} {dist.version()}; in a lifecycle configuration or the "
          "notebooks' first cell, set:", file=sys.stderr)
    print(f"SM_SSH_PACKAGE={url}")
    return 0


def cmd_sandbox(rest: list[str]) -> int:
    import importlib

    try:
        sandbox_cli = importlib.import_module("sagemaker_ssh_sandbox.cli")
    except ImportError as e:
        raise SSHHelperError("the offline sandbox is not available in this installation: "
                             f"{e} (install sagemaker-ssh-helper[sandbox])") from e
    return int(sandbox_cli.main(rest) or 0)


def wants_version(argv: Sequence[str]) -> bool:
    """``sm-ssh --version`` (anywhere before the subcommand) or ``sm-ssh -v`` alone, as in SSH
    Helper v2. ``-v`` together with a subcommand keeps meaning verbose."""
    if list(argv) == ["-v"]:
        return True
    i = 0
    while i < len(argv):
        if argv[i] == "--version":
            return True
        if not argv[i].startswith("-"):
            return False
        i += 2 if argv[i] in _OPTION_VALUES else 1
    return False


def run(argv: list[str], frame: cli.Command) -> int:
    if wants_version(argv):
        print(f"sm-ssh v{read_version()}")
        return 0
    sandbox = split_sandbox(argv)
    if sandbox is not None:
        return cmd_sandbox(sandbox[1])
    head, command = split_arguments(argv)
    args = frame.parse(build_parser(), head)
    if args.command not in ("connect", "exec") and command:
        raise UsageError(f"'--' and a remote command only apply to connect and exec, "
                         f"not {args.command}")
    ctx = Context(args.profile, args.region)
    handlers: dict[str, Callable[[], int]] = {
        "list": lambda: cmd_list(ctx, args),
        "connect": lambda: cmd_connect(ctx, args, command),
        "tunnel": lambda: cmd_tunnel(ctx, args),
        "start-proxy": lambda: cmd_start_proxy(ctx, args),
        "stop-waiting": lambda: stop_waiting(ctx, args.fqdn, _choice(args)),
        "shell": lambda: cmd_shell(ctx, args),
        "config": lambda: cmd_config(ctx, args.inline),
        "stage-wheel": lambda: cmd_stage_wheel(ctx, args.s3),
        "cp": lambda: cmd_cp(ctx, args),
        "sync": lambda: cmd_sync(ctx, args),
        "exec": lambda: cmd_exec(ctx, args, command),
        "doctor": lambda: cmd_doctor(ctx, args),
    }
    return handlers[args.command]()


def main(argv: list[str] | None = None) -> int:
    """The ``sm-ssh`` console entry point; returns the exit code."""
    args = cli.argv_or_sys(argv)
    return cli.guarded_main("sm-ssh", lambda frame: run(args, frame))


if __name__ == "__main__":
    sys.exit(main())
