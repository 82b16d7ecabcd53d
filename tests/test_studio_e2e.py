"""Studio end to end in the offline sandbox: an emulated JupyterLab app in a space runs
``kernel-lc-config.sh`` (the lifecycle configuration) as ``sagemaker-user``, a second app runs
``SageMaker_SSH_IDE.ipynb`` cell by cell as ``sagemaker-user`` (its install cell from a wheel of
the checkout), a notebook instance runs ``SageMaker_SSH_Notebook.ipynb``; the laptop side connects
with ``sm-ssh``. One sandbox for the module."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable, TypeVar

import ide_support
import pytest
from conftest import SANDBOX_E2E, free_port, run, sm_ssh

from sagemaker_ssh_sandbox import Sandbox
from sagemaker_ssh_sandbox.sagemaker.studio import exec_argv

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sagemaker_ssh_helper"
IDE = str(PACKAGE / "sm-ssh-ide")
VERSION = (PACKAGE / "VERSION").read_text().strip()
APP_USER = "sagemaker-user"
HAVE_SUDO = shutil.which("sudo") is not None
NEEDS_SUDO = pytest.mark.skipif(
    not HAVE_SUDO, reason="no sudo on this machine (apt-get install sudo; `scripts/setup test` "
                          "installs it): Studio's sagemaker-user runs sm-ssh-ide through sudo")

JUPYTER_LOG = "/var/log/sagemaker-ssh-helper/jupyter-server.log"
pytestmark = SANDBOX_E2E
T = TypeVar("T")


@dataclass
class Studio:
    sandbox: Sandbox
    env: dict[str, str]
    domain: str
    app_root: Path
    owner: str
    space: str = "sp1"
    app: str = "default"
    lc_user: str = "root"  # who ran the lifecycle configuration or the notebook

    @property
    def fqdn(self) -> str:
        return f"{self.app}.{self.space}.{self.domain}.studio.sagemaker"

    @property
    def spec_env(self) -> dict[str, str]:
        env: dict[str, str] = json.loads((self.app_root / "spec.json").read_text())["env"]
        return env

    def in_app(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120,
               user: str = "root", input: str | None = None) -> subprocess.CompletedProcess:
        """``argv`` in the app as root or (through runuser, as a login would) as ``user``."""
        command = ["env", *[f"{k}={v}" for k, v in (env or {}).items()], *argv]
        if user != "root":
            command = ["runuser", "-u", user, "--", *command]
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run(exec_argv(self.app_root, command), capture_output=True,
                              text=True, timeout=timeout, check=False, **stdin)

    def wait_for_user(self, user: str) -> None:
        poll(lambda: self.in_app("id", "-u", user).returncode == 0 or None,
             f"the app never created {user}", timeout=30)


def poll(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """``check()``'s first result other than None (exceptions count as None), within timeout."""
    deadline, delay, last = time.monotonic() + timeout, 0.05, None
    while True:
        try:
            result = check()
            if result is not None:
                return result
        except (OSError, ValueError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (last error: {last})")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def tunnel(app: Studio, *options: str, target: str = "") -> Iterator[subprocess.Popen]:
    """``sm-ssh connect <app> -N <options>`` in the background for the block."""
    proc = subprocess.Popen(sm_ssh("connect", target or app.fqdn, "-N", *options), env=app.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def alive(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"sm-ssh connect ended: {proc.stderr.read() if proc.stderr else ''}")


def create_app(sandbox: Sandbox, domain: str, space: str, app: str) -> Path:
    sm = sandbox.client("sagemaker")
    sm.create_space(DomainId=domain, SpaceName=space)
    sm.create_app(DomainId=domain, SpaceName=space, AppType="JupyterLab", AppName=app)
    return sandbox.state_dir.root / "jobs" / "studio" / domain / f"{space}-{app}"


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    tmp = tmp_path_factory.mktemp("studio-e2e")
    with Sandbox(tmp / "sandbox", stop_grace=3.0) as sandbox:
        sm = sandbox.client("sagemaker")
        arn = sm.create_domain(DomainName="lab", AuthMode="IAM", SubnetIds=["subnet-1"],
                               VpcId="vpc-1",
                               DefaultUserSettings={"ExecutionRole": sandbox.role_arn}
                               )["DomainArn"]
        domain = arn.rsplit("/", 1)[-1]
        root = create_app(sandbox, domain, "sp1", "default")
        owner = sandbox.client("sts").get_caller_identity()["UserId"]
        (tmp / "home").mkdir()
        env = dict(os.environ, **sandbox.env, HOME=str(tmp / "home"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO))
                                            if p)
        world = Studio(sandbox, env, domain, root, owner)
        world.wait_for_user(APP_USER)
        yield world


@pytest.fixture(scope="module")
def configured(studio: Studio) -> Studio:
    """The lifecycle configuration has run, as sagemaker-user (as in JupyterLab spaces) where
    sudo is installed, else as root."""
    studio.lc_user = APP_USER if HAVE_SUDO else "root"
    done = studio.in_app("bash", str(REPO / "kernel-lc-config.sh"), user=studio.lc_user,
                         env={"LOCAL_USER_ID": studio.owner, "SM_SSH_IDE": IDE})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sm-ssh connect {studio.fqdn}" in done.stdout
    return studio


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This version's wheel, for the notebooks' ``%pip install`` (there is no index)."""
    from sagemaker_ssh_helper import dist

    out = tmp_path_factory.mktemp("wheels")
    dist.build_wheel(out)
    return out


@pytest.fixture(scope="module")
def staged(studio: Studio) -> str:
    """``sm-ssh stage-wheel`` on the laptop: this version's wheel in the account's SageMaker
    bucket; the SM_SSH_PACKAGE=s3://... value it prints."""
    done = run(sm_ssh("stage-wheel"), studio.env)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    account = studio.sandbox.client("sts").get_caller_identity()["Account"]
    url = (f"s3://sagemaker-{studio.sandbox.region}-{account}/sagemaker-ssh-helper/"
           f"sagemaker_ssh_helper-{VERSION}-py3-none-any.whl")
    assert line == f"SM_SSH_PACKAGE={url}", done.stdout
    assert "lifecycle configuration" in done.stderr
    return url


def kernel_environment(app: Studio, user: str) -> dict[str, str]:
    """A kernel's Python environment in the app (a venv over the image's Python, which has
    the dependencies), first on PATH as in Studio images; pip works offline only."""
    kernel = f"{'/root' if user == 'root' else '/home/' + user}/kernel-env"
    spec_env = app.spec_env
    made = app.in_app(spec_env["SM_SSH_PYTHON"], "-m", "venv", "--without-pip",
                      "--system-site-packages", kernel, user=user)
    assert made.returncode == 0, made.stderr
    return {"PATH": f"{kernel}/bin:{spec_env['PATH']}", "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "SM_SSH_PYTHON": f"{kernel}/bin/python"}


def run_notebook(app: Studio, name: str, user: str, wheels: Path, package: str = ""
                 ) -> subprocess.CompletedProcess:
    """Every code cell of notebook ``name``, in order, in a kernel environment of ``user`` in
    the app, with ``LOCAL_USER_ID`` set in its cell to the laptop's UserId (and
    ``SM_SSH_PACKAGE`` to ``package``, if given)."""
    tmp = app.app_root / "tmp"  # the app's /tmp
    shutil.copytree(wheels, tmp / "wheels", dirs_exist_ok=True)
    (tmp / "wheels").chmod(0o755)  # readable by the app's user, as a shared wheelhouse
    notebook = ide_support.set_variable(json.loads((REPO / name).read_text()), "LOCAL_USER_ID",
                                        app.owner)
    (tmp / name).write_text(json.dumps(notebook))
    if package:
        notebook = ide_support.set_variable(notebook, "SM_SSH_PACKAGE", package)
        (tmp / name).write_text(json.dumps(notebook))
    kernel = f"{'/root' if user == 'root' else '/home/' + user}/kernel-env"
    # The image already has the dependencies (boto3, the SageMaker SDK), so --no-deps;
    # --force-reinstall puts our wheel into the kernel's environment even where the
    # interpreter's own site-packages has the package already (e.g. an editable checkout).
    kernel_env = dict(kernel_environment(app, user), PIP_FIND_LINKS="/tmp/wheels",
                      PIP_FORCE_REINSTALL="1")
    kernel_env.pop("SM_SSH_PYTHON")
    done = app.in_app("env", "-u", "SM_SSH_PYTHON", f"{kernel}/bin/python",
                      str(Path(ide_support.__file__).resolve()), "run-notebook", f"/tmp/{name}",
                      env=kernel_env, user=user, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "--- ran" in done.stdout
    link = app.in_app("readlink", "/usr/local/bin/sm-ssh-ide").stdout.strip()
    assert link == f"{kernel}/bin/sm-ssh-ide", "the %pip cell did not install into the kernel"
    return done


def test_studio_api_describes_the_app(studio: Studio) -> None:
    sm = studio.sandbox.client("sagemaker")
    app = sm.describe_app(DomainId=studio.domain, SpaceName="sp1", AppType="JupyterLab",
                          AppName="default")
    assert app["Status"] == "InService"
    assert app["AppArn"].endswith(f":app/{studio.domain}/sp1/jupyterlab/default")
    assert "sp1" in [s["SpaceName"] for s in sm.list_spaces(DomainIdEquals=studio.domain)["Spaces"]]
    meta = json.loads(studio.in_app("cat", "/opt/ml/metadata/resource-metadata.json").stdout)
    assert meta["SpaceName"] == "sp1" and meta["ResourceArn"] == app["AppArn"]


def test_execution_role_falls_back_to_the_studio_api(studio: Studio) -> None:
    from sagemaker_ssh_helper.ide_container import execution_role

    region = studio.sandbox.region
    meta = {"ResourceArn": f"arn:aws:sagemaker:{region}:123456789012:app/{studio.domain}/sp1/"
                           "jupyterlab/default", "DomainId": studio.domain, "SpaceName": "sp1"}
    with studio.sandbox.activated():
        assert execution_role(meta) == studio.sandbox.role_arn


def test_ide_metadata_in_the_app(studio: Studio) -> None:
    assert studio.in_app("bash", IDE, "get-domain-id").stdout.strip() == studio.domain
    assert studio.in_app("bash", IDE, "get-app-space-name").stdout.strip() == "sp1"


@NEEDS_SUDO
def test_app_user_has_passwordless_sudo_in_the_app_only(studio: Studio) -> None:
    done = studio.in_app("sudo", "-n", "id", "-un", user=APP_USER)
    assert done.returncode == 0 and done.stdout.strip() == "root", done.stderr
    assert not Path(f"/etc/sudoers.d/{APP_USER}").exists()  # the host's /etc is untouched


def test_connect_as_sagemaker_user(configured: Studio) -> None:
    done = run(sm_ssh("connect", configured.fqdn, "--", "whoami"), configured.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "sagemaker-user"


@NEEDS_SUDO
def test_lifecycle_config_run_by_sagemaker_user_reexecs_as_root(configured: Studio) -> None:
    assert configured.lc_user == APP_USER
    owners = configured.in_app("stat", "-c", "%U", "/opt/sagemaker-ssh-helper/.ssh-configured",
                               "/opt/sagemaker-ssh-helper/local-user-id", "/run/sshd.pid")
    assert owners.stdout.split() == ["root"] * 3, owners.stderr


def test_connect_by_app_name_only(configured: Studio) -> None:
    done = run(sm_ssh("connect", "default.studio.sagemaker", "--", "id -un"), configured.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "sagemaker-user"


def test_what_cannot_come_fails_in_seconds(configured: Studio, tmp_path: Path) -> None:
    """A mistyped app, in any FQDN form or through a saved domain without a user profile,
    fails at once with the hint (the wait would be 900 s); the saved domain finds the app's
    space by itself."""
    domain = configured.domain
    for fqdn, needle in ((f"defualt.sp1.{domain}.studio.sagemaker",
                          f"no SageMaker Studio app defualt of sp1 in domain {domain} in "),
                         ("defualt.studio.sagemaker", "no SageMaker Studio app defualt in ")):
        done = run(sm_ssh("connect", fqdn, "--wait", "900", "--", "true"), configured.env,
                   timeout=60)
        assert (done.returncode, done.stdout) == (3, ""), done.stderr
        assert done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr
    (tmp_path / ".sm-studio-domain-id").write_text(f"{domain}\n")  # and no user profile
    env = dict(configured.env, HOME=str(tmp_path))
    ide = ["bash", str(PACKAGE / "sm-local-ssh-ide")]
    done = run([*ide, "connect", "defualt", "--wait", "900"], env, timeout=60)
    assert (done.returncode, done.stderr.count("\n")) == (3, 1), done.stderr
    assert f"no running Studio app defualt in domain {domain} " in done.stderr
    done = run([*ide, "connect", "default", "--ssh-only", "--local-port", str(free_port()),
                "--", "id", "-un"], env)
    assert (done.returncode, done.stdout.splitlines()[-1:]) == (0, [APP_USER]), done.stderr


def test_list_one_space_of_a_domain(configured: Studio) -> None:
    done = run(sm_ssh("list", f"sp1.{configured.domain}.studio.sagemaker"), configured.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert configured.fqdn in done.stdout


def test_list_studio_shows_the_app_online(configured: Studio) -> None:
    done = run(sm_ssh("list", "studio.sagemaker"), configured.env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "default" in line]
    assert lines and "Online" in lines[0], done.stdout


def test_ide_status_after_setup(configured: Studio) -> None:
    done = configured.in_app("bash", IDE, "status")
    assert done.returncode == 0, done.stderr
    assert f"local user id (SSHOwner): {configured.owner}" in done.stdout
    assert "managed instance: mi-" in done.stdout


def test_sshide_finds_and_manages_apps(configured: Studio) -> None:
    from sagemaker_ssh_helper.ide import SSHIDE

    with configured.sandbox.activated():
        ide = SSHIDE(configured.domain, space_name="sp1", region_name=configured.sandbox.region)
        assert ide.get_app_status("default", "JupyterLab").is_in_service()
        assert len(ide.get_instance_ids("default", timeout_in_sec=30)) == 1
        assert ide.fqdn("default") == configured.fqdn
        assert ide.create_and_attach_app("scratch", "CodeEditor").is_in_service()
        ide.delete_app("scratch", "CodeEditor")
        assert ide.get_app_status("scratch", "CodeEditor").is_deleted()
        assert ide.get_app_status("missing", "JupyterLab").is_deleted()

        # SSH Helper v2's calls: kernel apps, kernel instance ids, the joined listing
        image = f"arn:aws:sagemaker:{ide.region_name}:123456789012:image/sagemaker-base-python"
        assert ide.create_ssh_kernel_app("ssh-kgw", image, "ml.t3.medium").is_in_service()
        with pytest.raises(ValueError, match="pass recreate=True"):
            ide.create_ssh_kernel_app("ssh-kgw", image)
        ide.delete_kernel_app("ssh-kgw")
        assert ide.get_app_status("ssh-kgw").is_deleted()
        ids = ide.get_kernel_instance_ids("default", 30)
        assert ide.get_kernel_instance_id("default", 30) == ids[0]
        from sagemaker_ssh_helper.interactive_sagemaker import InteractiveSageMaker, SageMaker
        from sagemaker_ssh_helper.manager import SSMManager

        region = configured.sandbox.region
        interactive = InteractiveSageMaker(SageMaker(region), SSMManager(region, progress=None))
        apps = {a.fqdn(): a for a in interactive.list_studio_ide_apps_for_user_and_domain(
            configured.domain, "sp1")}
        assert apps[configured.fqdn].ssm_instance_id == ids[0]
        assert apps[configured.fqdn].ping_status == "Online"
        assert str(apps[configured.fqdn]).split()[:3] == ["Online", "JupyterLab", "InService"]


def test_ide_wrapper_attach_connects_as_sagemaker_user(configured: Studio,
                                                       tmp_path: Path) -> None:
    import boto3
    import sagemaker

    from sagemaker_ssh_helper.wrapper import SSHIDEWrapper

    with configured.sandbox.activated():
        os.environ["HOME"] = str(tmp_path)
        session = sagemaker.Session(boto_session=boto3.Session(
            region_name=configured.sandbox.region))
        wrapper = SSHIDEWrapper.attach(configured.domain, "sp1", "default",
                                       sagemaker_session=session)
        ids = wrapper.get_instance_ids(timeout_in_sec=30)
        assert len(ids) == 1 and ids[0].startswith("mi-")
        assert f"sm-ssh connect {configured.fqdn}" in wrapper.print_ssh_info(30)
        with wrapper.start_ssm_connection(free_port(), timeout_in_sec=30) as proxy:
            assert proxy.run_command_with_output("whoami").strip() == b"sagemaker-user"


class _Reply(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"license-ok\n")


def test_jb_license_server_maps_the_host_in_the_app_and_reaches_the_laptop(
        configured: Studio) -> None:
    host = "jb-license.example.test"
    hosts_before = Path("/etc/hosts").read_bytes()
    for _ in range(2):
        done = configured.in_app("bash", IDE, "set-jb-license-server", host,
                                 user=configured.lc_user)
        assert done.returncode == 0, done.stderr
    lines = configured.in_app("cat", "/etc/hosts").stdout.splitlines()
    assert lines.count(f"127.0.0.1 {host}") == 1, lines
    assert Path("/etc/hosts").read_bytes() == hosts_before
    # The laptop's license server answers on the app's <host>:443 through ssh -R (as root:
    # binding port 443 in the app needs it).
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Reply) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            read = "bash -c " + shlex.quote(
                f"for _ in $(seq 100); do exec 3<>/dev/tcp/{host}/443 && break; sleep 0.1; "
                "done; head -c 11 <&3")
            done = run(sm_ssh("connect", configured.fqdn, "-l", "root", "-o",
                              "ExitOnForwardFailure=yes", "-R",
                              f"443:127.0.0.1:{server.server_address[1]}", "--", read),
                       configured.env)
            assert done.returncode == 0, done.stderr[-3000:]
            assert done.stdout.strip().splitlines()[-1] == "license-ok"
            # The laptop side as the earlier documents have it: the license server saved once,
            # then `sm-local-ssh-ide <app>` (the bare form) adds the -R forward, as root.
            local = [sys.executable, "-m", "sagemaker_ssh_helper.sm_local", "sm-local-ssh-ide"]
            saved = run([*local, "set-jb-license-server",
                         f"127.0.0.1:{server.server_address[1]}"], configured.env)
            assert saved.returncode == 0, saved.stderr
            done = run([*local, "default", "--local-port", str(free_port()), "--ssh-only",
                        "-o", "ExitOnForwardFailure=yes", "--", read], configured.env)
        finally:
            server.shutdown()
            (Path(configured.env["HOME"]) / ".sm-jb-license-server").unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "license-ok"


def test_lifecycle_config_installs_the_staged_wheel_and_refuses_upstream(
        studio: Studio, staged: str) -> None:
    """kernel-lc-config.sh in a fresh app without the package: pointed at the public index
    (no 3.x there: offline here) it fails in one line and installs nothing; with the line
    `sm-ssh stage-wheel` printed it installs this version from S3, and the laptop connects."""
    root = create_app(studio.sandbox, studio.domain, "sp3", "lcc")
    app = Studio(studio.sandbox, studio.env, studio.domain, root, studio.owner, space="sp3",
                 app="lcc")
    app.wait_for_user(APP_USER)
    env = dict(kernel_environment(app, "root"), LOCAL_USER_ID=studio.owner)
    lcc = ["bash", str(REPO / "kernel-lc-config.sh")]
    refused = app.in_app(*lcc, env=dict(env, SM_SSH_PACKAGE="sagemaker-ssh-helper"))
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        "kernel-lc-config.sh: ERROR: pip could not install sagemaker-ssh-helper as "
        "sagemaker-ssh-helper 3.x: set SM_SSH_PACKAGE to the s3:// URL that 'sm-ssh "
        "stage-wheel' prints on your laptop")
    assert app.in_app("sh", "-c", "command -v sm-ssh-ide", env=env).returncode != 0
    done = app.in_app(*lcc, env=dict(env, SM_SSH_PACKAGE=staged), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sm-ssh connect {app.fqdn}" in done.stdout
    check = app.in_app("sh", "-c", "command -v sm-ssh-ide; python -m sagemaker_ssh_helper.dist "
                       "check; ls \"$(python -c 'import sys; print(sys.prefix)')/sm_ssh\"",
                       env=env)
    assert check.stdout.split()[:3] == ["/root/kernel-env/bin/sm-ssh-ide", "sagemaker-ssh-helper",
                                        VERSION], check.stderr
    assert "SageMaker_SSH_IDE.ipynb" in check.stdout.split()  # where the README copies it from
    connected = run(sm_ssh("connect", app.fqdn, "--", "whoami"), studio.env)
    assert connected.returncode == 0, connected.stderr[-3000:]
    assert connected.stdout.strip().splitlines()[-1] == "sagemaker-user"


@pytest.fixture(scope="module")
def ide_notebook(studio: Studio, wheels: Path, staged: str) -> Studio:
    """A second JupyterLab app where sagemaker-user runs SageMaker_SSH_IDE.ipynb."""
    if not HAVE_SUDO:
        pytest.skip("no sudo on this machine (apt-get install sudo): the notebook runs as "
                    "sagemaker-user, whose sm-ssh-ide commands go through sudo")
    root = create_app(studio.sandbox, studio.domain, "sp2", "lab")
    app = Studio(studio.sandbox, studio.env, studio.domain, root, studio.owner, space="sp2",
                 app="lab", lc_user=APP_USER)
    app.wait_for_user(APP_USER)
    done = run_notebook(app, "SageMaker_SSH_IDE.ipynb", APP_USER, wheels, package=staged)
    assert f"sm-ssh connect {app.fqdn}" in done.stdout
    assert f"sagemaker-ssh-helper {VERSION}" in done.stdout  # the install cell's check
    return app


def test_ide_notebook_executed_by_sagemaker_user_then_connect(ide_notebook: Studio) -> None:
    done = run(sm_ssh("connect", ide_notebook.fqdn, "--", "whoami"), ide_notebook.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "sagemaker-user"
    status = ide_notebook.in_app("env", "-u", "SM_SSH_PYTHON", "sm-ssh-ide", "status",
                                 user=APP_USER)
    assert f"local user id (SSHOwner): {ide_notebook.owner}" in status.stdout, status.stderr
    assert "SSM agent running: True" in status.stdout


def test_running_the_agent_again_leaves_the_running_one_alone(ide_notebook: Studio) -> None:
    def agents() -> list[str]:
        listed = ide_notebook.in_app("pgrep", "-f", "sagemaker_ssh_sandbox.ssm.agent")
        return listed.stdout.split()

    before = agents()
    assert len(before) == 1, before
    again = ide_notebook.in_app("env", "-u", "SM_SSH_PYTHON", "sm-ssh-ide", "ssm-agent",
                                user=APP_USER, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "the SSM agent already runs" in again.stderr
    assert agents() == before


@pytest.fixture(scope="module")
def notebook(studio: Studio, wheels: Path) -> Studio:
    """A notebook instance where SageMaker_SSH_Notebook.ipynb ran (as ec2-user through sudo
    where sudo is installed, else as root)."""
    sm = studio.sandbox.client("sagemaker")
    sm.create_notebook_instance(NotebookInstanceName="nb1", InstanceType="ml.t3.medium",
                                RoleArn=studio.sandbox.role_arn)
    roots = list((studio.sandbox.state_dir.root / "jobs" / "notebook" / "nb1").glob("run-*"))
    assert len(roots) == 1
    user = "ec2-user" if HAVE_SUDO else "root"
    nb = Studio(studio.sandbox, studio.env, studio.domain, roots[0], studio.owner, lc_user=user)
    nb.wait_for_user("ec2-user")
    done = run_notebook(nb, "SageMaker_SSH_Notebook.ipynb", user, wheels)
    assert "sm-ssh connect nb1.notebook.sagemaker" in done.stdout
    return nb


def test_notebook_instance_connect(notebook: Studio, tmp_path: Path) -> None:
    done = run(sm_ssh("connect", "nb1.notebook.sagemaker", "--", "whoami; hostname"),
               notebook.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["root", "notebook-nb1"]


def test_ide_stop_stops_sshd(notebook: Studio) -> None:
    assert "sshd pid file: yes" in notebook.in_app("bash", IDE, "status").stdout
    done = notebook.in_app("bash", IDE, "stop")
    assert done.returncode == 0, done.stderr
    assert "sshd pid file: no" in notebook.in_app("bash", IDE, "status").stdout
    assert notebook.in_app("bash", IDE, "start").returncode == 0


def test_sandbox_status_lists_app_and_notebook_containers(configured: Studio,
                                                           notebook: Studio) -> None:
    containers = configured.sandbox.status()["containers"]
    apps = [c for c in containers if c.get("kind") == "studio" and c["job"] == "default"]
    notebooks = [c for c in containers if c.get("kind") == "notebook" and c["job"] == "nb1"]
    assert len(apps) == 1 and len(notebooks) == 1, containers
    assert apps[0]["state"] == "Running" and apps[0]["hostname"].startswith("jupyterlab-")
    assert Path(notebooks[0]["log"]).parent == notebook.app_root


def test_notebook_instance_wrapper_and_lifecycle(notebook: Studio, tmp_path: Path) -> None:
    import boto3
    import sagemaker

    from sagemaker_ssh_helper.ide import NotebookInstance
    from sagemaker_ssh_helper.wrapper import SSHNotebookInstanceWrapper

    with notebook.sandbox.activated():
        os.environ["HOME"] = str(tmp_path)
        session = sagemaker.Session(boto_session=boto3.Session(
            region_name=notebook.sandbox.region))
        wrapper = SSHNotebookInstanceWrapper.attach("nb1", sagemaker_session=session)
        assert wrapper.fqdn() == "nb1.notebook.sagemaker"
        assert len(wrapper.get_instance_ids(timeout_in_sec=30)) == 1
        with wrapper.start_ssm_connection(free_port(), timeout_in_sec=30) as proxy:
            assert proxy.run_command_with_output("whoami").strip() == b"root"
        instance = NotebookInstance("nb1", region_name=notebook.sandbox.region)
        assert instance.get_status() == "InService"
        instance.stop()
        assert instance.get_status() == "Stopped"
    containers = notebook.sandbox.status()["containers"]
    assert not [c for c in containers if c.get("kind") == "notebook"], containers


@cache
def jupyter_bin() -> str:
    """A directory with a ``jupyter`` that has jupyter_server (SM_SSH_TEST_JUPYTER_BIN, or PATH)."""
    found = os.environ.get("SM_SSH_TEST_JUPYTER_BIN") or os.path.dirname(
        shutil.which("jupyter-server") or "")
    return found if found and os.path.exists(os.path.join(found, "jupyter")) else ""


@cache
def jupyter_python() -> str:
    """The Python of that Jupyter if it has jupyter-server-proxy, else ''."""
    python = os.path.join(jupyter_bin(), "python") if jupyter_bin() else ""
    if not python or not os.path.exists(python):
        return ""
    done = subprocess.run([python, "-c", "import jupyter_server_proxy"], capture_output=True,
                          check=False)
    return python if done.returncode == 0 else ""


def jupyter_token(app: Studio) -> str:
    log = app.in_app("cat", JUPYTER_LOG).stdout
    found = re.search(r"[?&]token=(\w+)", log)
    if not found:  # not started yet (poll() retries on ValueError)
        raise ValueError(f"no token in the Jupyter log: {log[-2000:]}")
    return found.group(1)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@pytest.mark.skipif(not jupyter_bin(), reason="no jupyter_server installed "
                    "(pip install jupyter_server, or set SM_SSH_TEST_JUPYTER_BIN)")
def test_jupyter_server_reachable_through_local_forwarding(configured: Studio) -> None:
    done = configured.in_app("bash", IDE, "start",
                             env={"PATH": f"{jupyter_bin()}:{configured.spec_env['PATH']}"})
    assert done.returncode == 0, done.stderr
    port = free_port()
    with tunnel(configured, "-L", f"{port}:127.0.0.1:8889") as proc:
        def api() -> dict | None:
            alive(proc)
            value: dict = json.loads(get(f"http://127.0.0.1:{port}/api"))
            return value
        assert "version" in poll(api, "Jupyter not reachable through -L")
    log = configured.in_app("stat", "-c", "%a %U", JUPYTER_LOG).stdout.split()
    assert log == ["600", "sagemaker-user"]  # it holds the token: not world-readable
    assert "127.0.0.1:8889" in configured.in_app("cat", JUPYTER_LOG).stdout


def read_rfb_banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while len(data) < 12:
            chunk = s.recv(12 - len(data))
            if not chunk:
                raise OSError("closed before the RFB banner")
            data += chunk
        return data


@pytest.mark.skipif(not shutil.which("Xtigervnc") or not shutil.which("vncpasswd"),
                    reason="no VNC server (apt-get install tigervnc-standalone-server "
                           "tigervnc-tools)")
def test_vnc_answers_rfb_through_the_tunnel(configured: Studio) -> None:
    assert configured.in_app("bash", IDE, "configure").returncode == 0
    # the password comes on stdin, as sagemaker-user: it goes on to root through sudo's stdin
    done = configured.in_app("bash", IDE, "set-vnc-password", user="sagemaker-user",
                             input="s3cret-pw\n")
    assert done.returncode == 0 and "WARNING" not in done.stderr, done.stderr
    done = configured.in_app("bash", IDE, "start")
    assert done.returncode == 0, done.stderr
    port = free_port()
    try:
        with tunnel(configured, "-L", f"{port}:127.0.0.1:5901") as proc:
            def banner() -> bytes | None:
                alive(proc)
                return read_rfb_banner(port)
            assert poll(banner, "no RFB banner through -L").startswith(b"RFB 003.")
    finally:  # stop this VNC server (server-lc-config.sh starts it again)
        pid = configured.in_app("cat", "/opt/sagemaker-ssh-helper/vnc.pid").stdout.strip()
        configured.in_app("kill", pid)
        poll(lambda: configured.in_app("kill", "-0", pid).returncode != 0 or None,
             f"the VNC server (pid {pid}) did not stop", timeout=20)


@pytest.fixture(scope="module")
def web_vnc(configured: Studio) -> str:
    """server-lc-config.sh has run in the app (Jupyter at base URL /); the Web VNC address it
    printed, relative to the Jupyter server."""
    if not shutil.which("Xtigervnc") or not shutil.which("websockify") \
            or not os.path.exists("/usr/share/novnc/vnc.html"):
        pytest.skip("no VNC server or noVNC (apt-get install tigervnc-standalone-server "
                    "tigervnc-tools novnc websockify)")
    env = {"VNC_PASSWORD": "s3cret-pw", "PIP_NO_INDEX": "1", "SM_SSH_IDE": IDE,
           "JUPYTER_BASE_URL": "/"}
    if jupyter_bin():
        env["PATH"] = f"{jupyter_bin()}:{configured.spec_env['PATH']}"
    if jupyter_python():
        env["JUPYTER_PYTHON"] = jupyter_python()
    done = configured.in_app("bash", str(REPO / "server-lc-config.sh"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"Web VNC: open <Studio URL>(\S+)", done.stderr)
    assert printed, done.stderr[-3000:]
    return printed.group(1)


def test_server_lc_config_serves_web_vnc(configured: Studio, web_vnc: str) -> None:
    assert web_vnc == "/proxy/6080/vnc.html?path=proxy/6080/websockify"
    port = free_port()
    with tunnel(configured, "-L", f"{port}:127.0.0.1:6080") as proc:
        def page() -> bytes | None:
            alive(proc)
            return get(f"http://127.0.0.1:{port}/vnc.html")
        assert b"noVNC" in poll(page, "noVNC not served through -L")


@pytest.mark.skipif(not jupyter_python(), reason="no Jupyter with jupyter-server-proxy "
                    "(pip install -e '.[test]', or set SM_SSH_TEST_JUPYTER_BIN)")
def test_web_vnc_through_the_jupyter_server_proxy(configured: Studio, web_vnc: str) -> None:
    """The address server-lc-config.sh prints works: noVNC's page and its WebSocket (to the
    VNC server's RFB banner), both through jupyter-server-proxy, with the server's token."""
    page, _, query = web_vnc.partition("?")
    websocket_path = urllib.parse.parse_qs(query)["path"][0]
    port = free_port()
    with tunnel(configured, "-L", f"{port}:127.0.0.1:8889") as proc:
        def served() -> bytes | None:
            alive(proc)
            return get(f"http://127.0.0.1:{port}{page}?{query}&token={jupyter_token(configured)}")
        assert b"noVNC" in poll(served, "noVNC not served through the Jupyter proxy")
        try:  # the VNC server may still be starting: websockify then closes the WebSocket
            banner = poll(lambda: ide_support.websocket_first_bytes(
                port, f"/{websocket_path}?token={jupyter_token(configured)}", 12),
                "no RFB banner through the proxied WebSocket", timeout=30)
        except AssertionError as e:
            log = configured.in_app("cat", "/var/log/sm-ssh-ide-novnc.log",
                                    "/var/log/sagemaker-ssh-helper/vnc.log").stdout
            raise AssertionError(f"{e}; websockify and VNC logs: {log[-3000:]}") from e
    assert banner.startswith(b"RFB 003.")
