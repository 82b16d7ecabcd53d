"""State, identifiers, validation and pagination shared by the SSM stand-in's operation modules."""
from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import secrets
import string
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

PING_ONLINE = "Online"
PING_LOST = "ConnectionLost"
RUN_SHELL_SCRIPT = "AWS-RunShellScript"
PLUGIN_NAME = "aws:runShellScript"
AGENT_VERSION = "3.3.1142.0"
TERMINAL = ("Success", "Failed", "TimedOut", "Cancelled")


class SSMError(Exception):
    """An AWS-style error: rendered as ``{"__type": code, "message": message}``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"__type": self.code, "message": self.message}


def validation(value: Any, member: str, constraint: str) -> SSMError:
    return SSMError(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy "
        f"constraint: Member must {constraint}",
    )


def hex17() -> str:
    return secrets.token_hex(9)[:17]


def new_instance_id() -> str:
    return "mi-" + hex17()


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_activation_code() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


def iso(ts: float | None) -> str:
    """ISO-8601 UTC with milliseconds, as GetCommandInvocation's string date fields."""
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def parse_iso(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    import calendar

    main, _, frac = value.rstrip("Z").partition(".")
    try:
        seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return seconds + (float("0." + frac) if frac.isdigit() else 0.0)


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tags_from(value: Any, member: str = "tags") -> dict[str, str]:
    """Validate a Tags list ([{Key, Value}]) into an ordered dict."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise validation(value, member, "be a list of tags")
    out: dict[str, str] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("Key"), str) \
                or not isinstance(item.get("Value", ""), str) or not item["Key"]:
            raise validation(item, member, "have a non-empty Key and a string Value")
        if len(item["Key"]) > 128 or len(item.get("Value", "")) > 256:
            raise validation(item["Key"], member, "have Key <= 128 and Value <= 256 characters")
        out[item["Key"]] = item.get("Value", "")
    return out


def max_results(body: dict[str, Any], low: int, high: int, default: int) -> int:
    value = body.get("MaxResults")
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise validation(value, "maxResults", "be an integer")
    if value < low:
        raise validation(value, "maxResults", f"have value greater than or equal to {low}")
    if value > high:
        raise validation(value, "maxResults", f"have value less than or equal to {high}")
    return value


def fingerprint(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def paginate(items: Sequence[T], seq: Callable[[T], int], limit: int, token: Any,
             context: str) -> tuple[list[T], str | None]:
    """One page of ``items`` (sorted by increasing ``seq``) after the cursor in ``token``.

    The token is opaque to clients; it names the last item returned and the request it belongs
    to, so a token replayed with other filters is rejected like AWS does (InvalidNextToken).
    """
    after: int | None = None
    if token is not None and token != "":  # the service takes "" as no token (boto3 users send it)
        try:
            doc = json.loads(base64.urlsafe_b64decode(str(token).encode()).decode())
            after, ctx = int(doc["a"]), str(doc["c"])
        except (ValueError, KeyError, TypeError) as e:
            raise SSMError("InvalidNextToken", "The specified token isn't valid.") from e
        if ctx != context:
            raise SSMError("InvalidNextToken", "The specified token isn't valid.")
    remaining = list(items) if after is None else [item for item in items if seq(item) > after]
    page = remaining[:limit]
    if len(remaining) <= limit or not page:
        return page, None
    doc = {"a": seq(page[-1]), "c": context}
    return page, base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


@dataclass
class Activation:
    activation_id: str
    code: str
    iam_role: str
    description: str
    default_instance_name: str
    registration_limit: int
    expiration: float
    created: float
    tags: dict[str, str]
    seq: int
    registrations: int = 0


@dataclass
class Instance:
    instance_id: str
    activation_id: str
    iam_role: str
    name: str
    registered: float
    computer_name: str
    ip_address: str
    platform_name: str
    platform_version: str
    agent_version: str
    tags: dict[str, str]
    seq: int
    last_ping: float | None = None
    static_ping: str | None = None  # fake instances: fixed PingStatus, never times out
    deregistered: bool = False
    # a target SageMaker's own agent serves (sagemaker-training-job:<job>_algo-<n>): no managed
    # instance, not listed, sessions only (see sagemaker_targets)
    sagemaker: bool = False


@dataclass
class Invocation:
    command_id: str
    instance_id: str
    status: str = "Pending"
    details: str = "Pending"
    response_code: int = -1
    started: float | None = None
    ended: float | None = None
    stdout: str = ""
    stderr: str = ""


@dataclass
class Command:
    command_id: str
    document_name: str
    comment: str
    parameters: dict[str, list[str]]
    instance_ids: list[str]
    targets: list[dict[str, Any]]
    timeout_seconds: int
    requested: float
    expires_after: float
    seq: int
    invocations: dict[str, Invocation] = field(default_factory=dict)


def save_state(path: Path, activations: dict[str, Activation],
               instances: dict[str, Instance]) -> None:
    """Write activations and instances atomically (commands and sessions are not kept)."""
    doc = {"activations": [vars(a) for a in activations.values()],
           "instances": [vars(i) for i in instances.values()]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def load_state(path: Path) -> tuple[dict[str, Activation], dict[str, Instance]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return {}, {}
    doc = json.loads(path.read_text())
    activations = {a["activation_id"]: Activation(**a) for a in doc.get("activations", [])}
    instances = {i["instance_id"]: Instance(**i) for i in doc.get("instances", [])}
    return activations, instances


class BackendBase:
    """Shared state of the backend; the operation mixins read and change it under ``lock``."""

    def __init__(self, account_id: str, region: str, heartbeat_timeout: float,
                 clock: Callable[[], float]) -> None:
        self.account_id = account_id
        self.region = region
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.activations: dict[str, Activation] = {}
        self.instances: dict[str, Instance] = {}
        self.commands: dict[str, Command] = {}
        self.queues: dict[str, collections.deque[dict[str, Any]]] = collections.defaultdict(
            collections.deque)
        self.closing = False
        self._seq = 0

    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    def ping_status(self, inst: Instance) -> str:
        if inst.static_ping:
            return inst.static_ping
        if inst.last_ping is None or self.clock() - inst.last_ping > self.heartbeat_timeout:
            return PING_LOST
        return PING_ONLINE

    def live_instance(self, instance_id: Any) -> Instance | None:
        inst = self.instances.get(instance_id) if isinstance(instance_id, str) else None
        return inst if inst is not None and not inst.deregistered else None

    def enqueue(self, instance_id: str, message: dict[str, Any]) -> None:
        with self.lock:
            self.queues[instance_id].append(message)
            self.changed.notify_all()

    def save(self) -> None:  # overridden by the backend when it persists state
        return None
