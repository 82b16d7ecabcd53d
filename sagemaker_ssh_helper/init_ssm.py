"""``sm-init-ssm``: register this container with AWS Systems Manager; print its ``mi-`` id.

1. Work out which SageMaker resource this container belongs to (``env.detect_resource``).
2. ``CreateActivation`` for the role in ``SSH_SSM_ROLE`` with ``RegistrationLimit=1`` and the
   tags clients look instances up by: ``SSHOwner`` (``SSH_OWNER_TAG``), ``SSHCreator`` (this
   container's STS UserId), ``SSHTimestamp`` (epoch seconds), ``SSHResourceName`` and
   ``SSHResourceArn``. SSM copies them onto the managed instance. Throttling (many nodes starting
   at once) is retried with jittered exponential backoff.
3. Stop any running agent and run ``amazon-ssm-agent -register -code … -id … -region … -y``.
   The agent only takes the code on its command line, so the exposure is kept short: the code is
   masked in everything logged, and the activation is deleted as soon as the registration went
   through or failed (that does not deregister an instance; it only makes the code useless).
   A registration SSM throttled is retried like ``CreateActivation``.
4. Print the ``mi-…`` id from the agent's registration line on stdout (logs go to stderr).
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from sagemaker_ssh_helper import aws, contract, retry
from sagemaker_ssh_helper.env import (
    Resource,
    detect_resource,
    iter_processes,
    region,
    resource_arn,
    runs_program,
)
from sagemaker_ssh_helper.errors import AwsError, SSHHelperError, UsageError

logger = logging.getLogger(__name__)

AGENT = "amazon-ssm-agent"
AGENT_PROCESS_NAMES = ("amazon-ssm-agent", "ssm-agent-worker")
REGISTRATION_RE = re.compile(r"Managed instance-id: (mi-[0-9a-fA-F]+)")
MAX_ATTEMPTS = retry.MAX_ATTEMPTS
REGISTER_TIMEOUT = 180.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Activation:
    activation_id: str
    code: str


def activation_tags(owner: str, creator: str, timestamp: int, name: str,
                    arn: str) -> list[dict[str, str]]:
    return [
        {"Key": "SSHOwner", "Value": owner},
        {"Key": "SSHCreator", "Value": creator},
        {"Key": "SSHTimestamp", "Value": str(timestamp)},
        {"Key": "SSHResourceName", "Value": name},
        {"Key": "SSHResourceArn", "Value": arn},
    ]


def create_activation(ssm: Any, role: str, tags: list[dict[str, str]], description: str,
                      instance_name: str, sleep: Callable[[float], None] = time.sleep,
                      rand: Callable[[], float] = random.random) -> Activation:
    """``CreateActivation``, retrying throttling and transient errors with jittered backoff."""
    def on_retry(e: Exception, attempt: int, delay: float) -> None:
        logger.warning("CreateActivation: %s, retrying in %.1f s (attempt %d of %d)",
                       aws.error_code(e), delay, attempt + 1, MAX_ATTEMPTS)

    try:
        response = retry.call(lambda: ssm.create_activation(
            Description=description[:256], DefaultInstanceName=instance_name[:256],
            IamRole=role, RegistrationLimit=1, Tags=tags),
            max_attempts=MAX_ATTEMPTS, sleep=sleep, rand=rand, on_retry=on_retry)
    except Exception as e:
        raise aws.explain(e, f"ssm:CreateActivation (with iam:PassRole on {role})") from e
    return Activation(response["ActivationId"], response["ActivationCode"])


def stop_running_agent(timeout: float = STOP_TIMEOUT,
                       clock: Callable[[], float] = time.monotonic) -> None:
    """Stop an SSM agent already running here, so the new registration is the one it uses."""
    pids = [p.pid for p in iter_processes() if p.pid != os.getpid()
            and any(runs_program(p, name) for name in AGENT_PROCESS_NAMES)]
    if not pids:
        return
    logger.info("stopping the running SSM agent (PIDs %s)", pids)
    _signal_all(pids, signal.SIGTERM)
    poll = retry.Poll(timeout, first=0.1, cap=0.1, clip=False, clock=clock)
    while not poll.expired():
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return
        poll.wait()
    _signal_all(pids, signal.SIGKILL)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def find_agent() -> str:
    path = shutil.which(AGENT) or ("/usr/bin/amazon-ssm-agent"
                                   if os.access("/usr/bin/amazon-ssm-agent", os.X_OK) else None)
    if not path:
        raise SSHHelperError(f"{AGENT} not found on PATH: run `sm-setup-ssh configure` first "
                             "(or install the SSM agent in the image)")
    return path


def _run_register(agent: str, activation: Activation, region_name: str,
                  timeout: float) -> tuple[int, str]:
    """One ``-register`` run: exit code and output (code masked), echoed to stderr."""
    argv = [agent, "-register", "-code", activation.code, "-id", activation.activation_id,
            "-region", region_name, "-y"]
    logger.info("registering: %s -register -code **** -id %s -region %s -y",
                agent, activation.activation_id, region_name)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SSHHelperError(f"{AGENT} -register did not finish in {timeout:.0f} s") from e
    output = (proc.stdout + proc.stderr).replace(activation.code, "****")
    for line in output.splitlines():
        print(line, file=sys.stderr, flush=True)  # keeps the registration line in the job log
    return proc.returncode, output


def register_agent(activation: Activation, region_name: str,
                   timeout: float = REGISTER_TIMEOUT, sleep: Callable[[float], None] = time.sleep,
                   rand: Callable[[], float] = random.random) -> str:
    """Register the local agent with ``activation``; return the managed instance id.

    A registration SSM throttled (many nodes registering at once) is retried with the same
    backoff as ``CreateActivation``; any other failure is final.
    """
    agent = find_agent()
    stop_running_agent()
    attempts = 0

    def attempt() -> str:
        nonlocal attempts
        attempts += 1
        returncode, output = _run_register(agent, activation, region_name, timeout)
        match = REGISTRATION_RE.search(output)
        if returncode == 0 and match:
            return match.group(1)
        raise _RegisterFailed(returncode, output)

    def on_retry(e: Exception, attempt: int, delay: float) -> None:
        logger.warning("%s -register was throttled, retrying in %.1f s (attempt %d of %d)",
                       AGENT, delay, attempt + 1, MAX_ATTEMPTS)

    try:
        return retry.call(attempt, max_attempts=MAX_ATTEMPTS, sleep=sleep, rand=rand,
                          on_retry=on_retry, retryable=lambda e: isinstance(e, _RegisterFailed)
                          and retry.is_throttled_text(e.output))
    except _RegisterFailed as e:
        last = e.output.strip().splitlines()[-1] if e.output.strip() else "no output"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        raise SSHHelperError(f"{AGENT} -register failed (exit {e.returncode}){tries}: {last}"
                             ) from None


class _RegisterFailed(Exception):
    def __init__(self, returncode: int, output: str) -> None:
        super().__init__(f"exit {returncode}")
        self.returncode = returncode
        self.output = output


def delete_activation(ssm: Any, activation_id: str) -> None:
    """Best effort: an activation is no longer needed once its single registration is used."""
    try:
        ssm.delete_activation(ActivationId=activation_id)
    except Exception as e:
        logger.warning("could not delete activation %s (it expires by itself): %s",
                       activation_id, aws.error_code(e) or e)


def _role(settings: contract.Contract) -> str:
    if not settings.ssm_role:
        raise UsageError("SSH_SSM_ROLE is not set: start the job through the wrapper's create() "
                         "(argument ssm_iam_role=, default: the job's role) or set SSH_SSM_ROLE "
                         "to the name of a role SSM may assume")
    return settings.ssm_role


def _resource_arn(resource: Resource, session: Any, region_name: str) -> str:
    if resource.arn:
        return resource.arn
    try:
        account = aws.sts_client(session, region_name).get_caller_identity()["Account"]
    except Exception as e:
        raise aws.explain(e, "sts:GetCallerIdentity") from e
    return resource_arn(aws.partition_for_region(region_name), region_name, account,
                        resource.kind, resource.name)


def ssm_client(session: Any, region_name: str) -> Any:
    # Retries are ours (create_activation), so a throttled call is not retried twice over.
    return session.client("ssm", region_name=region_name, config=aws.no_retry_config())


def init(environ: Mapping[str, str] | None = None,
         settings: contract.Contract | None = None, region_name: str | None = None) -> str:
    """Register; ``settings`` (the role and owner) default to the contract in ``environ``,
    ``region_name`` to the container's region."""
    environ = os.environ if environ is None else environ
    settings = contract.read(environ) if settings is None else settings
    role = _role(settings)
    resource = detect_resource(environ)
    region_name = region_name or region(environ, resource)
    if not region_name:
        raise AwsError("no AWS region: set AWS_REGION (SageMaker sets it in jobs)")
    owner = check_tag_value(contract.OWNER_TAG, settings.owner)
    if not owner:
        logger.warning("SSH_OWNER_TAG is not set: the instance gets an empty SSHOwner tag")
    session = aws.boto_session(region=region_name)
    creator = aws.caller_user_id(session)
    arn = _resource_arn(resource, session, region_name)
    logger.info("%s %s (%s, from %s), region %s, role %s", resource.kind, resource.name, arn,
                resource.source, region_name, role)
    ssm = ssm_client(session, region_name)
    tags = activation_tags(owner, creator, int(time.time()), resource.name, arn)
    # The instance's Name is the resource ARN: DescribeInstanceInformation returns it, so
    # clients can match and list instances without one ListTagsForResource call per instance.
    activation = create_activation(ssm, role, tags,
                                   f"sagemaker-ssh-helper {resource.kind} {resource.name}",
                                   arn)
    try:
        instance_id = register_agent(activation, region_name)
    finally:  # registered or not, the activation is of no further use: its code must not stay
        delete_activation(ssm, activation.activation_id)
    return instance_id


# What SSM accepts in a tag value: letters, numbers, white space (but not control characters
# such as a newline), and _ . : / = + - @; at most 256 characters.
_TAG_PUNCTUATION = frozenset("_.:/=+-@")


def check_tag_value(name: str, value: str) -> str:
    """``value`` if SSM accepts it as a tag value, else a one-line error naming ``name``."""
    bad = sorted({c for c in value if not (c.isalnum() or c in _TAG_PUNCTUATION or
                                           unicodedata.category(c).startswith("Z"))})
    if bad:
        raise UsageError(f"{name} holds characters an SSM tag cannot: "
                         f"{', '.join(repr(c) for c in bad)} in {value!r}; set it to your AWS "
                         "user ID (e.g. the wrapper's local_user_id)")
    if len(value) > 256:
        raise UsageError(f"{name} is {len(value)} characters long; SSM tags take at most 256")
    return value


def main(argv: list[str] | None = None) -> int:
    from sagemaker_ssh_helper import cli

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(
            prog="sm-init-ssm",
            description="Register this container with SSM and print its managed instance id.")
        cli.add_general_options(parser, aws=False)
        try:
            command.parse(parser, cli.argv_or_sys(argv))
        except UsageError:
            print("usage: sm-init-ssm [-v]", file=sys.stderr)
            return 2
        for noisy in ("botocore", "boto3", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.DEBUG if command.debug else logging.WARNING)
        try:
            print(init(), flush=True)
        except SSHHelperError as e:
            _record_failure(str(e))
            raise
        except Exception as e:  # the frame prints it in one line; sm-wait tells why
            _record_failure(f"{type(e).__name__}: {e}")
            raise
        return 0

    return cli.guarded_main("sm-init-ssm", body, level=logging.INFO, debug_log=False,
                            fmt="sm-init-ssm: %(message)s", aws_action="SSM registration")


def _record_failure(reason: str) -> None:
    """Tell ``sm-wait`` why (``SM_SSH_FAILURE_FILE``, set by ``sm-setup-ssh start-ssh``)."""
    path = os.environ.get("SM_SSH_FAILURE_FILE")
    if not path:
        return
    try:
        with open(path, "w") as f:
            f.write(" ".join(reason.split())[:500] + "\n")
    except OSError as e:
        logger.warning("cannot write %s: %s", path, e)


if __name__ == "__main__":
    sys.exit(main())
