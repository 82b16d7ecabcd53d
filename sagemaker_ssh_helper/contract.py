"""The environment contract, read in the container: what the launch side's wrappers write.

``wrapper_settings.SSHSettings.environment()`` writes these variables into the job's (model's)
environment; :func:`read` is the one place the container reads them. ``bootstrap`` reads them
once and hands the settings on: explicit arguments to ``sm-setup-ssh`` (:func:`setup_args`),
and the same variables, normalised, in the environment of what it starts, so that the Python
commands the setup runs (``init_ssm``, ``native_container``, ``wait``) read valid values through
this module again. ``sm-ssh-ide`` passes a :class:`Contract` to ``init_ssm`` directly.

One validation policy: a malformed value is one log line naming the variable, the value and
the fallback, and the fallback below is used; the job goes on.

Each variable, its field, and what absent or malformed means:

- ``START_SSH`` (``start_ssh``): ``true`` starts SSH; absent is ``None`` (not started, with a
  warning that ``create()`` was not called); anything else is ``False``.
- ``SSH_SSM_ROLE`` (``ssm_role``): a role name; an IAM role ARN is cut to the name; absent or
  malformed is ``""`` and the hybrid registration fails in one line.
- ``SSH_OWNER_TAG`` (``owner``): the SSHOwner tag; ``""`` when absent (``init_ssm`` checks it
  as a tag value: an owner tag is never guessed).
- ``SSH_WAIT_TIME_SECONDS`` (``wait_seconds``): whole seconds; ``0`` (no hold).
- ``SSH_INSTANCE_COUNT`` (``instance_count``): nodes of rank < count start SSH; ``None``
  (counts as 2).
- ``SSH_LOG_TO_STDOUT`` (``log_to_stdout``): ``true``/``false``; ``False`` (agent log in a file).
- ``SSH_KEEP_ALIVE_ON_FAILURE_SECONDS`` (``keep_alive_on_failure_seconds``): whole seconds;
  ``0`` (no post-mortem hold).
- ``SSH_TRANSPORT`` (``transport``): ``hybrid`` or ``native``; ``hybrid``.
- ``SSH_AUTHORIZED_KEYS_PATH`` (``keys_path``): an ``s3://bucket/prefix/`` URL (native
  transport); ``""`` and the native set-up fails in one line.
- ``SSH_AUTHORIZED_KEYS_BUCKET_OWNER`` (``keys_bucket_owner``): the 12-digit account that must
  own the keys' bucket (``ExpectedBucketOwner``); ``""`` (the account of the job's own
  credentials is expected).
- ``SAGEMAKER_ENDPOINT_NAME`` (``endpoint_name``), ``TRANSFORM_JOB_NAME``
  (``transform_job_name``): which endpoint or transform job this is (``env.detect_resource``);
  ``""``.

``python -m sagemaker_ssh_helper.contract setup-args`` prints ``sm-setup-ssh``'s arguments, one
per line, for the script run by hand (a Dockerfile's ``sm-setup-ssh configure``, an entry
script that calls ``sm-setup-ssh`` itself). Standard library only: it runs in every container.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

from sagemaker_ssh_helper import transport as transports
from sagemaker_ssh_helper.aws import role_name_from_arn
from sagemaker_ssh_helper.errors import SSHHelperError

logger = logging.getLogger(__name__)

START_SSH = "START_SSH"
SSM_ROLE = "SSH_SSM_ROLE"
OWNER_TAG = "SSH_OWNER_TAG"
WAIT_TIME_SECONDS = "SSH_WAIT_TIME_SECONDS"
INSTANCE_COUNT = "SSH_INSTANCE_COUNT"
LOG_TO_STDOUT = "SSH_LOG_TO_STDOUT"
KEEP_ALIVE_ON_FAILURE_SECONDS = "SSH_KEEP_ALIVE_ON_FAILURE_SECONDS"
TRANSPORT = transports.TRANSPORT_ENV
AUTHORIZED_KEYS_PATH = transports.KEYS_PATH_ENV
KEYS_BUCKET_OWNER = transports.BUCKET_OWNER_ENV
ENDPOINT_NAME = "SAGEMAKER_ENDPOINT_NAME"
TRANSFORM_JOB_NAME = "TRANSFORM_JOB_NAME"

# The variable of each field, in the order of the table above.
KEYS: dict[str, str] = {
    "start_ssh": START_SSH, "ssm_role": SSM_ROLE, "owner": OWNER_TAG,
    "wait_seconds": WAIT_TIME_SECONDS, "instance_count": INSTANCE_COUNT,
    "log_to_stdout": LOG_TO_STDOUT,
    "keep_alive_on_failure_seconds": KEEP_ALIVE_ON_FAILURE_SECONDS,
    "transport": TRANSPORT, "keys_path": AUTHORIZED_KEYS_PATH,
    "keys_bucket_owner": KEYS_BUCKET_OWNER,
    "endpoint_name": ENDPOINT_NAME, "transform_job_name": TRANSFORM_JOB_NAME,
}
HYBRID, NATIVE = transports.HYBRID, transports.NATIVE
DEFAULT_INSTANCE_COUNT = 2  # SSH Helper v2's default: the first two nodes start SSH


@dataclass(frozen=True)
class Contract:
    """The settings the wrappers pass to the container (see the module's table)."""

    start_ssh: bool | None = None
    ssm_role: str = ""
    owner: str = ""
    wait_seconds: int = 0
    instance_count: int | None = None
    log_to_stdout: bool = False
    keep_alive_on_failure_seconds: int = 0
    transport: str = HYBRID
    keys_path: str = ""
    keys_bucket_owner: str = ""
    endpoint_name: str = ""
    transform_job_name: str = ""

    @property
    def native(self) -> bool:
        return self.transport == NATIVE

    @property
    def ssh_instance_count(self) -> int:
        """How many nodes (rank < count) start SSH."""
        return DEFAULT_INSTANCE_COUNT if self.instance_count is None else self.instance_count

    def values(self) -> dict[str, str]:
        """Every variable's text for these settings (``""``: written as absent)."""
        return {
            START_SSH: "" if self.start_ssh is None else "true" if self.start_ssh else "false",
            SSM_ROLE: self.ssm_role, OWNER_TAG: self.owner,
            WAIT_TIME_SECONDS: str(self.wait_seconds),
            INSTANCE_COUNT: "" if self.instance_count is None else str(self.instance_count),
            LOG_TO_STDOUT: "true" if self.log_to_stdout else "false",
            KEEP_ALIVE_ON_FAILURE_SECONDS: str(self.keep_alive_on_failure_seconds),
            TRANSPORT: self.transport, AUTHORIZED_KEYS_PATH: self.keys_path,
            KEYS_BUCKET_OWNER: self.keys_bucket_owner,
            ENDPOINT_NAME: self.endpoint_name, TRANSFORM_JOB_NAME: self.transform_job_name,
        }

    def normalised(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` with each contract variable it has rewritten as these settings say (a
        malformed one as its fallback; one whose fallback is empty removed), so that it reads
        back as these settings without a warning. Variables it lacks stay absent."""
        env = dict(environ)
        for name, text in self.values().items():
            if name in env:
                if text:
                    env[name] = text
                else:
                    del env[name]
        return env


def say(level: int, message: str, log: logging.Logger = logger) -> None:
    """Log to ``log``; when the application configured no logging, still show it on stderr."""
    if log.hasHandlers():
        log.log(level, message)
    else:
        print(f"[sagemaker-ssh-helper] {logging.getLevelName(level)}: {message}",
              file=sys.stderr, flush=True)


def _malformed(name: str, value: str, why: str, fallback: str,
               warn: Callable[[int, str], None]) -> None:
    warn(logging.WARNING, f"{name}={value!r} {why}; using {fallback}")


def read(environ: Mapping[str, str], warn: Callable[[int, str], None] = say) -> Contract:
    """The contract in ``environ``; a malformed value is logged (``warn``, one line) and replaced
    by its fallback. The owner tag and the names are kept exactly as they are."""

    def text(name: str) -> str:
        return environ.get(name, "").strip()

    def seconds(name: str, fallback: int) -> int:
        value = text(name)
        if not value:
            return fallback
        if not value.isdigit():
            _malformed(name, value, "is not a whole number of seconds", str(fallback), warn)
            return fallback
        return int(value)

    start = environ.get(START_SSH)
    start_ssh = None if start is None else start.strip().lower() == "true"

    role = text(SSM_ROLE)
    try:
        role = role_name_from_arn(role)
    except (SSHHelperError, ValueError):
        _malformed(SSM_ROLE, role, "is not an IAM role name or role ARN", "no role", warn)
        role = ""

    count_text = text(INSTANCE_COUNT)
    instance_count: int | None = None
    if count_text:
        if count_text.isdigit():
            instance_count = int(count_text)
        else:
            _malformed(INSTANCE_COUNT, count_text, "is not a number",
                       str(DEFAULT_INSTANCE_COUNT), warn)

    log_to_stdout = text(LOG_TO_STDOUT).lower()
    if log_to_stdout not in ("", "true", "false"):
        _malformed(LOG_TO_STDOUT, log_to_stdout, "is neither true nor false", "false", warn)

    transport = text(TRANSPORT).lower() or HYBRID
    if transport not in (HYBRID, NATIVE):
        _malformed(TRANSPORT, transport, f"is neither {HYBRID} nor {NATIVE}", HYBRID, warn)
        transport = HYBRID

    keys_path = text(AUTHORIZED_KEYS_PATH)
    try:
        if keys_path:
            transports.split_s3(keys_path)
    except ValueError:
        _malformed(AUTHORIZED_KEYS_PATH, keys_path, "is not an s3://bucket/prefix/ URL",
                   "none", warn)
        keys_path = ""

    bucket_owner = _bucket_owner(text(KEYS_BUCKET_OWNER), warn)
    return Contract(
        start_ssh=start_ssh, ssm_role=role, owner=environ.get(OWNER_TAG, ""),
        wait_seconds=seconds(WAIT_TIME_SECONDS, 0), instance_count=instance_count,
        log_to_stdout=log_to_stdout == "true",
        keep_alive_on_failure_seconds=seconds(KEEP_ALIVE_ON_FAILURE_SECONDS, 0),
        transport=transport, keys_path=keys_path, keys_bucket_owner=bucket_owner,
        endpoint_name=environ.get(ENDPOINT_NAME, ""),
        transform_job_name=environ.get(TRANSFORM_JOB_NAME, ""))


def _bucket_owner(value: str, warn: Callable[[int, str], None]) -> str:
    if value and not transports.is_account(value):
        _malformed(KEYS_BUCKET_OWNER, value, "is not a 12-digit account ID",
                   "the job's own account", warn)
        return ""
    return value


def setup_args(settings: Contract) -> list[str]:
    """``sm-setup-ssh``'s options for ``settings`` (after its argument, if any)."""
    return ["--wait-seconds", str(settings.wait_seconds), "--transport", settings.transport,
            "--log-to-stdout", "true" if settings.log_to_stdout else "false"]


def main(argv: list[str] | None = None) -> int:
    from sagemaker_ssh_helper import cli

    prog = "python -m sagemaker_ssh_helper.contract"

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(
            prog=prog, description="Print the env contract as sm-setup-ssh options, one a line.")
        parser.add_argument("action", choices=("setup-args",))
        command.parse(parser, cli.argv_or_sys(argv))
        for arg in setup_args(read(os.environ)):
            print(arg)
        return 0

    # the format of the warning printed when logging is not configured (see _warn above)
    return cli.guarded_main(prog, body, debug_log=False,
                            fmt="[sagemaker-ssh-helper] %(levelname)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
