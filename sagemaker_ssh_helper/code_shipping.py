"""Ship what containers use of this package with a job (both SDK majors).

**What ships** (:func:`container_files`): ``VERSION``, the bash commands that run in containers
(every ``sm-*`` but the laptop's ``sm-local-*`` and ``sm-connect-ssh-proxy``), and the modules
that ``import sagemaker_ssh_helper`` and those commands reach, directly or through each other
(imports, and ``python -m sagemaker_ssh_helper.<module>`` command lines). They are found by
reading the sources, so a module that containers start to use is shipped from then on; the
launch side (wrappers, SDK glue), the laptop's commands and ``cdk/`` stay home. The offline
sandbox is a separate package (``sagemaker_ssh_sandbox``) and never ships.

SDK v2: ``dependency_dir()`` of the wrappers is a copy of just that (:func:`package_copy`), for
``dependencies=[...]`` of framework estimators and models, and a script processor's input.

SDK v3: ``ModelTrainer`` and ``ModelBuilder`` take the user's code as a ``SourceCode``: a source
folder and an entry script. The v3 wrappers swap the folder for a copy that has the package next
to the entry script, so ``import sagemaker_ssh_helper`` works in the container as with SDK v2's
``dependencies=[...]``: ``ModelTrainer`` uploads the folder as the ``code`` channel (mounted at
``/opt/ml/input/data/code``, where the entry script runs) and ``ModelBuilder`` packs it into
``model.tar.gz`` under ``code/`` (the serving container's code directory).

The copy is made when ``create()`` runs, in a temporary folder that goes away with the SDK object
(or at interpreter exit); the user's folder is not touched. A source the SDK reads elsewhere (an
``s3://`` URI or a ``.tar.gz``) is left as it is: its requirements file has to install the package.
"""
from __future__ import annotations

import ast
import atexit
import fnmatch
import logging
import re
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
# The laptop's commands: console scripts, and bash launchers for the package folder.
LAPTOP_SCRIPTS = ("sm-local-*", "sm-connect-ssh-proxy")
_MODULE_RE = re.compile(rf"\b{PACKAGE}\.(\w+)")
HINT = ("the entry script must be able to `import sagemaker_ssh_helper`: use a local source "
        "folder (the wrapper ships the package in it) or list sagemaker-ssh-helper in its "
        "requirements file")


def _imported(path: Path) -> set[str]:
    """Names of this package's modules that the source ``path`` imports (also inside
    functions) or runs as ``"sagemaker_ssh_helper.<module>"`` (``python -m`` argv)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith(PACKAGE + "."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(rf"{PACKAGE}\.(\w+)(\.\w+)*", node.value)
            if match:
                found.add(match.group(1))
    return found


def container_files() -> list[str]:
    """The package's files that containers use, relative to the package (see the module's
    docstring), sorted."""
    scripts = sorted(p.name for p in PACKAGE_DIR.glob("sm-*") if p.is_file()
                     and not any(fnmatch.fnmatch(p.name, pattern) for pattern in LAPTOP_SCRIPTS))
    todo = {"__init__"}
    for script in scripts:
        todo.update(_MODULE_RE.findall((PACKAGE_DIR / script).read_text()))
    files = {"VERSION", *scripts}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module, package = PACKAGE_DIR / f"{name}.py", PACKAGE_DIR / name
        if module.is_file():
            files.add(module.name)
            todo.update(_imported(module))
        elif (package / "__init__.py").is_file():  # a subpackage: all of it
            for path in package.rglob("*.py"):
                files.add(path.relative_to(PACKAGE_DIR).as_posix())
                todo.update(_imported(path))
        # else: a name imported from the package (``from sagemaker_ssh_helper import x``)
    return sorted(files)


def copy_package(target: Path) -> Path:
    """Write the files containers use into the new folder ``target``; return it."""
    for name in container_files():
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE_DIR / name, dest)
    return target


def is_local_dir(source_dir: Any) -> bool:
    return isinstance(source_dir, str) and not source_dir.startswith("s3://") \
        and Path(source_dir).is_dir()


def stage(source_dir: str, owner: Any, ignore_patterns: Sequence[str] | None = None) -> str:
    """A temporary copy of the local folder ``source_dir`` with the package added at its top;
    removed when ``owner`` (the SDK object that will upload it) is garbage-collected.

    ``ignore_patterns`` (the SourceCode's) are applied to the user's files while copying, as
    the SDK applies them when uploading. A folder with its own ``sagemaker_ssh_helper/`` keeps it.
    """
    src = Path(source_dir)
    root = Path(tempfile.mkdtemp(prefix="sm-ssh-code-"))
    target = root / (src.resolve().name or "code")
    try:
        ignore = shutil.ignore_patterns(*ignore_patterns) if ignore_patterns else None
        shutil.copytree(src, target, ignore=ignore)
        shipped = target / PACKAGE_DIR.name
        if shipped.exists():
            logger.info("%s has its own %s/: shipping that copy", source_dir, PACKAGE_DIR.name)
        else:
            copy_package(shipped)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    weakref.finalize(owner, shutil.rmtree, str(root), True)
    logger.info("shipping %s with the code of %s (staged in %s)", PACKAGE_DIR.name, source_dir,
                target)
    return str(target)


def with_package(source_code: Any, owner: Any) -> Any | None:
    """A copy of the pydantic ``SourceCode`` whose ``source_dir`` also holds the package, or None
    (after logging how to ship it) when there is no local source folder to add it to."""
    source_dir = getattr(source_code, "source_dir", None)
    if source_code is None or not isinstance(source_dir, str) or not is_local_dir(source_dir):
        logger.info(HINT)
        return None
    staged = stage(source_dir, owner, getattr(source_code, "ignore_patterns", None))
    return source_code.model_copy(update={"source_dir": staged})


_package_copy: str | None = None


def package_copy() -> str:
    """A folder named like the package holding what containers use of it, for SDK inputs that
    upload a local folder; made once per process and removed at exit."""
    global _package_copy
    if _package_copy is None or not Path(_package_copy).is_dir():
        root = tempfile.mkdtemp(prefix="sm-ssh-package-")
        atexit.register(shutil.rmtree, root, True)
        _package_copy = str(copy_package(Path(root) / PACKAGE))
    return _package_copy


def is_package_copy(path: Any) -> bool:
    """Whether ``path`` is the package or a copy :func:`package_copy` made."""
    resolved = Path(str(path)).resolve()
    return resolved == PACKAGE_DIR or (
        _package_copy is not None and resolved == Path(_package_copy).resolve())
