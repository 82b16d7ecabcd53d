"""Post-mortem hold: keep a crashed job's container up so that its user can look around.

With ``SSH_KEEP_ALIVE_ON_FAILURE_SECONDS=N`` in the environment (the wrappers' ``create(...,
keep_alive_on_failure_seconds=N)`` sets it), ``setup_and_start_ssh()`` installs a
``sys.excepthook``. When the script then dies of an uncaught exception:

1. the traceback is printed as usual, at once, on stderr;
2. the container keeps running (sshd, the SSM agent, the files of the failed run) for up to N
   seconds, or until ``sm-wait stop`` (in the container, or ``sm-ssh stop-waiting <fqdn>`` from
   the laptop) or ``pkill sm-wait``; where to connect is printed on stdout, as are the hold's own
   messages, so that nothing is added after the traceback on stderr;
3. the traceback is printed on stderr again, last (SageMaker takes the failure reason from the
   end of the script's stderr, where the SSH setup running in the background may have written
   meanwhile), and the process exits as it would have without the hold (exit code 1): the job
   ends Failed with the script's own error.

``python -m sagemaker_ssh_helper.postmortem -- COMMAND ...`` is the same hold for an entry point
that is not a Python script calling ``setup_and_start_ssh()`` (a shell script, ``torchrun``):
it starts SSH, runs the command, and when the command exits with a non-zero code it holds the
container the same way, then exits with the command's code. SIGTERM, SIGINT and SIGHUP (a job
stop) are passed on to the command, and to sm-wait during a hold, which then ends at once; a
command stopped that way is not held.

Nothing is held when the setup did not start SSH on this node or failed (nobody could
connect), after ``KeyboardInterrupt``, or for ``sys.exit()``/a normal end. A job's
``MaxRuntimeInSeconds`` still applies: a hold that outlasts it ends the job as Stopped.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Callable, TextIO

from sagemaker_ssh_helper import contract

ENV = contract.KEEP_ALIVE_ON_FAILURE_SECONDS
_installed = False


def hold_seconds(environ: Mapping[str, str]) -> int:
    """The hold in seconds that ``environ`` asks for; 0 (no hold) when unset or not a number."""
    return contract.read(environ).keep_alive_on_failure_seconds


def install(environ: Mapping[str, str] | None = None, seconds: int | None = None) -> bool:
    """Hold the container for ``seconds`` (else what ``environ`` asks for) when the script dies
    of an uncaught exception (see the module's docstring); True if the hook is (already)
    installed."""
    global _installed
    if seconds is None:
        seconds = hold_seconds(os.environ if environ is None else environ)
    if seconds <= 0:
        return False
    if _installed:
        return True
    previous = sys.excepthook

    def on_uncaught(exc_type: type[BaseException], exc: BaseException,
                    tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)  # the script's traceback, as without the hold
        if issubclass(exc_type, KeyboardInterrupt):
            return
        try:
            held = hold(seconds, f"the script failed with {exc_type.__name__}")
        except KeyboardInterrupt:
            held = "interrupted"
        if held != "skipped":
            # Whatever the container printed on stderr during the hold (the SSH setup runs in
            # the background) must not become the job's failure reason: the error goes last.
            print("[sagemaker-ssh-helper] the script's error, again:", flush=True)
            previous(exc_type, exc, tb)

    sys.excepthook = on_uncaught
    _installed = True
    return True


def where_to_connect(environ: Mapping[str, str] | None = None) -> list[str]:
    """The commands that reach this node from the laptop, and that end the hold."""
    from sagemaker_ssh_helper import env, fqdn

    environ = os.environ if environ is None else environ
    try:
        resource = env.detect_resource(environ)
        name = fqdn.format_fqdn(resource.kind, resource.name)
    except Exception:  # the hold does not depend on it
        name = "<name>.<kind>.sagemaker"
    config = env.resource_config(environ) or {}
    hosts = [str(h) for h in config.get("hosts") or []]
    node = str(config.get("current_host") or socket.gethostname())
    choice = f" --node {node}" if len(hosts) > 1 else ""
    instance = env.registered_instance_id()
    lines = [f"connect with: sm-ssh connect {name}{choice}"
             + (f"   (SSM managed instance {instance})" if instance else "")]
    lines.append(f"end the hold now: sm-ssh stop-waiting {name}{choice}")
    lines.append("or, in the container: sm-wait stop")
    return lines


def _call(argv: list[str], **kwargs: Any) -> int:
    """``subprocess.call`` that passes SIGTERM/SIGINT/SIGHUP on to the command (as a job's entry
    point this process is likely PID 1: a job stop would not reach the command otherwise)."""
    return _call_forwarding(argv, **kwargs)[0]


def _call_forwarding(argv: list[str], **kwargs: Any) -> tuple[int, list[int]]:
    """``_call``, and the signals passed on."""
    from sagemaker_ssh_helper import portable

    with subprocess.Popen(argv, **kwargs) as child:
        with portable.forwarding(child) as received:
            return child.wait(), received


def hold(seconds: int, why: str, out: TextIO | None = None,
         run: Callable[..., int] = _call) -> str:
    """Keep this container for up to ``seconds``, until ``sm-wait stop`` or SIGTERM (a job stop,
    passed on to sm-wait); messages go to
    ``out`` (stdout). Returns "held", or "skipped" when nobody could connect."""
    from sagemaker_ssh_helper import bootstrap, wait

    out = sys.stdout if out is None else out
    sys.stderr.flush()

    def say(line: str) -> None:
        print(f"[sagemaker-ssh-helper] {line}", file=out, flush=True)

    failure = wait.setup_failure()
    if failure is not None:
        say(f"{why}; no post-mortem hold: the SSH setup failed ({failure})")
        return "skipped"
    say(f"{why}: post-mortem hold, the container stays up for {seconds} s "
        "(sshd, the SSM agent and the files are still here)")
    for line in where_to_connect():
        say(line)
    # A stop file left by the hold before the script ran would end this hold at once.
    with contextlib.suppress(OSError):
        if wait.requested():
            os.unlink(wait.STOP_FILE)
    argv, environment = bootstrap.sm_wait_command(seconds, os.environ)
    try:
        run(argv, env=environment, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    except OSError as e:
        say(f"cannot run sm-wait: {e}")
    say("post-mortem hold over: the job ends with the script's error")
    # Deregister now (it would happen at exit), with its message on stdout: the last lines on
    # stderr must stay the script's error.
    with contextlib.redirect_stderr(out):
        bootstrap.deregister_at_exit()
    return "held"


def run_command(command: list[str], environ: Mapping[str, str] | None = None) -> int:
    """Start SSH, run ``command``; hold on a non-zero exit; return the command's code."""
    from sagemaker_ssh_helper import bootstrap

    environ = os.environ if environ is None else environ
    settings = contract.read(environ)
    seconds = settings.keep_alive_on_failure_seconds
    bootstrap.setup_and_start_ssh(environ, hold_on_failure=False, settings=settings)
    try:
        code, received = _call_forwarding(command)
    except OSError as e:
        print(f"[sagemaker-ssh-helper] ERROR: cannot run {command[0]}: {e}", file=sys.stderr,
              flush=True)
        code, received = 127, []
    # a stopped job (the command got our SIGTERM) is not held
    if code != 0 and seconds > 0 and not received and bootstrap.started_here():
        hold(seconds, f"{os.path.basename(command[0])} exited with code {code}")
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    import argparse

    from sagemaker_ssh_helper import cli
    from sagemaker_ssh_helper.errors import UsageError

    prog = "python -m sagemaker_ssh_helper.postmortem"

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(
            prog=prog, usage=f"{prog} [-v] -- COMMAND [ARG ...]",
            description="Run COMMAND; if it fails, hold the job for SSH before it ends.")
        cli.add_general_options(parser, aws=False)
        parser.add_argument("command", nargs="*", metavar="COMMAND [ARG ...]",
                            help=argparse.SUPPRESS)
        # our options end at `--` or at the first word that is not an option: everything
        # from there on is the command, its own options included
        args = cli.argv_or_sys(argv)
        split = next((i for i, a in enumerate(args) if a == "--" or not a.startswith("-")),
                     len(args))
        ours, to_run = args[:split], args[split + 1 if args[split:split + 1] == ["--"] else split:]
        command.parse(parser, ours)
        if not to_run:
            raise UsageError("expected a COMMAND to run after `--`")
        return run_command(to_run)

    return cli.guarded_main(prog, body, level=logging.INFO, debug_log=False,
                            fmt="%(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
