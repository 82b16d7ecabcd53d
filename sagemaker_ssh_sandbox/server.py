"""The sandbox daemon: emulated AWS plus the job runner, in one background process.

Started by ``sm-ssh sandbox up`` (see :mod:`sagemaker_ssh_sandbox.control`)::

    python -m sagemaker_ssh_sandbox.server --state-dir DIR [--port N] [--ready-fd FD]

* moto (``ThreadedMotoServer``) on an internal 127.0.0.1 port: S3, STS, IAM, SageMaker, Logs;
* the gateway on the public port (``AWS_ENDPOINT_URL``), serving job operations itself, and
  endpoints (:mod:`~sagemaker_ssh_sandbox.sagemaker.endpoints`), Studio and notebook instances
  through ``gateway.apis``;
* the SSM stand-in on its own port (``AWS_ENDPOINT_URL_SSM``);
* host-side unix-socket bridges for both ports, used by the job containers.

When everything answers it writes ``state.json`` and a line to ``--ready-fd``. SIGTERM/SIGINT
stop all containers (SIGTERM, SIGKILL after ``--stop-grace``) and every service; so does the end
of the process given by ``--stop-with PID:START`` (a sandbox started on behalf of a test run or
the demo), however that process ended.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox import control
from sagemaker_ssh_sandbox.gateway import Gateway
from sagemaker_ssh_sandbox.iam import account as iam_setup
from sagemaker_ssh_sandbox.sagemaker.bridge import UnixToTcp
from sagemaker_ssh_sandbox.sagemaker.cwlogs import LOG_GROUPS, LogShipper
from sagemaker_ssh_sandbox.sagemaker.endpoints import SSM_TARGET_PREFIX, EndpointsAPI
from sagemaker_ssh_sandbox.sagemaker.jobs import JobsAPI
from sagemaker_ssh_sandbox.sagemaker.layout import Platform
from sagemaker_ssh_sandbox.sagemaker.notebooks import NOTEBOOK_USER, NotebookAPI
from sagemaker_ssh_sandbox.sagemaker.remote_debug import RemoteDebug
from sagemaker_ssh_sandbox.sagemaker.runner import JobRunner
from sagemaker_ssh_sandbox.sagemaker.studio import StudioAPI, app_container_factory

# Where the state dir's pybin/ (python, python3, pip) appears inside job containers.
CONTAINER_PYBIN = "/run/sm-ssh-sandbox/pybin"

logger = logging.getLogger(__name__)

TRUST_POLICY = """{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal":
 {"Service": ["sagemaker.amazonaws.com", "ssm.amazonaws.com"]}, "Action": "sts:AssumeRole"}]}"""
SAGEMAKER_CONFIG = """\
SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""
PIP_SHIM = """#!/bin/sh
exec "{python}" -m pip "$@"
"""


def _boto_client(service: str, url: str, region: str) -> Any:
    import boto3

    creds = control.CREDENTIALS
    return boto3.client(service, region_name=region, endpoint_url=url,
                        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                        aws_session_token=creds["AWS_SESSION_TOKEN"])


def seed(moto_url: str, region: str, account: str) -> dict[str, str]:
    """Resources a fresh account needs for SageMaker: the execution roles with SSH Helper's
    server policy, a user with its client policy (:mod:`.iam.account`), the default bucket."""
    iam = _boto_client("iam", moto_url, region)
    iam.create_role(RoleName=control.ROLE_NAME, AssumeRolePolicyDocument=TRUST_POLICY,
                    Description="SageMaker execution role of the offline sandbox")
    iam_setup.seed(iam, account, control.CREDENTIALS,
                   (control.ROLE_NAME, iam_setup.STUDIO_ROLE_NAME), TRUST_POLICY)
    bucket = f"sagemaker-{region}-{account}"
    s3 = _boto_client("s3", moto_url, region)
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    logs = _boto_client("logs", moto_url, region)
    for group in LOG_GROUPS.values():
        logs.create_log_group(logGroupName=group)
    return {"role_arn": control.role_arn(account), "bucket": bucket}


def write_support_files(sd: control.StateDir, python: str) -> None:
    sd.sagemaker_config.write_text(SAGEMAKER_CONFIG)
    sd.pybin.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        link = sd.pybin / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(python)
    pip = sd.pybin / "pip"
    pip.write_text(PIP_SHIM.format(python=python))
    pip.chmod(0o755)


class Daemon:
    def __init__(self, state_dir: Path, region: str, port: int = 0, ssm_port: int = 0,
                 stop_grace: float = 10.0, heartbeat_timeout: float = 10.0,
                 account: str = control.ACCOUNT, iam: bool = True) -> None:
        self.sd = control.StateDir(state_dir)
        self.iam = iam  # enforce the generated IAM policies on SSM calls
        self.region = region
        self.account = account
        self.port = port
        self.ssm_port = ssm_port
        self.stop_grace = stop_grace
        self.heartbeat_timeout = heartbeat_timeout
        self.python = os.path.realpath(sys.executable)
        self._started = time.time()
        self._bridges: list[UnixToTcp] = []
        self._moto: Any = None
        self._ssm: Any = None
        self._gateway: Gateway | None = None
        self._runner: JobRunner | None = None
        self._studio: StudioAPI | None = None
        self._notebooks: NotebookAPI | None = None
        self._endpoints: EndpointsAPI | None = None
        self._shipper: LogShipper | None = None

    def start(self) -> dict[str, Any]:
        from moto.server import ThreadedMotoServer

        from sagemaker_ssh_sandbox.ssm.service import start_ssm_server

        self.sd.root.mkdir(parents=True, exist_ok=True)
        self.sd.sock_dir.mkdir(parents=True, exist_ok=True)
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        moto_host, moto_port = self._moto.get_host_and_port()
        moto_url = f"http://{moto_host}:{moto_port}"
        seeded = seed(moto_url, self.region, self.account)
        self._ssm = start_ssm_server(host="127.0.0.1", port=self.ssm_port,
                                     state_dir=self.sd.root / "ssm", account_id=self.account,
                                     region=self.region, heartbeat_timeout=self.heartbeat_timeout)
        if self.iam:
            from sagemaker_ssh_sandbox.ssm.iam import Authorizer, MotoPrincipals

            self._ssm.backend.authorizer = Authorizer(MotoPrincipals(self.account))
        gateway = Gateway(("127.0.0.1", self.port), (moto_host, moto_port), jobs=None,
                          status=self.status, region=self.region)
        gateway.account = self.account
        self._gateway = gateway
        bridges = {}
        for port in (gateway.port, int(self._ssm.port)):
            bridge = UnixToTcp(self.sd.sock_dir / f"{port}.sock", "127.0.0.1", port).start()
            self._bridges.append(bridge)
            bridges[port] = bridge.path
        write_support_files(self.sd, self.python)
        platform = Platform(region=self.region, account=self.account,
                            endpoint_url=gateway.url, ssm_endpoint_url=self._ssm.url,
                            python=self.python,
                            path_dirs=[str(control.BIN_DIR), CONTAINER_PYBIN],
                            credentials=dict(control.CREDENTIALS),
                            role_credentials=iam_setup.role_credentials(
                                _boto_client("sts", moto_url, self.region)))
        self._shipper = LogShipper(_boto_client("logs", moto_url, self.region))
        s3 = _boto_client("s3", moto_url, self.region)
        sagemaker = _boto_client("sagemaker", moto_url, self.region)
        binds = [(str(self.sd.pybin), CONTAINER_PYBIN)]
        self._runner = JobRunner(self.sd.root, platform, s3, bridges, self._shipper,
                                 self.stop_grace, binds=binds, sagemaker=sagemaker)
        jobs = JobsAPI(self.region, self.account, self._runner, self.sd.root)
        self._runner.save = jobs.save
        gateway.jobs = jobs
        debug = RemoteDebug(self._ssm.backend, lambda name: jobs.get("training", name))
        self._runner.remote_debug = debug
        jobs.remote_debug_on = debug.turned_on
        self._studio = StudioAPI(self.region, self.account, self.sd.root, app_container_factory(
            platform, bridges, [(str(self.sd.pybin), CONTAINER_PYBIN)]))
        self._notebooks = NotebookAPI(self.region, self.account, self.sd.root,
                                      app_container_factory(
                                          platform, bridges,
                                          [(str(self.sd.pybin), CONTAINER_PYBIN)], NOTEBOOK_USER))
        self._endpoints = EndpointsAPI(self.region, self.account, sagemaker, s3, platform,
                                       self.sd.root, bridges, binds, self._shipper,
                                       self.stop_grace)
        self._endpoints.ssm_backend = self._ssm.backend
        endpoints_api = self._endpoints
        self._ssm.backend.sagemaker_gate = lambda target_id: (
            endpoints_api.ssm_refusal(target_id)
            if target_id.startswith(SSM_TARGET_PREFIX) else debug.refusal(target_id))
        gateway.apis += [self._endpoints, self._studio, self._notebooks]
        gateway.start()
        state = self._state(moto_port, seeded)
        self.sd.write(state)
        logger.info("sandbox ready: AWS endpoint %s, SSM %s, moto %s", gateway.url,
                    self._ssm.url, moto_url)
        return state

    def _state(self, moto_port: int, seeded: dict[str, str]) -> dict[str, Any]:
        import psutil

        assert self._gateway is not None
        return {
            "pid": os.getpid(),
            "pid_create_time": psutil.Process().create_time(),
            "started": self._started,
            "state_dir": str(self.sd.root),
            "region": self.region,
            "account": self.account,
            "ports": {"gateway": self._gateway.port, "ssm": int(self._ssm.port), "moto": moto_port},
            "endpoint_url": self._gateway.url,
            "ssm_endpoint_url": self._ssm.url,
            "role_arn": seeded["role_arn"],
            "bucket": seeded["bucket"],
            "sagemaker_config": str(self.sd.sagemaker_config),
            "pybin": str(self.sd.pybin),
            "python": self.python,
            "stop_grace": self.stop_grace,
            "iam": self.iam,
        }

    def status(self) -> dict[str, Any]:
        state = self.sd.read() or {}
        jobs = self._gateway.jobs.jobs() if self._gateway and self._gateway.jobs else []
        return {
            "pid": os.getpid(),
            "uptime": time.time() - self._started,
            "endpoint_url": state.get("endpoint_url"),
            "ssm_endpoint_url": state.get("ssm_endpoint_url"),
            "ports": state.get("ports"),
            "jobs": [dict(j.summary(), Kind=j.kind.key) for j in jobs],
            "endpoints": [e.summary() for e in self._endpoints.endpoints()]
            if self._endpoints else [],
            "containers": self.containers(),
        }

    def containers(self) -> list[dict[str, Any]]:
        """Every container: jobs', endpoints', then those of the other APIs (Studio apps,
        notebook instances) that list theirs."""
        found: list[dict[str, Any]] = list(self._runner.containers()) if self._runner else []
        for api in self._gateway.apis if self._gateway else []:
            listing = getattr(api, "containers", None)
            if callable(listing):
                try:
                    found += list(listing())
                except Exception:  # status must keep working
                    logger.exception("cannot list the containers of %s", type(api).__name__)
        return found

    def stop(self) -> None:
        logger.info("stopping the sandbox")
        # Jobs and endpoints stop in parallel: each waits up to the grace period.
        stoppers = [threading.Thread(target=owner.shutdown, args=(self.stop_grace + 10,))
                    for owner in (self._runner, self._endpoints) if owner is not None]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for api in (self._studio, self._notebooks):
            if api is not None:
                api.shutdown(self.stop_grace)
        for step in (self._stop_gateway, self._stop_bridges, self._stop_others):
            try:
                step()
            except Exception:  # keep tearing down the rest
                logger.exception("error during shutdown")
        try:
            self.sd.state_file.unlink()
        except FileNotFoundError:
            pass
        logger.info("sandbox stopped")

    def _stop_gateway(self) -> None:
        if self._gateway:
            self._gateway.stop()

    def _stop_bridges(self) -> None:
        for bridge in self._bridges:
            bridge.close()

    def _stop_others(self) -> None:
        if self._shipper:
            self._shipper.close()
        if self._ssm:
            self._ssm.shutdown()
        if self._moto:
            self._moto.stop()


def _pid_and_start(value: str) -> tuple[int, float]:
    pid, _, start = value.partition(":")
    return int(pid), float(start)


def watch_process(pid: int, create_time: float, stop: threading.Event,
                  interval: float = 0.5) -> None:
    """Set ``stop`` once the process that the sandbox was started for has ended (a test run,
    a demo: however it ended, even SIGKILLed, its sandbox and containers must not outlive it).
    Polled, because the daemon is not its child: neither a pipe's EOF nor PR_SET_PDEATHSIG
    reaches a process that was reparented."""
    while not stop.wait(interval):
        if not control.process_alive(pid, create_time):
            logger.info("process %d, which the sandbox was started for, has ended: stopping",
                        pid)
            stop.set()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {control.SERVER_MODULE}")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--region", default=control.DEFAULT_REGION)
    parser.add_argument("--port", type=int, default=0, help="public AWS endpoint port (0: any)")
    parser.add_argument("--ssm-port", type=int, default=0)
    parser.add_argument("--stop-grace", type=float, default=10.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--no-iam", dest="iam", action="store_false",
                        help="do not enforce the IAM policies on SSM calls")
    parser.add_argument("--stop-with", type=_pid_and_start, default=None, metavar="PID:START",
                        help="stop when the process with this PID and start time has ended")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("werkzeug", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.ready_fd is not None:
        # Detach: the process that started us exits now; the daemon reports its PID, then
        # "ready" once everything answers.
        if os.fork() > 0:
            os._exit(0)
        os.write(args.ready_fd, f"pid {os.getpid()}\n".encode())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    if args.stop_with is not None:
        threading.Thread(target=watch_process, args=(*args.stop_with, stop),
                         name="stop-with", daemon=True).start()
    daemon = Daemon(args.state_dir, args.region, args.port, args.ssm_port, args.stop_grace,
                    args.heartbeat_timeout, iam=args.iam)
    try:
        daemon.start()
    except Exception as e:
        logger.exception("sandbox start-up failed")
        print(f"sandbox start-up failed: {e}", file=sys.stderr, flush=True)
        daemon.stop()
        return 1
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    while not stop.wait(3600):
        pass
    daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
