"""`sm-ssh sandbox up|env|status|down|demo` (also `python -m sagemaker_ssh_sandbox.cli`).

    eval "$(sm-ssh sandbox up)"     # start emulated AWS + job runner, export its environment
    sm-ssh sandbox status           # services, jobs, endpoints, containers
    sm-ssh sandbox down             # stop everything it started; logs stay in the state dir
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import cli
from sagemaker_ssh_helper.errors import SSHHelperError
from sagemaker_ssh_sandbox import control

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="sm-ssh sandbox",
        description="Offline sandbox: emulated AWS (moto + SSM stand-in) and SageMaker jobs "
                    "running in Linux-namespace containers. Linux and root only.")
    common = cli.OneLineParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=None,
                        help="state directory (default: $SM_SSH_SANDBOX_DIR or ~/.sm-ssh-sandbox)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="{up,env,status,down,demo}")
    sub.required = True
    up = sub.add_parser("up", parents=[common],
                        help="start the sandbox in the background and print `export` lines")
    up.add_argument("--region", default=control.DEFAULT_REGION)
    up.add_argument("--port", type=int, default=0,
                    help="port of AWS_ENDPOINT_URL (default: any free port)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    up.add_argument("--no-iam", dest="iam", action="store_false",
                    help="let every SSM call through (by default the SSM stand-in enforces the "
                         "IAM policies the CDK stacks generate)")
    up.add_argument("--stop-grace", type=float, default=10.0,
                    help="seconds between SIGTERM and SIGKILL when a job is stopped")
    up.add_argument("--heartbeat-timeout", type=float, default=10.0,
                    help="seconds without agent heartbeat before PingStatus=ConnectionLost")
    up.add_argument("--stop-with", type=int, default=None, metavar="PID",
                    help="stop the sandbox by itself once process PID has ended (for scripts "
                         "that must not leave it running; default: it runs until `down`)")
    sub.add_parser("env", parents=[common], help="print the `export` lines again")
    status = sub.add_parser("status", parents=[common],
                            help="services, jobs, endpoints and containers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    down = sub.add_parser("down", parents=[common], help="stop everything the sandbox started")
    down.add_argument("--timeout", type=float, default=30.0)
    sub.add_parser("demo", parents=[common],
                   help="run the README's main job end to end, offline, with timings")
    return parser


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else control.default_state_dir()


def _running(state_dir: Path) -> dict[str, Any]:
    state = control.running_state(control.StateDir(state_dir))
    if state is None:
        raise control.SandboxError(
            f"the sandbox is not running in {state_dir}: start it with `sm-ssh sandbox up`")
    return state


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = control.start(state_dir, region=args.region, port=args.port,
                          stop_grace=args.stop_grace, heartbeat_timeout=args.heartbeat_timeout,
                          timeout=args.timeout, iam=args.iam, stop_with=args.stop_with)
    sys.stdout.write(control.export_lines(control.sandbox_env(state)))
    print(f"sandbox up (pid {state['pid']}): AWS {state['endpoint_url']}, SSM "
          f"{state['ssm_endpoint_url']}, state in {state['state_dir']}\n"
          f"use it with: eval \"$(sm-ssh sandbox env)\"", file=sys.stderr)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    sys.stdout.write(control.export_lines(control.sandbox_env(_running(_state_dir(args)))))
    return 0


def _format_status(state: dict[str, Any], status: dict[str, Any]) -> list[str]:
    lines = [f"sandbox running (pid {state['pid']}, up {status.get('uptime', 0):.0f} s, "
             f"state dir {state['state_dir']})",
             f"  AWS endpoint (S3, STS, IAM, SageMaker, Logs)  {state['endpoint_url']}",
             f"  SSM stand-in                                  {state['ssm_endpoint_url']}",
             f"  region {state['region']}, role {state['role_arn']}"]
    jobs = status.get("jobs") or []
    lines.append(f"jobs ({len(jobs)}):")
    for job in jobs:
        noun = {"training": "TrainingJob", "processing": "ProcessingJob"}.get(
            job["Kind"], "TransformJob")
        secondary = f" ({job['SecondaryStatus']})" if job.get("SecondaryStatus") else ""
        lines.append(f"  {job['Kind']:<10} {job[noun + 'Name']:<40} "
                     f"{job[noun + 'Status']}{secondary}")
        if job.get("FailureReason"):
            lines.append(f"      {job['FailureReason'].splitlines()[0][:100]}")
    endpoints = status.get("endpoints") or []
    lines.append(f"endpoints ({len(endpoints)}):")
    for endpoint in endpoints:
        lines.append(f"  {endpoint['EndpointName']:<51} {endpoint['EndpointStatus']}")
    containers = status.get("containers") or []
    lines.append(f"containers ({len(containers)}):")
    for c in containers:
        owner = f"{c.get('kind') or '-'} {c.get('job') or '-'}"
        lines.append(f"  {c['name']:<48} {c['hostname']:<8} {c['state']:<12} "
                     f"pid {c.get('init_pid') or '-'}  {owner}  log {c['log']}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = control.running_state(control.StateDir(state_dir))
    if state is None:
        if args.json:
            print(json.dumps({"running": False, "state_dir": str(state_dir)}))
        else:
            print(f"sandbox not running (state dir {state_dir})")
        return 1
    try:
        status = control.http_json(f"{state['endpoint_url']}/_sandbox/status")
    except (OSError, ValueError) as e:
        raise SSHHelperError(f"the sandbox daemon stopped answering ({e}): see "
                             f"{state_dir}/daemon.log, then `sm-ssh sandbox down`") from e
    if args.json:
        print(json.dumps(dict(status, running=True, state=state), indent=2, default=str))
    else:
        print("\n".join(_format_status(state, status)))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    began = time.monotonic()
    report = control.stop(state_dir, timeout=args.timeout)
    for what in report.stopped:
        print(f"stopped {what}", file=sys.stderr)
    if not report.ok:
        print(f"sandbox down: still present: {'; '.join(report.leftovers)}", file=sys.stderr)
        return 1
    print(f"sandbox down in {time.monotonic() - began:.1f} s: no processes or mounts left "
          f"(logs kept in {state_dir})", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    problem = control.requirements_problem()
    if problem:
        raise control.RequirementError(problem)
    from sagemaker_ssh_sandbox.demo import run_demo

    return run_demo(args)


COMMANDS = {"up": cmd_up, "env": cmd_env, "status": cmd_status, "down": cmd_down,
            "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = cli.argv_or_sys(argv)
    named = next((a for a in args if not a.startswith("-")), None)
    prog = "sm-ssh sandbox" + (f" {named}" if named in COMMANDS else "")
    return cli.guarded_main(prog, lambda frame: _run(frame.parse(_parser(), args)),
                            debug_log=False)


def _run(args: argparse.Namespace) -> int:
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
