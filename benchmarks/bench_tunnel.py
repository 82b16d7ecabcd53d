"""Time for `sm-ssh tunnel -L` to come back after a fault, in the offline sandbox (a real job
container, the SSM stand-in, real OpenSSH), and the SSM calls one reconnection makes.

    python benchmarks/bench_tunnel.py [--runs 5] [--hang]

Faults (each injected ``--runs`` times into one running tunnel):
  session dropped    TerminateSession from outside, as when SSM recycles the websocket
  plugin killed      SIGKILL to the session-manager-plugin
  plugin hung        SIGSTOP to the plugin: nothing is closed, only ssh's keep-alive can tell
                     (with --hang; once, it takes 15-25 s)
For each: seconds from the fault to the forwarded port answering again (the container's sshd
banner through -L) with the tunnel's "is back" line said. Faults are STABLE_AFTER + 1 s apart,
so each is a first drop (the backoff grows only for a tunnel that keeps dropping). Needs root
on Linux.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_connect import launch  # noqa: E402

from sagemaker_ssh_helper import tunnel  # noqa: E402
from sagemaker_ssh_sandbox import Sandbox, requirements_problem  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            return conn.recv(8).startswith(b"SSH-2.0")
    except OSError:
        return False


def wait_for(check: Callable[[], bool], timeout: float = 60) -> float:
    began = time.perf_counter()
    while not check():
        if time.perf_counter() - began > timeout:
            raise RuntimeError("the tunnel did not come back")
        time.sleep(0.02)
    return time.perf_counter() - began


def ssm_calls(env: dict[str, str]) -> dict[str, int]:
    with urllib.request.urlopen(f"{env['AWS_ENDPOINT_URL_SSM']}/_sandbox/stats",
                                timeout=10) as answer:
        return dict(json.loads(answer.read())["CallCounts"])


def plugin_of(pid: int) -> int:
    """The session-manager-plugin (stand-in) below ``pid``."""
    for _ in range(100):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if b"sagemaker_ssh_sandbox.ssm.plugin" in cmd and b"runpy" in cmd:
                parent = int(stat[stat.rindex(")") + 2:].split()[1])
                grand = (Path("/proc") / str(parent) / "stat").read_text()
                if int(grand[grand.rindex(")") + 2:].split()[1]) == pid:  # sm-ssh > ssh > plugin
                    return int(entry.name)
        time.sleep(0.05)
    raise RuntimeError("no plugin below the tunnel")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hang", action="store_true", help="also freeze the plugin once")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    problem = requirements_problem()
    if problem:
        print(f"bench_tunnel: {problem}", file=sys.stderr)
        return 2
    results: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        with Sandbox(Path(tmp) / "sandbox", stop_grace=3.0) as sandbox:
            env = launch(sandbox, Path(tmp))
            fqdn, local = f"{env['BENCH_JOB']}.training.sagemaker", free_port()
            ssm = sandbox.client("ssm")
            lines: list[str] = []
            proc = subprocess.Popen(
                [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "tunnel", fqdn,
                 "--wait", "300", "-L", f"{local}:localhost:22"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, start_new_session=True)
            threading.Thread(target=lambda: lines.extend(proc.stderr or []),
                             daemon=True).start()
            try:
                results["first connection"] = [wait_for(lambda: banner(local), 300)]

                def backs() -> int:
                    return sum(" is back after " in line for line in lines)

                def drop() -> None:
                    (session,) = [s["SessionId"] for s in ssm.describe_sessions(
                        State="Active")["Sessions"]]
                    ssm.terminate_session(SessionId=session)

                frozen: list[int] = []
                faults = [("session dropped", drop),
                          ("plugin killed", lambda: os.kill(plugin_of(proc.pid), signal.SIGKILL))]
                plan = [f for f in faults for _ in range(args.runs)]

                def freeze() -> None:
                    frozen.append(plugin_of(proc.pid))
                    os.kill(frozen[-1], signal.SIGSTOP)

                if args.hang:
                    plan.append(("plugin hung", freeze))
                for name, fault in plan:
                    time.sleep(tunnel.STABLE_AFTER + 1)  # each drop on its own: no backoff yet
                    count, before = backs(), ssm_calls(env)
                    began = time.perf_counter()
                    fault()

                    def back(seen: int = count) -> bool:
                        return backs() > seen and banner(local)

                    wait_for(back, 120)
                    results.setdefault(name, []).append(time.perf_counter() - began)
                    after = ssm_calls(env)
                    calls = {op: after.get(op, 0) - before.get(op, 0) for op in after
                             if after.get(op, 0) != before.get(op, 0)}
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
            finally:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=30)
    if args.json:
        print(json.dumps({"seconds": results, "ssm_calls_per_reconnect": calls}, indent=2))
        return 0
    print(f"sm-ssh tunnel: seconds from the fault to the forwarded port answering again "
          f"({args.runs} runs each)")
    print(f"{'fault':<20} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in results.items():
        print(f"{name:<20} {statistics.median(values):>8.2f} {min(values):>8.2f} "
              f"{max(values):>8.2f}")
    print("SSM calls of the last reconnection: "
          + ", ".join(f"{op} {n}" for op, n in sorted(calls.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
