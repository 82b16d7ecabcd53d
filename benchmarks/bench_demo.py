"""Wall time of each `sm-ssh sandbox demo` phase, over several runs (median and range).

Usage: python benchmarks/bench_demo.py [-n RUNS]   (root on Linux, like the sandbox itself)
Prints a table; it asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

PHASE_RE = re.compile(r"^\s+(\d+\.\d) s  (.+)$")
JOB_RE = re.compile(r"ssh-demo-[\w-]+")


def run_once() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as state_dir:
        done = subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "sandbox",
                               "demo", "--state-dir", state_dir],
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"demo failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = done.stdout.split("demo complete in", 1)[1]
    phases: dict[str, float] = {}
    for line in summary.splitlines()[1:]:
        match = PHASE_RE.match(line)
        if match:
            phases[JOB_RE.sub("<job>", match.group(2))] = float(match.group(1))
    phases["total"] = sum(phases.values())
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.runs):
        for phase, seconds in run_once().items():
            samples[phase].append(seconds)
    print(f"sm-ssh sandbox demo, {args.runs} runs (seconds):")
    print(f"{'median':>7} {'min':>6} {'max':>6}  phase")
    for phase, values in samples.items():
        print(f"{statistics.median(values):7.1f} {min(values):6.1f} {max(values):6.1f}  {phase}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
