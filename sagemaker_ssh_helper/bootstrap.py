"""``setup_and_start_ssh()``: what a training/processing/inference entry point calls first.

It reads the environment the launch-side wrappers set (``START_SSH``, ``SSH_INSTANCE_COUNT``,
``SSH_WAIT_TIME_SECONDS`` ...) once, through ``contract.read``, decides whether this node starts
SSH, and if so runs the ``sm-setup-ssh`` script shipped next to this module with the settings as
arguments (and the contract's variables normalised in its environment). That script starts sshd
and the SSM agent in the background and blocks in ``sm-wait`` for up to
``SSH_WAIT_TIME_SECONDS``, so the user can connect before the job's own code runs.

When it ends the process that started the setup deregisters the container's managed instance
(best effort), so stale registrations do not pile up in the account: at interpreter exit, and on
SIGTERM (what StopTrainingJob and friends send, and Python skips ``atexit`` for), after which
the signal takes its course (the previous handler, or death by SIGTERM). The setup's own agent
loop also deregisters when it is stopped, or when this process has ended in any other way
(e.g. killed). A container killed outright skips all of this; the admin tool
``sm-ssh-deregister-instances`` cleans up instances that went offline.

Setup failures are logged and the job continues without SSH rather than failing.
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_helper import contract
from sagemaker_ssh_helper.env import (
    MI_ID_FILE,
    SETUP_OWNER_FILE,
    node_rank,
    region,
    registered_instance_id,
)

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_INSTANCE_COUNT = contract.DEFAULT_INSTANCE_COUNT
_registered_exit_hook = False
_started = False  # this process ran the SSH setup successfully


def _say(level: int, message: str) -> None:
    contract.say(level, message, logger)


def should_start(settings: contract.Contract, environ: Mapping[str, str]) -> bool:
    """Whether this node starts SSH; logs the reason when it does not."""
    if settings.start_ssh is None:
        _say(logging.WARNING, "START_SSH is not set, so SSH is not started: was the wrapper's "
             "create() called before fit() / run() / deploy() / transform()?")
        return False
    if not settings.start_ssh:
        _say(logging.INFO, f"START_SSH={environ.get(contract.START_SSH)}: not starting SSH")
        return False
    count = settings.ssh_instance_count
    rank = node_rank(environ)
    if rank >= count:
        _say(logging.INFO, f"node rank {rank} >= SSH_INSTANCE_COUNT={count}: "
             "not starting SSH on this node")
        return False
    return True


def site_dirs() -> set[str]:
    """This interpreter's site-packages directories (resolved)."""
    import site

    dirs = list(getattr(site, "getsitepackages", list)())
    dirs.append(site.getusersitepackages())
    return {os.path.realpath(d) for d in dirs}


def _python_command(args: list[str], environ: Mapping[str, str]
                    ) -> tuple[list[str], dict[str, str]]:
    """Run this package with this interpreter, whether it is pip-installed or a plain folder.

    A plain folder's parent goes first on PYTHONPATH. A pip install needs nothing: putting
    site-packages on PYTHONPATH would leak into everything the setup starts (the SSM agent, SSH
    sessions, ``/etc/environment``) and into other Pythons there.
    """
    env = dict(environ)
    env["SM_SSH_PYTHON"] = sys.executable
    parent = str(PACKAGE_DIR.parent)
    if os.path.realpath(parent) not in site_dirs():
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([parent] + [p for p in paths if p != parent])
    return [sys.executable] + args, env


def setup_command(environ: Mapping[str, str], settings: contract.Contract | None = None
                  ) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``bash <package>/sm-setup-ssh <settings>``: the contract's
    variables normalised in the environment, the ones the script uses as arguments."""
    settings = contract.read(environ) if settings is None else settings
    _, env = _python_command([], settings.normalised(environ))
    env["SM_SSH_CALLER_PID"] = str(os.getpid())
    return ["bash", str(PACKAGE_DIR / "sm-setup-ssh"), *contract.setup_args(settings)], env


def sm_wait_command(seconds: int, environ: Mapping[str, str]
                    ) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``bash <package>/sm-wait <seconds>``."""
    _, env = _python_command([], environ)
    return ["bash", str(PACKAGE_DIR / "sm-wait"), str(int(seconds))], env


def setup_and_start_ssh(environ: Mapping[str, str] | None = None,
                        run: Callable[..., int] = subprocess.call,
                        hold_on_failure: bool = True,
                        settings: contract.Contract | None = None) -> None:
    """Start SSH if the environment asks for it; with ``hold_on_failure`` and
    ``SSH_KEEP_ALIVE_ON_FAILURE_SECONDS`` set, an uncaught exception later holds the container
    (``postmortem``). ``settings``: the contract already read from ``environ``."""
    global _started
    environ = os.environ if environ is None else environ
    settings = contract.read(environ, warn=_say) if settings is None else settings
    if not should_start(settings, environ):
        return
    argv, env = setup_command(environ, settings)
    _register_exit_hook()
    _say(logging.INFO, "starting SSH setup: " + " ".join(argv))
    rc = run(argv, env=env)
    if rc != 0:
        _say(logging.ERROR, f"sm-setup-ssh exited with code {rc}; the job continues without "
             "SSH (see the messages above)")
        return
    _started = True
    if hold_on_failure:
        from sagemaker_ssh_helper import postmortem

        postmortem.install(seconds=settings.keep_alive_on_failure_seconds)


def started_here() -> bool:
    """Whether this process ran the SSH setup successfully."""
    return _started


def _register_exit_hook() -> None:
    global _registered_exit_hook
    if not _registered_exit_hook:
        atexit.register(deregister_at_exit)
        _install_sigterm_hook()
        _registered_exit_hook = True


def _install_sigterm_hook() -> None:
    """Deregister on SIGTERM, then let the signal do what it did before: call the previous
    handler, or (the default) end the process by SIGTERM. An ignored SIGTERM stays ignored;
    only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        deregister_at_exit()
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def deregister_at_exit(owner_file: Path = SETUP_OWNER_FILE, mi_id_file: Path = MI_ID_FILE,
                       timeout: float = 60.0) -> str | None:
    """Deregister this container's managed instance if this process started the setup.

    Runs in a child interpreter: at exit this one can no longer start the threads boto3 needs.
    Returns the instance id it deregistered (None if there was nothing to do or it failed).
    """
    try:
        owner = int(owner_file.read_text().strip())
    except (OSError, ValueError):
        return None
    instance_id = registered_instance_id(mi_id_file)
    if owner != os.getpid() or not instance_id:
        return None
    argv, env = _python_command(["-m", "sagemaker_ssh_helper.bootstrap", "deregister",
                                 instance_id], os.environ)
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        _say(logging.WARNING, f"could not deregister {instance_id}: {e}")
        return None
    if proc.returncode != 0:
        reason = " ".join(proc.stderr.split())
        if reason.startswith(f"{_DEREGISTER_PROG}: "):  # the CLI frame's one line
            reason = reason[len(_DEREGISTER_PROG) + 2:]
        _say(logging.WARNING, f"could not deregister {instance_id}: {reason}")
        return None
    _say(logging.INFO, f"deregistered {instance_id} from SSM")
    try:
        mi_id_file.unlink()
    except OSError:
        pass
    return instance_id


def deregister(instance_id: str, environ: Mapping[str, str] | None = None) -> None:
    """``DeregisterManagedInstance``; an instance that is already gone counts as success."""
    import boto3

    from sagemaker_ssh_helper import aws

    region_name = region(os.environ if environ is None else environ)
    ssm = boto3.client("ssm", region_name=region_name,
                       config=aws.client_config(3, connect_timeout=5, read_timeout=10))
    aws.deregister_managed_instance(ssm, instance_id)


_DEREGISTER_PROG = "python -m sagemaker_ssh_helper.bootstrap"


def main(argv: list[str] | None = None) -> int:
    from sagemaker_ssh_helper import cli

    prog = _DEREGISTER_PROG

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(prog=prog, description="Container-side SSH helper tasks.")
        cli.add_general_options(parser, aws=False)
        sub = parser.add_subparsers(dest="action", required=True, metavar="deregister")
        deregister_parser = sub.add_parser(
            "deregister", help="deregister this container's SSM managed instance")
        cli.add_general_options(deregister_parser, top_level=False, aws=False)
        deregister_parser.add_argument("instance_id", metavar="mi-…")
        args = command.parse(parser, cli.argv_or_sys(argv))
        deregister(args.instance_id)
        return 0

    return cli.guarded_main(prog, body, debug_log=False, fmt="%(name)s: %(message)s",
                            aws_action="ssm:DeregisterManagedInstance")


if __name__ == "__main__":
    sys.exit(main())
