"""Connect-to-first-command for both transports side by side, in one offline sandbox: a hybrid
training job (SSM activation, SendCommand key push) and a native one (SageMaker's remote
debugging, keys through S3), each timed with the same `sm-ssh connect <job> -- echo ready`,
alternately, then the AWS API calls one connect makes before ssh runs, by operation.

    python benchmarks/bench_transports.py [--runs 5] [--json]

Needs root on Linux (the sandbox runs jobs in namespaces).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sandbox_job as shared  # noqa: E402
from bench_connect import api_calls  # noqa: E402

TRANSPORTS = ("hybrid", "native")


def wait_ready(env: dict[str, str], fqdn: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(shared.sm_ssh("connect", fqdn, "--", "true"), env=env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{fqdn} never became reachable: {done.stderr[-500:]}")
        time.sleep(1)


def main(argv: list[str]) -> int:
    args = shared.runs_parser(__doc__).parse_args(argv)
    if shared.cannot_run("bench_transports"):
        return 2
    results: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    with shared.sandbox_in_tempdir("bench-transports-") as (sandbox, work):
        env = shared.workspace(sandbox, work)
        jobs = {t: shared.launch_job(env, work, f"bench-{t}", 900, transport=t) for t in TRANSPORTS}
        for job in jobs.values():  # both online before any timing; keys exist from here
            wait_ready(env, f"{job}.training.sagemaker")
        for _ in range(args.runs):
            for transport, job in jobs.items():
                cli = shared.sm_ssh("connect", f"{job}.training.sagemaker", "--", "echo", "ready")
                results[transport].append(shared.first_output(cli, env, b"ready"))
        with shared.environ(env):
            calls = {t: api_calls(job) for t, job in jobs.items()}
    if args.json:
        print(json.dumps({"seconds": results, "api_calls": calls}, indent=2))
        return 0
    print(f"sm-ssh connect -- echo ready, to first output, {args.runs} runs each (ms)")
    print(f"{'transport':<10} {'median':>8} {'min':>8} {'max':>8}  API calls before ssh")
    for transport, values in results.items():
        ms = [v * 1000 for v in values]
        per_op = calls[transport]
        print(f"{transport:<10} {statistics.median(ms):>8.1f} {min(ms):>8.1f} {max(ms):>8.1f}  "
              f"{sum(per_op.values())} (" + ", ".join(f"{k} {n}" for k, n in per_op.items())
              + ")")
    ratio = statistics.median(results["native"]) / statistics.median(results["hybrid"])
    print(f"native / hybrid (median): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
