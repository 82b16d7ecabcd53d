"""The notebooks are valid nbformat 4, their Python compiles, and they import only the standard
library and what their own first cell installs."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["SageMaker_SSH_IDE.ipynb", "SageMaker_SSH_Notebook.ipynb"]
INSTALLED_BY_FIRST_CELL = {"sagemaker_ssh_helper"}


def load(name: str) -> Dict[str, Any]:
    value: Dict[str, Any] = json.loads((REPO / name).read_text())
    return value


def code_cells(notebook: Dict[str, Any]) -> List[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def python_part(source: str) -> str:
    return "\n".join(line for line in source.splitlines()
                     if not line.lstrip().startswith(("!", "%")))


def shell_lines(notebook: Dict[str, Any]) -> List[str]:
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
    assert "pip install" in cells[0] and "sagemaker-ssh-helper" in cells[0]
    allowed = set(sys.stdlib_module_names) | INSTALLED_BY_FIRST_CELL
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
