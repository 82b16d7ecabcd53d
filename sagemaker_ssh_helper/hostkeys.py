"""Pinning the containers' SSH host keys in ``~/.ssh/sm-ssh-known_hosts``.

The key push (SendCommand, authenticated by IAM) prints the container's host public keys; they
are pinned under the name ssh connects to (``HostKeyAlias``), so ssh runs with
``StrictHostKeyChecking=yes``. Each line also records which managed instance the keys came
from and when they were first seen, as a known_hosts comment (ssh ignores it)::

    job.training.sagemaker ssh-ed25519 AAAA... sm-ssh:mi-0123456789abcdef0@2026-11-21T10:00:00Z

Pinning is per managed instance, i.e. per container: each container generates its own host
keys when it starts, so

- a *new* instance under the same name (a new job or endpoint reusing a name, a restarted
  Studio app or notebook instance, another node picked through the same name) legitimately has
  new keys: they replace the old ones without a warning;
- the *same* instance reporting different keys means its host keys were replaced while it ran:
  that is refused with "host key for X changed since <date>" until the user removes the old
  keys (``ssh-keygen -R``). Keys only added (a key type the container did not have before)
  are pinned next to the old ones.

Lines written by older versions (no comment) count as an unknown instance and are replaced.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sagemaker_ssh_helper import keyfile, portable
from sagemaker_ssh_helper.errors import SSHHelperError

logger = logging.getLogger(__name__)

HOST_KEYS_BEGIN = "--- sm-ssh host keys ---"
COMMENT_PREFIX = "sm-ssh:"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class HostKeyChanged(SSHHelperError):
    """The same container reports host keys other than the ones pinned for it."""


def parse_host_keys(output: str) -> list[tuple[str, str]]:
    """``(type, base64)`` pairs printed after the host-keys marker."""
    _, _, tail = output.partition(HOST_KEYS_BEGIN)
    keys = []
    for line in tail.splitlines():
        fields = line.split()
        if len(fields) >= 2 and (fields[0].startswith(("ssh-", "ecdsa-", "sk-"))):
            keys.append((fields[0], fields[1]))
    return keys


@dataclass(frozen=True)
class Pinned:
    key: tuple[str, str]
    instance_id: str            # "" for lines without our comment
    since: datetime | None


def _parse(line: str) -> tuple[str, Pinned] | None:
    fields = line.split()
    if len(fields) < 3:
        return None
    instance_id, since = "", None
    if len(fields) > 3 and fields[3].startswith(COMMENT_PREFIX):
        instance_id, _, when = fields[3][len(COMMENT_PREFIX):].partition("@")
        try:
            since = datetime.strptime(when, _TIME_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            since = None
    return fields[0], Pinned((fields[1], fields[2]), instance_id, since)


def pinned_instance(alias: str, path: Path | None = None) -> str:
    """The managed instance whose host keys are pinned under ``alias`` ("" when none are, or
    when the lines under it name no instance or several)."""
    from sagemaker_ssh_helper.keys import known_hosts_path

    path = path or known_hosts_path()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    owners = {parsed[1].instance_id for parsed in map(_parse, lines)
              if parsed is not None and parsed[0] == alias}
    return owners.pop() if len(owners) == 1 else ""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    keyfile.ensure_dir(path.parent)
    lock_path = Path(f"{path}.lock")
    with keyfile.file_errors("lock", lock_path), open(lock_path, "a") as lock, \
            portable.exclusive(lock):
        yield


def _changed(alias: str, instance_id: str, pinned: list[Pinned], path: Path) -> HostKeyChanged:
    dates = [p.since for p in pinned if p.since is not None]
    since = f" since {min(dates):%Y-%m-%d %H:%M} UTC" if dates else ""
    return HostKeyChanged(
        f"host key for {alias} changed{since} on the same instance {instance_id}: the "
        "container's SSH host keys were replaced while it runs, so sm-ssh does not trust "
        f"them; if you expected that, remove the old keys with `ssh-keygen -R {alias} -f "
        f"{path}` and connect again")


def pin_host_keys(alias: str, host_keys: list[tuple[str, str]], path: Path | None = None,
                  instance_id: str = "", now: datetime | None = None) -> Path:
    """Pin ``host_keys`` of ``instance_id`` under ``alias`` (see the module docstring);
    raises ``HostKeyChanged`` when the same instance reports changed keys."""
    from sagemaker_ssh_helper.keys import known_hosts_path

    path = path or known_hosts_path()
    stamp = (now or datetime.now(timezone.utc)).strftime(_TIME_FORMAT)
    with _locked(path):
        lines: list[str] = []
        if path.exists() or path.is_symlink():
            with keyfile.file_errors("read", path):
                lines = path.read_text().splitlines()
        mine = [parsed[1] for parsed in map(_parse, lines)
                if parsed is not None and parsed[0] == alias]
        wanted = set(host_keys)
        same_instance = bool(mine) and bool(instance_id) and \
            all(p.instance_id == instance_id for p in mine)
        if same_instance:
            pinned = {p.key for p in mine}
            if not pinned <= wanted:
                raise _changed(alias, instance_id, mine, path)
            if pinned == wanted:
                return path  # nothing changed: nothing to write
            first = min((p.since for p in mine if p.since is not None), default=None)
            stamp = first.strftime(_TIME_FORMAT) if first is not None else stamp
        elif mine:
            logger.info("pinning the host keys of %s for %s (a new instance under this name)",
                        instance_id or "this instance", alias)
        comment = f" {COMMENT_PREFIX}{instance_id}@{stamp}" if instance_id else ""
        kept = [line for line in lines if line.split(" ", 1)[0] != alias]
        with keyfile.open_new(path, 0o600) as f:
            for line in kept + [f"{alias} {t} {b}{comment}" for t, b in host_keys]:
                f.write(line + "\n")
    return path
