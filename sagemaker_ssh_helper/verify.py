"""Does a managed instance really belong to the resource it claims? (the client's trust check)

Tags on a managed instance are set by whoever created the activation, so any job may claim to be
any other (``SSHResourceName``, ``SSHResourceArn``, ``SSHOwner`` are just strings). What another
job cannot write is the resource's own log: SageMaker sends the container's output to the
resource's CloudWatch log streams, and the container prints the SSM agent's line

    Successfully registered the instance with AWS SSM using Managed instance-id: mi-...

So an instance is accepted for a job or endpoint only when:

* the resource's log names it (ONE ``FilterLogEvents`` call with that phrase, on the job's stream
  prefix ``<job>/`` or the endpoint's own log group; a few more pages at most);
* the resource has not finished, and the instance did not register before the resource was
  created (``Describe*``, read in the background while the key is pushed, checked before any
  session starts).

Studio apps and notebook instances do not send their output to CloudWatch where the client could
read it; their instances are not verified this way (see IAM_SSM_Setup.md, "Trust model").
"""
from __future__ import annotations

import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from sagemaker_ssh_helper import aws, cli, fqdn, resources
from sagemaker_ssh_helper.errors import AwsError, ResolutionError

if TYPE_CHECKING:  # the caller holds the instances
    from sagemaker_ssh_helper.manager import ManagedInstance

logger = logging.getLogger(__name__)

REGISTRATION_TEXT = "Successfully registered the instance with AWS SSM using Managed instance-id"
REGISTRATION_RE = re.compile(re.escape(REGISTRATION_TEXT) + r": (mi-[0-9a-fA-F]+)")
MAX_PAGES = 5          # FilterLogEvents pages read at most per check
CLOCK_SLACK = 120.0    # seconds: SSM's and SageMaker's clocks, and log timestamps
FRESH_SECONDS = 5.0    # a description the caller just read stands for a new one this long


def verifiable(target: fqdn.Target) -> bool:
    """Whether instances of ``target``'s kind can be checked against the resource's log."""
    logs = target.kind.logs
    return logs is not None and logs.container_output and target.name is not None


@dataclass
class Evidence:
    """What the resource itself says: the instances its log names, its status and start."""

    registered: dict[str, float] = field(default_factory=dict)  # mi- id -> log time (epoch s)
    status: str | None = None
    created: float | None = None
    log_error: BaseException | None = None

    def reason(self, instance: ManagedInstance, target: fqdn.Target) -> str | None:
        """None if ``instance`` is the resource's, else why not (a phrase)."""
        if self.log_error is not None:
            return f"its log cannot be read ({self.log_error})"
        if instance.instance_id not in self.registered:
            return f"the {target.kind.description}'s log does not name it"
        registered = instance.registration_date
        if self.created is not None and isinstance(registered, datetime) \
                and registered.timestamp() < self.created - CLOCK_SLACK:
            return (f"it registered before the {target.kind.description} was created "
                    f"({registered:%Y-%m-%d %H:%M:%S})")
        return None


def log_source(target: fqdn.Target) -> tuple[str, str]:
    """(log group, stream name prefix) holding ``target``'s container output."""
    logs, name = target.kind.logs, target.name or ""
    if logs is None or not logs.container_output:
        raise ValueError(f"the output of a {target.kind.description} is not in CloudWatch Logs")
    return logs.log_group(name), logs.streams(name)


def registrations(logs: Any, target: fqdn.Target) -> dict[str, float]:
    """``{mi-id: epoch seconds}`` of the registration lines in ``target``'s own log streams."""
    group, prefix = log_source(target)
    kwargs: dict[str, Any] = {"logGroupName": group, "filterPattern": f'"{REGISTRATION_TEXT}"'}
    if prefix:
        kwargs["logStreamNamePrefix"] = prefix
    found: dict[str, float] = {}
    for _ in range(MAX_PAGES):
        try:
            page = logs.filter_log_events(**kwargs)
        except Exception as e:
            if aws.error_code(e) == "ResourceNotFoundException":
                return found  # no log yet
            raise aws.explain(e, f"logs:FilterLogEvents on {group}") from e
        for event in page.get("events", []):
            # the service filters by prefix already; checked here too, it is the whole point
            if prefix and not str(event.get("logStreamName", "")).startswith(prefix):
                continue
            match = REGISTRATION_RE.search(str(event.get("message", "")))
            if match:
                found.setdefault(match.group(1), float(event.get("timestamp", 0)) / 1000)
        token = page.get("nextToken")
        if not token:
            break
        kwargs["nextToken"] = token
    return found


def describe(sm: Any, target: fqdn.Target) -> tuple[str | None, float | None]:
    """(status or "NotFound", creation time) of ``target``; (None, None) when it cannot be told
    (no permission: the log check still applies)."""
    api = target.kind.api
    if api is None:
        return None, None
    try:
        described = getattr(sm, api.describe_op)(**{api.name_key: target.name})
    except Exception as e:
        if aws.not_found(e, said=True):
            return "NotFound", None
        logger.debug("%s %s: %s", api.describe_op, target.name, e)
        return None, None
    return status_and_creation(described, target)


def status_and_creation(described: dict[str, Any], target: fqdn.Target
                        ) -> tuple[str | None, float | None]:
    api = target.kind.api
    created = described.get("CreationTime")
    return (str(described.get(api.status_key, "")) or None if api is not None else None,
            created.timestamp() if isinstance(created, datetime) else None)


class Verifier:
    """The evidence of one resource. Its log is read at once in a thread (the instance lookup
    runs meanwhile); its description once an instance was chosen (``describe_later``), in
    another thread with a session of its own, so that loading the SageMaker client overlaps the
    key push instead of adding to the lookup.
    While waiting for an Online instance whose registration line has not reached the log yet,
    the log is read again (at most every ``interval``)."""

    def __init__(self, session: Any, region: str, target: fqdn.Target,
                 describe_session: Callable[[], Any] | None = None,
                 interval: float = 2.0, described: dict[str, Any] | None = None) -> None:
        """``described``: the resource's description if the caller just read it (used instead
        of a second call when the description is needed within ``FRESH_SECONDS``)."""
        self.session, self.region, self.target, self.interval = session, region, target, interval
        self._given = (time.monotonic(), described) if described is not None else None
        logs = aws.client(session, "logs", region)  # made here: sessions are not thread-safe
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")
        self._logged = self._pool.submit(registrations, logs, target)
        self._describe_session = describe_session
        self._described: Future[tuple[str | None, float | None]] | None = None
        self._evidence: Evidence | None = None
        self._read_at = 0.0

    def describe_later(self) -> None:
        """Start the description in the background (a session and client of its own: loading
        the SageMaker client costs more than the call; it overlaps what comes next)."""
        if self._described is None and self._given is not None \
                and time.monotonic() - self._given[0] <= FRESH_SECONDS:
            done: Future[tuple[str | None, float | None]] = Future()
            done.set_result(status_and_creation(self._given[1], self.target))
            self._described = done
        if self._described is None:
            make = self._describe_session
            self._described = self._pool.submit(
                lambda: describe(aws.client(make() if make else self.session, "sagemaker",
                                            self.region), self.target))
            self._pool.shutdown(wait=False)

    @property
    def evidence(self) -> Evidence:
        """The log's registrations (waits for the first read only)."""
        if self._evidence is None:
            evidence = Evidence()
            try:
                evidence.registered = self._logged.result()
            except AwsError as e:
                evidence.log_error = e
            self._evidence = evidence
            self._read_at = time.monotonic()
        return self._evidence

    def described(self) -> Evidence:
        """The evidence with the resource's status and creation time (waits for them)."""
        evidence = self.evidence
        if evidence.status is None and evidence.created is None:
            self.describe_later()
            assert self._described is not None
            evidence.status, evidence.created = self._described.result()
        return evidence

    def check_running(self, region_source: str) -> None:
        """Fail for a resource that does not exist (here) or has finished."""
        what = f"{self.target.kind.description} {self.target.name}"
        status = self.described().status
        if status == "NotFound":
            raise ResolutionError(
                f"no {what} in {self.region} ({region_source}): check the name "
                f"(`sm-ssh list {self.target.kind.kind}.{fqdn.SUFFIX}`), or pass the region it "
                "runs in with --region (or AWS_REGION)")
        if status in resources.FINISHED:
            raise ResolutionError(f"{what} is {status}: SSH is available only while it runs")

    def confirm(self, inst: ManagedInstance, region_source: str) -> None:
        """The sanity checks of the resource's description for the chosen instance: it runs,
        and the instance did not register before it was created."""
        self.check_running(region_source)
        why = self.described().reason(inst, self.target)
        if why is not None:
            raise ResolutionError(f"{self.target.fqdn}: refusing {inst.label}: {why}; connect "
                                  f"with --instance {inst.instance_id} if you checked it")

    def accepts(self, inst: ManagedInstance) -> bool:
        evidence = self.evidence
        if evidence.reason(inst, self.target) is None:
            return True
        if (inst.online and evidence.log_error is None
                and time.monotonic() - self._read_at >= self.interval):
            try:
                evidence.registered.update(
                    registrations(aws.client(self.session, "logs", self.region), self.target))
            except AwsError as e:
                evidence.log_error = e
            self._read_at = time.monotonic()
            return evidence.reason(inst, self.target) is None
        return False

    def keep_verified(self, found: list[ManagedInstance]) -> list[ManagedInstance]:
        """The Online instances of ``found`` the resource's log confirms (all of ``found`` when
        none is Online, for the offline message). Each one refused is named on stderr, and a
        one-line error says how to go on when none is left."""
        verified, rejected = split([i for i in found if i.online], self.evidence, self.target)
        for inst, why in rejected:
            cli.progress(f"sm-ssh: ignoring {inst.label}: it claims to be {self.target.fqdn}, "
                         f"but {why}")
        if not verified and rejected:
            inst, why = rejected[0]
            raise ResolutionError(
                f"{self.target.fqdn}: no instance could be verified ({inst.instance_id}: {why})"
                f"; if you checked that {inst.instance_id} is this "
                f"{self.target.kind.description}'s (its log names it), connect with "
                f"--instance {inst.instance_id}")
        return verified or found


def split(instances: list[ManagedInstance], evidence: Evidence, target: fqdn.Target
          ) -> tuple[list[Any], list[tuple[Any, str]]]:
    """(verified instances, [(rejected instance, why)]), in the order given."""
    verified, rejected = [], []
    for inst in instances:
        why = evidence.reason(inst, target)
        if why is None:
            verified.append(inst)
        else:
            rejected.append((inst, why))
    return verified, rejected
