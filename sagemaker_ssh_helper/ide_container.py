"""The parts of ``sm-ssh-ide`` that parse anything: run inside a Studio app or notebook instance.

``python -m sagemaker_ssh_helper.ide_container <command> [args]``, commands:

- ``check``                     exit 2 with one line when this is not a Studio app/notebook
- ``get-metadata``              app, space/user, domain and the exact lines to connect with
- ``get-domain-id``, ``get-app-space-name``
- ``set-local-user-id <id>``    the SSHOwner tag for later ``init-ssm`` runs (stored)
- ``set-jb-license-server <h>`` map ``<h>`` to 127.0.0.1 in /etc/hosts (for ``-R 443:<h>:443``)
- ``init-ssm``                  SSM activation for the app's execution role; prints the mi- id
- ``status``, ``env-diagnostics``

The execution role comes from ``ExecutionRoleArn`` in ``resource-metadata.json``, else from
DescribeSpace / DescribeUserProfile / DescribeDomain (the domain's default user settings).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_helper import fqdn
from sagemaker_ssh_helper.aws import mask, role_name_from_arn
from sagemaker_ssh_helper.contract import Contract
from sagemaker_ssh_helper.env import STATE_DIR, agent_running, base_dir, registered_instance_id
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError

logger = logging.getLogger(__name__)

LOCAL_USER_ID_FILE = STATE_DIR / "local-user-id"
HOSTS_FILE = Path("/etc/hosts")
PROG = "sm-ssh-ide"


def metadata_path() -> Path:
    return base_dir() / "metadata" / "resource-metadata.json"


def load_metadata(path: Path | None = None) -> dict[str, Any]:
    path = path or metadata_path()
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{PROG}: not in a SageMaker Studio app or notebook instance ({path} "
                         "is missing); run it in the app's terminal or notebook") from None
    except (OSError, ValueError) as e:
        raise SSHHelperError(f"{PROG}: cannot read {path}: {e}") from None
    if not isinstance(value, dict) or not value.get("ResourceArn"):
        raise SSHHelperError(f"{PROG}: {path} has no ResourceArn")
    return value


def owner_of(meta: dict[str, Any]) -> str:
    return str(meta.get("SpaceName") or meta.get("UserProfileName") or "")


def target_fqdn(meta: dict[str, Any]) -> str:
    name = str(meta.get("ResourceName") or str(meta["ResourceArn"]).rsplit("/", 1)[-1])
    if meta.get("DomainId"):
        return fqdn.format_fqdn("studio", name, user_or_space=owner_of(meta),
                                domain=str(meta["DomainId"]))
    return fqdn.format_fqdn("notebook", name)


def _region(meta: dict[str, Any]) -> str:
    return str(meta["ResourceArn"]).split(":")[3]


def execution_role(meta: dict[str, Any]) -> str:
    """The app's execution role ARN (metadata first, then the Studio API)."""
    if meta.get("ExecutionRoleArn"):
        return str(meta["ExecutionRoleArn"])
    import boto3

    sm = boto3.client("sagemaker", region_name=_region(meta))
    domain = meta.get("DomainId")
    if not domain:
        raise SSHHelperError(f"{PROG}: no ExecutionRoleArn in {metadata_path()}")
    role: str | None = None
    if meta.get("SpaceName"):
        space = sm.describe_space(DomainId=domain, SpaceName=meta["SpaceName"])
        role = (space.get("SpaceSettings") or {}).get("ExecutionRole")
    elif meta.get("UserProfileName"):
        profile = sm.describe_user_profile(DomainId=domain,
                                           UserProfileName=meta["UserProfileName"])
        role = (profile.get("UserSettings") or {}).get("ExecutionRole")
    if not role:
        role = (sm.describe_domain(DomainId=domain).get("DefaultUserSettings") or {}).get(
            "ExecutionRole")
    if not role:
        raise SSHHelperError(f"{PROG}: cannot find the execution role of domain {domain}")
    return str(role)


def local_user_id() -> str:
    try:
        return LOCAL_USER_ID_FILE.read_text().strip()
    except OSError:
        return ""


def set_local_user_id(value: str) -> None:
    if not value.strip() or any(c.isspace() for c in value.strip()):
        raise UsageError(f"usage: {PROG} set-local-user-id <id> (your AWS UserId, no spaces)")
    LOCAL_USER_ID_FILE.parent.mkdir(parents=True, exist_ok=True)
    LOCAL_USER_ID_FILE.write_text(value.strip() + "\n")


def set_jb_license_server(host: str, hosts_file: Path = HOSTS_FILE) -> None:
    if not host or "/" in host or any(c.isspace() for c in host):
        raise UsageError(f"usage: {PROG} set-jb-license-server <host name>")
    lines = hosts_file.read_text().splitlines() if hosts_file.exists() else []
    if any(line.split()[1:2] == [host] and line.startswith("127.0.0.1") for line in lines):
        return
    hosts_file.write_text("\n".join(lines + [f"127.0.0.1 {host}"]) + "\n")


def init_ssm(meta: dict[str, Any]) -> int:
    from sagemaker_ssh_helper import init_ssm as init

    role = execution_role(meta)
    settings = Contract(ssm_role=role_name_from_arn(role), owner=local_user_id())
    instance_id = init.init(settings=settings,
                            region_name=os.environ.get("AWS_REGION") or _region(meta))
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "mi-id").write_text(instance_id + "\n")
    print(instance_id)
    return 0


def describe(meta: dict[str, Any]) -> list[str]:
    target = target_fqdn(meta)
    return [f"App type: {meta.get('AppType', 'NotebookInstance')}",
            f"App name: {meta.get('ResourceName', '')}",
            f"User or space: {owner_of(meta)}",
            f"Domain: {meta.get('DomainId', '')}",
            f"Resource ARN: {meta['ResourceArn']}",
            f"Connect: sm-ssh connect {target}",
            f"SSH: ssh {target}   (after 'sm-ssh config' on your laptop)",
            f"Jupyter: sm-ssh connect {target} -N -L 8889:127.0.0.1:8889"]


def status(meta: dict[str, Any]) -> list[str]:
    return [f"target: {target_fqdn(meta)}",
            f"configured: {(STATE_DIR / '.ssh-configured').exists()}",
            f"sshd pid file: {'yes' if Path('/run/sshd.pid').exists() else 'no'}",
            f"SSM agent running: {agent_running()}",
            f"managed instance: {registered_instance_id() or '-'}",
            f"local user id (SSHOwner): {local_user_id() or '-'}"]


def diagnostics(meta: dict[str, Any]) -> list[str]:
    out = [f"python: {sys.executable} {sys.version.split()[0]}", f"uid: {os.getuid()}",
           f"metadata: {json.dumps(meta, sort_keys=True)}"]
    for key in sorted(os.environ):
        if key.startswith(("AWS_", "SSH_", "SM_SSH_", "SAGEMAKER_")) or key == "PATH":
            value = os.environ[key]
            secret = "SECRET" in key or "TOKEN" in key or "ACCESS_KEY" in key
            out.append(f"{key}={mask(value) if secret else value}")
    return out


def run(args: list[str]) -> int:
    if not args:
        raise UsageError(f"usage: {PROG} <command>; see '{PROG} --help'")
    command, rest = args[0], args[1:]
    if command == "set-local-user-id":
        set_local_user_id(rest[0] if len(rest) == 1 else "")
        return 0
    meta = load_metadata()
    if command == "set-jb-license-server":
        set_jb_license_server(rest[0] if len(rest) == 1 else "")
        return 0
    simple: dict[str, Callable[[], list[str]]] = {
              "check": lambda: [], "get-metadata": lambda: describe(meta),
              "get-domain-id": lambda: [str(meta.get("DomainId", ""))],
              "get-app-space-name": lambda: [owner_of(meta)],
              "status": lambda: status(meta), "env-diagnostics": lambda: diagnostics(meta)}
    if command == "init-ssm":
        return init_ssm(meta)
    if command not in simple:
        raise UsageError(f"{PROG}: unknown command {command!r}; see '{PROG} --help'")
    for line in simple[command]():
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from sagemaker_ssh_helper import cli

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(
            prog=PROG, usage=f"{PROG} [-v] COMMAND [ARG ...]",
            description="The container side of sm-ssh-ide (its commands: see the script's header).")
        cli.add_general_options(parser, aws=False)
        parser.add_argument("command", nargs=argparse.REMAINDER)  # dispatched by run()
        args = command.parse(parser, cli.argv_or_sys(argv))
        for noisy in ("botocore", "boto3", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            return run(args.command)
        except SSHHelperError as e:
            if not str(e).startswith(f"{PROG}: "):
                raise  # the frame prefixes it
            if command.debug:
                logger.exception("failed")
            print(e, file=sys.stderr, flush=True)
            return e.exit_code

    return cli.guarded_main(PROG, body, level=logging.INFO, debug_log=False,
                            fmt=f"{PROG}: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
