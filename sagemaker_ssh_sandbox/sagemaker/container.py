"""Host side of a sandbox container: start, watch, stop.

A container is ``unshare --mount --pid --net --uts --fork`` running
:mod:`sagemaker_ssh_sandbox.sagemaker.container_init` as its PID 1. Everything it needs lives in one
directory (``root``) under the sandbox state directory::

    root/spec.json     what container_init does (mounts, hostname, bridges, entry point)
    root/opt_ml/       bind-mounted on /opt/ml (prepared by the job runner before start)
    root/tmp/          bind-mounted on /tmp (fresh and empty)
    root/home_root/    bind-mounted on /root (fresh, with /etc/skel's dotfiles), so the host
                       user's ~/.ssh, ~/.aws and shell start-up files stay out of the container
    root/upper, work/  overlay layers for /etc, /opt, /usr/local, /var, /home, /run, and for
                       host directories the job needs under /root or /tmp (the interpreter)
    root/output.log    stdout and stderr of the container, line by line
    root/pids.json     host PIDs (unshare, init) and the PID namespace, for `sandbox down`
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

logger = logging.getLogger(__name__)

OVERLAY_TARGETS = ("/etc", "/opt", "/usr/local", "/var", "/home", "/run")
FRESH_DIRS = {"/tmp": "tmp", "/root": "home_root"}
PACKAGE_PARENT = Path(__file__).resolve().parents[2]

OutputCallback = Callable[[str, str], None]  # (container name, line without newline)


def overlay_targets() -> list[str]:
    return [t for t in OVERLAY_TARGETS if os.path.isdir(t) and not os.path.islink(t)]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def interpreter_dirs(python: str = sys.executable) -> list[str]:
    """Host directories the container needs that its fresh /tmp or /root would hide.

    That is the interpreter (pyenv lives under /root, CI virtualenvs often under /tmp), its
    library path, and this package.
    """
    wanted = {sys.prefix, sys.base_prefix, str(PACKAGE_PARENT),
              os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    wanted.update(p for p in sys.path if p and os.path.isdir(p))
    found = sorted(p for p in (os.path.realpath(w) for w in wanted)
                   if any(_under(p, fresh) and p != fresh for fresh in FRESH_DIRS))
    # Keep only outermost directories.
    outer: list[str] = []
    for p in found:
        if not any(_under(p, o) for o in outer):
            outer.append(p)
    return outer


@dataclass
class ContainerConfig:
    name: str
    hostname: str
    root: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str = "/"
    bridges: dict[int, Path] = field(default_factory=dict)
    binds: list[tuple[str, str]] = field(default_factory=list)
    # processes the platform runs next to the entry point ({"argv", "env", "log"}), e.g.
    # SageMaker's own SSM agent of remote debugging
    sidecars: list[dict[str, object]] = field(default_factory=list)


def pid_namespace_members(pidns: str) -> list[int]:
    """Host PIDs of every process whose PID namespace is ``pidns`` (e.g. ``pid:[4026532]``).

    Only meaningful while the namespace's init runs: namespace numbers are reused afterwards.
    """
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == pidns:
                members.append(int(entry))
        except OSError:
            continue
    return members


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class Container:
    """One namespaced container; thread-safe start/wait/terminate."""

    def __init__(self, config: ContainerConfig, on_output: OutputCallback | None = None,
                 python: str = sys.executable, unshare: str = "unshare") -> None:
        self.config = config
        self.name = config.name
        self.root = config.root
        self._on_output = on_output
        self._python = python
        self._unshare = unshare
        self._proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._log_lock = threading.Lock()
        self._log: IO[bytes] | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.init_pid: int | None = None
        self._init_create_time: float | None = None
        self.pidns: str | None = None
        self.ended_at: float | None = None

    @property
    def opt_ml(self) -> Path:
        return self.root / "opt_ml"

    @property
    def log_path(self) -> Path:
        return self.root / "output.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def state(self) -> str:
        if self._proc is None:
            return "Created"
        code = self._proc.poll()
        return "Running" if code is None else f"Exited({code})"

    def _spec(self) -> dict[str, object]:
        cfg = self.config
        binds = [(str(self.root / sub), fresh) for fresh, sub in FRESH_DIRS.items()]
        binds += [(str(self.opt_ml), "/opt/ml")] + list(cfg.binds)
        layers = {"upper_root": str(self.root / "upper"), "work_root": str(self.root / "work")}
        return {
            "hostname": cfg.hostname,
            "overlays": [dict(layers, target=t, name=t.strip("/").replace("/", "_"))
                         for t in overlay_targets()],
            "nested_overlays": [dict(layers, target=d, name=d.strip("/").replace("/", "_"))
                                for d in interpreter_dirs(self._python)],
            "scratch": str(self.root / "scratch"),
            "binds": [{"source": s, "target": t} for s, t in binds],
            "bridges": [{"port": p, "socket": str(s)} for p, s in sorted(cfg.bridges.items())],
            "argv": cfg.argv,
            "cwd": cfg.cwd,
            "env": cfg.env,
            "sidecars": cfg.sidecars,
        }

    def _prepare(self) -> Path:
        for sub in ("opt_ml", "upper", "work", "scratch", *FRESH_DIRS.values()):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        home = self.root / FRESH_DIRS["/root"]
        home.chmod(0o700)
        for dotfile in (Path("/etc/skel").glob(".*") if os.path.isdir("/etc/skel") else []):
            if dotfile.is_file() and not (home / dotfile.name).exists():
                shutil.copy2(dotfile, home / dotfile.name)
        spec_path = self.root / "spec.json"
        spec_path.write_text(json.dumps(self._spec(), indent=2))
        return spec_path

    def start(self) -> None:
        spec_path = self._prepare()
        cmd = [self._unshare, "--mount", "--pid", "--net", "--uts", "--fork", "--kill-child",
               "--mount-proc", "--propagation", "private",
               self._python, "-m", "sagemaker_ssh_sandbox.sagemaker.container_init", str(spec_path)]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "PYTHONPATH": str(PACKAGE_PARENT), "PYTHONDONTWRITEBYTECODE": "1",
               "LANG": "C.UTF-8"}
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env, cwd="/",
                                      start_new_session=True)
        for stream, pipe in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            assert pipe is not None
            reader = threading.Thread(target=self._read, args=(stream, pipe), daemon=True,
                                      name=f"{self.name} {stream}")
            reader.start()
            self._readers.append(reader)
        self._find_init()
        logger.info("container %s started (unshare pid %s, init pid %s)", self.name,
                    self._proc.pid, self.init_pid)

    def _find_init(self, timeout: float = 10.0) -> None:
        import psutil

        assert self._proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                children = psutil.Process(self._proc.pid).children()
            except psutil.Error:
                break
            if children:
                self.init_pid = children[0].pid
                self._init_create_time = _create_time(self.init_pid)
                try:
                    self.pidns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
                except OSError:
                    self.pidns = None
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self._write_pids()

    def _write_pids(self) -> None:
        assert self._proc is not None
        record = {
            "name": self.name,
            "unshare_pid": self._proc.pid,
            "unshare_create_time": _create_time(self._proc.pid),
            "init_pid": self.init_pid,
            "init_create_time": self._init_create_time,
            "pidns": self.pidns,
        }
        (self.root / "pids.json").write_text(json.dumps(record))

    def _read(self, stream: str, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            with self._log_lock:
                if self._log is not None:
                    self._log.write(raw)
                    self._log.flush()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if stream == "stderr":
                self.stderr_tail.append(line)
            if self._on_output is not None:
                try:
                    self._on_output(self.name, line)
                except Exception:  # a log sink must never break the container
                    logger.exception("output callback failed for %s", self.name)
        pipe.close()

    def wait(self, timeout: float | None = None) -> int | None:
        """Exit code once the container has ended (and its output is drained), else None."""
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join()
        with self._log_lock:
            if self._log is not None:
                self._log.close()
                self._log = None
        if self.ended_at is None:
            self.ended_at = time.time()
        return code

    def _signal(self, pid: int | None, sig: int) -> None:
        if pid is None or self._proc is None or self._proc.poll() is not None:
            return
        if pid == self.init_pid and _create_time(pid) != self._init_create_time:
            return  # init already ended; never signal a recycled PID
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self, grace: float = 10.0) -> int | None:
        """SIGTERM the entry point (through init); SIGKILL the whole container after ``grace``.

        unshare only exits once init has been reaped, which the kernel allows only after every
        other process of the PID namespace is gone: so a returned exit code means it is empty.
        """
        if self._proc is None or self._proc.poll() is not None:
            return self.wait()
        if self.init_pid is not None:
            self._signal(self.init_pid, signal.SIGTERM)
            code = self.wait(grace)
            if code is not None:
                return code
            logger.info("container %s: still running after %.0fs, killing", self.name, grace)
            self._signal(self.init_pid, signal.SIGKILL)
            code = self.wait(10.0)
            if code is not None:
                return code
        self._signal(self.pid, signal.SIGKILL)  # --kill-child takes init down with it
        return self.wait()

    def remove_scratch(self) -> None:
        """Drop the overlay work directories (the upper layers stay for inspection)."""
        for sub in ("work", "scratch"):
            shutil.rmtree(self.root / sub, ignore_errors=True)

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "hostname": self.config.hostname,
            "state": self.state,
            "unshare_pid": self.pid,
            "init_pid": self.init_pid,
            "log": str(self.log_path),
        }
