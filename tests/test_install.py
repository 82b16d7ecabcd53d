"""Installing the package never changes the user's SageMaker SDK (v2 or v3).

The package's wheel is built offline from a copy of the sources, then installed with pip
(``--no-index --find-links``: nothing can be downloaded) into a fresh virtualenv that sees this
environment's packages (its SDK included) but not its copy of sagemaker-ssh-helper's files.
``pip freeze`` before and after must list the same packages at the same versions, apart from
sagemaker-ssh-helper itself. Runs in the SDK v2 test environment and in the v3 one.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sagemaker_ssh_helper import sdk_versions

REPO = Path(__file__).resolve().parent.parent
WHEEL_VERSION = "99.0.0"  # newer than the editable install this environment may have


def run(*argv: str, cwd: Path) -> str:
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for path in REPO.iterdir():  # setup.py, its data files, README.md, ...
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, source / path.name)
    shutil.copytree(REPO / "sagemaker_ssh_helper", source / "sagemaker_ssh_helper",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPO / "sagemaker_ssh_sandbox", source / "sagemaker_ssh_sandbox",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (source / "sagemaker_ssh_helper" / "VERSION").write_text(WHEEL_VERSION + "\n")
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-q", "-w", str(dist), str(source), cwd=tmp_path)
    return dist


def environment_like_this_one(tmp_path: Path) -> Path:
    """A virtualenv whose interpreter also sees every site directory of this one."""
    venv = tmp_path / "user-env"
    run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    site_dir = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                        "['purelib'])", cwd=tmp_path).strip())
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))
            and Path(p).is_dir()]
    (site_dir / "zz-this-environment.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    return python


def freeze(python: Path, cwd: Path) -> dict[str, str]:
    lines = run(str(python), "-m", "pip", "freeze", "--all", cwd=cwd).splitlines()
    packages = {}
    for line in lines:
        if line.startswith(("#", "-e ")):  # this checkout's editable install
            continue
        name, sep, version = line.partition("==")
        packages[name.lower().replace("_", "-")] = version if sep else line
    return packages


def test_pip_install_leaves_the_sdk_as_it_is(tmp_path: Path) -> None:
    installed = sdk_versions.installed_version()
    if installed is None:
        pytest.skip("no SageMaker SDK in this environment")
    dist = build_wheel(tmp_path)
    python = environment_like_this_one(tmp_path)
    before = freeze(python, tmp_path)
    assert before["sagemaker"] == installed

    run(str(python), "-m", "pip", "install", "--no-index", "--find-links", str(dist), "-q",
        f"sagemaker-ssh-helper=={WHEEL_VERSION}", cwd=tmp_path)

    after = freeze(python, tmp_path)
    assert after.pop("sagemaker-ssh-helper") == WHEEL_VERSION
    before.pop("sagemaker-ssh-helper", None)
    assert after == before
    assert after["sagemaker"] == installed
