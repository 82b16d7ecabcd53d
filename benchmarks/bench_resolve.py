"""API calls (and wall time) for resolving one training job to its managed instances, with
10 / 1,000 / 5,000 instances registered in the account, against the offline SSM stand-in.

    python benchmarks/bench_resolve.py [--sizes 10 1000 5000]

Each size gets a fresh stand-in holding ``size`` SSH Helper instances of other jobs (half of
them tagged, half untagged as other tools' instances would be) plus the 2 nodes of the job
looked up. The "tag scan" column is what reading every instance's tags would cost: one
DescribeInstanceInformation page per 50 instances plus one ListTagsForResource per instance.
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

from sagemaker_ssh_helper.manager import SSMManager  # noqa: E402
from sagemaker_ssh_sandbox.ssm.service import start_ssm_server  # noqa: E402

ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/{}"


def _tags(name: str) -> dict[str, str]:
    return {"SSHResourceName": name, "SSHResourceArn": ARN.format(name.lower()),
            "SSHTimestamp": str(int(time.time())), "SSHOwner": "bench"}


def measure(size: int, lookup: str) -> dict[str, Any]:
    server = start_ssm_server()
    os.environ["AWS_ENDPOINT_URL_SSM"] = server.url
    calls: dict[str, int] = collections.Counter()
    session = boto3.Session(region_name="us-east-1")
    session.events.register("before-call", lambda model, **_: calls.update([model.name]))
    try:
        backend = server.backend
        backend.add_fake_instances(size // 2, tags=lambda i: _tags(f"other-job-{i}"))
        backend.add_fake_instances(size - size // 2)  # untagged: other tools' instances
        backend.add_fake_instances(2, tags=_tags("Bench-Job"))
        manager = SSMManager(region_name="us-east-1", session=session, progress=None)
        manager.ssm.describe_instance_information(MaxResults=5)  # warm the client up
        backend.reset_call_counts()
        calls.clear()
        began = time.perf_counter()
        ids = manager.get_training_instance_ids(lookup, expected_count=2)
        elapsed = time.perf_counter() - began
        assert len(ids) == 2, ids
        assert dict(backend.stats()["CallCounts"]) == {
            k: v for k, v in calls.items() if k != "GetCallerIdentity"}
        return {"size": size + 2, "counts": dict(calls), "ms": elapsed * 1000,
                "scan": math.ceil((size + 2) / 50) + size + 2}
    finally:
        server.shutdown()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 5000])
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # STS
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    header = (f"{'instances':>9}  {'lookup':<10} {'Describe':>8} {'ListTags':>8} {'STS':>3} "
              f"{'total':>5} {'ms':>7}   {'tag scan (calls)':>16}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for lookup in ("Bench-Job", "bench-job"):  # exact name, and as ssh's %h lowercases it
            r = measure(size, lookup)
            counts: dict[str, int] = r["counts"]
            describe = counts.get("DescribeInstanceInformation", 0)
            tags = counts.get("ListTagsForResource", 0)
            sts = counts.get("GetCallerIdentity", 0)
            total = sum(counts.values())
            print(f"{r['size']:>9}  {lookup:<10} {describe:>8} {tags:>8} {sts:>3} {total:>5} "
                  f"{r['ms']:>7.1f}   {r['scan']:>16}")
    moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
