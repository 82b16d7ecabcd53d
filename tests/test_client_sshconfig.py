"""`sm-ssh config`: the Include and --inline forms, what paramiko makes of them, and the
user's files (symlinks, modes, bad option values, a $HOME ssh does not read)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sagemaker_ssh_helper import sshconfig


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home dir"  # a blank in the path: the Include line must quote it
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_KEY", raising=False)
    return home


def sm_ssh_config(home: Path, *args: str) -> subprocess.CompletedProcess:
    env: dict[str, str] = dict(os.environ, HOME=str(home))
    return subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def ssh_g(config: Path, host: str) -> dict[str, str]:
    done = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True,
                          text=True, check=True)
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def test_creates_ssh_dir_0700_and_quotes_the_include(home: Path) -> None:
    old = os.umask(0o022)
    try:
        ours, changed = sshconfig.install()
    finally:
        os.umask(old)
    assert changed and stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700
    config = home / ".ssh" / "config"
    assert config.read_text().splitlines()[0] == f'Include "{ours}"'
    # ssh itself follows the quoted Include to our blocks
    assert ssh_g(config, "job.training.sagemaker")["user"] == "root"


def test_symlinked_config_stays_a_symlink(home: Path, tmp_path: Path) -> None:
    (home / ".ssh").mkdir(mode=0o700)
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "ssh_config").write_text("Host box\n    User me\n")
    (home / ".ssh" / "config").symlink_to(dotfiles / "ssh_config")
    ours, _ = sshconfig.install()
    link = home / ".ssh" / "config"
    assert link.is_symlink() and os.readlink(link) == str(dotfiles / "ssh_config")
    assert (dotfiles / "ssh_config").read_text().startswith(f'Include "{ours}"\n')
    assert "Host box\n    User me\n" in (dotfiles / "ssh_config").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--region", "eu-west-1\nHost *\n  ProxyCommand evil"], "not an AWS region name"),
    (["--region", "eu west 1"], "not an AWS region name"),
    (["--profile", "dev\nMatch all"], "not a usable AWS profile name"),
    (["--profile", "a b"], "not a usable AWS profile name"),
])
def test_bad_region_or_profile_changes_nothing(home: Path, args: list, needle: str) -> None:
    done = sm_ssh_config(home, "config", *args)
    assert done.returncode == 2 and needle in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not (home / ".ssh").exists()


def test_inline_blocks_for_paramiko_and_back_to_include(home: Path) -> None:
    paramiko = pytest.importorskip("paramiko")
    (home / ".ssh").mkdir(mode=0o700)
    config = home / ".ssh" / "config"
    config.write_text("Host box\n    User me\n")
    done = sm_ssh_config(home, "--region", "eu-west-1", "config", "--inline")
    assert done.returncode == 0, done.stderr
    assert sm_ssh_config(home, "config", "--inline", "--region", "eu-west-1").returncode == 0
    text = config.read_text()
    assert text.count(sshconfig.BEGIN) == 1 and text.count(sshconfig.END) == 1
    assert "Include" not in text and text.endswith("Host box\n    User me\n")
    parsed = paramiko.SSHConfig.from_path(str(config))
    # paramiko keeps the name's case in %h, ssh lowers it: SageMaker names are unique
    # regardless of case, so paramiko users type them in lower case.
    job = parsed.lookup("my-job.training.sagemaker")
    assert job["user"] == "root"
    assert job["identityfile"] == [f"{home}/.ssh/my-job.training.sagemaker"]
    # paramiko expands %h (lower case here: the name as ssh would pass it) and %p
    assert job["proxycommand"].endswith(
        "-m sagemaker_ssh_helper.sm_ssh --region eu-west-1 start-proxy "
        "my-job.training.sagemaker --port 22")
    assert parsed.lookup("app.dom.studio.sagemaker")["user"] == "sagemaker-user"
    assert parsed.lookup("box")["user"] == "me"
    assert ssh_g(config, "my-job.training.sagemaker")["user"] == "root"
    # without --inline: the block makes way for the Include line again
    assert sm_ssh_config(home, "config").returncode == 0
    text = config.read_text()
    assert sshconfig.BEGIN not in text and text.startswith('Include "')


def test_warns_when_home_is_not_where_ssh_looks(home: Path) -> None:
    done = sm_ssh_config(home, "config")
    assert done.returncode == 0
    import pwd

    ssh_home = pwd.getpwuid(os.getuid()).pw_dir
    assert f"ssh reads ~/.ssh/config from {ssh_home}" in done.stderr
    assert f"-F {home}/.ssh/config" in done.stderr
