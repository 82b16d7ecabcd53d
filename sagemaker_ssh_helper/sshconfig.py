"""``sm-ssh config``: make plain ``ssh <name>.<kind>.sagemaker`` work (and IDEs using ssh).

We own one file, ``~/.ssh/sm-ssh/config``, rewritten whole on every run, and add one
``Include`` line at the top of ``~/.ssh/config`` (an Include placed after a ``Host`` block
would only apply inside it). Both edits are idempotent and made under a file lock.
"""
from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from sagemaker_ssh_helper import keys

HEADER = ("# Managed by `sm-ssh config` from ssh_config_template.txt: run it again to update; "
          "edits here are overwritten.\n")
TEMPLATE = Path(__file__).resolve().parent / "ssh_config_template.txt"


def config_path() -> Path:
    return keys.ssh_dir() / "sm-ssh" / "config"


def _quote(value: str) -> str:
    return shlex.quote(value).replace("%", "%%")


def _python_prefix(python: str) -> List[str]:
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


def _literal(path: str) -> str:
    """A path for an ssh_config value: ``%`` doubled, quoted when it holds blanks."""
    value = path.replace("%", "%%")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def render(python: Optional[str] = None, profile: Optional[str] = None,
           region: Optional[str] = None) -> str:
    """The template with its portable values made exact for this machine: the ssh directory
    (ssh reads ``~`` from the password database, which may not be ``$HOME``), and the
    ``sm-ssh`` command as this interpreter runs it (IDEs often lack the venv on PATH)."""
    parts = [*_python_prefix(python or sys.executable), "-m", "sagemaker_ssh_helper.sm_ssh"]
    parts += ["--profile", profile] if profile else []
    parts += ["--region", region] if region else []
    ssh_dir = str(keys.ssh_dir())
    exact = {
        "IdentityFile": _literal(os.environ.get("SSH_KEY") or ssh_dir) + (
            "" if os.environ.get("SSH_KEY") else "/%h"),
        "UserKnownHostsFile": _literal(str(keys.known_hosts_path())),
        "ProxyCommand": " ".join(_quote(p) for p in parts) + " start-proxy %n --port %p",
    }
    lines = [HEADER]
    body = template_text().split("\n\n", 1)[1]  # drop the template's own header comment
    for line in body.splitlines():
        key = line.split(None, 1)[0] if line.strip() else ""
        if key in exact:
            line = f"{line[:len(line) - len(line.lstrip())]}{key} {exact[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def install(profile: Optional[str] = None, region: Optional[str] = None) -> Tuple[Path, bool]:
    """Write our file and make sure ~/.ssh/config includes it; (our file, Include added)."""
    ours = config_path()
    ours.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    user_config = keys.ssh_dir() / "config"
    include = f"Include {ours}"
    with open(keys.ssh_dir() / ".sm-ssh-config.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write(ours, render(profile=profile, region=region), 0o600)
        text = user_config.read_text() if user_config.exists() else ""
        if any(line.strip() == include for line in text.splitlines()):
            return ours, False
        mode = user_config.stat().st_mode & 0o777 if user_config.exists() else 0o600
        _write(user_config, f"{include}\n" + (f"\n{text}" if text else ""), mode)
    return ours, True
