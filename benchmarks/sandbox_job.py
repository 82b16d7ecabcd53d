"""What the sandbox benchmarks share: a training job launched as a user launches one (the SDK v2
wrapper, in an interpreter of its own) and a HOME of the benchmark's own, so that keys, host keys
and ssh config start empty."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = "import sagemaker_ssh_helper\nsagemaker_ssh_helper.setup_and_start_ssh()\n"
LAUNCH = """\
import os, sys
from sagemaker.pytorch import PyTorch
from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper
source_dir, base_job_name, wait, nodes, transport = sys.argv[1:6]
estimator = PyTorch(entry_point="train.py", source_dir=source_dir,
                    dependencies=[SSHEstimatorWrapper.dependency_dir()],
                    role=os.environ["SM_SSH_SANDBOX_ROLE_ARN"], framework_version="2.2",
                    py_version="py310", instance_count=int(nodes), instance_type="ml.m5.xlarge",
                    base_job_name=base_job_name)
SSHEstimatorWrapper.create(estimator, connection_wait_time_seconds=int(wait),
                           ssh_instance_count=int(nodes), transport=transport)
estimator.fit(wait=False)
print(estimator.latest_training_job.name)
"""


def sm_ssh(*args: str) -> list[str]:
    """``sm-ssh ARGS`` as this interpreter runs it."""
    return [sys.executable, "-m", "sagemaker_ssh_helper.sm_ssh", *args]


def workspace(sandbox: Any, work: Path) -> dict[str, str]:
    """The job's source folder and launch script under ``work``, and the environment of a user
    of ``sandbox`` whose HOME is ``work/home``. Connections are not shared (``SM_SSH_REUSE=off``):
    each run measures a whole connect; bench_reuse.py measures sharing."""
    (work / "src").mkdir()
    (work / "src" / "train.py").write_text(ENTRY_POINT)
    (work / "launch.py").write_text(LAUNCH)
    (work / "home").mkdir()
    env = dict(os.environ, **sandbox.env, HOME=str(work / "home"),
               SAGEMAKER_SUPPRESS_V2_WARNING="1", SM_SSH_REUSE="off")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    return env


def launch_job(env: dict[str, str], work: Path, base_job_name: str, wait_seconds: int,
               nodes: int = 1, transport: str = "hybrid") -> str:
    """Start a training job from ``work`` (see ``workspace``); returns its name."""
    done = subprocess.run([sys.executable, str(work / "launch.py"), str(work / "src"),
                           base_job_name, str(wait_seconds), str(nodes), transport],
                          env=env, capture_output=True, text=True, timeout=300, check=True)
    return done.stdout.strip().splitlines()[-1]
