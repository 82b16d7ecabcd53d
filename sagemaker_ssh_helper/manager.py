"""Find the SSM managed instances behind SageMaker resources.

A container registers itself with SSM through an activation whose tags (``SSHResourceName``,
``SSHResourceArn``, ``SSHTimestamp``, ``SSHOwner``, ``SSHCreator``) are copied onto the managed
instance. An instance belongs to ``<name>`` of ARN type T when its SSHResourceName is ``name``
and its SSHResourceArn contains ``:<T>/``.

Lookups filter on the server by tag (``DescribeInstanceInformation`` with ``tag:SSHResourceName``)
and read tags only of the few matching instances, so the number of API calls does not grow with
the number of managed instances in the account.

``SSMManager`` keeps the constructor of SSH Helper v2 (``region_name,
sleep_between_retries_in_seconds=10, redo_attempts=5, clock_timestamp_override=None``); how the
old retry knobs map onto the deadline-based waiting is described in
:mod:`sagemaker_ssh_helper.manager_base`.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from sagemaker_ssh_helper import aws, fqdn
from sagemaker_ssh_helper.errors import AwsError
from sagemaker_ssh_helper.manager_base import SSMManagerBase, stderr_progress

logger = logging.getLogger(__name__)

TAG_NAME = "SSHResourceName"
TAG_ARN = "SSHResourceArn"
TAG_TIMESTAMP = "SSHTimestamp"
TAG_OWNER = "SSHOwner"
ONLINE = "Online"
# Above this many instances sharing one SSHResourceName (Studio's "default" app of every user),
# narrow the lookup with an exact SSHResourceArn filter instead of reading every instance's tags.
MAX_TAG_LOOKUPS = 20
# The listing scan: DescribeInstanceProperties pages 1,000 instances (DescribeInstanceInformation
# at most 50). Policies written before it was needed lack ssm:DescribeInstanceProperties: those
# (and a service that refuses its tag filter) fall back to DescribeInstanceInformation.
PROPERTIES_PAGE_SIZE = 1000
PROPERTIES_FALLBACK = ("AccessDeniedException", "InvalidFilterKey")
STUDIO_APP_TYPES = ("KernelGateway", "JupyterServer", "JupyterLab", "CodeEditor",
                    "RStudioServerPro", "RSessionGateway")


@dataclass(frozen=True)
class ManagedInstance:
    """One managed instance as DescribeInstanceInformation (or DescribeInstanceProperties)
    reports it, plus its tags if read."""

    instance_id: str
    ping_status: str
    computer_name: str = ""
    ip_address: str = ""
    registration_date: datetime | None = None
    last_ping: datetime | None = None
    name: str = ""
    activation_id: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_info(cls, info: Mapping[str, Any],
                  tags: Mapping[str, str] | None = None) -> ManagedInstance:
        return cls(
            instance_id=str(info["InstanceId"]),
            ping_status=str(info.get("PingStatus", "")),
            computer_name=str(info.get("ComputerName", "")),
            ip_address=str(info.get("IPAddress", "")),
            registration_date=info.get("RegistrationDate"),
            last_ping=info.get("LastPingDateTime"),
            name=str(info.get("Name", "")),
            activation_id=str(info.get("ActivationId", "")),
            tags=dict(tags or {}),
        )

    @property
    def online(self) -> bool:
        return self.ping_status == ONLINE

    @property
    def resource_arn(self) -> str:
        return self.tags.get(TAG_ARN, "")

    @property
    def resource_name(self) -> str:
        return self.tags.get(TAG_NAME, "")

    @property
    def timestamp(self) -> int:
        """SSHTimestamp (epoch seconds), else the registration time, else 0."""
        try:
            return int(self.tags[TAG_TIMESTAMP])
        except (KeyError, ValueError):
            pass
        if isinstance(self.registration_date, datetime):
            return int(self.registration_date.timestamp())
        return 0

    @property
    def label(self) -> str:
        return f"{self.computer_name or '?'} ({self.instance_id})"


def matches(instance: ManagedInstance, target: fqdn.Target, ignore_case: bool = False) -> bool:
    """docs/DESIGN.md's rule (2.3): same SSHResourceName and ``:<arn_type>/`` in SSHResourceArn."""
    name, arn = instance.resource_name, instance.resource_arn
    if not name or not arn or target.name is None:
        return False
    same = (name.lower() == target.name.lower()) if ignore_case else name == target.name
    if not same or f":{target.kind.arn_type}/" not in arn:
        return False
    if target.kind.kind != "studio" or not (target.domain or target.user_or_space):
        return True
    # app/<domain>/<user-or-space>/<AppType>/<app>; a user or space without a domain still
    # narrows the match to that user's (or space's) apps in any domain.
    parts = arn.split(":", 5)[-1].split("/")
    if len(parts) != 5:
        return False
    if target.domain and parts[1] != target.domain:
        return False
    return not target.user_or_space or parts[2].lower() == target.user_or_space.lower()


def newest_first(instances: Iterable[ManagedInstance]) -> list[ManagedInstance]:
    """Latest registration first, by the date SSM recorded (never by SSHTimestamp: the
    registrant sets that tag to anything it likes)."""
    def registered(i: ManagedInstance) -> float:
        date = i.registration_date
        return date.timestamp() if isinstance(date, datetime) else 0.0

    return sorted(instances, key=lambda i: (registered(i), i.instance_id), reverse=True)


class SSMManager(SSMManagerBase):
    """Resolve SageMaker resources to SSM managed instance IDs (``mi-…``), newest first.

    These lookups trust the instances' tags; ``sm-ssh`` also checks that the resource's own log
    names the instance before connecting (:mod:`sagemaker_ssh_helper.verify`).

    ``clock``/``sleep`` are injectable so tests can drive the waiting without real time;
    ``progress`` receives one human-readable line per wait step (stderr by default).
    ``clock_timestamp_override`` (epoch seconds) is the "now" of ``list_expired_ssh_instances``.
    """

    # Key of the ping status in the tag dictionaries of list_all_instances_and_fetch_tags().
    PING_STATUS = "$PingStatus"

    def __init__(self, region_name: str | None = None,
                 sleep_between_retries_in_seconds: float = 10, redo_attempts: int = 5,
                 clock_timestamp_override: float | None = None, session: Any = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 progress: Callable[[str], None] | None = stderr_progress,
                 poll_interval: float = 1.0, ssm_client: Any = None) -> None:
        super().__init__(region_name, sleep_between_retries_in_seconds, redo_attempts, session,
                         clock=clock, sleep=sleep, progress=progress,
                         poll_interval=poll_interval)
        self.clock_timestamp_override = clock_timestamp_override
        self._ssm: Any = ssm_client
        self._account: str | None = None
        self._properties_refused = False

    # -- clients -------------------------------------------------------------------------------
    @property
    def ssm(self) -> Any:
        if self._ssm is None:
            self._ssm = aws.client(self.session, "ssm", self.region_name)
        return self._ssm

    def _call(self, action: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as e:
            raise aws.explain(e, action) from e

    def describe(self, filters: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """All pages of DescribeInstanceInformation for ``filters`` (server-side filtering)."""
        paginator = self.ssm.get_paginator("describe_instance_information")
        pages = paginator.paginate(Filters=list(filters), PaginationConfig={"PageSize": 50})
        try:
            return [info for page in pages for info in page.get("InstanceInformationList", [])]
        except Exception as e:
            raise aws.explain(e, "ssm:DescribeInstanceInformation") from e

    def _scan_ssh_instances(self) -> list[dict[str, Any]]:
        """Every instance carrying the SSHResourceArn tag: DescribeInstanceProperties, 1,000 per
        page; DescribeInstanceInformation (50 per page) where that action is not allowed."""
        tagged: dict[str, Any] = {"Key": "tag-key", "Values": [TAG_ARN]}
        if not self._properties_refused:
            paginator = self.ssm.get_paginator("describe_instance_properties")
            pages = paginator.paginate(FiltersWithOperator=[{**tagged, "Operator": "Equal"}],
                                       PaginationConfig={"PageSize": PROPERTIES_PAGE_SIZE})
            try:
                return [p for page in pages for p in page.get("InstanceProperties", [])]
            except Exception as e:
                if aws.error_code(e) not in PROPERTIES_FALLBACK:
                    raise aws.explain(e, "ssm:DescribeInstanceProperties") from e
                logger.debug("ssm:DescribeInstanceProperties refused (%s): listing with "
                             "ssm:DescribeInstanceInformation", aws.error_code(e))
                self._properties_refused = True
        return self.describe([tagged])

    def tags(self, instance_id: str) -> dict[str, str]:
        response = self._call("ssm:ListTagsForResource", self.ssm.list_tags_for_resource,
                              ResourceType="ManagedInstance", ResourceId=instance_id)
        return {t["Key"]: t["Value"] for t in response.get("TagList", [])}

    def _with_tags(self, infos: Iterable[Mapping[str, Any]],
                   name: str | None = None) -> list[ManagedInstance]:
        """Attach tags: read them only when the instance's ``Name`` is not its resource ARN
        (``name`` is the SSHResourceName the lookup filtered on, if any)."""
        result = []
        for info in infos:
            arn = str(info.get("Name", ""))
            if arn.startswith("arn:") and ":sagemaker:" in arn:
                tags = {TAG_ARN: arn}
                if name is not None:
                    tags[TAG_NAME] = name
                else:
                    tags[TAG_NAME] = arn.rsplit("/", 1)[-1]
            else:
                tags = self.tags(str(info["InstanceId"]))
            result.append(ManagedInstance.from_info(info, tags))
        return result

    def account_id(self) -> str:
        if self._account is None:
            sts = aws.sts_client(self.session, self.region_name)
            identity = self._call("sts:GetCallerIdentity", sts.get_caller_identity)
            self._account = str(identity["Account"])
        return self._account

    # -- resolution ----------------------------------------------------------------------------
    def find(self, target: fqdn.Target) -> list[ManagedInstance]:
        """One lookup, every PingStatus: the instances of ``target``, newest first."""
        if target.name is None:
            raise ValueError("find() needs a single resource, not a list form")
        infos = self.describe([{"Key": f"tag:{TAG_NAME}", "Values": [target.name]}])
        if len(infos) > MAX_TAG_LOOKUPS and (target.kind.kind != "studio" or target.domain):
            logger.info("%d instances named %s: narrowing by ARN", len(infos), target.name)
            infos = self._describe_by_arn(target, extra_name_filter=True) or infos
        found = [i for i in self._with_tags(infos, target.name) if matches(i, target)]
        if not infos:
            found = self._find_ignoring_case(target)
        return newest_first(found)

    def _candidate_arns(self, target: fqdn.Target) -> list[str]:
        """Exact SSHResourceArn values for ``target``: SageMaker ARNs hold lowercased names."""
        prefix = (f"arn:{aws.partition_for_region(self.region_name)}:sagemaker:"
                  f"{self.region_name}:{self.account_id()}:")
        name = target.name or ""
        if target.kind.kind == "studio":
            if not (target.domain and target.user_or_space):
                return []
            paths = [f"app/{target.domain}/{target.user_or_space}/{t}/{name}"
                     for t in STUDIO_APP_TYPES]
        else:
            paths = [f"{target.kind.arn_type}/{name}"]
        values = {prefix + p for p in paths} | {prefix + p.lower() for p in paths}
        return sorted(values)

    def _describe_by_arn(self, target: fqdn.Target,
                         extra_name_filter: bool = False) -> list[dict[str, Any]]:
        arns = self._candidate_arns(target)
        if not arns:
            return []
        filters: list[dict[str, Any]] = [{"Key": f"tag:{TAG_ARN}", "Values": arns}]
        if extra_name_filter:
            filters.append({"Key": f"tag:{TAG_NAME}", "Values": [target.name]})
        return self.describe(filters)

    def _find_ignoring_case(self, target: fqdn.Target) -> list[ManagedInstance]:
        """``ssh`` lowercases ``%h``: look the name up by its (lowercased) ARN instead."""
        try:
            infos = self._describe_by_arn(target)
        except AwsError as e:  # a convenience: never fail the lookup because of it
            logger.debug("no case-insensitive lookup for %s: %s", target.name, e)
            return []
        found = [i for i in self._with_tags(infos) if matches(i, target, ignore_case=True)]
        if found:
            logger.info("matched %s ignoring case: SSHResourceName is %s",
                        target.name, found[0].resource_name)
        return found

    def resolve(self, target: fqdn.Target, timeout_in_sec: float = 0, expected_count: int = 1,
                not_earlier_than_timestamp: int = 0,
                accept: Callable[[ManagedInstance], bool] | None = None
                ) -> list[ManagedInstance]:
        """Wait until ``expected_count`` instances of ``target`` (that ``accept``, if given)
        are Online or the deadline passes; return every instance found (all statuses),
        newest first."""
        def fetch() -> list[ManagedInstance]:
            return [i for i in self.find(target) if i.timestamp >= not_earlier_than_timestamp]

        def online(found: list[ManagedInstance]) -> int:
            return sum(1 for i in found if i.online and (accept is None or accept(i)))

        return self.poll(fetch, online, self.wanted_count(expected_count),
                         max(0.0, timeout_in_sec),
                         lambda n, left: _waiting_line(target, expected_count, n, left))

    def instance_ids(self, target: fqdn.Target, timeout_in_sec: float = 0,
                     expected_count: int = 1, not_earlier_than_timestamp: int = 0) -> list[str]:
        """IDs of the Online instances of ``target``, newest first (may be fewer than
        ``expected_count`` once the deadline passed)."""
        found = self.resolve(target, timeout_in_sec, expected_count, not_earlier_than_timestamp)
        ids = [i.instance_id for i in found if i.online]
        if len(ids) < self.wanted_count(expected_count):
            logger.warning("found %d of %d expected online instance(s) of %s",
                           len(ids), expected_count, target.fqdn)
        return ids

    # -- the named lookups (public API) --------------------------------------------------------
    def _ids(self, kind: str, name: str, timeout_in_sec: float, expected_count: int,
             **studio: Any) -> list[str]:
        if name.startswith("mi-"):
            logger.warning("%r looks like a managed instance ID, not a resource name", name)
        target = fqdn.Target(kinds=(fqdn.kind(kind),), name=name,
                             user_or_space=studio.get("user"), domain=studio.get("domain"))
        return self.instance_ids(target, timeout_in_sec, expected_count,
                                 studio.get("not_earlier_than_timestamp", 0))

    def get_training_instance_ids(self, training_job_name: str, timeout_in_sec: float = 0,
                                  expected_count: int = 1) -> list[str]:
        return self._ids("training", training_job_name, timeout_in_sec, expected_count)

    def get_processing_instance_ids(self, processing_job_name: str, timeout_in_sec: float = 0,
                                    expected_count: int = 1) -> list[str]:
        return self._ids("processing", processing_job_name, timeout_in_sec, expected_count)

    def get_transformer_instance_ids(self, transform_job_name: str, timeout_in_sec: float = 0,
                                     expected_count: int = 1) -> list[str]:
        return self._ids("transform", transform_job_name, timeout_in_sec, expected_count)

    def get_endpoint_instance_ids(self, endpoint_name: str, timeout_in_sec: float = 0,
                                  expected_count: int = 1) -> list[str]:
        return self._ids("inference", endpoint_name, timeout_in_sec, expected_count)

    def get_notebook_instance_ids(self, instance_name: str, timeout_in_sec: float = 0,
                                  expected_count: int = 1) -> list[str]:
        return self._ids("notebook", instance_name, timeout_in_sec, expected_count)

    def get_studio_user_kgw_instance_ids(self, domain_id: str, user_profile_name: str,
                                         kgw_name: str = "default", timeout_in_sec: float = 0,
                                         not_earlier_than_timestamp: int = 0,
                                         expected_count: int = 1) -> list[str]:
        """Instances of app ``kgw_name`` of a Studio user profile or space in ``domain_id``
        (any domain when ``domain_id`` is empty: still only that user's or space's apps)."""
        if not user_profile_name:
            raise ValueError("user_profile_name is empty: use get_studio_kgw_instance_ids() "
                             "for an app of any user")
        return self._ids("studio", kgw_name, timeout_in_sec, expected_count,
                         domain=domain_id or None, user=user_profile_name,
                         not_earlier_than_timestamp=not_earlier_than_timestamp)

    def get_studio_kgw_instance_ids(self, kgw_name: str, timeout_in_sec: float = 0,
                                    not_earlier_than_timestamp: int = 0,
                                    expected_count: int = 1) -> list[str]:
        """Instances of Studio app ``kgw_name`` of any user/space (pick a user to narrow)."""
        return self._ids("studio", kgw_name, timeout_in_sec, expected_count,
                         not_earlier_than_timestamp=not_earlier_than_timestamp)

    def get_instance_ids_once(self, arn_resource_type: str, arn_resource_name: str,
                              arn_filter_regex: str | None = None,
                              not_earlier_than_timestamp: int = 0) -> list[str]:
        """One lookup of the Online instances of ``<arn_resource_type>/<arn_resource_name>``
        (e.g. ``training-job``, ``app``), newest first; ``arn_filter_regex`` must also match
        the instance's SSHResourceArn (e.g. ``:app/d-abc/alice/``)."""
        rk = fqdn.kind_for_arn_type(arn_resource_type)
        if rk is None:
            known = ", ".join(k.arn_type for k in fqdn.RESOURCE_KINDS)
            raise ValueError(f"unknown ARN resource type {arn_resource_type!r}: use one of "
                             f"{known}")
        regex = re.compile(arn_filter_regex) if arn_filter_regex else None
        found = self.find(fqdn.Target(kinds=(rk,), name=arn_resource_name))
        return [i.instance_id for i in found
                if i.online and i.timestamp >= not_earlier_than_timestamp
                and (regex is None or regex.search(i.resource_arn))]

    # -- listing and housekeeping --------------------------------------------------------------
    def list_all_instances_and_fetch_tags(self) -> dict[str, dict[str, str]]:
        """Every managed instance of the account (SSH Helper's or not) with all its tags, plus
        its ping status under ``SSMManager.PING_STATUS``.

        This is what the name says: one ListTagsForResource call per managed instance, so it
        is slow in a large account. ``ssh_instances_and_tags()`` returns the same mapping for
        SSH Helper instances only, from one filtered scan.
        """
        result: dict[str, dict[str, str]] = {}
        for info in self.describe([{"Key": "ResourceType", "Values": ["ManagedInstance"]}]):
            instance_id = str(info["InstanceId"])
            tags = self.tags(instance_id)
            tags[self.PING_STATUS] = str(info.get("PingStatus", ""))
            result[instance_id] = tags
        return result

    def ssh_instances_and_tags(self) -> dict[str, dict[str, str]]:
        """``list_all_instances_and_fetch_tags()``'s mapping for SSH Helper instances only
        (one tag-filtered scan; tags read only where the instance name is not the ARN)."""
        result: dict[str, dict[str, str]] = {}
        for inst in self.list_ssh_instances():
            tags = dict(inst.tags)
            tags[self.PING_STATUS] = inst.ping_status
            result[inst.instance_id] = tags
        return result

    def list_ssh_instances(self, ping_statuses: Sequence[str] | None = None
                           ) -> list[ManagedInstance]:
        """Every instance carrying SSH Helper tags (one filtered scan), with its resource ARN.

        The scan is DescribeInstanceProperties (1,000 per page), or DescribeInstanceInformation
        (50 per page) where the caller may not use it. The ARN comes from the instance's
        ``Name`` when the activation set it to the ARN; otherwise from ListTagsForResource (one
        call per SSH Helper instance).
        """
        if not ping_statuses:
            return newest_first(self._with_tags(self._scan_ssh_instances()))
        filters: list[dict[str, Any]] = [{"Key": "tag-key", "Values": [TAG_ARN]},
                                         {"Key": "PingStatus", "Values": list(ping_statuses)}]
        return newest_first(self._with_tags(self.describe(filters)))

    def list_expired_ssh_instances(self, expiration_days: float = 0,
                                   now: float | None = None) -> list[str]:
        """SSH Helper instances that are not Online and have not pinged for ``expiration_days``.

        Instances without SSH Helper tags are never returned.
        """
        if now is None:
            now = self.clock_timestamp_override
        cutoff = (time.time() if now is None else now) - expiration_days * 86400
        infos = self.describe([{"Key": "tag-key", "Values": [TAG_ARN]},
                               {"Key": "PingStatus", "Values": ["ConnectionLost", "Inactive"]}])
        expired = []
        for info in infos:
            last = info.get("LastPingDateTime") or info.get("RegistrationDate")
            if not isinstance(last, datetime) or last.timestamp() < cutoff:
                expired.append(str(info["InstanceId"]))
        logger.info("%d expired offline SSH instance(s)", len(expired))
        return expired

    def get_ssh_instance_timestamp(self, instance_id: str) -> int:
        try:
            return int(self.tags(instance_id).get(TAG_TIMESTAMP, 0))
        except ValueError:
            return 0

    def deregister(self, instance_id: str) -> bool:
        """Deregister ``instance_id``; an instance already gone counts as success (False)."""
        return aws.deregister_managed_instance(self.ssm, instance_id)


def _waiting_line(target: fqdn.Target, expected: int, online: int, left: float) -> str:
    what = f"{expected} instance{'s' if expected != 1 else ''}"
    return (f"waiting for {what} of {target.kind.description} {target.name}, "
            f"{online} online, {max(0, round(left))} s left")
