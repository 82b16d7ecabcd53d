"""SageMaker SSH Helper: SSH into SageMaker jobs, endpoints and Studio apps over AWS SSM.

This module is imported inside every user's training/processing/inference container, so it must
stay light: no SageMaker SDK and no boto3 at import time. The container API is re-exported lazily.
"""
from __future__ import annotations

import os

# Nothing but os here: in a container nothing has imported pathlib or typing yet, and either
# would be most of the cost of importing this package (hence open() for VERSION).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import timedelta

with open(os.path.join(os.path.dirname(__file__), "VERSION"), encoding="utf-8") as _file:
    __version__ = _file.read().strip()

__all__ = [
    "__version__",
    "setup_and_start_ssh",
    "is_last_session_timeout",
    "is_profiler_issues_found",
]


def setup_and_start_ssh() -> None:
    """Start sshd + the SSM agent in this container and hold until the user connects.

    Driven by the env vars the launch-side wrappers set (START_SSH, SSH_SSM_ROLE, ...).
    """
    from sagemaker_ssh_helper.bootstrap import setup_and_start_ssh as _impl

    _impl()


def is_last_session_timeout(time_delta: timedelta) -> bool:
    """True once no SSM session and no SSH session has been open for ``time_delta``."""
    from sagemaker_ssh_helper.idle import is_last_session_timeout as _impl

    return _impl(time_delta)


def is_profiler_issues_found() -> bool:
    """True if SageMaker Debugger/Profiler rules of this training job reported issues."""
    from sagemaker_ssh_helper.idle import is_profiler_issues_found as _impl

    return _impl()
