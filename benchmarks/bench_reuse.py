"""`sm-ssh connect <job> -- true` with and without connection reuse, side by side in the
offline sandbox (a real job container, the SSM stand-in, real OpenSSH): the first connect, the
second one to the same target, and 10 commands in a row, each in a fresh home.

    python benchmarks/bench_reuse.py [--runs 3]

Modes:
  push every time   SM_SSH_REUSE=off and no record of earlier pushes: every connect resolves,
                    pushes the key (SendCommand) and starts a session (the behaviour before
                    reuse)
  optimistic        SM_SSH_REUSE=off: the key goes once; later connects try ssh first
  reuse (default)   a shared OpenSSH master per target (ControlPersist 300 s): later
                    commands ride it, with no AWS call at all
  plain ssh config  `ssh <fqdn> true` with the config `sm-ssh config` writes (ControlMaster
                    auto): the first runs start-proxy, the next ones ride the master
SSM API calls are counted by the SSM stand-in (SageMaker and CloudWatch Logs calls of the
resolution are not included). Needs root on Linux (the sandbox runs jobs in namespaces).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_connect import launch  # noqa: E402

from sagemaker_ssh_helper import mux  # noqa: E402
from sagemaker_ssh_sandbox import Sandbox, requirements_problem  # noqa: E402

COMMANDS = 10


def ssm_calls(env: dict[str, str]) -> int:
    with urllib.request.urlopen(f"{env['AWS_ENDPOINT_URL_SSM']}/_sandbox/stats",
                                timeout=10) as response:
        counts = json.loads(response.read())["CallCounts"]
    return sum(n for op, n in counts.items() if op != "TerminateSession")


def timed_run(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(seconds, SSM API calls) of one command, which must succeed."""
    before = ssm_calls(env)
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:5]} failed ({done.returncode}): {done.stderr[-800:]}")
    return elapsed, ssm_calls(env) - before


def close_masters(home: Path, env: dict[str, str]) -> None:
    directory = mux.control_dir(home / ".ssh", create=False, environ=env)
    for path in directory.iterdir() if directory else []:
        if path.is_socket():
            mux.terminate(path)


def one_mode(base: dict[str, str], fqdn: str, mode: str) -> dict[str, tuple[float, int]]:
    """first, second and 10-in-a-row (total) for ``mode``, in a fresh short home."""
    home = Path(tempfile.mkdtemp(prefix="b", dir="/tmp"))
    env = dict(base, HOME=str(home))
    env.pop("SM_SSH_REUSE", None)
    if mode in ("push every time", "optimistic"):
        env["SM_SSH_REUSE"] = "off"
    if mode == "plain ssh config":
        subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "config"], env=env,
                       capture_output=True, timeout=60, check=True)
        argv = ["ssh", "-F", str(home / ".ssh" / "config"), fqdn, "true"]
    else:
        argv = [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "connect", fqdn, "--",
                "true"]
    def forget() -> None:  # "push every time": no record of pushes, nor of resolutions
        if mode == "push every time":
            for name in ("pushed", "routes"):
                shutil.rmtree(home / ".ssh" / "sm-ssh" / name, ignore_errors=True)

    try:
        out = {"first": timed_run(argv, env)}
        forget()
        out["second"] = timed_run(argv, env)
        seconds, calls = 0.0, 0
        for _ in range(COMMANDS):
            forget()
            s, c = timed_run(argv, env)
            seconds, calls = seconds + s, calls + c
        out[f"{COMMANDS} in a row"] = (seconds, calls)
        return out
    finally:
        if mode == "plain ssh config":
            subprocess.run(["ssh", "-F", str(home / ".ssh" / "config"), "-O", "exit", fqdn],
                           env=env, capture_output=True, timeout=30)
        close_masters(home, env)
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    problem = requirements_problem()
    if problem:
        print(f"bench_reuse: {problem}", file=sys.stderr)
        return 2
    modes = ("push every time", "optimistic", "reuse (default)", "plain ssh config")
    figures: dict[str, dict[str, list[tuple[float, int]]]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
        with Sandbox(Path(tmp) / "sandbox", stop_grace=3.0) as sandbox:
            env = launch(sandbox, Path(tmp))
            fqdn = f"{env['BENCH_JOB']}.training.sagemaker"
            timed_run([sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", "connect", fqdn,
                       "--wait", "120", "--", "true"], env)  # the job is up; warm caches
            for _ in range(args.runs):
                for mode in modes:
                    for what, value in one_mode(env, fqdn, mode).items():
                        figures[mode].setdefault(what, []).append(value)
    print(f"sm-ssh connect <job> -- true: median of {args.runs} runs "
          "(ms; SSM API calls in brackets)")
    columns = ("first", "second", f"{COMMANDS} in a row")
    print(f"{'mode':<18}" + "".join(f"{c:>20}" for c in columns) + f"{'second/first':>14}")
    for mode in modes:
        cells, medians = [], {}
        for column in columns:
            values = figures[mode][column]
            ms = statistics.median(v[0] for v in values) * 1000
            calls = statistics.median(v[1] for v in values)
            medians[column] = ms
            cells.append(f"{ms:>11.0f} [{calls:>4.0f}]")
        ratio = medians["second"] / medians["first"]
        print(f"{mode:<18}" + "".join(f"{c:>20}" for c in cells) + f"{ratio:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
