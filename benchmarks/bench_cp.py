"""`sm-ssh cp` through S3 against scp over the SSM session, side by side, in the offline sandbox
with the session ceiling of the real service (SM_SSH_SANDBOX_SESSION_RATE, default 0.7 MB/s).

    python benchmarks/bench_cp.py [--mb 200] [--rate 700000] [--no-scp]

One held training job; one file of random bytes copied to the container:
  scp over the session   `sm-ssh cp --via scp FILE <job>.training.sagemaker:/tmp/` (what
                         `scp` with the sm-ssh config does: every byte crosses the session)
  sm-ssh cp (S3), up     `sm-ssh cp FILE <job>.training.sagemaker:/tmp/`: SHA-256, multipart
                         upload, the container's parallel download and check, clean-up
  sm-ssh cp (S3), down   `sm-ssh cp <job>.training.sagemaker:/tmp/FILE DIR`: the other way
Each is the whole command as a user runs it (key push, session, interpreter start-up). S3 is
the sandbox's moto on this machine, so the S3 figures are this machine's, not a region's; the
session ceiling is the service's. Needs root on Linux (the sandbox runs jobs in namespaces).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_job import launch_job, sm_ssh, workspace  # noqa: E402

from sagemaker_ssh_sandbox import Sandbox, requirements_problem  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600,
                          stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_cp: {' '.join(argv[3:])} failed: {done.stderr[-2000:]}")
    return seconds, done.stderr


def remote_sha(fqdn: str, path: str, env: dict[str, str]) -> str:
    done = subprocess.run(sm_ssh("connect", fqdn, "--", f"sha256sum {path}"), env=env,
                          capture_output=True, text=True, timeout=600, check=True)
    return done.stdout.split()[0]


def launch(sandbox: Sandbox, work: Path) -> tuple[dict[str, str], str]:
    env = workspace(sandbox, work)
    job = launch_job(env, work, "bench-cp", 3600)
    fqdn = f"{job}.training.sagemaker"
    # wait for the instance: `connect` waits for it to come online
    subprocess.run(sm_ssh("connect", fqdn, "--", "true"), env=env, capture_output=True,
                   timeout=300, check=True)
    return env, fqdn


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="file size in MB (default 200)")
    parser.add_argument("--rate", default="700000",
                        help="the session ceiling in bytes/s (default 700000, as SSM)")
    parser.add_argument("--no-scp", action="store_true", help="skip the (slow) scp run")
    args = parser.parse_args(argv)
    problem = requirements_problem()
    if problem:
        print(f"bench_cp: {problem}", file=sys.stderr)
        return 2
    os.environ["SM_SSH_SANDBOX_SESSION_RATE"] = args.rate  # read by the sandbox at start
    size = args.mb * 1000 * 1000
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        work = Path(tmp)
        data = work / "data.bin"
        with open(data, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1000 * 1000))
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
        with Sandbox(work / "sandbox", stop_grace=3.0) as sandbox:
            env, fqdn = launch(sandbox, work)
            if not args.no_scp:
                seconds, _ = timed(sm_ssh("cp", "--via", "scp", str(data), f"{fqdn}:/tmp/scp.bin"),
                                   env)
                assert remote_sha(fqdn, "/tmp/scp.bin", env) == digest
                rows.append(("scp over the session", seconds))
            seconds, _ = timed(sm_ssh("cp", str(data), f"{fqdn}:/tmp/s3.bin"), env)
            assert remote_sha(fqdn, "/tmp/s3.bin", env) == digest
            rows.append(("sm-ssh cp (S3), up", seconds))
            back = work / "back"
            back.mkdir()
            seconds, _ = timed(sm_ssh("cp", f"{fqdn}:/tmp/s3.bin", str(back)), env)
            assert hashlib.sha256((back / "s3.bin").read_bytes()).hexdigest() == digest
            rows.append(("sm-ssh cp (S3), down", seconds))
            subprocess.run(sm_ssh("stop-waiting", fqdn), env=env, capture_output=True,
                           timeout=120, check=False)
    print(f"{args.mb} MB to and from a training job's container, session ceiling "
          f"{args.rate} B/s")
    print(f"{'method':<24} {'seconds':>9} {'MB/s':>8} {'vs scp':>8}")
    scp = rows[0][1] if not args.no_scp else None
    for name, seconds in rows:
        ratio = f"{scp / seconds:.1f}x" if scp else "-"
        print(f"{name:<24} {seconds:>9.1f} {size / seconds / 1e6:>8.2f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
