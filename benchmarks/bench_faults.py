"""How long `sm-ssh` takes to give up on an AWS endpoint that will not answer, and how many
attempts it makes, for faults that do not go away:

  dropped connections  an endpoint that accepts TCP connections and closes them (a wrong port
                       behind a proxy, a broken VPC endpoint)
  refused connections  nothing listens at the endpoint
  persistent 5xx       the SSM stand-in answers InternalServerError to every call

    python benchmarks/bench_faults.py [--runs 3]

Each case runs `sm-ssh list training.sagemaker` in a fresh interpreter (as a user would) and
reports the wall time to its one-line error and the attempts the endpoint saw. No root needed.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _env(ssm_url: str) -> dict[str, str]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_ENDPOINT_URL_SSM=ssm_url, PYTHONPATH=str(REPO))
    env.pop("AWS_PROFILE", None)
    return env


def _run(ssm_url: str) -> tuple[float, int, str]:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "list",
                           "training.sagemaker"], env=_env(ssm_url), capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    lines = done.stderr.strip().splitlines()
    return time.perf_counter() - began, done.returncode, lines[-1] if lines else ""


def dropped() -> tuple[float, int, str]:
    from sagemaker_ssh_sandbox.faults import dropping_endpoint

    with dropping_endpoint() as endpoint:
        seconds, _, line = _run(endpoint.url)
    return seconds, endpoint.accepted, line


def refused() -> tuple[float, int, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    seconds, _, line = _run(f"http://127.0.0.1:{port}")
    return seconds, -1, line


def persistent_5xx() -> tuple[float, int, str]:
    from sagemaker_ssh_sandbox.ssm.service import start_ssm_server

    server = start_ssm_server(port=0)
    try:
        server.backend.inject_fault("DescribeInstanceInformation", "InternalServerError", 10000)
        seconds, _, line = _run(server.url)
        calls = server.backend.stats()["CallCounts"].get("DescribeInstanceInformation", 0)
    finally:
        server.shutdown()
    return seconds, calls, line


CASES: dict[str, Callable[[], tuple[float, int, str]]] = {
    "dropped connections": dropped,
    "refused connections": refused,
    "persistent 5xx": persistent_5xx,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"time to a one-line error, {args.runs} runs (s); attempts the endpoint saw")
    print(f"{'case':<22} {'median':>8} {'min':>8} {'max':>8} {'attempts':>9}")
    for name, case in CASES.items():
        results = [case() for _ in range(args.runs)]
        times = [r[0] for r in results]
        attempts = "-" if results[0][1] < 0 else str(results[0][1])
        print(f"{name:<22} {statistics.median(times):>8.1f} {min(times):>8.1f} "
              f"{max(times):>8.1f} {attempts:>9}")
        print(f"    {results[0][2][:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
