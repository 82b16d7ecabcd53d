"""`sm-ssh exec` on every node of a multi-node job at once vs `sm-ssh connect --node` one node
after the other, in the offline sandbox (real job containers, the SSM stand-in, real OpenSSH).

    python benchmarks/bench_exec.py [--nodes 8] [--runs 3] [--sleep 0]

One training job with ``--nodes`` nodes, all with SSH. Each run times, side by side:
  one by one     `sm-ssh connect <job> --node algo-i -- <cmd>` for i = 1..N, in sequence (what a
                 user's shell loop does today)
  exec           `sm-ssh exec <job> -- <cmd>`: the same resolve, key push, session and ssh per
                 node, ``--parallel`` nodes at a time, SendCommand and StartSession each
                 paced at ``--rate`` calls per second
The command is ``hostname`` (plus ``sleep S`` with ``--sleep``, a command that takes time, as
`nvidia-smi` does on a GPU node). Prints wall seconds (median of the runs) and the speed-up,
and checks every node answered. Needs root on Linux (the sandbox runs jobs in namespaces).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_job import launch_job, sm_ssh, workspace  # noqa: E402

from sagemaker_ssh_sandbox import Sandbox, requirements_problem  # noqa: E402


def wall(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[3:6]} failed ({done.returncode}): {done.stderr[-800:]}")
    return done


def one_by_one(fqdn: str, nodes: int, command: str, env: dict[str, str]) -> float:
    began = time.perf_counter()
    for i in range(1, nodes + 1):
        done = wall(sm_ssh("connect", fqdn, "--node", f"algo-{i}", "--", command), env)
        assert done.stdout.splitlines()[0] == f"algo-{i}", done.stdout
    return time.perf_counter() - began


def fan_out(fqdn: str, nodes: int, command: str, env: dict[str, str], parallel: int,
            rate: float) -> float:
    began = time.perf_counter()
    done = wall(sm_ssh("exec", fqdn, "--parallel", str(parallel), "--rate", str(rate),
                       "--", command), env)
    elapsed = time.perf_counter() - began
    answered = sorted(line.split(" | ")[0].strip() for line in done.stdout.splitlines()
                      if line.split(" | ")[1:2] == [line.split(" | ")[0].strip()])
    assert answered == sorted(f"algo-{i}" for i in range(1, nodes + 1)), done.stdout
    return elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0,
                        help="seconds the command takes on each node (default 0)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--rate", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    problem = requirements_problem()
    if problem:
        print(f"bench_exec: {problem}", file=sys.stderr)
        return 2
    command = "hostname" + (f"; sleep {args.sleep:g}" if args.sleep else "")
    figures: dict[str, list[float]] = {"one by one": [], "exec": []}
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        work = Path(tmp)
        with Sandbox(work / "sandbox", stop_grace=3.0) as sandbox:
            env = workspace(sandbox, work)
            job = launch_job(env, work, "bench-exec", 1800, nodes=args.nodes)
            fqdn = f"{job}.training.sagemaker"
            with sandbox.activated():
                from sagemaker_ssh_helper.manager import SSMManager

                SSMManager(progress=None).get_training_instance_ids(
                    job, timeout_in_sec=600, expected_count=args.nodes)
            wall(sm_ssh("exec", fqdn, "--", "true"), env)  # keys made, host keys pinned
            for _ in range(args.runs):
                figures["one by one"].append(one_by_one(fqdn, args.nodes, command, env))
                figures["exec"].append(fan_out(fqdn, args.nodes, command, env,
                                               args.parallel, args.rate))
            subprocess.run(sm_ssh("stop-waiting", fqdn), env=env, capture_output=True,
                           timeout=300, check=False)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    one, fan = statistics.median(figures["one by one"]), statistics.median(figures["exec"])
    print(f"`{command}` on {args.nodes} nodes, {args.runs} runs (wall seconds, median; "
          f"exec --parallel {args.parallel} --rate {args.rate:g})")
    print(f"{'one by one (sm-ssh connect --node)':<38} {one:>8.2f}  "
          f"({one / args.nodes:.2f} per node)")
    print(f"{'sm-ssh exec (fan-out)':<38} {fan:>8.2f}")
    print(f"speed-up: {one / fan:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
