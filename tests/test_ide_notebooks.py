"""The notebooks are valid nbformat 4, their cells are valid IPython, they import only the
standard library and what their own first cell installs (this version of the package); and the
notebook runner the Studio end-to-end test uses behaves like IPython."""
from __future__ import annotations

import ast
import base64
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import ide_support
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["SageMaker_SSH_IDE.ipynb", "SageMaker_SSH_Notebook.ipynb"]
# What the install cell installs, and boto3 (in every SageMaker image; it fetches an s3:// wheel)
INSTALLED_BY_FIRST_CELLS = {"sagemaker_ssh_helper", "boto3"}


def load(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((REPO / name).read_text())
    return value


def code_cells(notebook: dict[str, Any]) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def python_part(source: str) -> str:
    return "\n".join(line for line in source.splitlines()
                     if not line.lstrip().startswith(("!", "%")))


def shell_lines(notebook: dict[str, Any]) -> list[str]:
    """The notebook's ``!`` commands in order (what the sandbox test runs)."""
    return [line.lstrip()[1:] for source in code_cells(notebook)
            for line in source.splitlines() if line.lstrip().startswith("!")]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_nbformat4(name: str) -> None:
    notebook = load(name)
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 4
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("code", "markdown")
        assert isinstance(cell["source"], list) and isinstance(cell["metadata"], dict)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_code_cells_compile_and_import_only_what_is_installed(name: str) -> None:
    cells = code_cells(load(name))
    assert "SM_SSH_PACKAGE = " in cells[0] and "%pip install" in cells[1]
    allowed = set(sys.stdlib_module_names) | INSTALLED_BY_FIRST_CELLS
    for source in cells:
        tree = ast.parse(python_part(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for module in names:
                assert module.split(".")[0] in allowed, f"{name} imports {module}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_local_user_id_is_set_in_one_visible_cell(name: str) -> None:
    cells = code_cells(load(name))
    setting = [c for c in cells if "LOCAL_USER_ID = " in c]
    assert len(setting) == 1
    assert any("set-local-user-id" in line and "{LOCAL_USER_ID}" in line
               for line in shell_lines(load(name)))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_cells_install_this_version_and_never_upstream(name: str) -> None:
    version = (REPO / "sagemaker_ssh_helper" / "VERSION").read_text().strip()
    cells = code_cells(load(name))
    assert f'SM_SSH_PACKAGE = "sagemaker-ssh-helper=={version}"' in cells[0]
    assert '"sagemaker-ssh-helper>=3\\n"' in cells[1] and '-c "{tmp}/constraints.txt"' in cells[1]
    for script in ("kernel-lc-config.sh", "server-lc-config.sh"):
        text = (REPO / script).read_text()
        assert f'SM_SSH_PACKAGE="${{SM_SSH_PACKAGE:-sagemaker-ssh-helper=={version}}}"' in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_cells_are_valid_ipython(name: str) -> None:
    """IPython refuses ``!`` commands ending in ``&``; every cell compiles once transformed."""
    for source in code_cells(load(name)):
        compile(ide_support.transform(source), name, "exec")
    assert not [line for line in shell_lines(load(name)) if line.rstrip().endswith("&")]
    if importlib.util.find_spec("IPython") is not None:
        from IPython.core.inputtransformer2 import TransformerManager

        for source in code_cells(load(name)):
            compile(TransformerManager().transform_cell(source), name, "exec")


def run_notebook(tmp_path: Path, *cells: str) -> subprocess.CompletedProcess:
    notebook = {"cells": [{"cell_type": "code", "source": c.splitlines(keepends=True),
                           "metadata": {}, "outputs": [], "execution_count": None}
                          for c in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(ide_support.set_variable(notebook, "WHO", "laptop user")))
    return subprocess.run([sys.executable, ide_support.__file__, "run-notebook", str(path)],
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def test_runner_expands_variables_and_runs_pip_like_ipython(tmp_path: Path) -> None:
    done = run_notebook(tmp_path, 'WHO = "someone"\nN = 2', '!echo "{WHO}" $N {N + 1} {{x}}',
                        "for i in range(2):\n    !echo loop {i}", "%pip --version")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "laptop user 2 3 {x}" in lines and "loop 0" in lines and "loop 1" in lines
    assert re.search(r"^pip \S+ from ", done.stdout, re.MULTILINE)
    assert lines[-1] == "--- ran 4 code cells"


@pytest.mark.parametrize("cell, error", [("!exit 3", "exited with 3"),
                                         ("!sleep 100 &", "Background processes not supported"),
                                         ("%cd /tmp", "unsupported magic"),
                                         ("1 / 0", "division by zero")])
def test_runner_stops_at_the_first_failing_cell(tmp_path: Path, cell: str, error: str) -> None:
    done = run_notebook(tmp_path, "WHO = 1", cell, "!echo never")
    assert done.returncode == 1 and "never" not in done.stdout
    assert "cell 2 failed: " in done.stderr and error in done.stderr


def test_wheel_of_the_installed_version(tmp_path: Path) -> None:
    from sagemaker_ssh_helper import dist

    wheel = dist.build_wheel(tmp_path)
    version = (REPO / "sagemaker_ssh_helper" / "VERSION").read_text().strip()
    assert wheel.name == f"sagemaker_ssh_helper-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"sagemaker_ssh_helper-{version}.dist-info"
        assert {"sagemaker_ssh_helper/sm-ssh-ide", "sagemaker_ssh_helper/ide_container.py",
                f"sagemaker_ssh_helper-{version}.data/scripts/sm-ssh-ide",
                f"sagemaker_ssh_helper-{version}.data/data/sm_ssh/SageMaker_SSH_IDE.ipynb"} <= names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert not [n for n in names if n.startswith("sagemaker_ssh_sandbox/")]
        assert sorted(n.rsplit("/", 1)[1] for n in names if "/data/sm_ssh/" in n) == \
            sorted(dist.DATA_FILES) == sorted(ide_support.setup_arguments(REPO)["data_files"][0][1])
        assert zf.getinfo("sagemaker_ssh_helper/sm-ssh-ide").external_attr >> 16 & 0o111
        assert f"Version: {version}" in zf.read(f"{info}/METADATA").decode()
        assert "sm-ssh = sagemaker_ssh_helper.sm_ssh:main" in \
            zf.read(f"{info}/entry_points.txt").decode()
        for line in zf.read(f"{info}/RECORD").decode().splitlines():
            name, digest, size = line.split(",")
            if digest:
                data = zf.read(name)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert digest == f"sha256={expected.decode()}" and int(size) == len(data)


def test_stage_wheel_to_s3_and_a_missing_bucket(moto_url: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`sm-ssh stage-wheel` against moto: the default bucket missing is one line; with --s3
    the wheel lands under the prefix and the printed line names it."""
    import boto3

    from sagemaker_ssh_helper import dist, sm_ssh

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    assert sm_ssh.main(["stage-wheel"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1] == (
        "sm-ssh: bucket sagemaker-us-east-1-123456789012 does not exist in this account: "
        "create it, or pass --s3 s3://<your-bucket>/<prefix>/")
    boto3.client("s3").create_bucket(Bucket="team-bucket")
    assert sm_ssh.main(["stage-wheel", "--s3", "s3://team-bucket/tools/"]) == 0
    out, _ = capsys.readouterr()
    key = f"tools/{dist.wheel_name()}"
    assert out == f"SM_SSH_PACKAGE=s3://team-bucket/{key}\n"
    body = boto3.client("s3").get_object(Bucket="team-bucket", Key=key)["Body"].read()
    assert body[:2] == b"PK" and len(body) > 100_000
