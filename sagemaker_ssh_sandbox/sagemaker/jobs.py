"""The SageMaker job operations the sandbox serves itself (moto drops Environment and completes
jobs at once): Create/Describe/Stop/List for training, processing and transform jobs, plus tags
on those jobs. Requests and responses are the AWS JSON 1.1 bodies as dicts.

Describe* returns what Create* received, with the real lifecycle added by
:mod:`sagemaker_ssh_sandbox.sagemaker.runner`: InProgress while containers run, then Completed,
Failed (with FailureReason) or Stopped.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_sandbox.sagemaker import remote_debug

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
RULE_STATUSES = ("InProgress", "NoIssuesFound", "IssuesFound", "Error", "Stopping", "Stopped")


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Kind:
    key: str          # training | processing | transform
    noun: str         # TrainingJob
    arn_type: str     # training-job
    required: tuple[str, ...]
    start_field: str  # TrainingStartTime
    end_field: str


KINDS = {
    "training": Kind("training", "TrainingJob", "training-job",
                     ("AlgorithmSpecification", "RoleArn", "OutputDataConfig", "ResourceConfig",
                      "StoppingCondition"), "TrainingStartTime", "TrainingEndTime"),
    "processing": Kind("processing", "ProcessingJob", "processing-job",
                       ("ProcessingResources", "AppSpecification", "RoleArn"),
                       "ProcessingStartTime", "ProcessingEndTime"),
    "transform": Kind("transform", "TransformJob", "transform-job",
                      ("ModelName", "TransformInput", "TransformOutput", "TransformResources"),
                      "TransformStartTime", "TransformEndTime"),
}

OPERATIONS: dict[str, tuple[str, str]] = {
    f"{verb}{kind.noun}{'s' if verb == 'List' else ''}": (kind.key, verb.lower())
    for kind in KINDS.values() for verb in ("Create", "Describe", "Stop", "List")
}
OPERATIONS["UpdateTrainingJob"] = ("training", "update")
TAG_OPERATIONS = ("AddTags", "ListTags", "DeleteTags")


@dataclass
class Job:
    kind: Kind
    name: str
    arn: str
    request: dict[str, Any]
    created: float = field(default_factory=time.time)
    status: str = "InProgress"
    secondary: str = "Starting"
    failure_reason: str | None = None
    exit_message: str | None = None
    started: float | None = None
    ended: float | None = None
    modified: float = field(default_factory=time.time)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    model_artifacts: str | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue[tuple[Any, int | None]] = field(default_factory=queue.Queue)
    containers: list[Any] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def set_secondary(self, status: str, message: str, now: float | None = None) -> None:
        with self.lock:
            now = time.time() if now is None else now
            if self.transitions and "EndTime" not in self.transitions[-1]:
                self.transitions[-1]["EndTime"] = now
            self.transitions.append({"Status": status, "StartTime": now,
                                     "StatusMessage": message})
            self.secondary = status
            self.modified = now

    def finish(self, status: str, secondary: str, message: str,
               failure_reason: str | None = None) -> None:
        with self.lock:
            self.status = status
            self.failure_reason = failure_reason
            self.ended = self.ended or time.time()
            self.set_secondary(secondary, message, now=self.ended)
            self.transitions[-1]["EndTime"] = self.ended
            for statuses in self.rules.values():
                for rule in statuses:
                    if rule["RuleEvaluationStatus"] == "InProgress":
                        rule["RuleEvaluationStatus"] = (
                            "NoIssuesFound" if status == "Completed" else "Stopped")
                        rule["LastModifiedTime"] = self.ended

    @property
    def done(self) -> bool:
        return self.status in ("Completed", "Failed", "Stopped")

    def describe(self) -> dict[str, Any]:
        k = self.kind
        with self.lock:
            out = {key: value for key, value in self.request.items() if key != "Tags"}
            out.update({
                f"{k.noun}Arn": self.arn, f"{k.noun}Status": self.status,
                "CreationTime": self.created, "LastModifiedTime": self.modified,
            })
            if self.started is not None:
                out[k.start_field] = self.started
            if self.ended is not None:
                out[k.end_field] = self.ended
            if self.failure_reason:
                out["FailureReason"] = self.failure_reason
            if self.exit_message and k.key == "processing":
                out["ExitMessage"] = self.exit_message
            if k.key == "training":
                out.update(self._training_fields())
            return json.loads(json.dumps(out, default=str))

    def _training_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "SecondaryStatus": self.secondary,
            "SecondaryStatusTransitions": [dict(t) for t in self.transitions],
            "ModelArtifacts": {"S3ModelArtifacts": self.model_artifacts or ""},
        }
        for prefix, statuses in self.rules.items():
            out[f"{prefix}RuleEvaluationStatuses"] = [dict(r) for r in statuses]
        profiler = self.request.get("ProfilerConfig")
        out["ProfilingStatus"] = ("Enabled" if profiler and not profiler.get("DisableProfiler")
                                  else "Disabled")
        if self.started is not None:
            seconds = int((self.ended or time.time()) - self.started)
            out["TrainingTimeInSeconds"] = out["BillableTimeInSeconds"] = seconds
        return out

    def summary(self) -> dict[str, Any]:
        k = self.kind
        full = self.describe()
        keys = [f"{k.noun}Name", f"{k.noun}Arn", "CreationTime", k.end_field, "LastModifiedTime",
                f"{k.noun}Status", "FailureReason", "SecondaryStatus", "ExitMessage"]
        return {key: full[key] for key in keys if key in full}


Runner = Callable[[Job], None]


class JobsAPI:
    """Job records and the JSON 1.1 operations on them; ``runner(job)`` executes a new job."""

    def __init__(self, region: str, account: str, runner: Runner,
                 state_dir: Path | None = None) -> None:
        self.region = region
        self.account = account
        self._runner = runner
        self._state_dir = state_dir
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # the runner's threads and requests save the same job
        # called when UpdateTrainingJob turns remote debugging on (remote_debug.RemoteDebug)
        self.remote_debug_on: Callable[[Job], None] | None = None

    # -- registry ---------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def get(self, kind: str, name: str) -> Job:
        with self._lock:
            job = self._jobs.get((kind, name))
        if job is None:
            raise ApiError("ValidationException", "Requested resource not found.")
        return job

    def by_arn(self, arn: str) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.arn == arn), None)

    def save(self, job: Job) -> None:
        """Keep a copy of the job's description under the state dir (for status and debugging)."""
        if self._state_dir is None:
            return
        path = self._state_dir / "jobs" / job.kind.key / job.name / "job.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        # One writer of the temporary file at a time, the job's lock first (callers may hold it)
        # so the description written last is the latest.
        with job.lock, self._save_lock:
            tmp.write_text(json.dumps(job.describe(), indent=2))
            tmp.replace(path)

    # -- dispatch ---------------------------------------------------------------------------
    def handles(self, operation: str, body: dict[str, Any]) -> bool:
        if operation in OPERATIONS:
            return True
        return operation in TAG_OPERATIONS and self.by_arn(body.get("ResourceArn", "")) is not None

    def handle(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        if operation in TAG_OPERATIONS:
            return self._tags(operation, body)
        kind_key, verb = OPERATIONS[operation]
        kind = KINDS[kind_key]
        handler = getattr(self, f"_{verb}")
        result: dict[str, Any] = handler(kind, body)
        return result

    def _create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get(f"{kind.noun}Name", "")
        if not NAME_RE.match(name or ""):
            raise ApiError("ValidationException",
                           f"1 validation error detected: Value '{name}' at '{kind.noun[0].lower()}"
                           f"{kind.noun[1:]}Name' failed to satisfy constraint: Member must "
                           f"satisfy regular expression pattern: {NAME_RE.pattern}")
        missing = [f for f in kind.required if not body.get(f)]
        if missing:
            raise ApiError("ValidationException",
                           f"missing required field(s): {', '.join(missing)}")
        if kind.key == "training":
            try:
                remote_debug.check_config(body.get("RemoteDebugConfig"))
            except remote_debug.ConfigError as e:
                raise ApiError("ValidationException", str(e)) from None
        arn = f"arn:aws:sagemaker:{self.region}:{self.account}:{kind.arn_type}/{name.lower()}"
        job = Job(kind=kind, name=name, arn=arn, request=json.loads(json.dumps(body)))
        job.tags = {t["Key"]: t.get("Value", "") for t in body.get("Tags") or []}
        if kind.key == "training":
            job.rules = self._initial_rules(job)
        job.set_secondary("Starting", "Launching requested ML instances")
        with self._lock:
            if (kind.key, name) in self._jobs:
                raise ApiError("ResourceInUse",
                               f"Job name must be unique within an AWS account and region, and a "
                               f"job with this name already exists ({arn})")
            self._jobs[(kind.key, name)] = job
        self.save(job)
        self._runner(job)
        return {f"{kind.noun}Arn": arn}

    def _initial_rules(self, job: Job) -> dict[str, list[dict[str, Any]]]:
        rules: dict[str, list[dict[str, Any]]] = {}
        for prefix in ("Debug", "Profiler"):
            configs = job.request.get(f"{prefix}RuleConfigurations")
            if not configs:
                continue
            rules[prefix] = [{
                "RuleConfigurationName": c["RuleConfigurationName"],
                "RuleEvaluationJobArn": (f"arn:aws:sagemaker:{self.region}:{self.account}:"
                                         f"processing-job/{job.name[:26].lower()}-"
                                         f"{c['RuleConfigurationName'][:18].lower()}-"
                                         f"{uuid.uuid4().hex[:8]}"),
                "RuleEvaluationStatus": "InProgress",
                "LastModifiedTime": job.created,
            } for c in configs]
        return rules

    def _describe(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        return self.get(kind.key, body.get(f"{kind.noun}Name", "")).describe()

    def _stop(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get(f"{kind.noun}Name", "")
        try:
            job = self.get(kind.key, name)
        except ApiError:
            raise ApiError("ResourceNotFound", f"{kind.noun} {name} does not exist.") from None
        with job.lock:
            if job.status != "InProgress":
                raise ApiError("ValidationException",
                               f"The request was rejected because the {kind.key} job is in "
                               f"status {job.status}.")
            job.status = "Stopping"
            job.set_secondary("Stopping", "Stopping the job")
            job.stop_requested.set()
        job.events.put(("stop", None))
        self.save(job)
        return {}

    def _update(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        """UpdateTrainingJob: RemoteDebugConfig only while Downloading or Training (the other
        updatable settings, profiler and resource config, are not emulated)."""
        name = body.get("TrainingJobName", "")
        try:
            job = self.get(kind.key, name)
        except ApiError:
            raise ApiError("ResourceNotFound", f"Training job {name} does not exist.") from None
        config = body.get("RemoteDebugConfig")
        others = set(body) - {"TrainingJobName", "RemoteDebugConfig"}
        if others:
            raise ApiError("ValidationException", "the sandbox updates RemoteDebugConfig only, "
                           f"not {', '.join(sorted(others))}")
        try:
            remote_debug.check_config(config)
        except remote_debug.ConfigError as e:
            raise ApiError("ValidationException", str(e)) from None
        with job.lock:
            was_on = remote_debug.enabled(job.request)
            if config is not None:
                if job.status != "InProgress" or job.secondary not in remote_debug.UPDATABLE_IN:
                    raise ApiError("ValidationException", (
                        "RemoteDebugConfig can be updated only when the training job's "
                        f"SecondaryStatus is Downloading or Training; it is {job.secondary}."))
                job.request["RemoteDebugConfig"] = dict(config)
                job.modified = time.time()
            if not was_on and remote_debug.enabled(job.request) and self.remote_debug_on:
                self.remote_debug_on(job)  # SageMaker starts its agent in the containers
        self.save(job)
        return {"TrainingJobArn": job.arn}

    def _list(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        jobs = [j for j in self.jobs() if j.kind is kind]
        name_contains = (body.get("NameContains") or "").lower()
        status = body.get("StatusEquals")
        jobs = [j for j in jobs if name_contains in j.name.lower()
                and (not status or j.status == status)
                and _in_range(j.created, body, "CreationTime")
                and _in_range(j.modified, body, "LastModifiedTime")]
        key_fn: Callable[[Job], Any] = {
            "Name": lambda j: j.name, "Status": lambda j: j.status,
        }.get(str(body.get("SortBy")), lambda j: j.created)
        return list_page(jobs, body, key_fn, f"{kind.noun}Summaries", "Ascending")

    def _tags(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        job = self.by_arn(body.get("ResourceArn", ""))
        assert job is not None
        with job.lock:
            return tag_operation(job.tags, operation, body)

    # -- test hooks -------------------------------------------------------------------------
    def set_rule_status(self, name: str, rule: str, status: str,
                        details: str | None = None) -> dict[str, Any]:
        if status not in RULE_STATUSES:
            raise ApiError("ValidationException", f"rule status must be one of {RULE_STATUSES}")
        job = self.get("training", name)
        with job.lock:
            for statuses in job.rules.values():
                for entry in statuses:
                    if entry["RuleConfigurationName"] == rule:
                        entry["RuleEvaluationStatus"] = status
                        entry["LastModifiedTime"] = time.time()
                        if details:
                            entry["StatusDetails"] = details
                        self.save(job)
                        return dict(entry)
        raise ApiError("ValidationException", f"job {name} has no rule {rule!r}")


def list_page(items: list[Any], body: dict[str, Any], key: Callable[[Any], Any], field: str,
              default_order: str) -> dict[str, Any]:
    """One page of a List* answer: sorted by ``key`` (SortOrder), MaxResults/NextToken."""
    items = sorted(items, key=key,
                   reverse=body.get("SortOrder", default_order) == "Descending")
    start, size = int(body.get("NextToken") or 0), int(body.get("MaxResults") or 10)
    out: dict[str, Any] = {field: [item.summary() for item in items[start:start + size]]}
    if start + size < len(items):
        out["NextToken"] = str(start + size)
    return out


def tag_operation(tags: dict[str, str], operation: str, body: dict[str, Any]
                  ) -> dict[str, Any]:
    """AddTags / DeleteTags / ListTags on ``tags`` (changed in place)."""
    if operation == "AddTags":
        tags.update({t["Key"]: t.get("Value", "") for t in body.get("Tags") or []})
    elif operation == "DeleteTags":
        for tag_key in body.get("TagKeys") or []:
            tags.pop(tag_key, None)
        return {}
    return {"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def _in_range(value: float, body: dict[str, Any], prefix: str) -> bool:
    after, before = body.get(f"{prefix}After"), body.get(f"{prefix}Before")
    return (after is None or value > float(after)) and (before is None or value < float(before))
