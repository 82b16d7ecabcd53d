"""PID 1 of a sandbox container (run by ``unshare --mount --pid --net --uts --fork``).

Given a JSON spec written by :mod:`sagemaker_ssh_sandbox.sagemaker.container`, it

1. sets the UTS hostname (``algo-N``) and brings up ``lo`` in the fresh network namespace;
2. gives the container a private filesystem view: an overlay over each of /etc, /opt,
   /usr/local, /var, /home, /run (lower = the host directory, upper/work in the container's
   directory) so writes never reach the host, and without the host's SSH host keys (a
   container never sees or reuses the machine's: its sshd makes keys of its own); fresh,
   empty /tmp and /root (bind mounts of
   directories of the container); /opt/ml; a fresh tmpfs on /dev/shm; and, inside the fresh
   directories, overlays of the host directories the job needs there (the Python interpreter,
   e.g. pyenv under /root or a virtualenv under /tmp);
3. listens on ``127.0.0.1:<port>`` for each bridged AWS endpoint port and pipes connections to
   the host's unix sockets;
4. runs the job's entry point, forwards SIGTERM/SIGINT to it, reaps orphans, and exits with the
   entry point's exit code — which makes the kernel kill every other process of the container.

All host paths are opened as ``O_PATH`` descriptors before anything is mounted, and used through
``/proc/self/fd/<n>``, so the state directory may live anywhere (even under /tmp or /root, which
the container's own mounts hide).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox.sagemaker.bridge import TcpToUnix

MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_NOSUID = 0x2
MS_NODEV = 0x4

EXIT_SETUP_FAILED = 125
EXIT_NOT_FOUND = 127

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    rc = _libc.mount(source.encode() if source else None, target.encode(),
                     fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                     data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


class Paths:
    """Host paths pinned as O_PATH descriptors, usable after mounts hide them."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def pin(self, path: str) -> str:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._fds[path]}"


def _set_loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _submounts(targets: list[str]) -> list[str]:
    """Mount points strictly below any overlay target (e.g. a bind-mounted /etc/resolv.conf)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point.startswith(t.rstrip("/") + "/") for t in targets):
                found.append(point)
    return found


def _overlay(target: str, lower: str, upper: str, work: str, scratch: str | None) -> None:
    os.makedirs(target, exist_ok=True)
    os.makedirs(upper, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    try:
        _mount("overlay", target, "overlay", 0,
               f"lowerdir={lower},upperdir={upper},workdir={work}")
        return
    except OSError as e:
        if scratch is None or e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    # The state directory's filesystem cannot hold overlay upper layers (e.g. it is itself an
    # overlay): keep this container's changes in memory instead.
    name = target.strip("/").replace("/", "_")
    os.makedirs(f"{scratch}/upper/{name}", exist_ok=True)
    os.makedirs(f"{scratch}/work/{name}", exist_ok=True)
    _mount("overlay", target, "overlay", 0,
           f"lowerdir={lower},upperdir={scratch}/upper/{name},workdir={scratch}/work/{name}")


def _mount_overlay_list(overlays: list[dict[str, Any]], paths: Paths,
                        scratch: str | None) -> None:
    for o in overlays:
        _overlay(o["target"], o.get("lower_pinned") or o["target"],
                 f"{paths.pin(o['upper_root'])}/{o['name']}",
                 f"{paths.pin(o['work_root'])}/{o['name']}", scratch)


def _mount_overlays(spec: dict[str, Any], paths: Paths) -> str | None:
    """Overlay the top-level directories; returns the pinned scratch tmpfs (if any)."""
    overlays = spec.get("overlays", [])
    targets = [o["target"] for o in overlays]
    # Files mounted over paths inside an overlaid directory (container runtimes bind
    # /etc/resolv.conf, /etc/hosts) are hidden by the overlay: carry their contents over.
    carried: dict[str, bytes] = {}
    for point in _submounts(targets):
        if os.path.isfile(point):
            with open(point, "rb") as f:
                carried[point] = f.read()
    scratch: str | None = None
    if spec.get("scratch"):
        # Mounted by its real path while still visible, then pinned so the pin names the tmpfs.
        _mount("tmpfs", spec["scratch"], "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
        scratch = paths.pin(spec["scratch"])
    _mount_overlay_list(overlays, paths, scratch)
    for point, content in carried.items():
        with open(point, "wb") as f:
            f.write(content)
    return scratch


def _bind_mounts(spec: dict[str, Any], paths: Paths) -> None:
    for bind in sorted(spec.get("binds", []), key=lambda b: b["target"].count("/")):
        target = bind["target"]
        os.makedirs(target, exist_ok=True)
        _mount(bind["source_pinned"], target, None, MS_BIND | MS_REC)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.chmod("/tmp", 0o1777)


def _hide_host_keys() -> None:
    """Remove the host's SSH host keys from the container's /etc (whiteouts in its overlay;
    the host's files stay as they are)."""
    if not os.path.isdir("/etc/ssh"):
        return
    for name in os.listdir("/etc/ssh"):
        if name.startswith("ssh_host_") and "_key" in name:
            os.unlink(os.path.join("/etc/ssh", name))


def _identity(hostname: str) -> None:
    socket.sethostname(hostname)
    _set_loopback_up()


def _write_host_files(hostname: str) -> None:
    hosts = Path("/etc/hosts")
    existing = hosts.read_text() if hosts.exists() else "127.0.0.1\tlocalhost\n"
    if not existing.endswith("\n"):
        existing += "\n"
    hosts.write_text(existing + f"127.0.0.1\t{hostname}\n")
    Path("/etc/hostname").write_text(hostname + "\n")


def setup(spec: dict[str, Any]) -> list[TcpToUnix]:
    paths = Paths()
    for bind in spec.get("binds", []):
        bind["source_pinned"] = paths.pin(bind["source"])
    sock_dirs = {b["socket"]: paths.pin(os.path.dirname(b["socket"])) for b in spec["bridges"]}
    nested = sorted(spec.get("nested_overlays", []), key=lambda o: o["target"].count("/"))
    for o in spec.get("overlays", []) + nested:
        paths.pin(o["upper_root"])
        paths.pin(o["work_root"])
    for o in nested:
        o["lower_pinned"] = paths.pin(o["target"])
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _identity(spec["hostname"])
    scratch = _mount_overlays(spec, paths)
    if "/etc" in [o["target"] for o in spec.get("overlays", [])]:
        _hide_host_keys()
    _bind_mounts(spec, paths)
    # Host directories needed inside fresh ones (the interpreter under /root or /tmp), each as
    # an overlay of the host directory so writes stay in the container.
    _mount_overlay_list(nested, paths, scratch)
    _write_host_files(spec["hostname"])
    bridges = []
    for b in spec["bridges"]:
        target = f"{sock_dirs[b['socket']]}/{os.path.basename(b['socket'])}"
        bridges.append(TcpToUnix("127.0.0.1", int(b["port"]), target).start())
    return bridges


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def start_sidecars(spec: dict[str, Any]) -> None:
    """The platform's own processes (not the job's): output to their log file, never to the
    job's log; they die with the container's PID namespace."""
    for sidecar in spec.get("sidecars") or []:
        log = str(sidecar["log"])
        os.makedirs(os.path.dirname(log), exist_ok=True)
        try:
            with open(log, "ab") as out:
                subprocess.Popen(sidecar["argv"], env=sidecar["env"], cwd="/",
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True)
        except OSError as e:
            print(f"sandbox-init: cannot start {sidecar['argv'][0]!r}: {e}", file=sys.stderr,
                  flush=True)


def run(spec: dict[str, Any]) -> int:
    start_sidecars(spec)
    try:
        child = subprocess.Popen(spec["argv"], cwd=spec.get("cwd") or "/", env=spec["env"],
                                 stdin=subprocess.DEVNULL)
    except OSError as e:
        print(f"sandbox-init: cannot start {spec['argv'][0]!r}: {e}", file=sys.stderr, flush=True)
        return EXIT_NOT_FOUND

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        # As PID 1, reap every orphan; the container ends when the entry point does.
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if pid == child.pid:
            child.returncode = _exit_code(status)
            return child.returncode


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sagemaker_ssh_sandbox.sagemaker.container_init SPEC.json",
              file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    try:
        setup(spec)
    except Exception as e:  # any setup failure ends the container with a readable line
        print(f"sandbox-init: container setup failed: {e}", file=sys.stderr, flush=True)
        return EXIT_SETUP_FAILED
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
