"""Ship this package with a job's source code (SageMaker Python SDK v3 launches).

``ModelTrainer`` and ``ModelBuilder`` take the user's code as a ``SourceCode``: a source folder
and an entry script. The v3 wrappers swap the folder for a copy that has the package next to the
entry script, so ``import sagemaker_ssh_helper`` works in the container as with SDK v2's
``dependencies=[...]``: ``ModelTrainer`` uploads the folder as the ``code`` channel (mounted at
``/opt/ml/input/data/code``, where the entry script runs) and ``ModelBuilder`` packs it into
``model.tar.gz`` under ``code/`` (the serving container's code directory).

The copy is made when ``create()`` runs, in a temporary folder that goes away with the SDK object
(or at interpreter exit); the user's folder is not touched. A source the SDK reads elsewhere (an
``s3://`` URI or a ``.tar.gz``) is left as it is: its requirements file has to install the package.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# Launch-side parts that containers never use (DESIGN: nothing of the sandbox is uploaded).
PACKAGE_IGNORE = ("__pycache__", "*.pyc", "sandbox", "cdk")
HINT = ("the entry script must be able to `import sagemaker_ssh_helper`: use a local source "
        "folder (the wrapper ships the package in it) or list sagemaker-ssh-helper in its "
        "requirements file")


def is_local_dir(source_dir: Any) -> bool:
    return isinstance(source_dir, str) and not source_dir.startswith("s3://") \
        and Path(source_dir).is_dir()


def stage(source_dir: str, owner: Any, ignore_patterns: Optional[Sequence[str]] = None) -> str:
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
            shutil.copytree(PACKAGE_DIR, shipped, ignore=shutil.ignore_patterns(*PACKAGE_IGNORE))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    weakref.finalize(owner, shutil.rmtree, str(root), True)
    logger.info("shipping %s with the code of %s (staged in %s)", PACKAGE_DIR.name, source_dir,
                target)
    return str(target)


def with_package(source_code: Any, owner: Any) -> Optional[Any]:
    """A copy of the pydantic ``SourceCode`` whose ``source_dir`` also holds the package, or None
    (after logging how to ship it) when there is no local source folder to add it to."""
    source_dir = getattr(source_code, "source_dir", None)
    if source_code is None or not isinstance(source_dir, str) or not is_local_dir(source_dir):
        logger.info(HINT)
        return None
    staged = stage(source_dir, owner, getattr(source_code, "ignore_patterns", None))
    return source_code.model_copy(update={"source_dir": staged})


_package_copy: Optional[str] = None


def package_copy() -> str:
    """A folder holding only the package (what containers use), for SDK inputs that upload a
    local folder; made once per process and removed at exit."""
    global _package_copy
    if _package_copy is None or not Path(_package_copy).is_dir():
        root = tempfile.mkdtemp(prefix="sm-ssh-package-")
        atexit.register(shutil.rmtree, root, True)
        target = Path(root) / PACKAGE_DIR.name
        shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns(*PACKAGE_IGNORE))
        _package_copy = str(target)
    return _package_copy
