"""Offline sandbox: emulated AWS (moto + SSM stand-in), job containers, sm-ssh sandbox CLI.

Python API (for scripts and test fixtures), imported lazily so that modules of this package that
run inside job containers (the agent stand-in) stay light::

    from sagemaker_ssh_sandbox import Sandbox

    with Sandbox(state_dir) as sandbox:
        env = sandbox.env
"""
from __future__ import annotations

from typing import Any

__all__ = ["Sandbox", "SandboxError", "requirements_problem"]


def __getattr__(name: str) -> Any:
    if name == "Sandbox":
        from sagemaker_ssh_sandbox.api import Sandbox

        return Sandbox
    if name in __all__:
        from sagemaker_ssh_sandbox import control

        return getattr(control, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
