"""Idle placeholder: a training job that only hosts SSH sessions and ends itself when unused.

Use it to get a SageMaker instance (GPU, large memory, the exact training image) for
interactive work, without paying for it after you walk away: the job exits once no SSH or SSM
session has been open for ``max_idle_minutes`` (counted from the start, so that is also how long
you have to connect the first time). Launch it like any training script::

    estimator = PyTorch(entry_point="train_placeholder.py", source_dir="examples",
                        dependencies=[SSHEstimatorWrapper.dependency_dir()],
                        hyperparameters={"max_idle_minutes": 30}, ...)
    ssh_wrapper = SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=0)
    estimator.fit(wait=False)

then ``sm-ssh connect <training job name>.training.sagemaker``. Settings: hyperparameters
``max_idle_minutes`` (default 30) and ``poll_seconds`` (default 10), or the environment
variables ``SSH_MAX_IDLE_MINUTES`` / ``SSH_IDLE_POLL_SECONDS``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta

import sagemaker_ssh_helper


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max_idle_minutes", "--max-idle-minutes", type=float,
                        default=float(os.environ.get("SSH_MAX_IDLE_MINUTES", "30")))
    parser.add_argument("--poll_seconds", "--poll-seconds", type=float,
                        default=float(os.environ.get("SSH_IDLE_POLL_SECONDS", "10")))
    args, unknown = parser.parse_known_args(argv)  # SageMaker passes every hyperparameter
    if unknown:
        print(f"train_placeholder: ignoring {' '.join(unknown)}", flush=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = timedelta(minutes=args.max_idle_minutes)
    sagemaker_ssh_helper.setup_and_start_ssh()
    print(f"train_placeholder: holding the instance until no SSH/SSM session has been open "
          f"for {limit}", flush=True)
    while not sagemaker_ssh_helper.is_last_session_timeout(limit):
        time.sleep(args.poll_seconds)
    print(f"train_placeholder: no SSH/SSM session for {limit}, exiting", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
