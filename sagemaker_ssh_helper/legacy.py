"""The documented flows of earlier versions, on top of today's per-target keys.

IDE and ssh settings written for earlier versions connect to a fixed local port with one
shared key, e.g.::

    Host sagemaker-training
      HostName localhost
      Port 11022
      IdentityFile ~/.ssh/sagemaker-ssh-gw
      User root

after ``sm-local-ssh-training connect <job>`` (or ``root@localhost:10022`` after
``sm-local-ssh-ide``). For those to keep working, the ``sm-local-*`` commands also authorize
``~/.ssh/sagemaker-ssh-gw`` (created once, mode 0600, never regenerated) in the container,
and write the container's host keys into ``~/.ssh/known_hosts`` for every local port that
leads to its sshd (``[localhost]:11022``, ``[127.0.0.1]:11022``), replacing the previous
job's. So a new job on the same port connects with strict host key checking, and no
``StrictHostKeyChecking=no``; other lines of ``known_hosts`` are left alone.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import keys

logger = logging.getLogger(__name__)

GATEWAY_KEY = "sagemaker-ssh-gw"
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost")


def gateway_key() -> Path:
    return keys.ssh_dir() / GATEWAY_KEY


def user_known_hosts() -> Path:
    return keys.ssh_dir() / "known_hosts"


def sshd_ports(ssh_args: Sequence[str]) -> list[int]:
    """Local ports of the ``-L`` forwards in ``ssh_args`` that lead to the container's sshd
    (``[bind:]port:localhost:22``)."""
    ports = []
    for i, arg in enumerate(ssh_args):
        spec = None
        if arg == "-L" and i + 1 < len(ssh_args):
            spec = ssh_args[i + 1]
        elif arg.startswith("-L") and len(arg) > 2:
            spec = arg[2:]
        if spec is None:
            continue
        fields = spec.replace("[", "").replace("]", "").split(":")
        if len(fields) >= 3 and fields[-1] == "22" and fields[-2] in _LOOPBACK \
                and fields[-3].isdigit():
            ports.append(int(fields[-3]))
    return ports


def authorize(ssm: Any, instance_id: str, fqdn: str, local_ports: Sequence[int]) -> None:
    """Authorize the shared legacy key in the container and pin its host keys for
    ``local_ports`` in ``~/.ssh/known_hosts``."""
    path = gateway_key()
    line = keys.ensure_key(path, comment="sm-ssh legacy key (sagemaker-ssh-gw)")
    output = keys.run_shell_command(
        ssm, instance_id, keys.authorized_keys_script(line, keys.client_marker(path)),
        comment=f"sm-ssh: authorize {GATEWAY_KEY} for {fqdn}"[:100])
    host_keys = keys.parse_host_keys(output)
    for port in local_ports:
        for host in ("localhost", "127.0.0.1"):
            keys.pin_host_keys(f"[{host}]:{port}", host_keys, user_known_hosts())
    logger.info("authorized %s for %s; pinned its host keys for local ports %s", path, fqdn,
                list(local_ports))
