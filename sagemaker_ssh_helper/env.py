"""Facts about the SageMaker container this code runs in: which resource it is, node rank, region.

Read by the container side only (``bootstrap``, ``init_ssm``, ``wait``, ``idle``); it imports
nothing beyond the standard library so it stays cheap inside every user's container.

Resource detection, first match wins:

1. ``<base>/metadata/resource-metadata.json`` (Studio apps and notebook instances):
   ``ResourceArn`` / ``ResourceName``.
2. ``<base>/config/processingjobconfig.json`` (processing jobs):
   ``ProcessingJobArn`` / ``ProcessingJobName``.
3. ``TRAINING_JOB_NAME`` / ``TRAINING_JOB_ARN`` (training jobs).
4. ``TRANSFORM_JOB_NAME`` / ``TRANSFORM_JOB_ARN`` (batch transform).
5. Otherwise an endpoint. SageMaker does not tell an inference container its endpoint's name, so
   the name comes from ``SAGEMAKER_ENDPOINT_NAME`` or ``ENDPOINT_NAME``: ``SSHModelWrapper``
   puts the former into the model's environment at ``deploy()`` (and ``SSHTransformerWrapper``
   puts ``TRANSFORM_JOB_NAME`` into the transform job's); a model created another way can set
   it itself. Failing that the host name is used with a warning. Clients still find such
   endpoints through the registration line in the endpoint's CloudWatch log.

``<base>`` is ``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``). An ARN missing from the container's
view (endpoints, or a training job that only exposes its name) is left ``None`` here; the caller
fills it in once it knows the account (``init_ssm`` asks STS).

``python -m sagemaker_ssh_helper.env [resource|rank|region|ip]`` prints one fact (shell glue).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import fqdn
from sagemaker_ssh_helper.aws import parse_arn
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_BASE_DIR = "/opt/ml"
STATE_DIR = Path("/opt/sagemaker-ssh-helper")
MI_ID_FILE = STATE_DIR / "mi-id"
SETUP_OWNER_FILE = STATE_DIR / "setup-owner-pid"
SETUP_FAILED_FILE = STATE_DIR / "setup-failed"  # why the SSH setup failed (sm-setup-ssh)
AGENT_PROCESS_NAME = "amazon-ssm-agent"


@dataclass(frozen=True)
class Resource:
    """The SageMaker resource this container belongs to."""

    kind: str            # fqdn kind: training, processing, transform, inference, notebook, studio
    name: str
    arn: str | None   # None when the container cannot see it (see module docstring)
    source: str          # where it was found, for logs

    @property
    def region(self) -> str | None:
        if not self.arn:
            return None
        return parse_arn(self.arn).region or None


def base_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", path, e)
        return None


def resource_config(environ: Mapping[str, str] | None = None
                    ) -> dict[str, Any] | None:
    """``resourceconfig.json`` (``input/config/`` in training jobs, ``config/`` in processing)."""
    base = base_dir(environ)
    for path in (base / "input" / "config" / "resourceconfig.json",
                 base / "config" / "resourceconfig.json"):
        data = _read_json(path)
        if isinstance(data, dict):
            return data
    return None


def node_rank(environ: Mapping[str, str] | None = None) -> int:
    """Index of ``current_host`` in the sorted ``hosts``; 0 without a resource config."""
    config = resource_config(environ)
    if not config:
        return 0
    hosts = sorted(str(h) for h in config.get("hosts") or [])
    current = str(config.get("current_host", ""))
    if current not in hosts:
        logger.warning("current_host %r is not among hosts %s; assuming rank 0", current, hosts)
        return 0
    return hosts.index(current)


def sm_get_node_rank() -> int:
    """This container's node rank (0 on the first node and outside multi-node jobs)."""
    return node_rank()


def get_caller_script_name(trace_back: int = 1) -> str:
    """The file name of the code ``trace_back`` frames up the stack (``1``: the file of the
    function that calls this one; ``0``: this module)."""
    if isinstance(trace_back, bool) or not isinstance(trace_back, int) or trace_back < 0:
        raise ValueError(f"trace_back must be an integer >= 0, got {trace_back!r}")
    frame = sys._getframe(0)
    for _ in range(trace_back):
        if frame.f_back is None:
            break
        frame = frame.f_back
    return os.path.basename(frame.f_code.co_filename)


def region(environ: Mapping[str, str] | None = None,
           resource: Resource | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "SAGEMAKER_REGION"):
        if environ.get(var):
            return environ[var]
    return resource.region if resource else None


def _from_arn(arn: str, name: str | None, source: str) -> Resource:
    parsed = parse_arn(arn)
    rk = fqdn.kind_for_arn_type(parsed.resource_type)
    if rk is None:
        raise SSHHelperError(f"{source}: unsupported resource ARN {arn!r}")
    return Resource(rk.kind, name or parsed.resource.rsplit("/", 1)[-1], arn, source)


def detect_resource(environ: Mapping[str, str] | None = None) -> Resource:
    """The resource this container belongs to (see the module docstring for the order)."""
    environ = os.environ if environ is None else environ
    base = base_dir(environ)
    metadata_path = base / "metadata" / "resource-metadata.json"
    metadata = _read_json(metadata_path)
    if isinstance(metadata, dict) and metadata.get("ResourceArn"):
        return _from_arn(str(metadata["ResourceArn"]), metadata.get("ResourceName"),
                         str(metadata_path))
    processing_path = base / "config" / "processingjobconfig.json"
    processing = _read_json(processing_path)
    if isinstance(processing, dict) and (processing.get("ProcessingJobArn")
                                         or processing.get("ProcessingJobName")):
        arn = processing.get("ProcessingJobArn")
        name = processing.get("ProcessingJobName")
        if arn:
            return _from_arn(str(arn), name, str(processing_path))
        return Resource("processing", str(name), None, str(processing_path))
    for prefix, kind in (("TRAINING_JOB", "training"), ("TRANSFORM_JOB", "transform")):
        arn, name = environ.get(f"{prefix}_ARN"), environ.get(f"{prefix}_NAME")
        if arn:
            return _from_arn(arn, name, f"{prefix}_ARN")
        if name:
            return Resource(kind, name, None, f"{prefix}_NAME")
    for var in ("SAGEMAKER_ENDPOINT_NAME", "ENDPOINT_NAME"):
        if environ.get(var):
            return Resource("inference", environ[var], None, var)
    host = socket.gethostname()
    logger.warning("cannot tell which SageMaker resource this is (no Studio/notebook metadata, "
                   "no processing config, no TRAINING_JOB_*/TRANSFORM_JOB_* and no "
                   "SAGEMAKER_ENDPOINT_NAME): assuming an endpoint named after the host, %r", host)
    return Resource("inference", host, None, "hostname")


def resource_arn(partition: str, region_name: str, account: str, kind_name: str,
                 name: str) -> str:
    """The ARN of a job or endpoint from its name (SageMaker lower-cases names in ARNs)."""
    arn_type = fqdn.kind(kind_name).arn_type
    return f"arn:{partition}:sagemaker:{region_name}:{account}:{arn_type}/{name.lower()}"


def endpoint_arn(partition: str, region_name: str, account: str, name: str) -> str:
    return resource_arn(partition, region_name, account, "inference", name)


def ip_address() -> str:
    """This container's address as other hosts see it (best effort; loopback as a last resort)."""
    try:
        address = socket.gethostbyname(socket.gethostname())
        if not address.startswith("127."):
            return address
    except OSError:
        pass
    for proc_address in _interface_addresses():
        return proc_address
    return "127.0.0.1"


def _interface_addresses() -> list[str]:
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for _, addresses in sorted(psutil.net_if_addrs().items()):
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                found.append(address.address)
    return found


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    cmdline: list[str]
    create_time: float  # epoch seconds


def iter_processes() -> Iterator[ProcessInfo]:
    """Processes visible to us, through psutil when installed, else ``/proc`` (Linux)."""
    try:
        import psutil
    except ImportError:
        yield from _proc_processes()
        return
    for proc in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
        info = proc.info
        yield ProcessInfo(info["pid"], info.get("name") or "", info.get("cmdline") or [],
                          info.get("create_time") or 0.0)


def _proc_processes() -> Iterator[ProcessInfo]:
    try:
        boot_time = next(float(line.split()[1]) for line in open("/proc/stat")
                         if line.startswith("btime "))
    except (OSError, StopIteration):
        boot_time = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmdline if a]
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        # comm is cut at 15 characters: prefer the executable's name when it extends comm.
        exe = os.path.basename(args[0]) if args else ""
        name = exe if len(comm) == 15 and exe.startswith(comm) else comm
        start_ticks = float(stat[stat.rindex(")") + 2:].split()[19])
        yield ProcessInfo(int(entry.name), name, args, boot_time + start_ticks / ticks)


def runs_program(proc: ProcessInfo, program: str) -> bool:
    """Whether ``proc`` is ``program``: by process name (which Linux cuts at 15 characters), by
    ``argv[0]``, or as a script run by a shell or Python (``bash …/program``)."""
    if proc.name == program or (len(proc.name) == 15 and program.startswith(proc.name)):
        return True
    args = [os.path.basename(a) for a in proc.cmdline[:2]]
    if args and args[0] == program:
        return True
    return len(args) == 2 and args[1] == program and args[0].startswith(_SCRIPT_RUNNERS)


_SCRIPT_RUNNERS = ("bash", "sh", "dash", "python")


def agent_running() -> bool:
    return any(runs_program(p, AGENT_PROCESS_NAME) and p.pid != os.getpid()
               for p in iter_processes())


def registered_instance_id(path: Path = MI_ID_FILE) -> str | None:
    """The mi-id saved by ``sm-setup-ssh start-ssh`` after registration, if any."""
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return value or None


def main(argv: list[str] | None = None) -> int:
    from sagemaker_ssh_helper import cli

    prog = "python -m sagemaker_ssh_helper.env"

    def body(command: cli.Command) -> int:
        parser = cli.OneLineParser(prog=prog, description="Print one fact about this container.")
        cli.add_general_options(parser, aws=False)
        parser.add_argument("fact", nargs="?", default="resource",
                            choices=("resource", "rank", "region", "ip"))
        try:
            what = command.parse(parser, cli.argv_or_sys(argv)).fact
        except UsageError:
            print(f"usage: {prog} [resource|rank|region|ip]", file=sys.stderr)
            return 2
        if what == "resource":
            resource = detect_resource()
            print(json.dumps({"kind": resource.kind, "name": resource.name,
                              "arn": resource.arn, "source": resource.source}))
        elif what == "rank":
            print(node_rank())
        elif what == "region":
            print(region(resource=detect_resource()) or "")
        else:
            print(ip_address())
        return 0

    return cli.guarded_main(prog, body, level=logging.INFO, debug_log=False,
                            fmt="%(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
