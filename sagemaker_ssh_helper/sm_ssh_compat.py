"""``SageMakerSecureShellHelper`` and ``read_version``: the Python face of ``sm-ssh`` in SSH
Helper v2, importable from :mod:`sagemaker_ssh_helper.sm_ssh`.

The FQDN helpers keep v2's answers (``fqdn_to_type("x.studio.sagemaker") == "ide"``, ``"all"``
for anything else); ``list``, ``start_proxy`` and ``connect_ports`` run this package's
``sm-ssh list`` / ``start-proxy`` / ``connect`` (one filtered scan, typed one-line errors)
instead of v2's shell scripts, and raise ``SSHHelperError`` when they fail.
"""
from __future__ import annotations

from collections.abc import Sequence

from sagemaker_ssh_helper import __version__
from sagemaker_ssh_helper import fqdn as fqdn_table
from sagemaker_ssh_helper.errors import SSHHelperError

# v2's resource types are the kinds' scripts ("ide": a Studio app of a user profile), and
# "ide-space" for a Studio app of a space.
_SPACE_SUFFIX = "space.sagemaker"


def read_version() -> str:
    """This package's version (the ``VERSION`` file next to it)."""
    return __version__


def _run(argv: list[str], what: str) -> None:
    from sagemaker_ssh_helper import sm_ssh

    code = sm_ssh.main(argv)
    if code:
        raise SSHHelperError(f"sm-ssh {what} failed (exit {code})", code)


class SageMakerSecureShellHelper:
    """``sm-ssh`` as a class: FQDN parsing helpers and the list/connect/proxy commands."""

    resources = ["ide", "training", "processing", "transform", "inference", "notebook"]

    @staticmethod
    def fqdn_to_type(fqdn: str) -> str:
        """``ide``, ``ide-space``, ``training``, ``processing``, ``transform``, ``inference``,
        ``notebook``; ``all`` for ``sagemaker`` and anything not ending in a kind."""
        text = str(fqdn).strip().rstrip(".").lower()
        if text == _SPACE_SUFFIX or text.endswith("." + _SPACE_SUFFIX):
            return "ide-space"
        labels = text.split(".")
        scripts = {rk.kind: rk.script for rk in fqdn_table.RESOURCE_KINDS}
        if len(labels) >= 2 and labels[-1] == fqdn_table.SUFFIX and labels[-2] in scripts:
            return scripts[labels[-2]]
        return "all"

    @classmethod
    def type_to_fqdn(cls, resource_type: str) -> str:
        if resource_type == "ide-space":
            return _SPACE_SUFFIX
        kinds = {k.script: k.kind for k in fqdn_table.RESOURCE_KINDS}
        if resource_type not in kinds:
            raise ValueError(f"unknown resource type {resource_type!r}: use one of "
                             f"{', '.join([*kinds, 'ide-space'])}")
        return f"{kinds[resource_type]}.{fqdn_table.SUFFIX}"

    @staticmethod
    def fqdn_to_name(fqdn: str) -> str:
        """The resource (or app) name: the first label of a name with a kind, else ''."""
        return fqdn.split(".")[0] if fqdn.count(".") > 1 else ""

    @staticmethod
    def fqdn_to_studio_domain_id(fqdn: str) -> str:
        """``d-…`` of ``<app>.<user>.<domain>.studio.sagemaker`` or
        ``<user>.<domain>.studio.sagemaker``; '' otherwise."""
        labels = fqdn.split(".")
        if len(labels) == 5:
            return labels[2]
        return labels[1] if len(labels) == 4 else ""

    @staticmethod
    def fqdn_to_studio_user_name(fqdn: str) -> str:
        labels = fqdn.split(".")
        if len(labels) == 5:
            return labels[1]
        return labels[0] if len(labels) == 4 else ""

    fqdn_to_studio_space_name = fqdn_to_studio_user_name

    @staticmethod
    def print_version() -> None:
        print(f"SageMaker SSH Helper v{read_version()}", flush=True)

    def list(self, fqdn: str) -> None:
        """``sm-ssh list <fqdn>``: the resources and their SSH status, one joined listing."""
        self.print_version()
        _run(["list", fqdn], f"list {fqdn}")

    @staticmethod
    def start_proxy(fqdn: str) -> None:
        """``sm-ssh start-proxy <fqdn>``: relay stdin/stdout to the container's sshd."""
        _run(["start-proxy", fqdn], f"start-proxy {fqdn}")

    def connect_ports(self, fqdn: str, extra_args: Sequence[str]) -> None:
        """``sm-ssh connect <fqdn> <extra_args…>`` (e.g. ``["-L", "8080:localhost:8080"]``)."""
        _run(["connect", fqdn, *extra_args], f"connect {fqdn}")
