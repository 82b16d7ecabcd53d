"""Studio end to end in the offline sandbox: an emulated JupyterLab app in a space runs
``kernel-lc-config.sh`` (the lifecycle configuration), then the laptop side connects with
``sm-ssh`` as ``sagemaker-user``. One sandbox and one app for the module."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from conftest import SANDBOX_E2E, free_port

from sagemaker_ssh_helper.sandbox import Sandbox
from sagemaker_ssh_helper.sandbox.studio import exec_argv

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sagemaker_ssh_helper"

pytestmark = SANDBOX_E2E


@dataclass
class Studio:
    sandbox: Sandbox
    env: Dict[str, str]
    domain: str
    app_root: Path
    owner: str

    @property
    def fqdn(self) -> str:
        return f"default.sp1.{self.domain}.studio.sagemaker"

    def in_app(self, *argv: str, env: Dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return subprocess.run(exec_argv(self.app_root, ["env", *extra, *argv]),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)


def notebook_commands(name: str) -> List[str]:
    """A notebook's ``!`` lines, in order."""
    cells = json.loads((REPO / name).read_text())["cells"]
    return [line.lstrip()[1:] for cell in cells if cell["cell_type"] == "code"
            for line in "".join(cell["source"]).splitlines() if line.lstrip().startswith("!")]


def run(argv: List[str], env: Dict[str, str], timeout: float = 120
        ) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def sm_ssh(*args: str) -> List[str]:
    return [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args]


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
        sm.create_space(DomainId=domain, SpaceName="sp1")
        sm.create_app(DomainId=domain, SpaceName="sp1", AppType="JupyterLab",
                      AppName="default")
        owner = sandbox.client("sts").get_caller_identity()["UserId"]
        (tmp / "home").mkdir()
        env = dict(os.environ, **sandbox.env, HOME=str(tmp / "home"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO))
                                            if p)
        root = tmp / "sandbox" / "jobs" / "studio" / domain / "sp1-default"
        world = Studio(sandbox, env, domain, root, owner)
        deadline, delay = time.monotonic() + 30, 0.05
        while world.in_app("id", "-u", "sagemaker-user").returncode != 0:
            assert time.monotonic() < deadline, "the app never created sagemaker-user"
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        yield world


@pytest.fixture(scope="module")
def configured(studio: Studio) -> Studio:
    done = studio.in_app("bash", str(REPO / "kernel-lc-config.sh"),
                         env={"LOCAL_USER_ID": studio.owner,
                              "SM_SSH_IDE": str(PACKAGE / "sm-ssh-ide")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sm-ssh connect {studio.fqdn}" in done.stdout
    return studio


def test_studio_api_describes_the_app(studio: Studio) -> None:
    sm = studio.sandbox.client("sagemaker")
    app = sm.describe_app(DomainId=studio.domain, SpaceName="sp1", AppType="JupyterLab",
                          AppName="default")
    assert app["Status"] == "InService"
    assert app["AppArn"].endswith(f":app/{studio.domain}/sp1/jupyterlab/default")
    assert [s["SpaceName"] for s in sm.list_spaces(DomainIdEquals=studio.domain)["Spaces"]] \
        == ["sp1"]
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
    ide = str(PACKAGE / "sm-ssh-ide")
    assert studio.in_app("bash", ide, "get-domain-id").stdout.strip() == studio.domain
    assert studio.in_app("bash", ide, "get-app-space-name").stdout.strip() == "sp1"


def test_connect_as_sagemaker_user(configured: Studio) -> None:
    done = run(sm_ssh("connect", configured.fqdn, "--", "whoami"), configured.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "sagemaker-user"


def test_connect_by_app_name_only(configured: Studio) -> None:
    done = run(sm_ssh("connect", "default.studio.sagemaker", "--", "id -un"), configured.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "sagemaker-user"


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
    done = configured.in_app("bash", str(PACKAGE / "sm-ssh-ide"), "status")
    assert done.returncode == 0, done.stderr
    assert f"local user id (SSHOwner): {configured.owner}" in done.stdout
    assert "managed instance: mi-" in done.stdout


def test_sshide_finds_and_manages_apps(configured: Studio) -> None:
    from sagemaker_ssh_helper.ide import SSHIDE

    with configured.sandbox.activated():
        ide = SSHIDE(configured.domain, space_name="sp1", region=configured.sandbox.region)
        assert ide.get_app_status("default", "JupyterLab").is_in_service()
        assert len(ide.get_instance_ids("default", timeout_in_sec=30)) == 1
        assert ide.fqdn("default") == configured.fqdn
        assert ide.create_and_attach_app("scratch", "CodeEditor").is_in_service()
        ide.delete_app("scratch", "CodeEditor")
        assert ide.get_app_status("scratch", "CodeEditor").is_deleted()
        assert ide.get_app_status("missing", "JupyterLab").is_deleted()


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




@pytest.fixture(scope="module")
def notebook(studio: Studio) -> Studio:
    sm = studio.sandbox.client("sagemaker")
    sm.create_notebook_instance(NotebookInstanceName="nb1", InstanceType="ml.t3.medium",
                                RoleArn=studio.sandbox.role_arn)
    roots = list((studio.sandbox.state_dir.root / "jobs" / "notebook" / "nb1").glob("run-*"))
    assert len(roots) == 1
    nb = Studio(studio.sandbox, studio.env, studio.domain, roots[0], studio.owner)
    deadline, delay = time.monotonic() + 30, 0.05
    while nb.in_app("id", "-u", "ec2-user").returncode != 0:
        assert time.monotonic() < deadline, "the notebook instance never created ec2-user"
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    # The notebook's own commands; the link stands in for its `%pip install`.
    commands = [f"ln -sf {PACKAGE / 'sm-ssh-ide'} /usr/local/bin/sm-ssh-ide"] + [
        line.replace("{LOCAL_USER_ID}", studio.owner)
        for line in notebook_commands("SageMaker_SSH_Notebook.ipynb")]
    done = nb.in_app("bash", "-euo", "pipefail", "-c", "\n".join(commands))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sm-ssh connect nb1.notebook.sagemaker" in done.stdout
    return nb


def test_notebook_instance_connect(notebook: Studio, tmp_path: Path) -> None:
    done = run(sm_ssh("connect", "nb1.notebook.sagemaker", "--", "whoami; hostname"),
               notebook.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["root", "notebook-nb1"]


def test_ide_stop_stops_sshd(notebook: Studio) -> None:
    ide = str(PACKAGE / "sm-ssh-ide")
    assert "sshd pid file: yes" in notebook.in_app("bash", ide, "status").stdout
    done = notebook.in_app("bash", ide, "stop")
    assert done.returncode == 0, done.stderr
    assert "sshd pid file: no" in notebook.in_app("bash", ide, "status").stdout
    assert notebook.in_app("bash", ide, "start").returncode == 0


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
        instance = NotebookInstance("nb1", region=notebook.sandbox.region)
        assert instance.get_status() == "InService"
        instance.stop()
        assert instance.get_status() == "Stopped"


def jupyter_bin() -> str:
    """A directory with a ``jupyter`` that has jupyter_server (SM_SSH_TEST_JUPYTER_BIN, or PATH)."""
    found = os.environ.get("SM_SSH_TEST_JUPYTER_BIN") or os.path.dirname(
        shutil.which("jupyter-server") or "")
    return found if found and os.path.exists(os.path.join(found, "jupyter")) else ""


@pytest.mark.skipif(not jupyter_bin(), reason="no jupyter_server installed "
                    "(pip install jupyter_server, or set SM_SSH_TEST_JUPYTER_BIN)")
def test_jupyter_server_reachable_through_local_forwarding(configured: Studio) -> None:
    path = f"{jupyter_bin()}:{configured.sandbox.env.get('PATH', '')}"
    spec = json.loads((configured.app_root / "spec.json").read_text())
    done = configured.in_app("bash", str(PACKAGE / "sm-ssh-ide"), "start",
                             env={"PATH": f"{jupyter_bin()}:{spec['env']['PATH']}"})
    assert done.returncode == 0 and path, done.stderr
    port = free_port()
    proc = subprocess.Popen(sm_ssh("connect", configured.fqdn, "-N", "-L",
                                   f"{port}:127.0.0.1:8889"), env=configured.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline, delay, last = time.monotonic() + 60, 0.1, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=5) as r:
                    assert "version" in json.loads(r.read())
                    break
            except (OSError, ValueError) as e:
                last = e
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            log = configured.in_app("cat", "/tmp/jupyter-notebook.log").stdout
            raise AssertionError(f"Jupyter not reachable through -L: {last}; log: {log[-2000:]}")
        log = configured.in_app("cat", "/tmp/jupyter-notebook.log").stdout
        assert "127.0.0.1:8889" in log
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def read_rfb_banner(port: int) -> bytes:
    import socket

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
    ide = str(PACKAGE / "sm-ssh-ide")
    for args in (["configure"], ["set-vnc-password", "s3cret-pw"], ["start"]):
        done = configured.in_app("bash", ide, *args)
        assert done.returncode == 0, done.stderr
    port = free_port()
    proc = subprocess.Popen(sm_ssh("connect", configured.fqdn, "-N", "-L",
                                   f"{port}:127.0.0.1:5901"), env=configured.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline, delay, last = time.monotonic() + 60, 0.1, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                assert read_rfb_banner(port).startswith(b"RFB 003.")
                break
            except OSError as e:
                last = e
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            raise AssertionError(f"no RFB banner through -L: {last}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        configured.in_app("bash", "-c", "kill $(cat /opt/sagemaker-ssh-helper/vnc.pid)")


@pytest.mark.skipif(not shutil.which("Xtigervnc") or not shutil.which("websockify")
                    or not os.path.exists("/usr/share/novnc/vnc.html"),
                    reason="no VNC server or noVNC (apt-get install tigervnc-standalone-server "
                           "tigervnc-tools novnc websockify)")
def test_server_lc_config_serves_web_vnc(configured: Studio) -> None:
    done = configured.in_app("bash", str(REPO / "server-lc-config.sh"),
                             env={"VNC_PASSWORD": "s3cret-pw", "PIP_NO_INDEX": "1",
                                  "SM_SSH_IDE": str(PACKAGE / "sm-ssh-ide")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "proxy/6080/vnc.html" in done.stderr
    port = free_port()
    proc = subprocess.Popen(sm_ssh("connect", configured.fqdn, "-N", "-L",
                                   f"{port}:127.0.0.1:6080"), env=configured.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline, delay, last = time.monotonic() + 60, 0.1, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/vnc.html",
                                            timeout=5) as r:
                    assert b"noVNC" in r.read()
                    break
            except OSError as e:
                last = e
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            raise AssertionError(f"noVNC not served through -L: {last}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
