"""The one table of SageMaker resource kinds, and the ``<name>.<kind>.sagemaker`` grammar.

Everything that maps a kind to its FQDN suffix, ARN resource type or default local SSH port
reads it from ``RESOURCE_KINDS``; nothing else repeats the mapping.

Grammar (case of the suffixes is ignored; the resource name keeps its case):

- ``sagemaker``                                     list every kind
- ``<kind>.sagemaker``                              list one kind
- ``<name>.<kind>.sagemaker``                       one resource (``kind`` not ``studio``)
- ``<app>.studio.sagemaker``                        a Studio app by name
- ``<user-or-space>.<domain>.studio.sagemaker``     list the apps of a user/space
- ``<app>.<user-or-space>.<domain>.studio.sagemaker``  one Studio app
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from sagemaker_ssh_helper.errors import UsageError


@dataclass(frozen=True)
class ResourceKind:
    kind: str          # FQDN label: "training"
    arn_type: str      # ARN resource type: "training-job"
    default_port: int  # local port used by the sm-local-ssh-<kind> scripts
    description: str


RESOURCE_KINDS: tuple[ResourceKind, ...] = (
    ResourceKind("training", "training-job", 11022, "training job"),
    ResourceKind("processing", "processing-job", 14022, "processing job"),
    ResourceKind("transform", "transform-job", 16022, "batch transform job"),
    ResourceKind("inference", "endpoint", 12022, "endpoint"),
    ResourceKind("notebook", "notebook-instance", 17022, "notebook instance"),
    ResourceKind("studio", "app", 10022, "SageMaker Studio app"),
)
SUFFIX = "sagemaker"
_BY_KIND = {k.kind: k for k in RESOURCE_KINDS}
_BY_ARN_TYPE = {k.arn_type: k for k in RESOURCE_KINDS}
# SageMaker resource names, Studio user profiles/spaces and domain IDs: no dots, no spaces.
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?$")


def kind(name: str) -> ResourceKind:
    try:
        return _BY_KIND[name]
    except KeyError:
        known = ", ".join(_BY_KIND)
        raise UsageError(f"unknown resource kind {name!r}: use one of {known}") from None


def kind_for_arn_type(arn_type: str) -> Optional[ResourceKind]:
    return _BY_ARN_TYPE.get(arn_type)


@dataclass(frozen=True)
class Target:
    """A parsed FQDN. ``name`` is None for list forms."""

    kinds: tuple[ResourceKind, ...]
    name: Optional[str] = None
    user_or_space: Optional[str] = None  # Studio only
    domain: Optional[str] = None         # Studio only

    @property
    def is_list(self) -> bool:
        return self.name is None

    @property
    def kind(self) -> ResourceKind:
        return self.kinds[0]

    @property
    def fqdn(self) -> str:
        if self.is_list:
            if len(self.kinds) > 1:
                return SUFFIX
            if self.user_or_space and self.domain:
                return f"{self.user_or_space}.{self.domain}.studio.{SUFFIX}"
            return f"{self.kind.kind}.{SUFFIX}"
        return format_fqdn(self.kind.kind, self.name or "", self.user_or_space, self.domain)


def format_fqdn(kind_name: str, name: str, user_or_space: Optional[str] = None,
                domain: Optional[str] = None) -> str:
    if kind_name == "studio" and user_or_space and domain:
        return f"{name}.{user_or_space}.{domain}.studio.{SUFFIX}"
    return f"{name}.{kind(kind_name).kind}.{SUFFIX}"


def parse(fqdn: str) -> Target:
    """Parse ``fqdn``; raise ``UsageError`` with the accepted forms when it is malformed."""
    text = fqdn.strip().rstrip(".")
    labels = text.split(".") if text else []
    if not labels or labels[-1].lower() != SUFFIX:
        raise UsageError(_malformed(fqdn, f"it must end with '.{SUFFIX}'"))
    labels = labels[:-1]
    if not labels:
        return Target(kinds=RESOURCE_KINDS)
    kind_label = labels[-1].lower()
    if kind_label not in _BY_KIND:
        raise UsageError(_malformed(fqdn, f"unknown kind {labels[-1]!r}"))
    rk = _BY_KIND[kind_label]
    names = labels[:-1]
    for label in names:
        if not _LABEL_RE.match(label):
            raise UsageError(_malformed(fqdn, f"invalid name {label!r}"))
    if not names:
        return Target(kinds=(rk,))
    if rk.kind != "studio":
        if len(names) != 1:
            raise UsageError(_malformed(fqdn, f"'{rk.kind}' takes one name before it"))
        return Target(kinds=(rk,), name=names[0])
    if len(names) == 1:
        return Target(kinds=(rk,), name=names[0])
    if len(names) == 2:
        return Target(kinds=(rk,), user_or_space=names[0], domain=names[1])
    if len(names) == 3:
        return Target(kinds=(rk,), name=names[0], user_or_space=names[1], domain=names[2])
    raise UsageError(_malformed(fqdn, "too many labels before 'studio'"))


def parse_resource(fqdn: str) -> Target:
    """Like ``parse`` but reject list-only forms (used by connect / start-proxy)."""
    target = parse(fqdn)
    if target.is_list:
        raise UsageError(
            f"{fqdn!r} names a list, not one resource: connect to "
            f"'<name>.{target.kind.kind if len(target.kinds) == 1 else '<kind>'}.{SUFFIX}' "
            f"(run `sm-ssh list {fqdn}` to see the names)"
        )
    return target


def _malformed(fqdn: str, why: str) -> str:
    kinds = "|".join(k.kind for k in RESOURCE_KINDS if k.kind != "studio")
    return (f"malformed name {fqdn!r}: {why}; expected '<name>.<{kinds}>.{SUFFIX}', "
            f"'<app>[.<user-or-space>.<domain>].studio.{SUFFIX}' or '[<kind>.]{SUFFIX}'")
