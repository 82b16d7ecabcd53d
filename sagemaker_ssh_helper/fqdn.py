"""The one table of SageMaker resource kinds, and the ``<name>.<kind>.sagemaker`` grammar.

``RESOURCE_KINDS`` is the only mapping of a kind to its FQDN label, ARN resource type, default
local SSH port and ``sm-local-ssh-<script>``; to the SageMaker API calls that list and describe
it and the key of its status (:class:`SageMakerApi`); and to its SageMaker console page and
CloudWatch log group (:class:`Logs`). Everything else (``sm-ssh list``, the wrappers, the log
lookups, the trust check, ``sm-local-ssh-*``, SSH Helper v2's interactive API) reads it here.

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

from sagemaker_ssh_helper.errors import UsageError


@dataclass(frozen=True)
class SageMakerApi:
    """How boto3's SageMaker client lists and describes one kind of resource."""

    list_op: str       # paginated: "list_training_jobs"
    list_key: str      # the page's list: "TrainingJobSummaries"
    name_key: str      # the name, in the list and as Describe*'s argument: "TrainingJobName"
    arn_key: str       # "TrainingJobArn"
    status_key: str    # the status, in the list and in Describe*'s answer: "TrainingJobStatus"
    describe_op: str   # "describe_training_job"
    recent_only: bool  # jobs: list those created in the last N days only

    @property
    def list_action(self) -> str:
        """The IAM action of ``list_op``: ``sagemaker:ListTrainingJobs``."""
        return "sagemaker:" + "".join(word.title() for word in self.list_op.split("_"))


@dataclass(frozen=True)
class Logs:
    """Where the SageMaker console and CloudWatch Logs show one kind of resource."""

    console: str        # fragment of its SageMaker console page: "jobs" -> #/jobs/<name>
    group: str          # its log group; "{name}" stands for the resource's name
    stream_prefix: str  # its streams in the group start with this ("" = the whole group)
    container_output: bool  # the containers' output (the SSM agent's registration line) is there

    def log_group(self, name: str) -> str:
        return self.group.format(name=name)

    def streams(self, name: str) -> str:
        return self.stream_prefix.format(name=name)


@dataclass(frozen=True)
class ResourceKind:
    kind: str          # FQDN label: "training"
    arn_type: str      # ARN resource type: "training-job"
    default_port: int  # local port used by the sm-local-ssh-<script> commands
    description: str
    script: str        # sm-local-ssh-<script>; also SSH Helper v2's name of the kind
    api: SageMakerApi | None = None  # None: Studio apps (listed with ListApps per domain)
    logs: Logs | None = None         # None: Studio apps (their logs are per domain)


def _job_kind(kind: str, default_port: int, description: str, console: str) -> ResourceKind:
    """A kind of SageMaker job: its API, ARN and log group follow one naming scheme
    (``list_training_jobs``, ``TrainingJobSummaries``, ``training-job``,
    ``/aws/sagemaker/TrainingJobs``, one stream per node named ``<job>/...``)."""
    title = kind.title()  # "Training"
    return ResourceKind(
        kind, f"{kind}-job", default_port, description, kind,
        SageMakerApi(f"list_{kind}_jobs", f"{title}JobSummaries", f"{title}JobName",
                     f"{title}JobArn", f"{title}JobStatus", f"describe_{kind}_job",
                     recent_only=True),
        Logs(console, f"/aws/sagemaker/{title}Jobs", "{name}/", container_output=True))


RESOURCE_KINDS: tuple[ResourceKind, ...] = (
    _job_kind("training", 11022, "training job", console="jobs"),
    _job_kind("processing", 14022, "processing job", console="processing-jobs"),
    _job_kind("transform", 16022, "batch transform job", console="transform-jobs"),
    ResourceKind(
        "inference", "endpoint", 12022, "endpoint", "inference",
        SageMakerApi("list_endpoints", "Endpoints", "EndpointName", "EndpointArn",
                     "EndpointStatus", "describe_endpoint", recent_only=False),
        # one log group per endpoint; its streams are "<variant>/<instance>"
        Logs("endpoints", "/aws/sagemaker/Endpoints/{name}", "", container_output=True)),
    ResourceKind(
        "notebook", "notebook-instance", 17022, "notebook instance", "notebook",
        SageMakerApi("list_notebook_instances", "NotebookInstances", "NotebookInstanceName",
                     "NotebookInstanceArn", "NotebookInstanceStatus",
                     "describe_notebook_instance", recent_only=False),
        # the lifecycle configurations' output only
        Logs("notebook-instances", "/aws/sagemaker/NotebookInstances", "{name}/",
             container_output=False)),
    ResourceKind("studio", "app", 10022, "SageMaker Studio app", "ide"),
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


def kind_for_arn_type(arn_type: str) -> ResourceKind | None:
    return _BY_ARN_TYPE.get(arn_type)


def arn_key(arn: str) -> str:
    """The resource part of an ARN, lowercased as SageMaker writes names in ARNs
    (``training-job/my-job``): what SSH instances and resources are matched on."""
    return arn.split(":", 5)[-1].lower() if arn.count(":") >= 5 else ""


@dataclass(frozen=True)
class Target:
    """A parsed FQDN. ``name`` is None for list forms."""

    kinds: tuple[ResourceKind, ...]
    name: str | None = None
    user_or_space: str | None = None  # Studio only
    domain: str | None = None         # Studio only

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


def format_fqdn(kind_name: str, name: str, user_or_space: str | None = None,
                domain: str | None = None) -> str:
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
