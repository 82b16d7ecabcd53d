"""SageMaker resources as the client sees them: their status, and ``sm-ssh list``'s table.

``list_rows`` joins the SageMaker list APIs (jobs of the last N days, ``PAGE_SIZE`` per page:
the APIs' maximum, where their default is 10) with ONE tag-filtered scan of the SSH Helper
managed instances (DescribeInstanceProperties, 1,000 per page; DescribeInstanceInformation, 50
per page, for policies without ssm:DescribeInstanceProperties), in memory: tags are read only
for instances whose Name is not their resource's ARN (registered by SSH Helper v2). 1,000 jobs
and 1,000 instances take 16 calls (``benchmarks/bench_list.py``).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sagemaker_ssh_helper import aws, cli, fqdn
from sagemaker_ssh_helper.errors import ResolutionError, UsageError
from sagemaker_ssh_helper.log import SSHLog

if TYPE_CHECKING:  # the manager is created by the caller
    from sagemaker_ssh_helper.manager import ManagedInstance, SSMManager

logger = logging.getLogger(__name__)


PAGE_SIZE = 100  # MaxResults of ListTrainingJobs, ListEndpoints, ListApps, ... at most 100
FINISHED = {"Completed", "Failed", "Stopped", "Stopping", "Deleting", "Deleted",
            "OutOfService"}


def _studio_apps(session: Any, region: str, domain: str | None, name: str
                 ) -> list[dict[str, Any]]:
    """Studio apps named ``name`` (in ``domain`` if given), every page of ListApps."""
    sm = session.client("sagemaker", region_name=region, config=aws.client_config(3))
    kwargs = {"DomainIdEquals": domain} if domain else {}
    return [app for page in sm.get_paginator("list_apps").paginate(
                **kwargs, PaginationConfig={"PageSize": PAGE_SIZE})
            for app in page.get("Apps", []) if str(app.get("AppName", "")).lower() ==
            name.lower()]


def _owner(app: Mapping[str, Any]) -> str:
    return str(app.get("UserProfileName") or app.get("SpaceName") or "")


def _studio_status(session: Any, region: str, target: fqdn.Target) -> str | None:
    """The status of the Studio app ``target`` names: the best of its app types."""
    try:
        apps = _studio_apps(session, region, target.domain, target.name or "")
    except Exception as e:
        logger.debug("ListApps: %s", e)
        return None
    if target.user_or_space:
        apps = [a for a in apps if _owner(a).lower() == target.user_or_space.lower()]
    statuses = [str(a.get("Status", "")) for a in apps]
    for status in ("InService", "Pending"):
        if status in statuses:
            return status
    return statuses[0] if statuses else "NotFound"


def studio_owner(session: Any, region: str, domain: str, app: str) -> str:
    """The user profile or space that runs ``app`` in ``domain``: exactly one, or a
    one-line error (no such app there, or several owners to choose from)."""
    try:
        apps = _studio_apps(session, region, domain, app)
    except Exception as e:
        raise aws.explain(e, "sagemaker:ListApps") from e
    owners = sorted({_owner(a) for a in apps if a.get("Status") not in FINISHED})
    if len(owners) == 1:
        return owners[0]
    if not owners:
        raise ResolutionError(
            f"no running Studio app {app} in domain {domain} ({region}): check the name "
            f"(`sm-ssh list studio.{fqdn.SUFFIX}`), or give the user profile or space "
            "(--user-profile-name / --space-name, or `sm-local-ssh-ide set-user-profile-name`)")
    raise UsageError(f"Studio app {app} runs for several users or spaces in domain {domain} "
                     f"({', '.join(owners)}): pass --user-profile-name or --space-name")


def resource_status(session: Any, region: str, target: fqdn.Target) -> str | None:
    """The resource's status, ``"NotFound"``, or None when it cannot be told (missing
    permissions)."""
    if target.kind.kind == "studio" and target.name is not None:
        return _studio_status(session, region, target)
    api = target.kind.api
    if api is None or target.name is None:
        return None
    sm = aws.client(session, "sagemaker", region)
    try:
        described = getattr(sm, api.describe_op)(**{api.name_key: target.name})
    except Exception as e:
        if aws.not_found(e, said=True):
            return "NotFound"
        logger.debug("%s %s: %s", api.describe_op, target.name, e)
        return None
    return str(described.get(api.status_key, "")) or None


def check_running(session: Any, region: str, target: fqdn.Target,
                  region_source: str = "the default region") -> None:
    """Fail at once for a resource that does not exist (here) or has finished."""
    status = resource_status(session, region, target)
    what = f"{target.kind.description} {target.name}"
    if target.kind.kind == "studio" and target.domain:
        what += f" of {target.user_or_space} in domain {target.domain}"
    if status == "NotFound":
        listing = target.kind.kind if not target.domain else \
            f"{target.user_or_space}.{target.domain}.studio"
        raise ResolutionError(
            f"no {what} in {region} ({region_source}): check the name "
            f"(`sm-ssh list {listing}.{fqdn.SUFFIX}`), or pass the region it runs "
            "in with --region (or AWS_REGION)")
    if status in FINISHED:
        raise ResolutionError(f"{what} is {status}: SSH is available only while it runs")


def logs_hint(session: Any, region: str, target: fqdn.Target) -> str:
    """Where to look when no instance registered."""
    if target.kind.logs is None or target.name is None:
        return ("check that the app calls setup_and_start_ssh() and look at its logs in the "
                "SageMaker Studio console")
    try:
        url = SSHLog(region_name=region, session=session).get_cloudwatch_url(
            target.kind.kind, target.name)
        return f"check that the entry point calls setup_and_start_ssh(), and its logs: {url}"
    except Exception as e:  # the hint is a convenience; never fail on it
        logger.debug("no console URL: %s", e)
        return "check the job's CloudWatch logs for errors from sm-setup-ssh / sm-init-ssm"


@dataclass
class Row:
    fqdn: str
    kind: str
    name: str
    status: str
    created: datetime | None = None
    instances: list[ManagedInstance] = field(default_factory=list)
    # "hybrid" (managed instances found), "native" (SageMaker's remote debugging), "" unknown
    transport: str = ""
    native_ssh: str = ""  # native: "Online", or why no session opens now

    @property
    def ssh(self) -> str:
        if self.native_ssh and not self.instances:
            return self.native_ssh
        if not self.instances:
            return "ssh:NotFound"
        if any(i.online for i in self.instances):
            return "Online"
        return self.instances[0].ping_status or "Unknown"

    def as_dict(self) -> dict[str, Any]:
        return {
            "fqdn": self.fqdn, "kind": self.kind, "name": self.name, "status": self.status,
            "ssh": self.ssh, "transport": self.transport or ("hybrid" if self.instances else ""),
            "created": self.created.isoformat() if self.created else None,
            "instances": [{"instance_id": i.instance_id, "ping_status": i.ping_status,
                           "computer_name": i.computer_name, "resource_arn": i.resource_arn}
                          for i in self.instances],
        }


def _list(session: Any, region: str, rk: fqdn.ResourceKind, days: int
          ) -> Iterator[tuple[str, str, str, datetime | None]]:
    """(name, ARN key, status, created) of one kind, all pages."""
    # Few retries: an API this account or endpoint does not offer must not stall the listing.
    sm = session.client("sagemaker", region_name=region, config=aws.client_config(3))
    api = rk.api
    if api is None:  # Studio apps
        for page in sm.get_paginator("list_apps").paginate(
                PaginationConfig={"PageSize": PAGE_SIZE}):
            for app in page.get("Apps", []):
                owner = app.get("UserProfileName") or app.get("SpaceName") or ""
                key = f"app/{app['DomainId']}/{owner}/{app['AppType']}/{app['AppName']}"
                yield (f"{app['AppName']}.{owner}.{app['DomainId']}", key.lower(),
                       str(app.get("Status", "")), app.get("CreationTime"))
        return
    kwargs: dict[str, Any] = {}
    if api.recent_only:
        kwargs["CreationTimeAfter"] = datetime.now(timezone.utc) - timedelta(days=days)
    for page in sm.get_paginator(api.list_op).paginate(
            **kwargs, PaginationConfig={"PageSize": PAGE_SIZE}):
        for item in page.get(api.list_key, []):
            yield (str(item[api.name_key]), fqdn.arn_key(str(item.get(api.arn_key, ""))),
                   str(item.get(api.status_key, "")), item.get("CreationTime"))


def _wanted(target: fqdn.Target, kind: str, name: str) -> bool:
    if kind not in {k.kind for k in target.kinds}:
        return False
    if kind == "studio" and target.domain:
        app, _, rest = name.partition(".")
        if rest.lower() != f"{target.user_or_space}.{target.domain}".lower():
            return False
        name = app
    return target.name is None or (name.split(".")[0].lower() == target.name.lower())


def list_rows(session: Any, region: str, target: fqdn.Target, manager: SSMManager,
              days: int = 30) -> list[Row]:
    by_arn: dict[str, list[ManagedInstance]] = {}
    for inst in manager.list_ssh_instances():
        by_arn.setdefault(fqdn.arn_key(inst.resource_arn), []).append(inst)
    rows: list[Row] = []
    for rk in target.kinds:
        try:
            for name, key, status, created in _list(session, region, rk, days):
                if _wanted(target, rk.kind, name):
                    rows.append(Row(f"{name}.{rk.kind}.{fqdn.SUFFIX}", rk.kind, name, status,
                                    created, by_arn.pop(key, [])))
        except Exception as e:  # one kind failing (permissions) must not hide the others
            action = rk.api.list_action if rk.api else "sagemaker:ListApps"
            why = " ".join(str(aws.explain(e, action)).split())
            cli.progress(f"sm-ssh: skipping {rk.description}s: {why[:200]}")
    for key, instances in by_arn.items():  # SSH instances of resources not listed above
        rk_ = fqdn.kind_for_arn_type(key.split("/", 1)[0])
        name = instances[0].resource_name or key.rsplit("/", 1)[-1]
        if rk_ is not None and rk_.kind == "studio":
            parts = key.split("/")  # app/<domain>/<user-or-space>/<type>/<app>
            name = f"{name}.{parts[2]}.{parts[1]}" if len(parts) == 5 else name
        if rk_ is not None and _wanted(target, rk_.kind, name):
            rows.append(Row(f"{name}.{rk_.kind}.{fqdn.SUFFIX}", rk_.kind, name, "-", None,
                            instances))
    from sagemaker_ssh_helper import native

    native.annotate(session, region, rows)
    return rows


def render(rows: list[Row], output: str = "table") -> str:
    if output == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2)
    table = [("FQDN", "STATUS", "SSH", "TRANSPORT", "INSTANCES")]
    for r in rows:
        shown = [i for i in r.instances if i.online] or r.instances[:1]
        table.append((r.fqdn, r.status, r.ssh, r.transport or ("hybrid" if r.instances else "-"),
                      ", ".join(f"{i.computer_name or '?'}={i.instance_id}" for i in shown)))
    widths = [max(len(row[c]) for row in table) for c in range(4)]
    return "\n".join(("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths))
                      + "  " + row[4]).rstrip() for row in table)
