"""``sm-ssh config``: make plain ``ssh <name>.<kind>.sagemaker`` work (and IDEs using ssh).

We own one file, ``~/.ssh/sm-ssh/config``, rewritten whole on every run, and add one
``Include`` line at the top of ``~/.ssh/config`` (an Include placed after a ``Host`` block
would only apply inside it). With ``--inline`` the same host blocks go into ``~/.ssh/config``
itself, between marker lines, instead: paramiko (Fabric, and IDEs built on it) ignores
``Include``. Both edits are idempotent and made under a file lock; a symlinked
``~/.ssh/config`` stays a symlink (its target is edited).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sagemaker_ssh_helper import keys, portable
from sagemaker_ssh_helper.errors import UsageError
from sagemaker_ssh_helper.proxy import shell_command

HEADER = ("# Managed by `sm-ssh config` from ssh_config_template.txt: run it again to update; "
          "edits here are overwritten.\n")
BEGIN = "# >>> sm-ssh config >>> (written by `sm-ssh config --inline`; edits here are overwritten)"
END = "# <<< sm-ssh config <<<"
TEMPLATE = Path(__file__).resolve().parent / "ssh_config_template.txt"
# What --region/--profile may hold: they end up in a ProxyCommand line of ~/.ssh/config.
_REGION = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d+$")
_PROFILE = re.compile(r"^[A-Za-z0-9_.@+=,:/-]{1,128}$")


def config_path() -> Path:
    return keys.ssh_dir() / "sm-ssh" / "config"


def _python_prefix(python: str) -> list[str]:
    """How ssh (started from any directory) runs this package: plain ``python -m`` when it is
    installed, else with PYTHONPATH pointing at this checkout."""
    probe = subprocess.run([python, "-c", "import sagemaker_ssh_helper"], cwd="/",
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                           capture_output=True, check=False)
    if probe.returncode == 0:
        return [python]
    return ["env", f"PYTHONPATH={Path(__file__).resolve().parents[1]}", python]


def template_text() -> str:
    """``ssh_config_template.txt``: the one description of our ssh settings."""
    return TEMPLATE.read_text()


def _literal(path: str, suffix: str = "") -> str:
    """A path for an ssh_config value: ``%`` doubled, then ``suffix`` (which may hold
    ``%`` tokens), quoted as a whole when it holds blanks (as ssh and paramiko both read)."""
    value = path.replace("%", "%%") + suffix
    return f'"{value}"' if any(c.isspace() for c in value) else value


def check_options(profile: str | None, region: str | None) -> None:
    """Refuse values that would break the ProxyCommand line (or every ssh invocation)."""
    if region is not None and not _REGION.match(region):
        raise UsageError(f"--region {region!r} is not an AWS region name (e.g. eu-west-1)")
    if profile is not None and not _PROFILE.match(profile):
        raise UsageError(f"--profile {profile!r} is not a usable AWS profile name (letters, "
                         "digits and _.@+=,:/- only)")


def render(python: str | None = None, profile: str | None = None,
           region: str | None = None) -> str:
    """The template with its portable values made exact for this machine: the ssh directory
    (ssh reads ``~`` from the password database, which may not be ``$HOME``), and the
    ``sm-ssh`` command as this interpreter runs it (IDEs often lack the venv on PATH)."""
    check_options(profile, region)
    parts = [*_python_prefix(python or sys.executable), "-m", "sagemaker_ssh_helper.sm_ssh"]
    parts += ["--profile", profile] if profile else []
    parts += ["--region", region] if region else []
    ssh_dir = str(keys.ssh_dir())
    exact = {
        "IdentityFile": _literal(os.environ["SSH_KEY"]) if os.environ.get("SSH_KEY")
        else _literal(ssh_dir, "/%h"),
        "UserKnownHostsFile": _literal(str(keys.known_hosts_path())),
        "ProxyCommand": shell_command(parts) + " start-proxy %h --port %p",
        **_control_settings(),
    }
    lines = [HEADER]
    body = template_text().split("\n\n", 1)[1]  # drop the template's own header comment
    for line in body.splitlines():
        key = line.split(None, 1)[0] if line.strip() else ""
        if key in exact:
            line = f"{line[:len(line) - len(line.lstrip())]}{key} {exact[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _control_settings() -> dict[str, str]:
    """ControlMaster, ControlPath and ControlPersist as ``SM_SSH_REUSE`` says, with the
    socket directory made exact: off when reuse is off or no private directory's sockets
    would fit a Unix socket path (ssh refuses to run with a ControlPath too long)."""
    from sagemaker_ssh_helper import mux

    persist = mux.persist_seconds()
    directory = None if persist is None else mux.control_dir(keys.ssh_dir(), for_config=True)
    if persist is None or directory is None:
        return {"ControlMaster": "no", "ControlPath": "none", "ControlPersist": "no"}
    return {"ControlPath": _literal(str(directory), "/%C"),
            "ControlPersist": str(persist)}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock, portable.exclusive(lock):
        yield


def _without_ours(text: str, include: str) -> str:
    """The user's config without our Include line and without our inline block."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
        elif inside:
            inside = stripped != END
        elif stripped not in (include, include.replace('"', "")):
            kept.append(line)
    return "".join(kept).lstrip("\n")


def _include_line(path: Path) -> str:
    return f'Include "{path}"' if any(c.isspace() or c == '"' for c in str(path)) \
        else f"Include {path}"


def _ssh_home() -> str | None:
    """The home directory ssh uses for ``~`` (the password database), where known."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):  # Windows, or a uid without an entry
        return None


def home_warning() -> str | None:
    """A warning when ``$HOME`` is not the home ssh reads ``~/.ssh/config`` from."""
    home, ssh_home = str(Path.home()), _ssh_home()
    if ssh_home is None or os.path.realpath(home) == os.path.realpath(ssh_home):
        return None
    return (f"HOME={home}, but ssh reads ~/.ssh/config from {ssh_home} (the password "
            f"database): plain ssh will not see this configuration unless you pass "
            f"-F {keys.ssh_dir() / 'config'}")


def ensure_ssh_dir() -> Path:
    """``~/.ssh``, created with mode 0700 if missing."""
    ssh_dir = keys.ssh_dir()
    if not ssh_dir.is_dir():
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(ssh_dir, 0o700)  # mkdir's mode is filtered by the umask
    return ssh_dir


def install(profile: str | None = None, region: str | None = None,
            inline: bool = False) -> tuple[Path, bool]:
    """Write our host blocks and hook them into ~/.ssh/config; return (the file holding our
    blocks, whether ~/.ssh/config changed)."""
    text = render(profile=profile, region=region)
    ssh_dir = ensure_ssh_dir()
    ours = config_path()
    ours.parent.mkdir(mode=0o700, exist_ok=True)
    # Edit a symlink's target, so that the link (e.g. into a dotfiles repository) stays.
    user_config = Path(os.path.realpath(ssh_dir / "config"))
    include = _include_line(ours)
    with _locked(ssh_dir / ".sm-ssh-config.lock"):
        portable.write_file(ours, text, 0o600)
        before = user_config.read_text() if user_config.exists() else ""
        rest = _without_ours(before, include)
        if inline:
            block = text[len(HEADER):].strip("\n")
            after = f"{BEGIN}\n{block}\n{END}\n" + (f"\n{rest}" if rest else "")
        else:
            after = f"{include}\n" + (f"\n{rest}" if rest else "")
        if after == before:
            return (user_config if inline else ours), False
        mode = user_config.stat().st_mode & 0o777 if user_config.exists() else 0o600
        portable.write_file(user_config, after, mode)
    return (user_config if inline else ours), True
