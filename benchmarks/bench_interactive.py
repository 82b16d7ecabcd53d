"""API calls (and wall time) of ``InteractiveSageMaker`` listing the training jobs with their SSH
status, with 10 / 1,000 / 5,000 managed instances in the account, against moto and the offline
SSM stand-in; side by side with v2's join (``list_all_instances_and_fetch_tags()``: every
managed instance and its tags).

    python benchmarks/bench_interactive.py [--sizes 10 1000 5000] [--jobs 50]

Each size gets a fresh stand-in holding ``size`` instances (half SSH Helper instances of other
jobs, half untagged as other tools' instances would be) plus one instance per listed job. SSH
Helper instances are registered as this package's containers do (instance name = the resource
ARN); with ``--v2-registered`` they are named as v2's containers named them, which costs the
one-scan listing one tag read per SSH Helper instance (still none for other instances).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_job import JOB_ARN, job_tags, moto_aws, ssm_stand_in  # noqa: E402

from sagemaker_ssh_helper.interactive_sagemaker import InteractiveSageMaker, SageMaker  # noqa
from sagemaker_ssh_helper.manager import SSMManager  # noqa: E402


def create_jobs(names: list[str]) -> None:
    sm = boto3.client("sagemaker", region_name="us-east-1")
    for name in names:
        sm.create_training_job(
            TrainingJobName=name, RoleArn="arn:aws:iam::123456789012:role/R",
            AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://b/o"},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1,
                            "VolumeSizeInGB": 1},
            StoppingCondition={"MaxRuntimeInSeconds": 60})


def measure(size: int, names: list[str], joined: str, v2_registered: bool
            ) -> dict[str, Any]:
    with ssm_stand_in() as (server, session, calls):
        backend = server.backend
        others = [f"other-job-{i}" for i in range(size // 2)]
        backend.add_fake_instances(size - size // 2)
        for name in others + names:
            ids = backend.add_fake_instances(1, tags=job_tags(name))
            if not v2_registered:
                with backend.lock:
                    backend.instances[ids[0]].name = JOB_ARN.format(name.lower())
        manager = SSMManager(region_name="us-east-1", session=session, progress=None)
        interactive = InteractiveSageMaker(SageMaker("us-east-1", session), manager)
        calls.clear()
        began = time.perf_counter()
        instances = (manager.list_all_instances_and_fetch_tags() if joined == "v2 join"
                     else interactive.managed_instances())
        jobs = [j for j in interactive.list_training_jobs(instances)
                if j.training_job_name in names]
        elapsed = time.perf_counter() - began
        assert len(jobs) == len(names) and all(j.ssm_instance_id for j in jobs)
        return {"size": size + len(names), "counts": dict(calls), "ms": elapsed * 1000}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 5000])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--v2-registered", action="store_true",
                        help="SSH Helper instances named as v2's containers named them")
    args = parser.parse_args(argv)
    with moto_aws():
        names = [f"bench-job-{i}" for i in range(args.jobs)]
        create_jobs(names)
        print(f"{'instances':>9}  {'listing':<12} {'ListJobs':>8} {'Describe':>8} "
              f"{'ListTags':>8} {'total':>6} {'ms':>8}")
        for size in args.sizes:
            for joined in ("one scan", "v2 join"):
                r = measure(size, names, joined, args.v2_registered)
                c = r["counts"]
                print(f"{r['size']:>9}  {joined:<12} {c.get('ListTrainingJobs', 0):>8} "
                      f"{c.get('DescribeInstanceInformation', 0):>8} "
                      f"{c.get('ListTagsForResource', 0):>8} {sum(c.values()):>6} "
                      f"{r['ms']:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
