"""The scripts users call by name (sm-local-*, sm-connect-ssh-proxy, sm-local-configure) and
the ssh config template: run for real through bash, without AWS."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sagemaker_ssh_helper import configure, fqdn, sm_local, sshconfig

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sagemaker_ssh_helper"
KIND_SCRIPTS = [f"sm-local-ssh-{k}" for k in ("training", "processing", "transform",
                                                "inference", "notebook", "ide")]
SCRIPTS = ["sm-local-start-ssh", "sm-connect-ssh-proxy", "sm-local-configure", *KIND_SCRIPTS]
# The local ports the documentation gives for each kind's sm-local-ssh-* script.
BASH = shutil.which("bash") or "/bin/bash"
DOCUMENTED_PORTS = {"training": 11022, "processing": 14022, "transform": 16022,
                    "inference": 12022, "notebook": 17022, "studio": 10022}


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return dict(os.environ, HOME=str(home), SM_SSH_PYTHON=sys.executable,
                PYTHONPATH=str(REPO))


def one_line(done: subprocess.CompletedProcess, code: int, prog: str, needle: str) -> None:
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"{prog}: "), done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_are_shellcheck_clean() -> None:
    done = subprocess.run(["shellcheck", "-S", "style", *(str(PACKAGE / s) for s in SCRIPTS)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_scripts_are_executable_and_installed_by_setup() -> None:
    for name in SCRIPTS:
        path = PACKAGE / name
        assert os.access(path, os.X_OK), name
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
    # setup.py installs every sagemaker_ssh_helper/sm-* file as a script.
    assert "glob(\"sm-*\")" in (REPO / "setup.py").read_text()


def test_documented_default_ports() -> None:
    assert {k.kind: k.default_port for k in fqdn.RESOURCE_KINDS} == DOCUMENTED_PORTS


@pytest.mark.parametrize("name", KIND_SCRIPTS)
def test_kind_scripts_explain_themselves(name: str, env: dict[str, str]) -> None:
    kind = name[len("sm-local-ssh-"):]
    port = DOCUMENTED_PORTS["studio" if kind == "ide" else kind]
    done = run([BASH, str(PACKAGE / name), "-h"], env)
    assert done.returncode == 0 and f"localhost:{port}" in done.stdout, done.stderr
    for command in ("connect", "proxy-host", "stop-waiting", "run-command"):
        assert command in done.stdout
    done = run([BASH, str(PACKAGE / name), "connect", "-h"], env)
    assert done.returncode == 0 and f"default {port}" in " ".join(done.stdout.split())


def test_proxy_scripts_explain_themselves(env: dict[str, str]) -> None:
    for name in ("sm-local-start-ssh", "sm-connect-ssh-proxy", "sm-local-configure"):
        done = run([BASH, str(PACKAGE / name), "--help"], env)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: {name} "), done.stderr


@pytest.mark.parametrize("argv, code, needle", [
    (["sm-local-start-ssh"], 2, "missing the target"),
    (["sm-local-start-ssh", "--bogus", "mi-1"], 2, "unknown option '--bogus'"),
    (["sm-local-start-ssh", "--proxy-setup-only", "x.training.sagemaker", "-N"], 2,
     "takes no ssh arguments"),
    (["sm-connect-ssh-proxy", "mi-0123456789abcdef0", "not-a-port"], 2, "not a port number"),
    (["sm-local-ssh-training", "connect", "a.processing.sagemaker"], 2,
     "is a processing job: use sm-local-ssh-processing"),
    (["sm-local-ssh-training", "connect", "bad name"], 2, "malformed name"),
    (["sm-local-ssh-training", "proxy-host", "a.training.sagemaker", "--", "ls"], 2,
     "only apply to connect"),
    (["sm-local-ssh-notebook", "frobnicate"], 2, "invalid choice"),
    # checked before anything is resolved or pushed (no AWS endpoint answers here)
    (["sm-local-ssh-training", "proxy-host", "a.training.sagemaker", "99999"], 2,
     "not a port number: '99999'"),
    (["sm-local-start-ssh", "--wait", "-5", "mi-0123456789abcdef0"], 2,
     "--wait: expected a number of seconds >= 0, got '-5'"),
    (["sm-local-ssh-training", "connect", "job", "--wait", "inf"], 2,
     "--wait: expected a number of seconds >= 0, got 'inf'"),
])
def test_bad_input_is_one_line(argv: list[str], code: int, needle: str,
                               env: dict[str, str]) -> None:
    done = run([BASH, str(PACKAGE / argv[0]), *argv[1:]], env)
    one_line(done, code, argv[0], needle)


def test_missing_tools_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_tools = dict(env, PATH=f"{empty}:{Path(sys.executable).parent}")
    done = run([BASH, str(PACKAGE / "sm-local-start-ssh"), "mi-0123456789abcdef0"], no_tools)
    one_line(done, 127, "sm-local-start-ssh", "session-manager-plugin not found on PATH")
    plugin = empty / "session-manager-plugin"
    plugin.write_text("#!/bin/sh\nexit 0\n")
    plugin.chmod(0o755)
    done = run([BASH, str(PACKAGE / "sm-local-ssh-training"), "connect", "job"], no_tools)
    one_line(done, 127, "sm-local-ssh-training", "ssh not found on PATH: install the OpenSSH")


def _tunnel_state(home: Path, port: int) -> None:
    state = home / ".ssh" / "sm-ssh" / f"tunnel-{port}.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"destination": "job.training.sagemaker", "user": "root",
                                 "key": str(home / ".ssh" / "k"),
                                 "known_hosts": str(home / ".ssh" / "kh"),
                                 "alias": "job.training.sagemaker", "instance_id": "mi-1"}))


@pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh not installed")
def test_run_command_needs_a_running_connect(env: dict[str, str]) -> None:
    script = [BASH, str(PACKAGE / "sm-local-ssh-training")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    done = run([*script, "run-command", "--local-port", str(port), "hostname"], env)
    one_line(done, 2, "sm-local-ssh-training",
             f"no `sm-local-ssh-training connect` has set up localhost:{port}")
    _tunnel_state(Path(env["HOME"]), port)
    done = run([*script, "stop-waiting", "--local-port", str(port)], env)
    one_line(done, 255, "sm-local-ssh-training", f"nothing listens on localhost:{port}: is "
                                                 "`sm-local-ssh-training connect "
                                                 "job.training.sagemaker` still running?")


def test_targets_of_each_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(domain_id=None, user_profile_name=None, space_name=None)
    assert sm_local.target_for("training", args, "Job-1") == "Job-1.training.sagemaker"
    assert sm_local.target_for("inference", args, "ep.inference.sagemaker") == \
        "ep.inference.sagemaker"
    assert sm_local.target_for("ide", args, "default") == "default.studio.sagemaker"
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO))
    ide = [BASH, str(PACKAGE / "sm-local-ssh-ide")]
    assert run([*ide, "set-domain-id", "d-abc"], env).returncode == 0
    assert run([*ide, "set-user-profile-name", "alice"], env).returncode == 0
    assert (tmp_path / ".sm-studio-domain-id").read_text() == "d-abc\n"
    assert sm_local.target_for("ide", args, "default") == "default.alice.d-abc.studio.sagemaker"
    spaces = argparse.Namespace(domain_id="d-x", user_profile_name=None, space_name="team")
    assert sm_local.target_for("ide", spaces, "app") == "app.team.d-x.studio.sagemaker"


# -- sm-local-configure ------------------------------------------------------------------------
def _bin(tmp_path: Path, *tools: str, plugin: bool = True) -> str:
    """A PATH holding only ``tools`` (linked from the system) and maybe a plugin stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    if plugin:
        stub = bin_dir / "session-manager-plugin"
        stub.write_text("#!/bin/sh\necho 1.2.707.0\n")
        stub.chmod(0o755)
    return f"{bin_dir}:{Path(sys.executable).parent}"


def configure_run(env: dict[str, str], path: str, *args: str) -> subprocess.CompletedProcess:
    return run([BASH, str(PACKAGE / "sm-local-configure"), *args], dict(env, PATH=path))


@pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh not installed")
def test_configure_detects_the_tools(env: dict[str, str], tmp_path: Path) -> None:
    done = configure_run(env, _bin(tmp_path, "ssh", "ssh-keygen"), "--check")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert f"session-manager-plugin: {tmp_path}/bin/session-manager-plugin (1.2.707.0)" \
        in done.stderr
    assert f"ssh: {tmp_path}/bin/ssh (OpenSSH" in done.stderr
    assert "ready; next: `sm-ssh config`" in done.stderr


def test_configure_check_names_what_is_missing(env: dict[str, str], tmp_path: Path) -> None:
    done = configure_run(env, _bin(tmp_path, "ssh", "ssh-keygen", plugin=False), "--check")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"sm-local-configure: session-manager-plugin not found on PATH: run "
        f"sm-local-configure to install it, or follow {configure.GUIDE}")
    done = configure_run(env, _bin(tmp_path / "x"), "--check")
    assert done.returncode == 1
    assert "sm-local-configure: ssh and ssh-keygen not found: apt-get install openssh-client" \
        in done.stderr.splitlines()[-1]


def test_configure_offline_download_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/plugin"
    path = _bin(tmp_path, "ssh", "ssh-keygen", "dpkg", "rpm", plugin=False)
    env = dict(env, SM_SSH_PLUGIN_DOWNLOADS=closed)
    done = configure_run(env, path)
    assert done.returncode == 1 and done.stdout == ""
    error = done.stderr.splitlines()[-1]
    saved = os.environ.get("PATH", "")
    try:  # what this machine would install, seen with the same PATH and mirror
        os.environ.update(PATH=path, SM_SSH_PLUGIN_DOWNLOADS=closed)
        package = configure.plugin_package()
    finally:
        os.environ["PATH"] = saved
        del os.environ["SM_SSH_PLUGIN_DOWNLOADS"]
    if package is None:
        assert error.startswith("sm-local-configure: cannot install session-manager-plugin "
                                "automatically on ")
    else:
        assert error.startswith(f"sm-local-configure: cannot download {package.url}: ")
        assert "download it on a machine with internet access" in error
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("system, arch, tools, url, install", [
    ("Darwin", "64bit", [], "mac/session-manager-plugin.pkg", "installer"),
    ("Darwin", "arm64", [], "mac_arm64/session-manager-plugin.pkg", "installer"),
    ("Linux", "64bit", ["dpkg"], "ubuntu_64bit/session-manager-plugin.deb", "dpkg"),
    ("Linux", "arm64", ["dpkg"], "ubuntu_arm64/session-manager-plugin.deb", "dpkg"),
    ("Linux", "64bit", ["rpm"], "linux_64bit/session-manager-plugin.rpm", "rpm"),
    ("Linux", "arm64", ["rpm"], "linux_arm64/session-manager-plugin.rpm", "rpm"),
])
def test_official_plugin_packages(system: str, arch: str, tools: list[str], url: str,
                                  install: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for tool in tools:
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SM_SSH_PLUGIN_DOWNLOADS", raising=False)
    package = configure.plugin_package(system, arch)
    assert package is not None
    assert package.url == f"{configure.DOWNLOADS}/{url}"
    assert package.url.startswith("https://s3.amazonaws.com/session-manager-downloads/")
    assert package.install[0] == install and "{file}" in package.install


def test_no_package_where_there_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert configure.plugin_package("Linux", "64bit") is None  # neither dpkg nor rpm
    assert configure.plugin_package("Windows", "64bit") is None


# -- the ssh config template -------------------------------------------------------------------
def test_sm_ssh_config_is_the_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One source of truth: `sm-ssh config` writes the template with exact paths and command."""
    tmp_path = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))  # ssh's sockets fit under it
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_KEY", raising=False)
    monkeypatch.delenv("SM_SSH_REUSE", raising=False)
    template = sshconfig.template_text()
    for line in ("Host *.studio.sagemaker\n    User sagemaker-user\n",
                 "Host *.*.sagemaker\n    User root\n", "    IdentityFile ~/.ssh/%h\n",
                 "    ProxyCommand sm-ssh start-proxy %h --port %p\n",
                 "    ServerAliveInterval 15\n", "    ServerAliveCountMax 4\n"):
        assert line in template
    rendered = sshconfig.render(python=sys.executable, region="eu-west-1")
    command = f"{sys.executable} -m sagemaker_ssh_helper.sm_ssh --region eu-west-1"
    if "PYTHONPATH=" in rendered:  # this checkout is not installed for that interpreter
        command = f"env PYTHONPATH={REPO} {command}"
    back = (rendered.replace(f"{tmp_path}/.ssh", "~/.ssh")
            .replace(f"ProxyCommand {command} start-proxy", "ProxyCommand sm-ssh start-proxy"))
    header, body = back.split("\n\n", 1)
    assert header.startswith("# Managed by `sm-ssh config`")
    assert body == template.split("\n\n", 1)[1]
    shutil.rmtree(tmp_path)
    # Reuse off, or a home whose socket paths would be too long for ssh: no sharing at all.
    monkeypatch.setenv("SM_SSH_REUSE", "off")
    assert "    ControlMaster no\n    ControlPath none\n    ControlPersist no\n" in \
        sshconfig.render(python=sys.executable)
    monkeypatch.setenv("SM_SSH_REUSE", "60")
    monkeypatch.setenv("HOME", f"/tmp/{'x' * 60}")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert "    ControlMaster no\n" in sshconfig.render(python=sys.executable)


@pytest.mark.parametrize("prog, argv, command, target", [
    ("ide", ["myapp"], "connect", "myapp"),  # the earlier bare form
    ("ide", ["--domain-id", "d-1", "--space-name=s", "myapp", "-N"], "connect", "myapp"),
    ("ide", ["connect-app", "myapp"], "connect-app", "myapp"),
    ("ide", ["set-jb-license-server", "lic.example.com"], "set-jb-license-server", None),
    ("training", ["connect-job", "my-job"], "connect-job", "my-job"),
    ("processing", ["connect", "my-job"], "connect", "my-job"),
])
def test_earlier_spellings_of_the_local_commands(prog: str, argv: list[str], command: str,
                                                 target: str) -> None:
    parser = sm_local.build_kind_parser(f"sm-local-ssh-{prog}", prog)
    head = sm_local._bare_app(parser, argv) if prog == "ide" else argv
    args = parser.parse_args(head)
    assert args.command == command and getattr(args, "target", None) == target
