"""Import cost of ``sagemaker_ssh_helper`` (it is imported in every user's container).

Runs each measurement in fresh interpreters and prints the figures:

- wall time of ``python -c "import sagemaker_ssh_helper"`` minus a bare ``python -c "pass"``
  (median and min over N runs),
- the package's cumulative time from ``python -X importtime``, also with ``-S`` (no
  site-packages, the package a plain folder: as in a job's container, where nothing has
  imported ``pathlib`` and the like before),
- whether boto3, botocore or the SageMaker SDK ended up in ``sys.modules`` (they must not),
- with ``--compare``: the same wall time for ``import boto3`` and ``import sagemaker``.

Usage: ``python benchmarks/bench_import.py [-n 20] [--compare]``. Exit status 1 if a heavy
module was imported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "sagemaker_ssh_helper"
HEAVY = ("boto3", "botocore", "sagemaker")


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, SAGEMAKER_SUPPRESS_V2_WARNING="1")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, check=True)


def wall_times(statement: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _run(["-c", statement])
        times.append(time.perf_counter() - start)
    return times


def importtime_us(module: str, runs: int, flags: Sequence[str] = ()) -> list[int]:
    """Cumulative microseconds ``-X importtime`` reports for ``module`` itself."""
    results = []
    for _ in range(runs):
        stderr = _run([*flags, "-X", "importtime", "-c", f"import {module}"]).stderr
        for line in stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                results.append(int(parts[1]))
    return results


def heavy_modules_after_import() -> list[str]:
    code = (f"import json, sys, {PACKAGE}; print(json.dumps(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {set(HEAVY)!r})))")
    return list(json.loads(_run(["-c", code]).stdout.strip().splitlines()[-1]))


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms, min {min(values) * 1000:7.1f} ms"


def _line(label: str, value: str) -> None:
    print(f"{label:<40}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20, help="runs per measurement")
    parser.add_argument("--compare", action="store_true",
                        help="also time `import boto3` and `import sagemaker`")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")

    print(f"python {sys.version.split()[0]} ({sys.executable}), {args.runs} fresh runs each")
    bare: list[float] = []
    ours: list[float] = []
    for _ in range(args.runs):  # interleaved, so load changes hit both series alike
        bare += wall_times("pass", 1)
        ours += wall_times(f"import {PACKAGE}", 1)
    _line("python -c pass", _ms(bare))
    _line(f"python -c 'import {PACKAGE}'", _ms(ours))
    _line("  difference (wall clock, noisy)", _ms([o - b for o, b in zip(ours, bare)]))
    cumulative = importtime_us(PACKAGE, args.runs)
    if cumulative:
        _line("  -X importtime cumulative",
              f"median {statistics.median(cumulative):.0f} us, min {min(cumulative)} us")
    bare_folder = importtime_us(PACKAGE, args.runs, ["-S"])
    if bare_folder:
        _line("  the same with -S (as in a container)",
              f"median {statistics.median(bare_folder):.0f} us, min {min(bare_folder)} us")
    if args.compare:
        for module in ("boto3", "sagemaker"):
            _line(f"python -c 'import {module}'",
                  _ms(wall_times(f"import {module}", max(1, min(args.runs, 5)))))

    heavy = heavy_modules_after_import()
    if heavy:
        print(f"FAIL: import {PACKAGE} loaded {', '.join(heavy)}")
        return 1
    print(f"OK: after `import {PACKAGE}` none of {', '.join(HEAVY)} is in sys.modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
