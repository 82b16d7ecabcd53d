"""Start, inspect and stop the sandbox daemon (used by the CLI and by :mod:`.api`).

Everything lives in one state directory (``SM_SSH_SANDBOX_DIR``, default ``~/.sm-ssh-sandbox``):
``state.json`` (daemon PID, ports), ``daemon.log``, ``sock/`` (bridges), ``jobs/`` (containers
and their logs), ``ssm/`` (SSM stand-in state), ``sagemaker-config.yaml``, ``pybin/``.
"""
from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_helper.errors import SSHHelperError

ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
ROLE_NAME = "SageMakerRole"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "SANDBOXACCESSKEYID00",
    "AWS_SECRET_ACCESS_KEY": "sandbox-secret-access-key",
    "AWS_SESSION_TOKEN": "sandbox-session-token",
}
UNSET_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_STS",
              "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_S3")
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_PARENT = PACKAGE_DIR.parent
BIN_DIR = PACKAGE_DIR / "ssm" / "bin"  # the agent and plugin stand-ins
SERVER_MODULE = "sagemaker_ssh_sandbox.server"


class SandboxError(SSHHelperError):
    exit_code = 1


class RequirementError(SandboxError):
    exit_code = 2


def default_state_dir() -> Path:
    return Path(os.environ.get("SM_SSH_SANDBOX_DIR") or Path.home() / ".sm-ssh-sandbox")


def role_arn(account: str = ACCOUNT) -> str:
    return f"arn:aws:iam::{account}:role/{ROLE_NAME}"


def requirements_problem() -> str | None:
    """One line saying what is missing to run the sandbox, or None."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (namespaces and overlayfs); this is {sys.platform}"
    if os.geteuid() != 0:
        return "the sandbox needs root (it creates namespaces and mounts): run it as root"
    if not shutil.which("unshare"):
        return "unshare not found: install util-linux (apt-get install -y util-linux)"
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        return "sshd not found: install OpenSSH (apt-get install -y openssh-server openssh-client)"
    problem = _overlay_problem()
    if problem:
        return problem
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return "moto is not installed: pip install 'sagemaker-ssh-helper[sandbox]'"
    return None


def _overlay_listed() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1:] == ["overlay"] for line in f)


def _overlay_problem() -> str | None:
    """None when overlayfs is usable. Stock Debian/Ubuntu kernels ship it as a module that is
    loaded on first use, so an unlisted overlay gets one `modprobe` before we give up."""
    try:
        if _overlay_listed():
            return None
        if shutil.which("modprobe"):
            subprocess.run(["modprobe", "overlay"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, check=False)
        if _overlay_listed():
            return None
    except (OSError, subprocess.SubprocessError):
        return "cannot read /proc/filesystems: is /proc mounted?"
    return "the kernel has no overlayfs: load it with `modprobe overlay` (package kmod)"


@dataclass
class StateDir:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(self.root))

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def log_file(self) -> Path:
        return self.root / "daemon.log"

    @property
    def sock_dir(self) -> Path:
        return self.root / "sock"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def sagemaker_config(self) -> Path:
        return self.root / "sagemaker-config.yaml"

    @property
    def pybin(self) -> Path:
        return self.root / "pybin"

    def read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def write(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)


def _process_matches(pid: int, create_time: float | None, *needles: str) -> bool:
    """Is ``pid`` still the (not yet dead) process we recorded?

    With a recorded start time, that identifies it (a process that is exiting has no command
    line any more but may still be reaping its PID namespace). Without one, its command line
    must contain every needle.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None:
            return abs(proc.create_time() - create_time) < 0.05
        cmdline = " ".join(proc.cmdline())
        return all(n in cmdline for n in needles)
    except psutil.Error:
        return False


def daemon_alive(sd: StateDir, state: dict[str, Any] | None) -> bool:
    if not state or not state.get("pid"):
        return False
    return _process_matches(int(state["pid"]), state.get("pid_create_time"), SERVER_MODULE,
                            str(sd.root))


def http_json(url: str, data: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def running_state(sd: StateDir) -> dict[str, Any] | None:
    """The state of a live, healthy daemon in ``sd``, else None."""
    state = sd.read()
    if not daemon_alive(sd, state):
        return None
    assert state is not None
    try:
        http_json(f"{state['endpoint_url']}/_sandbox/health", timeout=5)
    except OSError:
        return None
    return state


def _pythonpath_entries() -> list[str]:
    entries = [str(PACKAGE_DIR / "sagemaker" / "pyhook")]
    site_dirs = set(site.getsitepackages() + [site.getusersitepackages()])
    if str(PACKAGE_PARENT) not in site_dirs:
        entries.append(str(PACKAGE_PARENT))
    return entries


def sandbox_env(state: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """Variables to export so unchanged scripts, the SDK and boto3 use the sandbox."""
    base = dict(os.environ if base is None else base)
    # The stand-ins first; then the interpreter running this (a virtualenv's bin/ keeps its
    # python and pip ahead of the base interpreter that job containers use); the state dir's
    # python/pip only as a last resort, for machines without a `python` command.
    path = [str(BIN_DIR)]
    if sys.prefix != sys.base_prefix:
        path.append(os.path.dirname(os.path.abspath(sys.executable)))
    base_path = [p for p in base.get("PATH", "").split(os.pathsep) if p and p not in path]
    pythonpath = _pythonpath_entries()
    env = {
        "AWS_ENDPOINT_URL": state["endpoint_url"],
        "AWS_ENDPOINT_URL_SSM": state["ssm_endpoint_url"],
        **CREDENTIALS,
        "AWS_REGION": state["region"],
        "AWS_DEFAULT_REGION": state["region"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "PATH": os.pathsep.join(path + base_path + [state["pybin"]]),
        "PYTHONPATH": os.pathsep.join(pythonpath + [
            p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p and p not in pythonpath]),
        "SAGEMAKER_USER_CONFIG_OVERRIDE": state["sagemaker_config"],
        "SM_SSH_SANDBOX_DIR": state["state_dir"],
        "SM_SSH_SANDBOX_ROLE_ARN": state["role_arn"],
        "SM_SSH_PYTHON": state["python"],
    }
    return env


def export_lines(env: dict[str, str]) -> str:
    lines = [f"unset {' '.join(UNSET_VARS)}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def _log_tail(sd: StateDir, lines: int = 8) -> str:
    try:
        return " | ".join(sd.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no daemon log)"


def _wait_ready(ready_fd: int, sd: StateDir, timeout: float) -> None:
    """Read the daemon's ``pid N`` then ``ready`` lines from the pipe, against a deadline."""
    deadline = time.monotonic() + timeout
    buffer = b""
    try:
        while b"ready\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError(f"the sandbox did not become ready within {timeout:.0f} s "
                                   f"(see {sd.log_file}): {_log_tail(sd)}")
            readable, _, _ = select.select([ready_fd], [], [], remaining)
            if readable:
                chunk = os.read(ready_fd, 256)
                if not chunk:
                    raise SandboxError(f"the sandbox daemon exited during start-up "
                                       f"(see {sd.log_file}): {_log_tail(sd)}")
                buffer += chunk
    except BaseException:  # not ready in time, or interrupted: the daemon must not stay
        pid = buffer.split(b"\n")[0].split()[-1:] if buffer.startswith(b"pid ") else []
        if pid:
            _kill(int(pid[0]), signal.SIGKILL)
        raise


def process_identity(pid: int) -> float:
    """The start time that, with its PID, identifies a live process (for ``stop_with``)."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        raise SandboxError(f"no process {pid} to tie the sandbox to") from None


def process_alive(pid: int, create_time: float) -> bool:
    return _process_matches(pid, create_time)


def start(state_dir: Path, region: str = DEFAULT_REGION, port: int = 0,
          stop_grace: float = 10.0, heartbeat_timeout: float = 10.0,
          timeout: float = 60.0, iam: bool = True,
          stop_with: int | None = None) -> dict[str, Any]:
    """Start the daemon in the background unless it already runs; returns its state.

    With ``stop_with`` (a PID), a daemon started here stops by itself, containers and all,
    once that process has ended, however it ended (SIGKILL included); without it the daemon
    runs until :func:`stop`. A daemon that was already running is returned unchanged.
    """
    problem = requirements_problem()
    if problem:
        raise RequirementError(problem)
    sd = StateDir(state_dir)
    state = running_state(sd)
    if state:
        return state
    try:
        return _start(sd, region, port, stop_grace, heartbeat_timeout, timeout, iam, stop_with)
    except BaseException:
        # Half started (not ready in time, not answering, interrupted): leave nothing running.
        stop(sd.root)
        raise


def _start(sd: StateDir, region: str, port: int, stop_grace: float, heartbeat_timeout: float,
           timeout: float, iam: bool, stop_with: int | None) -> dict[str, Any]:
    if sd.read() is not None:
        stop(sd.root)  # stale state from a daemon that died: clean up its leftovers first
    sd.root.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT),
                                                      env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", SERVER_MODULE, "--state-dir", str(sd.root), "--region", region,
           "--port", str(port), "--stop-grace", str(stop_grace),
           "--heartbeat-timeout", str(heartbeat_timeout), "--ready-fd", str(write_fd)]
    if not iam:
        cmd.append("--no-iam")
    if stop_with is not None:
        cmd += ["--stop-with", f"{stop_with}:{process_identity(stop_with)!r}"]
    try:
        with open(sd.log_file, "ab") as log:
            # The server forks once more and this first process exits at once, so the daemon
            # is never our child (no zombie, and it outlives this process).
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                           cwd="/", pass_fds=(write_fd,), start_new_session=True, check=False,
                           timeout=timeout)
        os.close(write_fd)
        _wait_ready(read_fd, sd, timeout)
    finally:
        for fd in (read_fd, write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
    state = running_state(sd)
    if state is None:
        raise SandboxError(f"the sandbox daemon reported ready but does not answer "
                           f"(see {sd.log_file}): {_log_tail(sd)}")
    return state


@dataclass
class DownReport:
    stopped: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.leftovers


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(state_dir: Path, timeout: float = 30.0) -> DownReport:
    """Stop the daemon and every container it started, by PID; verify nothing is left."""
    sd = StateDir(state_dir)
    report = DownReport()
    state = sd.read()
    if daemon_alive(sd, state):
        assert state is not None
        pid = int(state["pid"])
        _kill(pid, signal.SIGTERM)
        # The daemon stops its containers first: SIGTERM, SIGKILL after its grace period.
        timeout = max(timeout, float(state.get("stop_grace") or 10.0) + 15.0)
        if not _wait_until(lambda: not daemon_alive(sd, state), timeout):
            _kill(pid, signal.SIGKILL)
            _wait_until(lambda: not daemon_alive(sd, state), 10)
        report.stopped.append(f"daemon (pid {pid})")
    members: list[tuple[int, float]] = []
    for record in _container_records(sd):
        pids = live_container_pids(record)
        if not pids:
            continue
        found = _namespace_processes(record) if record.get("init_pid") in pids else []
        for pid in pids + [pid for pid, _ in found]:
            _kill(pid, signal.SIGKILL)
        members += found
        report.stopped.append(f"container {record.get('name')} "
                              f"({len(set(pids) | {p for p, _ in found})} processes)")
    _verify(sd, state, report, members)
    for sock in sd.sock_dir.glob("*.sock") if sd.sock_dir.is_dir() else []:
        sock.unlink()
    if sd.state_file.exists():
        sd.state_file.unlink()
    return report


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline, delay = time.monotonic() + timeout, 0.01
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True


def live_container_pids(record: dict[str, Any]) -> list[int]:
    """Host PIDs of a container's init and unshare processes, if they are still those processes.

    Killing init ends the container: the kernel kills every process of its PID namespace. Once
    init is gone the namespace is gone too (its number may be reused by anyone), so liveness is
    judged by PID and start time, never by namespace number.
    """
    found = []
    for key in ("init", "unshare"):
        pid, created = record.get(f"{key}_pid"), record.get(f"{key}_create_time")
        if pid and created is not None and _process_matches(int(pid), created):
            found.append(int(pid))
    return found


def _container_records(sd: StateDir) -> list[dict[str, Any]]:
    records = []
    for path in sorted(sd.jobs_dir.glob("*/*/*/pids.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records


def _namespace_processes(record: dict[str, Any]) -> list[tuple[int, float]]:
    """(pid, start time) of every process in a container whose init is alive.

    Killing init makes the kernel kill the rest, but not necessarily before init's own PID is
    gone, so the members are recorded (while the live init pins the namespace) and checked too.
    """
    import psutil

    from sagemaker_ssh_sandbox.sagemaker.container import pid_namespace_members

    found = []
    for pid in pid_namespace_members(record["pidns"]) if record.get("pidns") else []:
        try:
            found.append((pid, psutil.Process(pid).create_time()))
        except psutil.Error:
            continue
    return found


def _verify(sd: StateDir, state: dict[str, Any] | None, report: DownReport,
            members: list[tuple[int, float]]) -> None:
    deadline = time.monotonic() + 10
    while True:
        left: list[str] = []
        if daemon_alive(sd, state):
            left.append(f"daemon pid {state['pid'] if state else '?'}")
        left += [f"container {r.get('name')} (pids {live_container_pids(r)})"
                 for r in _container_records(sd) if live_container_pids(r)]
        left += [f"container process {pid}" for pid, created in members
                 if _process_matches(pid, created)]
        with open("/proc/self/mountinfo") as f:
            root = str(sd.root)
            left += [f"mount {line.split()[4]}" for line in f
                     if line.split()[4].startswith(root) or f"upperdir={root}" in line]
        if not left or time.monotonic() > deadline:
            report.leftovers = left
            return
        time.sleep(0.1)
