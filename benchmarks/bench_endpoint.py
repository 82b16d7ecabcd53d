"""Endpoints and batch transform in the offline sandbox: how long until the user can SSH in.

    python benchmarks/bench_endpoint.py [--runs 5] [--json]

Per run, with boto3 (the SDK's own overhead is left out) and a model whose inference script
calls ``setup_and_start_ssh()`` (no hold):
  endpoint InService      CreateEndpoint -> DescribeEndpoint says InService (model loaded)
  endpoint instance online  CreateEndpoint -> its managed instance is Online (SSM registration)
  sm-ssh connect          `sm-ssh connect <endpoint>.inference.sagemaker -- echo ready`, spawn to
                          first output (resolve, key push, session, ssh)
  endpoint deleted        DeleteEndpoint -> DescribeEndpoint says it is gone
  transform completed     CreateTransformJob (2 input objects) -> Completed, outputs uploaded
Needs root on Linux (the sandbox runs containers in namespaces).
"""
from __future__ import annotations

import io
import json
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sandbox_job as shared  # noqa: E402

from sagemaker_ssh_helper import aws, code_shipping  # noqa: E402
from sagemaker_ssh_helper.manager import SSMManager  # noqa: E402
from sagemaker_ssh_sandbox import Sandbox  # noqa: E402

INFERENCE = """\
import sagemaker_ssh_helper
sagemaker_ssh_helper.setup_and_start_ssh()


def model_fn(model_dir):
    return 2


def predict_fn(data, model):
    return [model * float(x) for x in str(data).split(",") if x.strip()]
"""


def model_tarball(work: Path) -> Path:
    """model.tar.gz as the SDK repacks a framework model: code/ with the script, code/lib/."""
    code = work / "model" / "code"
    (code / "lib").mkdir(parents=True)
    (code / "inference.py").write_text(INFERENCE)
    code_shipping.copy_package(code / "lib" / "sagemaker_ssh_helper")  # as dependency_dir()
    archive = work / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work / "model" / "code", arcname="code")
    return archive


def setup(sandbox: Sandbox, work: Path) -> dict[str, Any]:
    s3, sagemaker = sandbox.client("s3"), sandbox.client("sagemaker")
    bucket = sandbox.state["bucket"]
    s3.upload_file(str(model_tarball(work)), bucket, "bench/model.tar.gz")
    for i, body in enumerate(("1,2\n", "3\n")):
        s3.upload_fileobj(io.BytesIO(body.encode()), bucket, f"bench/in/{i}.csv")
    with sandbox.activated():
        owner = aws.caller_user_id(aws.boto_session())
    return {"s3": s3, "sagemaker": sagemaker, "bucket": bucket, "owner": owner}


def environment(ctx: dict[str, Any], sandbox: Sandbox, **extra: str) -> dict[str, str]:
    return {"SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            "START_SSH": "true", "SSH_SSM_ROLE": aws.role_name_from_arn(sandbox.role_arn),
            "SSH_OWNER_TAG": ctx["owner"], "SSH_WAIT_TIME_SECONDS": "0", **extra}


def create_model(ctx: dict[str, Any], sandbox: Sandbox, name: str, **env: str) -> None:
    ctx["sagemaker"].create_model(
        ModelName=name, ExecutionRoleArn=sandbox.role_arn,
        PrimaryContainer={"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
                                   "pytorch-inference:2.2-cpu-py310",
                          "ModelDataUrl": f"s3://{ctx['bucket']}/bench/model.tar.gz",
                          "Environment": environment(ctx, sandbox, **env)})


def wait_online(manager: SSMManager, endpoint: str, timeout: float = 120.0) -> None:
    if not manager.get_endpoint_instance_ids(endpoint, timeout_in_sec=timeout):
        raise RuntimeError(f"no managed instance of {endpoint} came online")


def one_run(sandbox: Sandbox, ctx: dict[str, Any], run: int, env: dict[str, str],
            results: dict[str, list[float]]) -> None:
    def timed(phase: str, fn: Callable[[], Any]) -> Any:
        value = fn()
        results.setdefault(phase, []).append(time.perf_counter() - began)
        return value

    sagemaker, name = ctx["sagemaker"], f"bench-ep-{run}"
    create_model(ctx, sandbox, name, SAGEMAKER_ENDPOINT_NAME=name)
    sagemaker.create_endpoint_config(
        EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.xlarge"}])
    began = time.perf_counter()
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    described = timed("endpoint InService", lambda: sandbox.wait_for_endpoint(name))
    if described["EndpointStatus"] != "InService":
        raise RuntimeError(f"{name}: {described.get('FailureReason')}")
    with sandbox.activated():
        manager = SSMManager()
        timed("endpoint instance online", lambda: wait_online(manager, name))
    cli = shared.sm_ssh("connect", f"{name}.inference.sagemaker", "--", "echo", "ready")
    results.setdefault("sm-ssh connect", []).append(shared.first_output(cli, env, b"ready"))
    began = time.perf_counter()
    sagemaker.delete_endpoint(EndpointName=name)
    timed("endpoint deleted", lambda: sandbox.wait_for_endpoint(name, until=()))

    job = f"bench-tr-{run}"
    create_model(ctx, sandbox, job)
    began = time.perf_counter()
    sagemaker.create_transform_job(
        TransformJobName=job, ModelName=job, Environment={"TRANSFORM_JOB_NAME": job},
        TransformInput={"DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{ctx['bucket']}/bench/in/"}},
            "ContentType": "text/csv"},
        TransformOutput={"S3OutputPath": f"s3://{ctx['bucket']}/bench/out/{job}"},
        TransformResources={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1})
    done = timed("transform completed", lambda: sandbox.wait_for_job(job, kind="transform"))
    if done["TransformJobStatus"] != "Completed":
        raise RuntimeError(f"{job}: {done.get('FailureReason')}")


def main(argv: list[str]) -> int:
    args = shared.runs_parser(__doc__).parse_args(argv)
    if shared.cannot_run("bench_endpoint"):
        return 2
    results: dict[str, list[float]] = {}
    with shared.sandbox_in_tempdir("bench-endpoint-") as (sandbox, work):
        ctx = setup(sandbox, work)
        env = shared.user_env(sandbox, work / "home")
        for run in range(args.runs):
            one_run(sandbox, ctx, run, env, results)
    if args.json:
        print(json.dumps(results, indent=2))
    print(f"{'phase':<26} {'median ms':>10} {'min ms':>8} {'max ms':>8}   ({args.runs} runs)")
    for phase, values in results.items():
        print(f"{phase:<26} {statistics.median(values) * 1000:>10.0f} "
              f"{min(values) * 1000:>8.0f} {max(values) * 1000:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
