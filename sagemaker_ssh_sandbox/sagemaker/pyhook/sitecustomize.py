"""Sandbox start-up hook: `sm-ssh sandbox env` puts this directory on PYTHONPATH.

The SageMaker Python SDK builds its STS clients with an explicit regional ``endpoint_url``
(``sts_regional_endpoint``: ``sagemaker.utils`` in v2; ``sagemaker.core.helper.session_helper``
and ``sagemaker.core.common_utils`` in v3), which would bypass ``AWS_ENDPOINT_URL``. When the
sandbox is active (``SM_SSH_SANDBOX_DIR`` set), that function returns the sandbox endpoint
instead, so unchanged launch scripts work offline. The SDK is not imported here: an import hook
patches those modules right after they load. Any other ``sitecustomize`` further down
``sys.path`` still runs.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Callable

_TARGET = "sagemaker.utils"  # SDK v2
_TARGETS = (_TARGET, "sagemaker.core.helper.session_helper", "sagemaker.core.common_utils")
_MARK = "_sm_ssh_sandbox_patched"


def sandbox_sts_endpoint() -> str | None:
    if not os.environ.get("SM_SSH_SANDBOX_DIR"):
        return None
    return os.environ.get("AWS_ENDPOINT_URL_STS") or os.environ.get("AWS_ENDPOINT_URL") or None


def patch_sagemaker_utils(module: ModuleType) -> None:
    original: Callable[[str], str] | None = getattr(module, "sts_regional_endpoint", None)
    if original is None or getattr(original, _MARK, False):
        return

    def sts_regional_endpoint(region: str) -> str:
        endpoint = sandbox_sts_endpoint()
        assert original is not None
        return endpoint if endpoint else original(region)

    setattr(sts_regional_endpoint, _MARK, True)
    sts_regional_endpoint.__wrapped__ = original  # type: ignore[attr-defined]
    sts_regional_endpoint.__doc__ = original.__doc__
    module.sts_regional_endpoint = sts_regional_endpoint  # type: ignore[attr-defined]
    _memoize_config_validation(module)


def _memoize_config_validation(module: ModuleType) -> None:
    """The SDK re-validates its whole defaults config (jsonschema, ~0.3 s) on every config
    lookup, dozens of times per deploy(); with the sandbox's config file that is ~7 s per call.
    Validate each distinct config once."""
    original = getattr(module, "validate_sagemaker_config", None)
    if original is None or getattr(original, _MARK, False):
        return
    valid: set = set()

    def validate_sagemaker_config(sagemaker_config: Any = None) -> None:
        import json

        key = json.dumps(sagemaker_config, sort_keys=True, default=str)
        if key not in valid:
            assert original is not None
            original(sagemaker_config)
            valid.add(key)

    setattr(validate_sagemaker_config, _MARK, True)
    validate_sagemaker_config.__wrapped__ = original  # type: ignore[attr-defined]
    module.validate_sagemaker_config = validate_sagemaker_config  # type: ignore[attr-defined]


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        patch_sagemaker_utils(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    if not os.environ.get("SM_SSH_SANDBOX_DIR"):
        return
    for name in _TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            patch_sagemaker_utils(module)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _run_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    seen_self = False
    for entry in sys.path:
        directory = os.path.abspath(entry or os.getcwd())
        if directory == here:
            seen_self = True
            continue
        candidate = os.path.join(directory, "sitecustomize.py")
        if seen_self and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_sm_ssh_next_sitecustomize", candidate)
            if spec and spec.loader:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return


install()
_run_next_sitecustomize()
