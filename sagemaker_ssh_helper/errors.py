"""Domain errors: each carries a one-line, actionable message and the exit code a CLI returns
(:func:`sagemaker_ssh_helper.cli.guarded_main` prints the one and returns the other)."""
from __future__ import annotations


class SSHHelperError(Exception):
    """An error the user can act on. CLIs print ``str(e)`` as one line and exit ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SSHHelperError):
    """Bad command-line input (exit 2, like argparse)."""

    exit_code = 2


class ResolutionError(SSHHelperError):
    """The resource or its managed instance could not be found or is not usable."""

    exit_code = 3


class AwsError(SSHHelperError):
    """An AWS API call failed in a way the user must fix (credentials, permissions, limits)."""

    exit_code = 4


class ToolMissing(SSHHelperError):
    """A program the command runs is not installed (exit 127, as a shell reports it)."""

    exit_code = 127
