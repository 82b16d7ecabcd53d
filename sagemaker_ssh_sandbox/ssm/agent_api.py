"""HTTP client side of the agent stand-in: endpoint discovery, calls, registration files.

Standard library only (runs inside job containers next to the agent).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox.ssm.channel import AGENT_API_PATH

DEFAULT_STATE_DIR = "/var/lib/amazon/ssm"
REGISTRATION_FILE = "registration"
SIDECAR_FILE = "sandbox-agent.json"

# 127.0.0.1 endpoints must never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ApiError(Exception):
    """The service answered with an AWS-style error."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def state_dir() -> Path:
    return Path(os.environ.get("SSM_AGENT_STATE_DIR") or DEFAULT_STATE_DIR)


def endpoint_from_env() -> str | None:
    for name in ("AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return None


def call(endpoint: str, name: str, body: dict[str, Any], timeout: float = 30.0
         ) -> dict[str, Any]:
    """POST one agent API call; raises ApiError (service said no) or OSError (unreachable)."""
    request = urllib.request.Request(
        f"{endpoint}{AGENT_API_PATH}{name}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            doc = json.loads(response.read().decode() or "{}")
    except urllib.error.HTTPError as e:
        raw = e.read().decode("utf-8", "replace")
        try:
            err = json.loads(raw)
            raise ApiError(str(err.get("__type", "Error")), str(err.get("message", "")),
                           e.code) from None
        except ValueError:
            raise ApiError("HTTP" + str(e.code), raw.strip()[:200], e.code) from None
    except urllib.error.URLError as e:
        reason = e.reason
        raise reason if isinstance(reason, OSError) else OSError(str(reason)) from e
    return doc if isinstance(doc, dict) else {}


def write_registration(directory: Path, instance_id: str, region: str, endpoint: str) -> None:
    """The real agent's registration file, plus where the stand-in service is."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, doc in ((REGISTRATION_FILE, {"ManagedInstanceID": instance_id, "Region": region}),
                      (SIDECAR_FILE, {"Endpoint": endpoint, "ManagedInstanceID": instance_id})):
        tmp = directory / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, directory / name)


def read_registration(directory: Path) -> dict[str, str]:
    """ManagedInstanceID, Region and (if known) Endpoint; {} when not registered."""
    try:
        doc = json.loads((directory / REGISTRATION_FILE).read_text())
    except (OSError, ValueError):
        return {}
    try:
        sidecar = json.loads((directory / SIDECAR_FILE).read_text())
    except (OSError, ValueError):
        sidecar = {}
    if sidecar.get("ManagedInstanceID") == doc.get("ManagedInstanceID") and sidecar.get("Endpoint"):
        doc["Endpoint"] = sidecar["Endpoint"]
    return {k: str(v) for k, v in doc.items()}
