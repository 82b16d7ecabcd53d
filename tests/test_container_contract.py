"""The env contract: what the wrappers write is what the container reads, key by key; a malformed
value is one log line and its documented fallback, in Python and in sm-setup-ssh."""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagemaker_ssh_helper import contract, wrapper_hooks
from sagemaker_ssh_helper.wrapper_settings import SSHSettings

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "sagemaker_ssh_helper" / "sm-setup-ssh"

WRITTEN = [
    SSHSettings(wait_seconds=600, ssm_role="SSMRole", owner="AIDAOWNER:alice"),
    SSHSettings(wait_seconds=0, ssm_role="service-role/R", owner="local user@x", log_to_stdout=True,
                instance_count=3, start_ssh=False, keep_alive_on_failure_seconds=1800),
    SSHSettings(wait_seconds=28 * 24 * 3600, ssm_role="R", owner="AIDAOWNER", instance_count=1,
                transport="native", keys_path="s3://bucket/ssh-native-keys/",
                keys_bucket_owner="123456789012"),
]


class Warnings:
    """Collects what the reader logs (its ``warn`` callback)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, message: str) -> None:
        self.lines.append((level, message))


@pytest.mark.parametrize("written", WRITTEN, ids=["defaults", "hybrid", "native"])
def test_the_reader_reads_every_key_the_writer_writes(written: SSHSettings) -> None:
    env = written.environment()
    warnings = Warnings()
    read = contract.read(env, warn=warnings)
    assert warnings.lines == []
    assert set(env) <= set(contract.KEYS.values())
    # the writer's fields and the reader's have the same names and read back the same values
    for field in dataclasses.fields(SSHSettings):
        assert getattr(read, field.name) == getattr(written, field.name), field.name
        assert contract.KEYS[field.name] in env or field.name in (
            "instance_count", "keep_alive_on_failure_seconds", "transport", "keys_path",
            "keys_bucket_owner")
    # written back, the reader's settings are the writer's variables, text for text
    assert {k: v for k, v in read.values().items() if k in env} == env
    assert read.normalised(env) == env


def test_the_names_the_wrappers_hook_in_are_read() -> None:
    env = {wrapper_hooks.ENDPOINT_NAME_VAR: "My-Endpoint",
           wrapper_hooks.TRANSFORM_JOB_NAME_VAR: "my-transform"}
    read = contract.read(env)
    assert (read.endpoint_name, read.transform_job_name) == ("My-Endpoint", "my-transform")
    assert set(contract.KEYS) == {f.name for f in dataclasses.fields(contract.Contract)}


def test_absent_means_the_documented_defaults() -> None:
    warnings = Warnings()
    read = contract.read({}, warn=warnings)
    assert read == contract.Contract()
    assert (read.start_ssh, read.wait_seconds, read.ssh_instance_count, read.transport,
            read.log_to_stdout, read.keep_alive_on_failure_seconds) == \
        (None, 0, 2, "hybrid", False, 0)
    assert warnings.lines == []
    assert contract.setup_args(read) == ["--wait-seconds", "0", "--transport", "hybrid",
                                         "--log-to-stdout", "false"]


MALFORMED = [
    ("SSH_WAIT_TIME_SECONDS", "10m", "wait_seconds", 0,
     "SSH_WAIT_TIME_SECONDS='10m' is not a whole number of seconds; using 0"),
    ("SSH_INSTANCE_COUNT", "two", "ssh_instance_count", 2,
     "SSH_INSTANCE_COUNT='two' is not a number; using 2"),
    ("SSH_LOG_TO_STDOUT", "yes", "log_to_stdout", False,
     "SSH_LOG_TO_STDOUT='yes' is neither true nor false; using false"),
    ("SSH_KEEP_ALIVE_ON_FAILURE_SECONDS", "-5", "keep_alive_on_failure_seconds", 0,
     "SSH_KEEP_ALIVE_ON_FAILURE_SECONDS='-5' is not a whole number of seconds; using 0"),
    ("SSH_TRANSPORT", "ssm", "transport", "hybrid",
     "SSH_TRANSPORT='ssm' is neither hybrid nor native; using hybrid"),
    ("SSH_AUTHORIZED_KEYS_PATH", "bucket/keys", "keys_path", "",
     "SSH_AUTHORIZED_KEYS_PATH='bucket/keys' is not an s3://bucket/prefix/ URL; using none"),
    ("SSH_SSM_ROLE", "arn:aws:iam::1:user/bob", "ssm_role", "",
     "SSH_SSM_ROLE='arn:aws:iam::1:user/bob' is not an IAM role name or role ARN; using no role"),
]


@pytest.mark.parametrize("name, value, field, fallback, line", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_a_malformed_value_is_one_line_and_its_fallback(
        name: str, value: str, field: str, fallback: object, line: str) -> None:
    env = dict(WRITTEN[0].environment(), **{name: value})
    warnings = Warnings()
    read = contract.read(env, warn=warnings)
    assert warnings.lines == [(logging.WARNING, line)]
    assert getattr(read, field) == fallback
    # what bootstrap hands on reads back the same, without another warning
    again = Warnings()
    assert contract.read(read.normalised(env), warn=again) == read
    assert again.lines == []


def test_without_logging_the_warning_is_one_line_on_stderr() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), SSH_WAIT_TIME_SECONDS="soon",
               SSH_TRANSPORT="native")
    proc = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.contract", "setup-args"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["--wait-seconds", "0", "--transport", "native",
                                   "--log-to-stdout", "false"]
    assert proc.stderr == ("[sagemaker-ssh-helper] WARNING: SSH_WAIT_TIME_SECONDS='soon' is not "
                           "a whole number of seconds; using 0\n")


@pytest.mark.parametrize("args, message", [
    (["start-sshd", "--wait-seconds", "10m"], "--wait-seconds takes whole seconds, not '10m'"),
    (["--transport", "ssm"], "bad value for --transport: 'ssm'"),
    (["configure", "--transport", "hybrid", "--transport", "ssm"],
     "bad value for --transport: 'ssm'"),
    (["--log-to-stdout"], "--log-to-stdout needs a value"),
])
def test_sm_setup_ssh_refuses_bad_options_in_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(["bash", str(SETUP), *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2
    assert proc.stderr == (f"sm-setup-ssh: {message}; usage: sm-setup-ssh "
                           "[configure|start-ssh|start-sshd] [--wait-seconds N] "
                           "[--transport hybrid|native] [--log-to-stdout true|false]\n")


def test_bootstrap_hands_the_setup_its_settings_once(tmp_path: Path) -> None:
    """The setup script gets the settings as arguments, and an environment in which every
    contract variable is already valid (so nothing downstream warns again)."""
    from sagemaker_ssh_helper import bootstrap

    calls: list[dict[str, object]] = []

    def run(argv: list[str], env: dict[str, str]) -> int:
        calls.append({"argv": argv, "env": env})
        return 1  # as if the setup failed: nothing else happens

    environ = dict(WRITTEN[0].environment(), SAGEMAKER_BASE_DIR=str(tmp_path),
                   SSH_WAIT_TIME_SECONDS=" 90 ", SSH_TRANSPORT="carrier-pigeon")
    bootstrap.setup_and_start_ssh(environ, run=run, hold_on_failure=False)
    [call] = calls
    assert call["argv"][2:] == ["--wait-seconds", "90", "--transport", "hybrid",  # type: ignore
                                "--log-to-stdout", "false"]
    env = call["env"]
    assert isinstance(env, dict)
    assert env["SSH_WAIT_TIME_SECONDS"] == "90" and env["SSH_TRANSPORT"] == "hybrid"
    warnings = Warnings()
    contract.read(env, warn=warnings)
    assert warnings.lines == []
