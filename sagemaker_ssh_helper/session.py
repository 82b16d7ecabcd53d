"""Open an SSM ``AWS-StartSSHSession`` session without the AWS CLI.

StartSession is called through boto3 and the response is handed to ``session-manager-plugin``
in the ``AWS_SSM_START_SESSION_RESPONSE`` environment variable, so the session token never shows
up in ``ps``; a plugin too old for that protocol gets it as an argument, as aws-cli does (the
plugin's version is asked once per binary and remembered in ``~/.ssh/sm-ssh/``).

The plugin inherits stdin/stdout: run as an ssh ProxyCommand,

    python -m sagemaker_ssh_helper.session mi-0123456789abcdef0 --port %p

this process writes nothing but the session stream to stdout; diagnostics go to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import aws, cli
from sagemaker_ssh_helper.errors import AwsError, ResolutionError, ToolMissing

logger = logging.getLogger(__name__)

PLUGIN = "session-manager-plugin"
RESPONSE_ENV = "AWS_SSM_START_SESSION_RESPONSE"
SSH_DOCUMENT = "AWS-StartSSHSession"
# The plugin reads the StartSession response from RESPONSE_ENV only in versions newer than this
# (aws-cli's sessionmanager.py: LAST_PLUGIN_VERSION_WITHOUT_ENV_VAR); 1.2.536.0 is the first
# release that does (the plugin's release notes). A session checks it before the plugin's first
# run (see env_protocol); ``sm-ssh doctor`` says when the plugin should be updated.
LAST_PLUGIN_WITHOUT_ENV = (1, 2, 497, 0)
MIN_PLUGIN = (1, 2, 536, 0)
PLUGIN_GUIDE = ("https://docs.aws.amazon.com/systems-manager/latest/userguide/"
                "session-manager-working-with-install-plugin.html")
PLUGIN_HELP = ("session-manager-plugin not found on PATH: install it (run sm-local-configure, or "
               f"see {PLUGIN_GUIDE})")


class PluginMissing(ToolMissing):
    """session-manager-plugin is not installed."""


def find_plugin() -> str:
    path = shutil.which(PLUGIN)
    if not path:
        raise PluginMissing(PLUGIN_HELP)
    return path


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first dotted number in ``text`` (``session-manager-plugin --version``'s output)."""
    found = re.search(r"(\d+(?:\.\d+)+)", text)
    return tuple(int(p) for p in found.group(1).split(".")) if found else None


def reads_response_env(version: tuple[int, ...] | None) -> bool:
    """Whether a plugin of ``version`` reads the StartSession response from RESPONSE_ENV (as
    aws-cli decides: newer than LAST_PLUGIN_WITHOUT_ENV, compared part by part)."""
    if version is None:
        return False
    width = max(len(version), len(LAST_PLUGIN_WITHOUT_ENV))
    pad = (0,) * width
    return (version + pad)[:width] > (LAST_PLUGIN_WITHOUT_ENV + pad)[:width]


def plugin_version(plugin: str) -> str:
    """``plugin --version``'s output ("" when it does not run)."""
    try:
        done = subprocess.run([plugin, "--version"], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout or done.stderr).strip()


PLUGIN_CACHE = "plugin-version.json"  # under ~/.ssh/sm-ssh: {path: {size, mtime_ns, version}}


def _cache_path() -> Path:
    return Path.home() / ".ssh" / "sm-ssh" / PLUGIN_CACHE


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_plugin_version(plugin: str) -> str:
    """``plugin --version``'s output, asked once per binary: remembered by path, size and
    mtime, so a session spawns no extra process after the first. Best effort: a cache that
    cannot be read or written only costs the extra run."""
    try:
        st = os.stat(plugin)
    except OSError:
        return plugin_version(plugin)
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = _cache_path()
    entries = _read_cache(cache)
    entry = entries.get(plugin)
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp \
            and isinstance(entry.get("version"), str):
        return str(entry["version"])
    text = plugin_version(plugin)
    if parse_version(text) is None:
        return text  # not remembered: the next session asks again
    entries = {p: e for p, e in entries.items() if os.path.exists(p)}  # gone binaries: dropped
    entries[plugin] = dict(stamp, version=text)
    try:
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = cache.with_name(f".{PLUGIN_CACHE}.{os.getpid()}")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, cache)
    except OSError as e:
        logger.debug("cannot remember the plugin's version in %s: %s", cache, e)
    return text


def env_protocol(plugin: str) -> bool:
    """Whether ``plugin`` takes the StartSession response in RESPONSE_ENV (checked before its
    first run, as aws-cli does; an unknown version gets the response as an argument, as there)."""
    return reads_response_env(parse_version(cached_plugin_version(plugin)))


def too_old(plugin: str, text: str | None = None) -> str | None:
    """Why ``plugin`` (whose ``--version`` said ``text``: asked when None) cannot take the
    response in RESPONSE_ENV, or None when it can."""
    text = plugin_version(plugin) if text is None else text
    if reads_response_env(parse_version(text)):
        return None
    wanted = ".".join(map(str, MIN_PLUGIN))
    return f"{plugin} is version {text or 'unknown'}, older than {wanted}"


def plugin_argv(plugin: str, region: str, profile: str | None,
                parameters: dict[str, Any], endpoint_url: str, response: str | None = None
                ) -> list[str]:
    """The plugin's command line; the StartSession response itself travels in the env var,
    unless given as ``response`` (for a plugin older than that protocol, as aws-cli does)."""
    return [plugin, response or RESPONSE_ENV, region, "StartSession", profile or "",
            json.dumps(parameters), endpoint_url]


@contextmanager
def user_signals_left_to_child(names: Sequence[str] = ("SIGINT", "SIGQUIT", "SIGTSTP")
                               ) -> Iterator[None]:
    """While a child runs in the foreground, the keyboard's signals belong to it, not to us.

    A Python handler (not SIG_IGN) is installed so the child, after exec, still gets the
    default dispositions. The previous handlers are restored on the way out.
    """
    signums = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {s: signal.getsignal(s) for s in signums}
    try:
        for s in signums:
            signal.signal(s, lambda *_: None)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def forwarded_termination(child: subprocess.Popen[Any]) -> Iterator[None]:
    """Pass SIGTERM/SIGHUP on to ``child`` (so it can clean up) while the block runs."""
    signums = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {s: signal.getsignal(s) for s in signums}

    def forward(signum: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    try:
        for s in signums:
            signal.signal(s, forward)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _start_error(e: Exception, instance_id: str) -> Exception:
    """StartSession's errors, with what to do about them."""
    code = aws.error_code(e)
    if code == "TargetNotConnected" and instance_id.startswith("sagemaker-"):
        return ResolutionError(f"{instance_id} is not connected: SageMaker opens remote-debugging "
                               "sessions only while the job is Training")
    if code == "TargetNotConnected":
        return ResolutionError(f"{instance_id} is not connected to SSM (ConnectionLost): the "
                               "container stopped or its agent died")
    message = str(getattr(e, "response", {}).get("Error", {}).get("Message", ""))
    if code == "BadRequest" and "advanced" in message.lower():
        return AwsError(f"Session Manager refused {instance_id}: {message.rstrip('.')}; "
                        "sessions to SageMaker containers need the advanced-instances "
                        "tier, see IAM_SSM_Setup.md")
    return aws.explain(e, "ssm:StartSession")


@dataclass(frozen=True)
class Started:
    """A session started with StartSession: what the plugin needs to open its stream."""

    session_id: str
    response_env: str  # the value for AWS_SSM_START_SESSION_RESPONSE
    plugin_argv: list[str]


def open_session(ssm: Any, instance_id: str, port: int, profile: str | None = None
                 ) -> Started:
    """StartSession (``AWS-StartSSHSession`` to ``port``); the plugin is run by the caller,
    with ``response_env`` in its environment so the token never shows in ``ps``."""
    return start(ssm, instance_id, SSH_DOCUMENT, {"portNumber": [str(port)]}, profile)


def start(ssm: Any, target: str, document: str | None, parameters: dict[str, Any] | None,
          profile: str | None = None) -> Started:
    """StartSession to ``target`` with ``document`` (None: a shell) and its parameters."""
    plugin = find_plugin()
    in_env = env_protocol(plugin)  # before StartSession: nothing is started when it fails
    request: dict[str, Any] = {"Target": target}
    if document:
        request["DocumentName"] = document
    if parameters:
        request["Parameters"] = parameters
    try:
        response = ssm.start_session(**request)
    except Exception as e:
        raise _start_error(e, target) from e
    logger.debug("session %s to %s (%s)", response["SessionId"], target, document or "shell")
    response_env = json.dumps({k: response[k] for k in ("SessionId", "TokenValue", "StreamUrl")})
    return Started(response["SessionId"], response_env,
                   plugin_argv(plugin, ssm.meta.region_name, profile, request,
                               ssm.meta.endpoint_url, None if in_env else response_env))


def start_ssh_session(instance_id: str, port: int = 22, *, session: Any = None,
                      region: str | None = None, profile: str | None = None) -> int:
    """Start an ``AWS-StartSSHSession`` session to ``instance_id``:``port`` and relay it on
    stdin/stdout through the plugin. Returns the plugin's exit code."""
    find_plugin()
    session = session or aws.boto_session(profile or None, region)
    ssm = aws.client(session, "ssm", region or aws.session_region(session))
    return run_session(ssm, instance_id, SSH_DOCUMENT, {"portNumber": [str(port)]}, profile)


def run_session(ssm: Any, target: str, document: str | None,
                parameters: dict[str, Any] | None, profile: str | None = None) -> int:
    """Start a session and run the plugin in the foreground (the terminal's signals go to
    it); the session is terminated if the plugin fails. Returns the plugin's exit code."""
    started = start(ssm, target, document, parameters, profile)
    env = dict(os.environ, **{RESPONSE_ENV: started.response_env})
    returncode = 1
    try:
        with user_signals_left_to_child():
            child = subprocess.Popen(started.plugin_argv, env=env)
            with forwarded_termination(child):
                returncode = child.wait()
    except FileNotFoundError as e:
        raise PluginMissing(PLUGIN_HELP) from e
    finally:
        if returncode != 0:
            terminate_session(ssm, started.session_id)
    return returncode


def terminate_session(ssm: Any, session_id: str) -> None:
    """Best effort: close the session on the service side so the agent frees it at once."""
    try:
        ssm.terminate_session(SessionId=session_id)
    except Exception as e:  # the session may already be gone; nothing more to do
        logger.debug("TerminateSession %s: %s", session_id, e)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="python -m sagemaker_ssh_helper.session",
        description="Relay an SSM SSH session on stdin/stdout (for ssh's ProxyCommand).")
    parser.add_argument("instance_id", help="managed instance ID (mi-...)")
    parser.add_argument("--port", type=int, default=22, help="remote port (ssh's %%p)")
    cli.add_general_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ProxyCommand ``sm-ssh config`` writes: stdout carries the session stream only."""
    def body(frame: cli.Command) -> int:
        args = frame.parse(build_parser(), cli.argv_or_sys(argv))
        return start_ssh_session(args.instance_id, args.port, region=args.region,
                                 profile=args.profile)

    return cli.guarded_main("sm-ssh session", body)


if __name__ == "__main__":
    sys.exit(main())
