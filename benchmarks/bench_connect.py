"""Time from `sm-ssh connect <job> -- cmd` to the command's first output, split by phase, in
the offline sandbox (a real job container, the SSM stand-in, real OpenSSH).

    python benchmarks/bench_connect.py [--runs 5]

Phases (each measured on its own, as `sm-ssh connect` runs them):
  resolve            DescribeInstanceInformation by tag, and the job's log read at the same
                     time: the instance must be named there (verify.py)
  resource checks    what is left to wait for of DescribeTrainingJob (still running? instance
                     not older than the job?), started with resolve in its own thread
  key                the per-target key: created on the first run, read afterwards
  key push + host keys  SendCommand: replace our authorized_keys line, print the host keys;
                     GetCommandInvocation polled until it finishes
  pin host keys      write them to our known_hosts file
  session start      StartSession (the API call; `sm-ssh connect` makes it before ssh runs)
  ssh + command      ssh from spawn to the command's output: the plugin as ProxyCommand opens
                     the stream, then key exchange, authentication and the command
  sm-ssh connect     the whole command as a user runs it (interpreter start-up included)
  via ssh config     `ssh <fqdn> cmd` with the config `sm-ssh config` writes: start-proxy
                     resolves, pushes the key and starts the session inside the ProxyCommand
Then the AWS API calls one connect makes (resolve, key push, session start), by operation.
Needs root on Linux (the sandbox runs jobs in namespaces).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_job import (  # noqa: E402
    cannot_run,
    environ,
    first_output,
    launch_job,
    runs_parser,
    sandbox_in_tempdir,
    sm_ssh,
    workspace,
)

from sagemaker_ssh_helper import connect, fqdn, keys, proxy, session  # noqa: E402
from sagemaker_ssh_sandbox import Sandbox  # noqa: E402


def timed(results: dict[str, list[float]], phase: str, fn: Callable[[], Any]) -> Any:
    began = time.perf_counter()
    value = fn()
    results.setdefault(phase, []).append(time.perf_counter() - began)
    return value


def one_run(env: dict[str, str], job: str, results: dict[str, list[float]]) -> None:
    target = fqdn.parse_resource(f"{job}.training.sagemaker")
    ctx = connect.Context(None, None)
    inst, _ = timed(results, "resolve", lambda: connect.resolve_one(
        ctx, target, connect.Choice(), defer=True))
    path = keys.key_path(target.fqdn)
    line = timed(results, "key", lambda: keys.ensure_key(path))
    script = keys.authorized_keys_script(str(line), keys.client_marker(path, str(line)))
    ssm = ctx.manager().ssm
    output = timed(results, "key push + host keys",
                   lambda: keys.run_shell_command(ssm, inst.instance_id, script))
    timed(results, "pin host keys",
          lambda: keys.pin_host_keys(target.fqdn, keys.parse_host_keys(str(output)),
                                     instance_id=inst.instance_id))
    timed(results, "resource checks", ctx.finish_checks)
    started = timed(results, "session start",
                    lambda: session.open_session(ssm, inst.instance_id, 22))
    auth = keys.Authorized(path, keys.known_hosts_path(), target.fqdn)
    prepared = connect.Prepared(inst.instance_id, target.fqdn, "root", auth)
    argv = connect.ssh_argv(ctx, prepared, [], ["echo", "ready"],
                            proxy_cmd=proxy.shell_command(started.plugin_argv))
    ssh_env = dict(env, **{session.RESPONSE_ENV: started.response_env})
    results.setdefault("ssh + command", []).append(first_output(argv, ssh_env))
    session.terminate_session(ssm, started.session_id)
    cli = sm_ssh("connect", target.fqdn, "--", "echo", "ready")
    results.setdefault("sm-ssh connect (total)", []).append(first_output(cli, env))
    config = Path(env["HOME"]) / ".ssh" / "config"
    plain = ["ssh", "-F", str(config), target.fqdn, "echo", "ready"]
    results.setdefault("via ssh config (total)", []).append(first_output(plain, env))


def api_calls(job: str) -> dict[str, int]:
    """AWS API calls of one connect up to a started session (what `sm-ssh connect` makes before
    ssh runs), counted on the boto3 session by service and operation."""
    counts: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        name = f"{model.service_model.service_name}:{model.name}"
        counts[name] = counts.get(name, 0) + 1

    from sagemaker_ssh_helper import aws

    ctx = connect.Context(None, None)
    ctx.session.events.register("before-call.*.*", count)
    make_session = aws.boto_session

    def counted_session(*args: Any, **kwargs: Any) -> Any:  # sessions made on the way, too
        made = make_session(*args, **kwargs)
        made.events.register("before-call.*.*", count)
        return made

    aws.boto_session = counted_session  # type: ignore[assignment]
    try:
        prepared = connect.prepare(ctx, f"{job}.training.sagemaker", connect.Choice(),
                                   check_ssh=False)
    finally:
        aws.boto_session = make_session  # type: ignore[assignment]
    started = session.open_session(ctx.manager().ssm, prepared.instance_id, 22)
    session.terminate_session(ctx.manager().ssm, started.session_id)
    counts.pop("ssm:TerminateSession", None)  # only to clean up after the count
    return dict(sorted(counts.items()))


def launch(sandbox: Sandbox, work: Path) -> dict[str, str]:
    env = workspace(sandbox, work)
    env["BENCH_JOB"] = launch_job(env, work, "bench-connect", 900)
    subprocess.run(sm_ssh("config"), env=env, capture_output=True, timeout=60, check=True)
    return env


def main(argv: list[str]) -> int:
    args = runs_parser(__doc__).parse_args(argv)
    if cannot_run("bench_connect"):
        return 2
    results: dict[str, list[float]] = {}
    with sandbox_in_tempdir("bench-connect-") as (sandbox, work):
        env = launch(sandbox, work)
        job = env["BENCH_JOB"]
        with environ(env):  # the in-process phases use the same AWS endpoints
            from sagemaker_ssh_helper.manager import SSMManager

            SSMManager(progress=None).get_training_instance_ids(job, timeout_in_sec=120)
            for _ in range(args.runs):
                one_run(env, job, results)
            calls = api_calls(job)
    if args.json:
        print(json.dumps({"phases": results, "api_calls": calls}, indent=2))
        return 0
    print(f"sm-ssh connect phases, {args.runs} runs (ms; the first run creates the key)")
    print(f"{'phase':<24} {'median':>8} {'min':>8} {'max':>8}")
    for phase, values in results.items():
        ms = [v * 1000 for v in values]
        print(f"{phase:<24} {statistics.median(ms):>8.1f} {min(ms):>8.1f} {max(ms):>8.1f}")
    print(f"AWS API calls per connect: {sum(calls.values())} ("
          + ", ".join(f"{name} {n}" for name, n in calls.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
