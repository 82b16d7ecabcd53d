"""sm-save-env: the files SSH sessions read the job's environment from.

The values are read back the three ways sessions read them: by a line-for-line model of
pam_env's /etc/environment parser, by bash sourcing /etc/environment, and by sh/bash sourcing
the profile.d script. (test_container_setup.py also logs in through a real sshd + PAM.)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sagemaker_ssh_helper.save_env import pam_env_line, save, session_environment

TRICKY = {
    "PLAIN": "value",
    "SPACES": "  a value with  spaces  ",
    "SINGLE": "it's",
    "DOUBLE": 'say "hi"',
    "BOTH": """it's "both" """,
    "DOLLAR": "$HOME and `date` and \\n",
    "SINGLE_DOLLAR": "it's $HOME",
    "HASH": "a#b",
    "NEWLINES": "line 1\nline 2\n",
    "JSON": json.dumps({"hosts": ["algo-1"], "hp": {"lr": "0.1", "note": "x y"}}),
    "EMPTY": "",
    "TRAILING_BACKSLASH": "C:\\",
    "LONG": "x" * 1200,
    "UNICODE": "naïve ☃",
}
SESSION_ONLY = {"HOSTNAME": "algo-1", "PWD": "/opt/ml/code", "SHLVL": "2", "_": "/usr/bin/env",
                "TERM": "xterm", "OLDPWD": "/", "HOME": "/root",
                "SSH_CONNECTION": "1 2 3 4", "SSH_CLIENT": "1 2 3", "SM_SSH_CALLER_PID": "42"}


def pam_env_read(text: str) -> dict[str, str]:
    """What pam_env makes of an /etc/environment file (linux-pam's _parse_env_file)."""
    lines, pending = [], ""
    for raw in text.splitlines(keepends=True):
        stripped = raw.lstrip(" \t\n")
        if not stripped or (not pending and stripped.startswith("#")):
            continue
        line = pending + raw.split("#", 1)[0]
        if "#" not in raw and line.rstrip(" \t\n").endswith("\\"):
            pending = line.rstrip(" \t\n")[:-1]
            continue
        pending = ""
        lines.append(line)
    result: dict[str, str] = {}
    for line in lines:
        key = line.lstrip(" \n\t")
        if key.startswith("export "):
            key = key[7:]
        key = re.match(r"[^\n#]*", key).group(0)  # type: ignore[union-attr]
        name, sep, value = key.partition("=")
        if not name or not re.fullmatch(r"[A-Za-z0-9_]+", name) or not sep:
            continue
        if value[:1] in ("'", '"'):
            body = value[1:]
            value = "".join(c for i, c in enumerate(body)
                            if c not in "'\"" or i != len(body) - 1)
        result[name] = value
    return result


def dump_env(shell_code: str, shell: str = "bash") -> dict[str, str]:
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    script = f"{shell_code}\n{sys.executable} -c '{code}'"
    out = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", shell, "-c", script],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.fixture
def saved(tmp_path: Path) -> dict[str, Path]:
    files = {"environment": tmp_path / "environment", "profile": tmp_path / "sm-ssh-env.sh"}
    save({**TRICKY, **SESSION_ONLY, "START_SSH": "true"}, files["environment"], files["profile"])
    return files


def test_pam_env_reads_every_value_it_is_given_exactly(saved: dict[str, Path]) -> None:
    read = pam_env_read(saved["environment"].read_text())
    written = {k: v for k, v in TRICKY.items() if k in read}
    assert read == {**written, "START_SSH": "false"}
    # what pam_env cannot represent is left out rather than written corrupted
    assert set(TRICKY) - set(read) == {"BOTH", "SINGLE_DOLLAR", "HASH", "NEWLINES", "LONG"}


def test_bash_reads_etc_environment_the_same_way(saved: dict[str, Path]) -> None:
    expected = pam_env_read(saved["environment"].read_text())
    seen = dump_env(f"set -a; . {saved['environment']}")
    assert {k: seen.get(k) for k in expected} == expected


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_profile_script_restores_every_value(saved: dict[str, Path], shell: str) -> None:
    seen = dump_env(f". {saved['profile']}", shell)
    assert {k: seen.get(k) for k in TRICKY} == TRICKY
    assert seen["START_SSH"] == "false"


def test_session_variables_are_not_saved(saved: dict[str, Path]) -> None:
    for path in saved.values():
        text = path.read_text()
        for name in SESSION_ONLY:
            assert not re.search(rf"^(export )?{name}=", text, re.M), (name, path)


def test_session_environment_keeps_the_helper_settings() -> None:
    env = session_environment({"SSH_SSM_ROLE": "r", "SSH_TTY": "/dev/pts/0", "A-B": "x",
                               "START_SSH": "true"})
    assert env == {"SSH_SSM_ROLE": "r", "START_SSH": "false"}


def test_line_format() -> None:
    assert pam_env_line("A", "x y") == "A='x y'"
    assert pam_env_line("A", 'it\'s "x"') is None
    assert pam_env_line("A", "it's") == 'A="it\'s"'
    assert pam_env_line("A", "it's!") is None  # history expansion in interactive bash


def test_files_are_replaced_and_readable(saved: dict[str, Path]) -> None:
    save({"ONLY": "1"}, saved["environment"], saved["profile"])
    assert pam_env_read(saved["environment"].read_text()) == {"ONLY": "1", "START_SSH": "false"}
    for path in saved.values():
        assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in saved["environment"].parent.iterdir() if p.name.startswith(".")] == []


def test_cli_writes_the_files(tmp_path: Path) -> None:
    environment, profile = tmp_path / "e", tmp_path / "p.sh"
    proc = subprocess.run(
        [sys.executable, "-m", "sagemaker_ssh_helper.save_env", "--environment-file",
         str(environment), "--profile-file", str(profile)],
        env={**os.environ, "SM_TRAINING_ENV": '{"a": 1}'}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert pam_env_read(environment.read_text())["SM_TRAINING_ENV"] == '{"a": 1}'
    assert proc.stdout == ""


def test_cli_fails_in_one_line_when_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "sagemaker_ssh_helper.save_env", "--environment-file",
         str(blocker / "environment"), "--profile-file", str(tmp_path / "p.sh")],
        capture_output=True, text=True)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("sm-save-env: cannot write the environment:")
