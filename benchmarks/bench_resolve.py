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
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_job import job_tags, moto_aws, ssm_stand_in  # noqa: E402

from sagemaker_ssh_helper.manager import SSMManager  # noqa: E402


def measure(size: int, lookup: str) -> dict[str, Any]:
    with ssm_stand_in() as (server, session, calls):
        backend = server.backend
        backend.add_fake_instances(size // 2, tags=lambda i: job_tags(f"other-job-{i}"))
        backend.add_fake_instances(size - size // 2)  # untagged: other tools' instances
        backend.add_fake_instances(2, tags=job_tags("Bench-Job"))
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 5000])
    args = parser.parse_args(argv)
    header = (f"{'instances':>9}  {'lookup':<10} {'Describe':>8} {'ListTags':>8} {'STS':>3} "
              f"{'total':>5} {'ms':>7}   {'tag scan (calls)':>16}")
    print(header)
    print("-" * len(header))
    with moto_aws():  # STS
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
