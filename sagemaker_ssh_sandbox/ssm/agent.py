"""``amazon-ssm-agent`` stand-in for the offline sandbox (same command line as the real agent).

    amazon-ssm-agent -register -code CODE -id ID -region REGION [-y]
    amazon-ssm-agent            # daemon in the foreground

Registration prints the real agent's line and writes ``registration`` (ManagedInstanceID,
Region) under /var/lib/amazon/ssm, or under $SSM_AGENT_STATE_DIR. The daemon heartbeats, runs
AWS-RunShellScript commands with bash, relays session streams to ``127.0.0.1:<portNumber>`` and
exits when its instance is deregistered. The service is found through AWS_ENDPOINT_URL_SSM or
AWS_ENDPOINT_URL (credentials are not needed). Logs go to stderr. Standard library only.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox.ssm.agent_api import (
    ApiError,
    call,
    endpoint_from_env,
    read_registration,
    state_dir,
    write_registration,
)
from sagemaker_ssh_sandbox.ssm.agent_worker import (
    WORKER_FLAG,
    command_result,
    execute,
    kill_group,
    module_env,
    named_argv,
    own_argv0,
    python_executable,
    run_session_worker,
    set_process_name,
    spawn_session_worker,
)

logger = logging.getLogger("amazon-ssm-agent")

AGENT_VERSION = "3.3.1142.0"
REGISTERED_LINE = "Successfully registered the instance with AWS SSM using Managed instance-id: {}"
FAILED_PREFIX = "Registration failed due to error registering the instance with AWS SSM."
AGENT_NAME = "amazon-ssm-agent"
POLL_SECONDS = 10.0


def host_facts() -> dict[str, str]:
    """Hostname (-> ComputerName), IP address and OS name/version, as the agent reports them."""
    facts = {"Hostname": socket.gethostname(), "IPAddress": "127.0.0.1",
             "PlatformName": "Linux", "PlatformVersion": "", "AgentVersion": AGENT_VERSION}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the source address
            facts["IPAddress"] = probe.getsockname()[0]
    except OSError:
        pass
    try:
        release = dict(line.split("=", 1) for line in
                       Path("/etc/os-release").read_text().splitlines() if "=" in line)
        facts["PlatformName"] = release.get("NAME", "Linux").strip('"')
        facts["PlatformVersion"] = release.get("VERSION_ID", "").strip('"')
    except OSError:
        pass
    return facts


def register(code: str, activation_id: str, region: str) -> int:
    endpoint = endpoint_from_env()
    if not endpoint:
        print(f"{FAILED_PREFIX} No SSM endpoint: set AWS_ENDPOINT_URL_SSM or AWS_ENDPOINT_URL.",
              file=sys.stderr)
        return 1
    body = {"ActivationId": activation_id, "ActivationCode": code, "Region": region,
            **host_facts()}
    try:
        doc = call(endpoint, "register", body)
    except ApiError as e:
        print(f"{FAILED_PREFIX} {e.code}: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{FAILED_PREFIX} RequestError: send request failed: {e}", file=sys.stderr)
        return 1
    instance_id = str(doc["InstanceId"])
    try:
        write_registration(state_dir(), instance_id, region, endpoint)
    except OSError as e:
        print(f"{FAILED_PREFIX} cannot write {state_dir()}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(REGISTERED_LINE.format(instance_id), flush=True)
    return 0


class Agent:
    """The daemon: heartbeat thread, long-poll loop, one thread per command or stream."""

    def __init__(self, endpoint: str, instance_id: str, workdir: Path) -> None:
        self.endpoint = endpoint
        self.instance_id = instance_id
        self.workdir = workdir
        self.stop = threading.Event()
        self.heartbeat_interval = 2.0
        self._children: set[subprocess.Popen] = set()
        self._children_lock = threading.Lock()

    def run(self) -> int:
        logger.info("Amazon SSM Agent v%s (sandbox stand-in) starting for %s via %s",
                    AGENT_VERSION, self.instance_id, self.endpoint)
        for target in (self._heartbeat_loop, self._poll_loop):
            threading.Thread(target=target, daemon=True, name=target.__name__).start()
        self.stop.wait()
        with self._children_lock:
            for proc in self._children:
                kill_group(proc)
        logger.info("agent stopped")
        return 0

    def _deregistered(self) -> None:
        if not self.stop.is_set():
            logger.info("instance %s is no longer registered; stopping", self.instance_id)
        self.stop.set()

    def _call(self, name: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        try:
            return call(self.endpoint, name, {"InstanceId": self.instance_id, **body}, timeout)
        except ApiError as e:
            if e.code == "InvalidInstanceId":
                self._deregistered()
            raise

    def _heartbeat_loop(self) -> None:
        while not self.stop.is_set():
            try:
                doc = self._call("heartbeat", host_facts(), timeout=10.0)
                self.heartbeat_interval = float(doc.get("HeartbeatIntervalSeconds", 2.0))
            except (ApiError, OSError) as e:
                logger.warning("heartbeat failed: %s", e)
            self.stop.wait(self.heartbeat_interval)

    def _poll_loop(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                doc = self._call("poll", {"WaitSeconds": POLL_SECONDS},
                                 timeout=POLL_SECONDS + 15)
                delay = 0.5
            except (ApiError, OSError) as e:
                if self.stop.is_set():
                    return
                logger.warning("polling for messages failed: %s (retrying in %.1fs)", e, delay)
                self.stop.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)
                continue
            for message in doc.get("Messages", []):
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("Type")
        if kind == "RunCommand":
            target: Any = self._run_command
        elif kind == "OpenStream":
            target = self._open_stream
        else:
            logger.warning("ignoring unknown message type %r", kind)
            return
        threading.Thread(target=target, args=(message,), daemon=True, name=str(kind)).start()

    # ---- AWS-RunShellScript ----------------------------------------------------------
    def _run_command(self, message: dict[str, Any]) -> None:
        command_id = str(message["CommandId"])
        params: dict[str, list[str]] = message.get("Parameters") or {}
        run_dir = self.workdir / "orchestration" / self.instance_id / command_id
        logger.info("running command %s", command_id)
        started = time.time()
        outcome = execute(params, run_dir, self.track)
        result = command_result(command_id, outcome, run_dir, started)
        logger.info("command %s finished: %s (exit %d)", command_id, outcome[0], outcome[2])
        for attempt in range(6):
            try:
                self._call("command-result", result)
                return
            except ApiError as e:
                logger.warning("could not report command %s: %s", command_id, e)
                return
            except OSError as e:
                logger.warning("could not report command %s (attempt %d): %s", command_id,
                               attempt + 1, e)
                if self.stop.wait(0.5 * 2 ** attempt):
                    return

    def track(self, proc: subprocess.Popen, add: bool) -> None:
        with self._children_lock:
            (self._children.add if add else self._children.discard)(proc)

    # ---- session streams --------------------------------------------------------------
    def _open_stream(self, message: dict[str, Any]) -> None:
        """Hand the stream to its own ssm-session-worker process and reap it when done."""
        try:
            proc = spawn_session_worker(self.endpoint, self.instance_id, message)
        except OSError as e:
            logger.warning("cannot start ssm-session-worker: %s", e)
            return
        self.track(proc, True)
        try:
            proc.wait()
        finally:
            self.track(proc, False)


def take_agent_name(args: list[str]) -> None:
    """Become ``amazon-ssm-agent`` in ``ps`` (argv[0] and comm), as tools look for it by name.

    Re-executes the interpreter once with that argv[0]; the PID does not change.
    """
    set_process_name(AGENT_NAME)
    if own_argv0() in (AGENT_NAME, None):
        return
    try:
        os.execve(python_executable(), named_argv(AGENT_NAME, args), module_env())
    except OSError as e:
        logger.warning("cannot rename the agent process: %s", e)


def run_daemon() -> int:
    reg = read_registration(state_dir())
    if not reg.get("ManagedInstanceID"):
        logger.error("the instance is not registered (no %s/registration): run "
                     "amazon-ssm-agent -register -code CODE -id ID -region REGION first",
                     state_dir())
        return 1
    endpoint = endpoint_from_env() or reg.get("Endpoint")
    if not endpoint:
        logger.error("no SSM endpoint: set AWS_ENDPOINT_URL_SSM or AWS_ENDPOINT_URL")
        return 1
    agent = Agent(endpoint, reg["ManagedInstanceID"], state_dir())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop.set())
    return agent.run()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amazon-ssm-agent",
                                     description="SSM agent stand-in for the offline sandbox.")
    parser.add_argument("-register", action="store_true", help="register with an activation")
    parser.add_argument("-code", help="activation code")
    parser.add_argument("-id", help="activation id")
    parser.add_argument("-region", help="region of the activation")
    parser.add_argument("-y", action="store_true", help="overwrite an existing registration")
    parser.add_argument("-version", "--version", action="store_true", help="print the version")
    parser.add_argument(WORKER_FLAG, nargs="*", dest="session_worker", help=argparse.SUPPRESS)
    return parser


def _glue_values(argv: list[str]) -> list[str]:
    """``-code -x…`` -> ``-code=-x…``: like the real agent, a value may start with a dash."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("-code", "-id", "-region") and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [amazon-ssm-agent] %(message)s")
    args = _parser().parse_args(_glue_values(sys.argv[1:] if argv is None else argv))
    if args.session_worker is not None:
        return run_session_worker()
    if args.version:
        print(f"SSM Agent version: {AGENT_VERSION}")
        return 0
    if args.register:
        region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not (args.code and args.id and region):
            print("amazon-ssm-agent: -register needs -code CODE -id ID -region REGION",
                  file=sys.stderr)
            return 1
        return register(args.code, args.id, region)
    if args.code or args.id or args.region or args.y:
        print("amazon-ssm-agent: -code/-id/-region/-y are only valid with -register",
              file=sys.stderr)
        return 1
    if argv is None:
        take_agent_name(sys.argv[1:])
    return run_daemon()


if __name__ == "__main__":
    sys.exit(main())
