"""API calls and wall time of `sm-ssh list` with 1,000 training jobs and 1,000 managed instances,
side by side: SageMaker lists paged at their default (10) and at their maximum (100), the SSH
instances scanned with DescribeInstanceInformation (50 per page at most: the fallback for
policies without ssm:DescribeInstanceProperties) and with DescribeInstanceProperties (1,000 per
page), with every instance named by its resource ARN (what the container side registers) and
with part of them registered by SSH Helper v2 (no ARN as Name: their tags must be read).

    python benchmarks/bench_list.py [--jobs 1000] [--instances 1000] [--legacy 0 100 500]

The API layer only (moto for SageMaker and STS, the SSM stand-in), no containers. The floor:
ceil(jobs / 100) ListTrainingJobs + one empty page for each of the 5 other kinds
+ ceil(instances / 1000) DescribeInstanceProperties (its MaxResults is at most 1000; with the
fallback, ceil(instances / 50) DescribeInstanceInformation)
+ one ListTagsForResource per legacy instance.
"""
from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moto.server import ThreadedMotoServer  # noqa: E402

from sagemaker_ssh_helper import fqdn, resources  # noqa: E402
from sagemaker_ssh_helper.manager import SSMManager  # noqa: E402
from sagemaker_ssh_sandbox.ssm.service import start_ssm_server  # noqa: E402

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def create_jobs(session: Any, count: int) -> list[str]:
    sm = session.client("sagemaker", region_name=REGION)
    arns = []
    for i in range(count):
        arns.append(sm.create_training_job(
            TrainingJobName=f"bench-list-{i:05d}", RoleArn=ROLE,
            AlgorithmSpecification={"TrainingImage": "bench:latest", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://bench/out"},
            ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1,
                            "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": 3600})["TrainingJobArn"])
    return arns


def measure(arns: list[str], instances: int, legacy: int, page_size: int,
            scan: str = "properties") -> dict[str, Any]:
    server = start_ssm_server()
    os.environ["AWS_ENDPOINT_URL_SSM"] = server.url
    calls: dict[str, int] = collections.Counter()
    session = boto3.Session(region_name=REGION)
    session.events.register("before-call", lambda model, **_: calls.update([model.name]))
    try:
        backend = server.backend
        arn_of = [arns[i % len(arns)] for i in range(instances)]
        ids = backend.add_fake_instances(instances, tags=lambda i: {
            "SSHResourceName": arn_of[i].rsplit("/", 1)[-1], "SSHResourceArn": arn_of[i],
            "SSHTimestamp": str(int(time.time())), "SSHOwner": "bench"})
        with backend.lock:
            for i, instance_id in enumerate(ids[legacy:], start=legacy):
                backend.instances[instance_id].name = arn_of[i]  # as the container registers
        manager = SSMManager(region_name=REGION, session=session, progress=None)
        manager._properties_refused = scan == "information"  # as after an AccessDenied
        resources.PAGE_SIZE, saved = page_size, resources.PAGE_SIZE
        calls.clear()
        began = time.perf_counter()
        try:
            rows = resources.list_rows(session, REGION, fqdn.parse(fqdn.SUFFIX), manager)
        finally:
            resources.PAGE_SIZE = saved
        elapsed = time.perf_counter() - began
        online = sum(1 for r in rows if r.ssh == "Online")
        assert online == min(len(arns), instances), (online, len(rows))
        return {"counts": dict(calls), "ms": elapsed * 1000, "rows": len(rows)}
    finally:
        server.shutdown()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--legacy", type=int, nargs="+", default=[0, 100, 500])
    args = parser.parse_args(argv)
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", REGION)):
        os.environ.setdefault(key, value)
    logging.disable(logging.ERROR)  # moto's server logs a traceback for ListApps it lacks
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    try:
        arns = create_jobs(boto3.Session(region_name=REGION), args.jobs)
        print(f"sm-ssh list: {args.jobs} training jobs, {args.instances} SSH instances")
        header = (f"{'legacy':>6}  {'page':>4}  {'scan':<11} {'ListTraining':>12} "
                  f"{'other lists':>11} {'Describe':>8} {'ListTags':>8} {'total':>5} "
                  f"{'ms':>7}  {'floor':>5}")
        print(header)
        print("-" * len(header))
        for legacy in args.legacy:
            for page_size, scan in ((10, "information"), (resources.PAGE_SIZE, "information"),
                                    (resources.PAGE_SIZE, "properties")):
                r = measure(arns, args.instances, legacy, page_size, scan)
                counts: dict[str, int] = r["counts"]
                training = counts.get("ListTrainingJobs", 0)
                describe = (counts.get("DescribeInstanceInformation", 0)
                            + counts.get("DescribeInstanceProperties", 0))
                tags = counts.get("ListTagsForResource", 0)
                other = sum(counts.values()) - training - describe - tags
                per_page = 1000 if scan == "properties" else 50
                floor = (math.ceil(args.jobs / 100) + 5 + math.ceil(args.instances / per_page)
                         + legacy)
                print(f"{legacy:>6}  {page_size:>4}  {scan:<11} {training:>12} {other:>11} "
                      f"{describe:>8} {tags:>8} {sum(counts.values()):>5} {r['ms']:>7.0f}  "
                      f"{floor:>5}")
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
