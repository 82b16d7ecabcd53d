"""Work the agent stand-in does outside its poll loop: shell commands and session workers.

Like the real agent, every session stream is relayed by its own ``ssm-session-worker`` process
(so tools that look for session workers, e.g. idle detection, see them). Standard library only.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_sandbox.ssm.agent_api import ApiError, call
from sagemaker_ssh_sandbox.ssm.channel import (
    AGENT_STREAM_PATH,
    TOKEN_HEADER,
    ChannelError,
    StreamEnd,
    open_channel,
    relay,
)

logger = logging.getLogger("amazon-ssm-agent")

AGENT_MODULE = "sagemaker_ssh_sandbox.ssm.agent"
WORKER_NAME = "ssm-session-worker"
WORKER_FLAG = "-session-worker"
PR_SET_NAME = 15
STDOUT_LIMIT = 24000
STDERR_LIMIT = 8000


def set_process_name(name: str) -> None:
    """Set the kernel's process name (``comm``, 15 characters), as ``ps``/psutil show it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15] + b"\0", 0, 0, 0)
    except (OSError, AttributeError):
        pass


def python_executable() -> str:
    """The running interpreter's binary. Not sys.executable: after a re-exec under another
    argv[0] Python may resolve that name on PATH (e.g. to the bash shim of the same name)."""
    if os.path.exists("/proc/self/exe"):
        return os.path.realpath("/proc/self/exe")
    return sys.executable


def module_env() -> dict[str, str]:
    """Our environment with this package importable (for processes started with ``-m``)."""
    env = dict(os.environ)
    parent = str(Path(__file__).resolve().parents[2])
    paths = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([parent] + [p for p in paths if p != parent])
    return env


def named_argv(name: str, args: list[str]) -> list[str]:
    """argv running this module under the program name ``name`` (argv[0]).

    argv[0] keeps the interpreter's directory: Python derives its prefix from it, and a bare
    name run from ``/`` would make it pick up another installation's standard library. The
    module is run with this package's parent first on ``sys.path`` (``-m`` would look in the
    working directory first, where a job may have its own copy of the package, without the
    sandbox).
    """
    parent = str(Path(__file__).resolve().parents[2])
    return [str(Path(python_executable()).parent / name), "-c", RUN_MODULE, parent, *args]


RUN_MODULE = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
              f"runpy.run_module({AGENT_MODULE!r}, run_name='__main__', alter_sys=True)")


def spawn_session_worker(endpoint: str, instance_id: str, message: dict[str, Any]
                         ) -> subprocess.Popen:
    """Start an ``ssm-session-worker`` for one stream; the job travels on its stdin."""
    proc = subprocess.Popen(
        named_argv(WORKER_NAME, [WORKER_FLAG, str(message.get("SessionId")), instance_id]),
        executable=python_executable(), env=module_env(), stdin=subprocess.PIPE,
        start_new_session=True)
    assert proc.stdin is not None
    with proc.stdin:
        proc.stdin.write(json.dumps({"Endpoint": endpoint, "InstanceId": instance_id,
                                     "Message": message}).encode())
    return proc


def run_session_worker() -> int:
    """Body of ``ssm-session-worker``: connect the target port, then the data channel."""
    set_process_name(WORKER_NAME)
    job = json.loads(sys.stdin.read())
    endpoint, instance_id, message = job["Endpoint"], job["InstanceId"], job["Message"]
    session_id, stream_id = message.get("SessionId"), str(message["StreamId"])
    if message.get("Shell"):
        return _shell_session(endpoint, message)
    host, port = str(message.get("Host") or "127.0.0.1"), int(message["PortNumber"])
    try:
        local = socket.create_connection((host, port), timeout=10)
    except OSError as e:
        reason = f"Unable to connect to {host}:{port}: {e.strerror or e}"
        logger.warning("session %s: %s", session_id, reason)
        try:
            call(endpoint, "stream-failed", {"InstanceId": instance_id, "StreamId": stream_id,
                                             "Message": reason})
        except (ApiError, OSError) as report_error:
            logger.warning("could not report the failure: %s", report_error)
        return 1
    local.settimeout(None)
    try:
        remote = open_channel(f"{endpoint}{AGENT_STREAM_PATH}{stream_id}",
                              {TOKEN_HEADER: str(message["StreamToken"])}, timeout=10)
    except (OSError, ChannelError, ValueError) as e:
        logger.warning("session %s: data channel refused: %s", session_id, e)
        local.close()
        return 1
    logger.info("session %s: stream %s to %s:%d opened", session_id, stream_id, host, port)
    left = StreamEnd(local)
    try:
        relay(left, remote)
    finally:
        left.close()
        remote.close()
    logger.info("session %s: stream %s closed", session_id, stream_id)
    return 0


def _shell_session(endpoint: str, message: dict[str, Any]) -> int:
    """A shell session: ``sh`` on a terminal, relayed over the data channel."""
    from sagemaker_ssh_sandbox.ssm import shell as ssm_shell

    user = ssm_shell.session_user()
    try:
        remote = open_channel(f"{endpoint}{AGENT_STREAM_PATH}{message['StreamId']}",
                              {TOKEN_HEADER: str(message["StreamToken"])}, timeout=10)
    except (OSError, ChannelError, ValueError) as e:
        logger.warning("session %s: data channel refused: %s", message.get("SessionId"), e)
        return 1
    logger.info("session %s: shell as %s", message.get("SessionId"), user)
    try:
        return ssm_shell.run_shell(remote, user)
    finally:
        remote.close()


def execute(params: dict[str, list[str]], run_dir: Path,
            track: Callable[[subprocess.Popen, bool], None]) -> tuple[str, str, int]:
    """Run AWS-RunShellScript ``commands`` as one bash script in ``run_dir``.

    Returns (Status, StatusDetails, ResponseCode); stdout/stderr are left in run_dir.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "_script.sh"
    script.write_text("\n".join(params.get("commands", [])) + "\n")
    timeout = int((params.get("executionTimeout") or ["3600"])[0])
    cwd = (params.get("workingDirectory") or [""])[0] or str(run_dir)
    with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
        try:
            proc = subprocess.Popen(["bash", str(script)], cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        except OSError as e:
            err.write(f"failed to run commands: {e.strerror or e}: {cwd}\n".encode())
            return "Failed", "Failed", 1
        track(proc, True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
            return "TimedOut", "ExecutionTimedOut", -1
        finally:
            track(proc, False)
    return ("Success", "Success", 0) if code == 0 else ("Failed", "Failed", code)


def command_result(command_id: str, outcome: tuple[str, str, int], run_dir: Path,
                   started: float) -> dict[str, Any]:
    """The reply the service expects, with outputs cut to GetCommandInvocation's limits."""
    status, details, code = outcome
    stdout = read_text(run_dir / "stdout", STDOUT_LIMIT)
    stderr = read_text(run_dir / "stderr", STDERR_LIMIT)
    if status == "Failed":  # the real agent appends this line
        separator = "\n" if stderr and not stderr.endswith("\n") else ""
        stderr = (stderr + separator + f"failed to run commands: exit status {code}"
                  )[-STDERR_LIMIT:]
    return {"CommandId": command_id, "Status": status, "StatusDetails": details,
            "ResponseCode": code, "StandardOutputContent": stdout,
            "StandardErrorContent": stderr, "ExecutionStartDateTime": iso(started),
            "ExecutionEndDateTime": iso(time.time())}


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass


def read_text(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit * 4).decode("utf-8", "replace")[:limit]
    except OSError:
        return ""


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def own_argv0() -> str | None:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0].decode())
    except (OSError, UnicodeDecodeError):
        return None
