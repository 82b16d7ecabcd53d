"""The commands users call by name; each bash script runs ``python -m
sagemaker_ssh_helper.sm_local <script name> "$@"``.

    sm-local-start-ssh [--proxy-setup-only] <mi-id|fqdn> [ssh args] [[--] command]
    sm-connect-ssh-proxy [--no-setup] <mi-id|fqdn> [port]          (a ProxyCommand)
    sm-local-ssh-<kind> connect|connect-job <name> [--local-port N] [--ssh-only] [ssh args]
                        [[--] command]
    sm-local-ssh-<kind> proxy-host <fqdn|name> [port]               (a ProxyCommand)
    sm-local-ssh-<kind> stop-waiting [<name>] [--local-port N]      (<name>: through SSM)
    sm-local-ssh-<kind> run-command [--local-port N] <command> [args ...]
    sm-local-ssh-ide [--domain-id D] [--user-profile-name U | --space-name S] [connect-app] <app>
    sm-local-ssh-ide set-domain-id D | set-user-profile-name U | set-jb-license-server H[:PORT]

``connect`` forwards ``localhost:<port>`` to the container's sshd (the kind's documented port,
e.g. 11022 for training) plus the kind's usual extra ports, and opens an ssh session; while it
runs, ``run-command`` and ``stop-waiting`` reach the container through that port. ``connect``
and ``sm-local-start-ssh`` also authorize the shared key ``~/.ssh/sagemaker-ssh-gw`` of earlier
versions' documents and pin the host keys for the local port (see ``legacy``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sagemaker_ssh_helper import cli, connect, fqdn, keyfile, keys, legacy, proxy, sm_ssh
from sagemaker_ssh_helper.connect import Choice, Context
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError
from sagemaker_ssh_helper.options import Option, leading


@dataclass(frozen=True)
class Script:
    kind: str                  # fqdn kind
    extra_forwards: tuple[str, ...]
    extra_note: str


DEBUGGER = ("-R", "127.0.0.1:12345:127.0.0.1:12345")  # PyCharm's Debug Server, reverse
# What `connect` forwards besides sshd, per kind: the debug server for jobs and endpoints.
EXTRA_FORWARDS: dict[str, tuple[tuple[str, ...], str]] = {
    "notebook": ((), ""),
    "studio": (("-L", "127.0.0.1:5901:localhost:5901", "-L", "127.0.0.1:8889:localhost:8889"),
               "plus VNC 5901 and Jupyter 8889"),
}
# sm-local-ssh-<script> for every kind of the table (sm-local-ssh-ide: Studio apps)
SCRIPTS: dict[str, Script] = {
    rk.script: Script(rk.kind, *EXTRA_FORWARDS.get(
        rk.kind, (DEBUGGER, "and remote port 12345 to your debug server")))
    for rk in fqdn.RESOURCE_KINDS}
STUDIO_FILES = {"domain_id": ".sm-studio-domain-id",
                "user_profile_name": ".sm-studio-user-profile-name",
                "jb_license_server": ".sm-jb-license-server"}
CONNECT_COMMANDS = {"ide": ("connect", "connect-app")}  # other kinds: connect, connect-job


# -- sm-local-start-ssh and sm-connect-ssh-proxy ---------------------------------------------------
# The sm-local-* commands' own options (before the target, or mixed with ssh's after it).
GENERAL = (Option(("--profile",), "str", help="AWS profile"),
           Option(("--region",), "str", help="AWS region"),
           Option(("-v", "--verbose"), "flag", False, help="say what is done, on stderr"))
START_SSH_OPTIONS = (*GENERAL, Option(("--proxy-setup-only",), "flag", False,
                                      help="only push the key and pin the host keys"),
                     *connect.CHOICE_OPTIONS)
PROXY_OPTIONS = (*GENERAL, Option(("--no-setup",), "flag", False,
                                  help="the key is pushed already: only relay the session"),
                 Option(("--port",), "str", "22", help="sshd's port in the container"))
LOCAL_PORT = Option(("--local-port",), "int", help="the local port that leads to sshd "
                                                   "(default: the kind's)")
SSH_ONLY = Option(("--ssh-only",), "flag", False, help="no extra forwards")
USAGE = {
    "sm-local-start-ssh": (
        "usage: sm-local-start-ssh [-v] [--profile P] [--region R] [--proxy-setup-only]\n"
        "                          [--index N | --node NAME | --instance MI_ID] [--wait S]\n"
        "                          <mi-id|name.kind.sagemaker> [ssh options] [[--] command]\n\n"
        "Push this client's key to the container, pin its host keys and run ssh over SSM.\n"
        "--proxy-setup-only: only push the key and pin the host keys (for IDEs; prints\n"
        "nothing), then use `sm-connect-ssh-proxy %h %p` as the ProxyCommand."),
    "sm-connect-ssh-proxy": (
        "usage: sm-connect-ssh-proxy [-v] [--profile P] [--region R] [--no-setup]\n"
        "                            <mi-id|name.kind.sagemaker> [port]\n\n"
        "An ssh ProxyCommand (`ProxyCommand sm-connect-ssh-proxy %h %p`): push the key, pin\n"
        "the host keys (unless --no-setup), then relay an SSM session to the container's sshd\n"
        "on stdin/stdout."),
}


def _help(prog: str, argv: Sequence[str]) -> bool:
    if argv[:1] and argv[0] in ("-h", "--help"):
        print(USAGE[prog])
        return True
    return False


def start_ssh(argv: Sequence[str], frame: cli.Command) -> int:
    """``sm-local-start-ssh``: like ``sm-ssh connect``, for an instance ID or an FQDN."""
    if _help("sm-local-start-ssh", argv):
        return 0
    opts, rest = leading(argv, START_SSH_OPTIONS)
    frame.verbose(opts.flag("-v"))
    ctx = Context(opts.text("--profile"), opts.text("--region"))
    choice = Choice()
    connect.apply_choice(choice, opts)
    target, tail = rest[0], rest[1:]
    options, command, _ = connect.split_connect_args(tail, choice)
    if opts.flag("--proxy-setup-only"):
        if tail:
            raise UsageError("--proxy-setup-only takes no ssh arguments")
        connect.prepare(ctx, target, choice, for_proxy=True)
        return 0
    dest = connect.destination(target)
    connect.check_tools()
    plan = connect.plan_ssh(options, dest)
    connect.check_local_ports(plan.listeners)
    prepared = connect.prepare(ctx, target, choice)
    legacy.authorize(ctx.manager().ssm, prepared.instance_id, prepared.destination,
                     legacy.sshd_ports(options))
    return connect.run_and_explain(ctx, prepared, options, command, plan)


def connect_proxy(argv: Sequence[str], frame: cli.Command) -> int:
    """``sm-connect-ssh-proxy <mi-id|fqdn> [port]``: push the key, then relay the session."""
    from sagemaker_ssh_helper import session

    if _help("sm-connect-ssh-proxy", argv):
        return 0
    opts, rest = leading(argv, PROXY_OPTIONS)
    frame.verbose(opts.flag("-v"))
    if len(rest) > 2:
        raise UsageError("expected <mi-id|fqdn> [port], got: " + " ".join(rest))
    port = _port(rest[1] if len(rest) > 1 else opts.text("--port", "22") or "22")
    ctx = Context(opts.text("--profile"), opts.text("--region"))
    if opts.flag("--no-setup"):  # keys pushed already (sm-local-start-ssh --proxy-setup-only)
        instance_id = rest[0]
        if not connect.is_instance_id(instance_id):
            found, _ = connect.resolve_one(ctx, fqdn.parse_resource(instance_id), Choice())
            instance_id = found.instance_id
    else:
        instance_id = connect.prepare(ctx, rest[0], Choice(), for_proxy=True).instance_id
    return session.start_ssh_session(instance_id, port, session=ctx.session,
                                     region=ctx.region_name, profile=ctx.profile)


def _port(text: str) -> int:
    if not str(text).isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"not a port number: {text!r}")
    return int(text)


# -- sm-local-ssh-<kind> -----------------------------------------------------------------------
def build_kind_parser(prog: str, name: str) -> argparse.ArgumentParser:
    script = SCRIPTS[name]
    rk = fqdn.kind(script.kind)
    parser = cli.OneLineParser(
        prog=prog, description=f"SSH to a SageMaker {rk.description} through "
                               f"localhost:{rk.default_port}.")
    cli.add_general_options(parser, top_level=True)
    if name == "ide":
        parser.add_argument("--domain-id", help="Studio domain (default: ~/.sm-studio-domain-id)")
        owner = parser.add_mutually_exclusive_group()
        owner.add_argument("--user-profile-name",
                           help="Studio user profile (default: ~/.sm-studio-user-profile-name)")
        owner.add_argument("--space-name", help="Studio space, instead of a user profile")
    sub = parser.add_subparsers(dest="command", required=True)
    noun = "APP" if name == "ide" else "NAME"
    for command in CONNECT_COMMANDS.get(name, ("connect", "connect-job")):
        p = sub.add_parser(command, usage=f"{prog} {command} {noun} [--local-port N] "
                                          "[--ssh-only] [ssh options] [[--] command]",
                           help=f"forward localhost:{rk.default_port} to sshd"
                                + (f" {script.extra_note}" if script.extra_note else "")
                                + ", and open an ssh session")
        p.add_argument("target", metavar=noun, help="the name, or its FQDN")
        p.add_argument("rest", nargs=argparse.REMAINDER,
                       help=f"--local-port N (default {rk.default_port}), --ssh-only (no extra "
                            "forwards), ssh options, then a remote command")
    p = sub.add_parser("proxy-host", help="ProxyCommand: push the key, relay the session")
    p.add_argument("target", metavar="HOST", help="<name>.<kind>.sagemaker (ssh's %%n), or name")
    p.add_argument("port", nargs="?", default="22", help="sshd port in the container (%%p)")
    p = sub.add_parser("stop-waiting", help="run `sm-wait stop` in the container")
    p.add_argument("target", nargs="?", metavar=noun,
                   help="release every node of this resource through SSM (SendCommand, no "
                        "ssh needed) instead of through the local port")
    p.add_argument("--local-port", type=int, default=rk.default_port)
    p = sub.add_parser("run-command", help="run a command through the local port")
    p.add_argument("--local-port", type=int, default=rk.default_port)
    p.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND")
    if name == "ide":
        sub.add_parser("set-domain-id").add_argument("value")
        sub.add_parser("set-user-profile-name").add_argument("value")
        sub.add_parser("set-jb-license-server", help="connect then also forwards the app's "
                       "port 443 to this license server (HOST or HOST:PORT), and logs in as "
                       "root").add_argument("value")
    return parser


def _studio_default(args: argparse.Namespace, field: str) -> str | None:
    value = getattr(args, field, None)
    if value:
        return str(value)
    path = Path.home() / STUDIO_FILES[field]
    saved = path.read_text().strip() if path.exists() else ""
    return saved or None


def target_for(name: str, args: argparse.Namespace, text: str,
               ctx: Context | None = None) -> str:
    """``text`` as an FQDN of this script's kind (a bare name gets the suffix). A Studio app
    with a domain but no user profile or space is looked up in that domain (with ``ctx``)."""
    kind = SCRIPTS[name].kind
    if text.lower().endswith(f".{fqdn.SUFFIX}"):
        target = fqdn.parse_resource(text)
        if target.kind.kind != kind:
            raise UsageError(f"{text} is a {target.kind.description}: use "
                             f"sm-local-ssh-{target.kind.script}")
        return text
    if kind != "studio":
        result = fqdn.format_fqdn(kind, text)
    else:
        owner = getattr(args, "space_name", None) or _studio_default(args, "user_profile_name")
        domain = _studio_default(args, "domain_id")
        if domain and not owner and ctx is not None:
            from sagemaker_ssh_helper import resources

            owner = resources.studio_owner(ctx.session, ctx.region_name, domain, text)
        result = fqdn.format_fqdn("studio", text, owner if domain else None, domain)
    fqdn.parse_resource(result)  # a name with dots or blanks is refused here, in one line
    return result


def tunnel_state_path(port: int) -> Path:
    return keys.ssh_dir() / "sm-ssh" / f"tunnel-{port}.json"


def kind_connect(ctx: Context, name: str, args: argparse.Namespace, prog: str,
                 command: list[str]) -> int:
    target = target_for(name, args, args.target, ctx)
    choice = Choice()
    local_port = replace(LOCAL_PORT, default=fqdn.kind(SCRIPTS[name].kind).default_port)
    options, positional, ours = connect.split_connect_args(args.rest, choice,
                                                           (local_port, SSH_ONLY))
    port = _port(str(ours.get("--local-port")))
    forwards = ["-L", f"127.0.0.1:{port}:localhost:22"]
    if not ours.flag("--ssh-only"):
        forwards += SCRIPTS[name].extra_forwards
    license_server = _studio_default(args, "jb_license_server") if name == "ide" else None
    if license_server:  # the app's 127.0.0.1:443 -> the license server; binding 443 needs root
        host, _, license_port = license_server.rpartition(":") if ":" in license_server \
            else (license_server, "", "443")
        forwards += ["-R", f"127.0.0.1:443:{host}:{license_port}"]
        if not any(o.startswith("-l") for o in options):
            forwards += ["-l", "root"]
    dest = connect.destination(target)
    connect.check_tools()
    plan = connect.plan_ssh([*options, *forwards], dest)
    connect.check_local_ports(plan.listeners,
                              hint="pass --local-port N (or --ssh-only to skip the extra "
                                   "ports), or stop what listens there")
    prepared = connect.prepare(ctx, target, choice)
    legacy.authorize(ctx.manager().ssm, prepared.instance_id, target, [port])
    state = {"destination": prepared.destination, "user": prepared.user,
             "key": str(prepared.auth.key_path), "known_hosts": str(prepared.auth.known_hosts),
             "alias": prepared.auth.host_key_alias, "instance_id": prepared.instance_id}
    path = tunnel_state_path(port)
    keyfile.ensure_dir(path.parent)
    with keyfile.file_errors("write", path):
        path.write_text(json.dumps(state))
    cli.progress(f"{prog}: localhost:{port} leads to sshd in {target} ({prepared.instance_id}), "
                 f"for keys {prepared.auth.key_path} and ~/.ssh/{legacy.GATEWAY_KEY}; "
                 f"`{prog} run-command <cmd>` and `{prog} stop-waiting` use it while this runs")
    return connect.run_and_explain(ctx, prepared, [*options, *forwards], positional + command,
                                   plan)


def through_tunnel(port: int, command: Sequence[str], prog: str) -> int:
    """Run ``command`` over ssh to localhost:``port`` (a running ``connect``)."""
    try:
        state = json.loads(tunnel_state_path(port).read_text())
    except (OSError, ValueError):
        raise UsageError(f"no `{prog} connect` has set up localhost:{port}: run "
                         f"`{prog} connect <name>` first, or pass --local-port") from None
    if not command:
        raise UsageError(f"{prog} run-command needs a command")
    options = proxy.ssh_options(identity_file=Path(state["key"]),
                                known_hosts=Path(state["known_hosts"]),
                                host_key_alias=state["alias"], user=state["user"],
                                proxy_cmd=None)
    with tempfile.TemporaryDirectory(prefix="sm-ssh-") as tmp:
        log = Path(tmp) / "ssh.log"
        # No ProxyCommand from ~/.ssh/config: the port already leads to the container's sshd.
        returncode = connect.run_ssh([proxy.find_ssh(), "-E", str(log), *options,
                                      "-o", "ProxyCommand=none", "-o", "BatchMode=yes",
                                      "-p", str(port), "127.0.0.1", "--", *command])
        text = log.read_text(errors="replace") if log.exists() else ""
    if returncode == connect.SSH_FAILED and "Connection refused" in text:
        raise SSHHelperError(f"nothing listens on localhost:{port}: is `{prog} connect "
                             f"{state['destination']}` still running?", connect.SSH_FAILED)
    if returncode == connect.SSH_FAILED and text.strip():
        raise proxy.ssh_error(text, f"ssh to localhost:{port}", connect.SSH_FAILED)
    sys.stderr.write(text)
    return returncode


def _bare_app(parser: argparse.ArgumentParser, head: list[str]) -> list[str]:
    """``sm-local-ssh-ide <app>`` (the earlier form) means ``sm-local-ssh-ide connect <app>``."""
    valued = {a for action in parser._actions if action.nargs is None and action.option_strings
              for a in action.option_strings}
    commands = {c for action in parser._actions
                if isinstance(action, argparse._SubParsersAction) for c in action.choices}
    i = 0
    while i < len(head):
        item = head[i]
        if item in commands:
            return head
        if not item.startswith("-"):
            return [*head[:i], "connect", *head[i:]]
        i += 2 if item in valued and "=" not in item else 1
    return head


def kind_main(prog: str, name: str, argv: Sequence[str], frame: cli.Command) -> int:
    from sagemaker_ssh_helper import session

    head, command = sm_ssh.split_command(list(argv))
    parser = build_kind_parser(prog, name)
    if name == "ide":
        head = _bare_app(parser, head)
    args = frame.parse(parser, head)
    ctx = Context(args.profile, args.region)
    if args.command in ("set-domain-id", "set-user-profile-name", "set-jb-license-server"):
        field = args.command[len("set-"):].replace("-", "_")
        saved = Path.home() / STUDIO_FILES[field]
        with keyfile.file_errors("write", saved, "make HOME writable"):
            saved.write_text(args.value.strip() + "\n")
        frame.say(f"saved {args.value} into ~/{STUDIO_FILES[field]}")
        return 0
    if args.command in ("connect", "connect-app", "connect-job"):
        return kind_connect(ctx, name, args, prog, command)
    if args.command == "run-command":
        return through_tunnel(args.local_port, [*args.remote, *command], prog)
    if command:
        raise UsageError("'--' and a remote command only apply to connect and run-command")
    if args.command == "proxy-host":
        port = _port(args.port)  # before anything is pushed
        prepared = connect.prepare(ctx, target_for(name, args, args.target, ctx), Choice(),
                                   for_proxy=True)
        return session.start_ssh_session(prepared.instance_id, port,
                                         session=ctx.session, region=ctx.region_name,
                                         profile=ctx.profile)
    if args.target:  # stop-waiting through SSM (SendCommand): needs no sshd, no key
        return sm_ssh.stop_waiting(ctx, target_for(name, args, args.target, ctx), Choice())
    return through_tunnel(args.local_port, [proxy.STOP_WAITING], prog)


def main(argv: list[str] | None = None) -> int:
    """``python -m sagemaker_ssh_helper.sm_local <script name> [args]``."""
    argv = cli.argv_or_sys(argv)
    prog = Path(argv[0]).name if argv else "sm-local"
    rest = argv[1:]
    if prog == "sm-local-start-ssh":
        return cli.guarded_main(prog, lambda frame: start_ssh(rest, frame))
    if prog == "sm-connect-ssh-proxy":
        return cli.guarded_main(prog, lambda frame: connect_proxy(rest, frame))
    kind = prog[len("sm-local-ssh-"):]
    if prog.startswith("sm-local-ssh-") and kind in SCRIPTS:
        return cli.guarded_main(prog, lambda frame: kind_main(prog, kind, rest, frame))

    def unknown(frame: cli.Command) -> int:
        raise UsageError(f"unknown command {prog!r}: use sm-local-start-ssh, "
                         f"sm-connect-ssh-proxy or sm-local-ssh-{{{','.join(SCRIPTS)}}}")

    return cli.guarded_main("sm-local", unknown)


def console_main() -> int:
    """Console-script entry point: the command's name is the name it was started by
    (``sm-local-ssh-training``, ``sm-local-ssh-training.exe`` on Windows, ...)."""
    return main([Path(sys.argv[0]).stem, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
