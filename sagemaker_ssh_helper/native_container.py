"""The native transport in the container: keys through S3 instead of SendCommand.

SageMaker's own SSM agent (remote debugging) carries the sessions and accepts no commands, so
nothing can write ``authorized_keys`` from outside. Instead:

``prepare`` (run by ``sm-setup-ssh start-ssh`` before sshd starts)
    writes the command sshd runs at each login (``AuthorizedKeysCommand``) and its settings
    (the job's credentials variables, mode 0600, root only);

Every S3 call on the folder passes ``ExpectedBucketOwner`` (the account the launch named, else
the job's own): a bucket of that name owned by anyone else is refused by S3.

``publish`` (once sshd runs)
    puts this node's SSH host public keys at ``<prefix><owner>/<job>/host-keys/<host>`` so that
    clients can pin them (and know that sshd is up).

``authorized-keys USER TYPE KEY`` (run by sshd as root, with an empty environment)
    prints the public keys in ``<prefix><owner>/<job>/``, the job owner's folder, read with
    the job's own credentials. Nothing is polled and nothing piles up in the container: keys
    are read when someone logs in. sshd asks twice per login (the key's query, then its
    signature): the keys read the first time are kept for ``CACHE_SECONDS`` in a root-only
    file, so the second answer needs no S3 call; a key not found there is always looked up.

Only plain public key lines are accepted from S3 (no ``command=``/``from=`` options).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import contract, portable, transport
from sagemaker_ssh_helper.env import STATE_DIR, detect_resource, resource_config

logger = logging.getLogger(__name__)

CONFIG_FILE = STATE_DIR / "native.json"
COMMAND_FILE = STATE_DIR / "authorized-keys-command"
CACHE_FILE = Path("/run/sagemaker-ssh-helper/authorized-keys.cache")
CACHE_SECONDS = 60.0
HOST_KEYS_GLOB = "ssh_host_*_key.pub"
# What the keys command needs from the job's environment: the credentials (variables or the
# container credentials endpoint), the region and endpoints, and how to import this package.
_KEPT_PREFIXES = ("AWS_",)
_KEPT_NAMES = ("PYTHONPATH", "SM_SSH_PYTHON")


def host_name(environ: Mapping[str, str]) -> str:
    config = resource_config(environ) or {}
    return str(config.get("current_host") or socket.gethostname())


def command_script(python: str, pythonpath: str) -> str:
    """The AuthorizedKeysCommand: this interpreter and package, whatever sshd's environment."""
    import shlex

    path = f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else ""
    return ("#!/bin/sh\n# Written by sagemaker-ssh-helper: sshd's AuthorizedKeysCommand "
            "(native transport).\n"
            f"exec env -i {path}{shlex.quote(python)} -m sagemaker_ssh_helper.native_container "
            'authorized-keys "$@"\n')


def _settings(environ: Mapping[str, str]) -> transport.KeyLayout:
    """The job's key folder; its bucket must be owned by the account the launch named
    (``SSH_AUTHORIZED_KEYS_BUCKET_OWNER``), else by the account of the job's credentials."""
    settings = contract.read(environ)
    if not settings.keys_path or not settings.owner:
        raise ValueError(f"the native transport needs {contract.AUTHORIZED_KEYS_PATH} and "
                         f"{contract.OWNER_TAG} (set by the wrapper's create(transport='native'))")
    return transport.KeyLayout.for_job(settings.keys_path, settings.owner,
                                       detect_resource(environ).name,
                                       settings.keys_bucket_owner or _own_account(environ))


def _own_account(environ: Mapping[str, str]) -> str:
    import boto3

    from sagemaker_ssh_helper.env import region

    sts = boto3.client("sts", region_name=region(environ))
    return str(sts.get_caller_identity()["Account"])


def prepare(environ: Mapping[str, str] | None = None) -> None:
    """Write the keys command and its settings (before sshd starts)."""
    environ = os.environ if environ is None else environ
    layout = _settings(environ)
    kept = {k: v for k, v in environ.items()
            if k.startswith(_KEPT_PREFIXES) or k in _KEPT_NAMES}
    config = {"bucket": layout.bucket, "prefix": layout.job_prefix,
              "bucket_owner": layout.bucket_owner, "env": kept}
    portable.write_file(CONFIG_FILE, json.dumps(config), 0o600, parents=True)
    script = command_script(environ.get("SM_SSH_PYTHON") or sys.executable,
                            environ.get("PYTHONPATH", ""))
    portable.write_file(COMMAND_FILE, script, 0o755, parents=True)


def publish(environ: Mapping[str, str] | None = None, etc_ssh: Path = Path("/etc/ssh"),
            s3: Any = None) -> str:
    """Put this node's host public keys where clients pin them from (once sshd runs)."""
    environ = os.environ if environ is None else environ
    layout = _settings(environ)
    keys = "".join(p.read_text() for p in sorted(etc_ssh.glob(HOST_KEYS_GLOB)))
    if not keys.strip():
        raise ValueError(f"no SSH host keys in {etc_ssh}")
    key = layout.host_keys(host_name(environ))
    client = s3 or _s3(environ)
    client.put_object(Bucket=layout.bucket, Key=key, Body=keys.encode(),
                      **layout.owner_args())
    return layout.url(key)


def _s3(environ: Mapping[str, str]) -> Any:
    import boto3

    from sagemaker_ssh_helper.env import region

    return boto3.client("s3", region_name=region(environ))


def _cached(blob: str, now: float) -> list[str]:
    try:
        st = CACHE_FILE.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or now - st.st_mtime > CACHE_SECONDS:
            return []
        lines = CACHE_FILE.read_text().splitlines()
    except OSError:
        return []
    return [line for line in lines if blob and blob in line.split()[1:2]]


def read_keys(config: dict[str, Any], s3: Any = None) -> list[str]:
    """Every plain public key line of the job's folder (``<prefix><owner>/<job>/``, not its
    subfolders)."""
    os.environ.update({str(k): str(v) for k, v in dict(config.get("env") or {}).items()})
    client = s3 or _s3(os.environ)
    owner = {"ExpectedBucketOwner": str(config["bucket_owner"])} \
        if config.get("bucket_owner") else {}
    lines: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(  # the folder itself only
            Bucket=config["bucket"], Prefix=config["prefix"], Delimiter="/", **owner):
        for item in page.get("Contents", []):
            if not str(item["Key"]).endswith(".pub") or int(item.get("Size", 0)) > 16384:
                continue
            body = client.get_object(Bucket=config["bucket"], Key=item["Key"],
                                     **owner)["Body"].read()
            lines += transport.public_key_lines(body.decode("utf-8", "replace"))
    return lines


def authorized_keys(user: str, blob: str = "", now: float | None = None) -> list[str]:
    """What sshd gets for a login of ``user`` offering the key ``blob``."""
    now = time.time() if now is None else now
    if user != "root":  # SageMaker training containers run as root; nobody else logs in
        return []
    hit = _cached(blob, now)
    if hit:
        return hit
    config = json.loads(CONFIG_FILE.read_text())
    lines = read_keys(config)
    try:
        portable.write_file(CACHE_FILE, "".join(line + "\n" for line in lines), 0o600,
                            parents=True)
    except OSError as e:
        logger.debug("no cache: %s", e)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["prepare"]:
        try:
            prepare()
        except Exception as e:
            print(f"cannot set up the native transport: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        return 0
    if args == ["publish"]:
        try:
            url = publish()
        except Exception as e:  # one line for sm-setup-ssh's log
            print(f"cannot publish the SSH host keys: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"published the SSH host keys to {url}", file=sys.stderr)
        return 0
    if args[:1] == ["authorized-keys"] and 2 <= len(args) <= 4:
        blob = args[3] if len(args) == 4 else ""
        try:
            lines = authorized_keys(args[1], blob)
        except Exception as e:  # sshd logs stderr; never the keys or credentials
            print(f"sm-ssh authorized-keys: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        sys.stdout.write("".join(line + "\n" for line in lines))
        return 0
    print("usage: python -m sagemaker_ssh_helper.native_container prepare | publish | "
          "authorized-keys USER [TYPE KEY]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
