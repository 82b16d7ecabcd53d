"""``sm-save-env``: give SSH sessions the same environment as the SageMaker job.

SageMaker passes a job's settings (``SM_*`` variables, ``PATH`` of the framework's Python,
``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``, ...) to the entry point's process only; an SSH login
starts from a clean environment. This module writes the container's environment to two files:

``/etc/environment``
    Read by ``pam_env`` for every SSH session (``UsePAM yes``), with or without a shell and
    whatever the login shell. pam_env is not a shell: it has no escapes, cuts a line at the first
    ``#``, joins lines ending in ``\\``, and for a value starting with a quote character drops
    that first character and the line's last character if it is a quote, keeping everything else
    verbatim (older releases also read lines in 1 KiB pieces). A value is therefore written as
    ``KEY='value'`` (which bash reads identically, since single quotes are literal), or as
    ``KEY="value"`` when it contains ``'`` but nothing bash treats specially inside double
    quotes. Values that cannot be written so that both read them back exactly -- containing
    ``#``, a newline, both kinds of quote, or making a line longer than 1000 bytes -- are left
    out of this file rather than written corrupted.

``/etc/profile.d/sm-ssh-env.sh``
    Sourced by login shells (``ssh host`` without a command), after ``/etc/profile`` has reset
    ``PATH``. It holds every variable as ``export KEY='...'`` quoted for POSIX ``sh``, so values
    left out of ``/etc/environment`` (multi-line JSON such as ``SM_TRAINING_ENV``) arrive intact.

Per-session and per-process variables (``HOSTNAME``, ``PWD``, ``SHLVL``, ``TERM``, ``HOME``,
OpenSSH's ``SSH_CONNECTION``, the helper's ``SM_SSH_CALLER_PID`` ...) are not saved, and
``START_SSH`` is saved as ``false`` so that running the training script again inside an SSH
session does not start another SSH setup. The helper's own settings (``SSH_SSM_ROLE``,
``SSH_WAIT_TIME_SECONDS`` ...) are kept for reference.

Both files are world-readable (mode 0644), like the job's Environment, which anyone allowed to
describe the job can read; logins other than root also need to read them.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

ENVIRONMENT_FILE = Path("/etc/environment")
PROFILE_FILE = Path("/etc/profile.d/sm-ssh-env.sh")
MAX_PAM_LINE = 1000  # bytes; older pam_env reads 1024-byte chunks
HEADER = "# Written by sagemaker-ssh-helper (sm-save-env): the SageMaker job's environment.\n"

SESSION_VARIABLES = frozenset({
    "_", "BASH_ENV", "COLUMNS", "DISPLAY", "ENV", "HOME", "HOSTNAME", "LINES", "LOGNAME",
    "LS_COLORS", "MAIL", "MOTD_SHOWN", "OLDPWD", "PROMPT_COMMAND", "PS1", "PS2", "PS4", "PWD",
    "SHELL", "SHLVL", "STY", "TERM", "TMUX", "USER",
    "XDG_RUNTIME_DIR", "XDG_SESSION_CLASS", "XDG_SESSION_ID", "XDG_SESSION_TYPE",
    # set by OpenSSH for each session
    "SSH_AGENT_PID", "SSH_ASKPASS", "SSH_AUTH_SOCK", "SSH_CLIENT", "SSH_CONNECTION",
    "SSH_ORIGINAL_COMMAND", "SSH_TTY",
    # set by the helper for the setup process only
    "SM_SSH_CALLER_PID",
})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOUBLE_QUOTE_SPECIAL = set('"$`\\!')


def session_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to save, sorted by name, with ``START_SSH=false``."""
    saved = {k: v for k, v in environ.items()
             if _NAME_RE.match(k) and k not in SESSION_VARIABLES}
    saved["START_SSH"] = "false"
    return dict(sorted(saved.items()))


def pam_env_line(name: str, value: str) -> str | None:
    """``NAME='value'`` / ``NAME="value"`` that pam_env and bash both read as ``value``, or None."""
    if "#" in value or "\n" in value or "\r" in value:
        return None
    if "'" not in value:
        line = f"{name}='{value}'"
    elif not _DOUBLE_QUOTE_SPECIAL & set(value):
        line = f'{name}="{value}"'
    else:
        return None
    if len(line.encode(errors="surrogateescape")) > MAX_PAM_LINE:
        return None
    return line


def environment_text(env: Mapping[str, str]) -> str:
    lines: list[str] = []
    skipped: list[str] = []
    for name, value in env.items():
        line = pam_env_line(name, value)
        if line is None:
            skipped.append(name)
        else:
            lines.append(line)
    header = HEADER
    if skipped:
        header += (f"# Only in {PROFILE_FILE} (not representable here): "
                   f"{' '.join(skipped)}\n")
    return header + "".join(f"{line}\n" for line in lines)


def profile_text(env: Mapping[str, str]) -> str:
    return HEADER + "".join(f"export {name}={shlex.quote(value)}\n"
                            for name, value in env.items())


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` atomically; write in place if it is a mount point (e.g. a bind mount)."""
    data = text.encode(errors="surrogateescape")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        try:
            os.replace(tmp, path)
            return
        except OSError as e:  # EBUSY/EXDEV: a file bind-mounted into the container
            logger.debug("cannot rename over %s (%s); writing in place", path, e)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(environ: Mapping[str, str], environment_file: Path = ENVIRONMENT_FILE,
         profile_file: Path = PROFILE_FILE) -> dict[str, str]:
    env = session_environment(environ)
    write_file(environment_file, environment_text(env))
    write_file(profile_file, profile_text(env))
    return env


def main(argv: list[str] | None = None) -> int:
    from sagemaker_ssh_helper import cli

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(
            prog="sm-save-env",
            description="Save this container's environment for SSH sessions.")
        cli.add_general_options(parser, aws=False)
        parser.add_argument("--environment-file", type=Path, default=ENVIRONMENT_FILE)
        parser.add_argument("--profile-file", type=Path, default=PROFILE_FILE)
        args = command.parse(parser, cli.argv_or_sys(argv))
        try:
            env = save(os.environ, args.environment_file, args.profile_file)
        except OSError as e:
            print(f"sm-save-env: cannot write the environment: {e} (run as root)",
                  file=sys.stderr)
            return 1
        print(f"sm-save-env: saved {len(env)} variables to {args.environment_file} "
              f"and {args.profile_file}", file=sys.stderr)
        return 0

    return cli.guarded_main("sm-save-env", body, debug_log=False,
                            fmt="sm-save-env: %(levelname)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
