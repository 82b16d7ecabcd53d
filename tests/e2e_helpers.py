"""What the end-to-end tests share: a user's environment against the sandbox, a user's launch
script run as they run it (or a sourcedir.tar.gz uploaded as the SDK does), an entry point that
serves a page in the container, a page served on the laptop, -L and -R checked with them,
stopping a command, polling, and the SSM stand-in's call counts."""
from __future__ import annotations

import http.server
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import free_port, run, wait_until

REPO = Path(__file__).resolve().parents[1]

# A training entry point that serves "page from <hostname>" on 127.0.0.1:8080 in the container
# (for -L), then starts SSH and holds until released.
PAGE_ENTRY_POINT = """\
import http.server, socket, threading

import sagemaker_ssh_helper


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"page from {socket.gethostname()}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Page)
threading.Thread(target=server.serve_forever, daemon=True).start()
sagemaker_ssh_helper.setup_and_start_ssh()
print("released", flush=True)
"""


def user_env(sandbox_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """A user's environment against the sandbox: its variables, a HOME of its own (made here if
    need be: client keys, known_hosts and ssh config stay out of ~/.ssh), this checkout first on
    PYTHONPATH (launch scripts import it) and no SageMaker SDK v2 warning."""
    home.mkdir(exist_ok=True)
    env = dict(os.environ, **sandbox_env, HOME=str(home), SAGEMAKER_SUPPRESS_V2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def launch(script: str, work: Path, sources: Mapping[str, str], env: Mapping[str, str],
           *args: str, timeout: float = 300, marker: str | None = None) -> str:
    """Run a user's launch script as they do: ``python launch.py SOURCE_DIR ARGS...`` in
    ``work``, with ``sources`` (entry points) written to ``work/src``. Returns the last line it
    printed, or with ``marker`` what follows it in the last line that has it (the SDK may print
    progress before it on the same line)."""
    source = work / "src"
    source.mkdir(parents=True)
    for name, text in sources.items():
        (source / name).write_text(text)
    (work / "launch.py").write_text(script)
    done = subprocess.run([sys.executable, str(work / "launch.py"), str(source), *args],
                          env=dict(env), cwd=work, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in done.stdout.strip().splitlines() if marker is None or marker in line]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-3000:]
    return lines[-1] if marker is None else lines[-1].split(marker, 1)[1]


@contextmanager
def laptop_page(body: bytes = b"page from the laptop\n") -> Iterator[int]:
    """An HTTP server on the laptop's loopback answering every GET with ``body`` (for -R);
    yields its port."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> str:
    """The body of a page, as text."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def stop(proc: subprocess.Popen) -> None:
    """End a long-running command (a tunnel, ``-N``) with SIGTERM; kill it if it hangs."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ssm_calls(env: Mapping[str, str]) -> dict[str, int]:
    """How many times each SSM API was called on the sandbox's SSM stand-in so far."""
    with urllib.request.urlopen(f"{env['AWS_ENDPOINT_URL_SSM']}/_sandbox/stats",
                                timeout=10) as response:
        return dict(json.loads(response.read())["CallCounts"])


def forwarded_page(connect: list[str], env: Mapping[str, str], path: str = "/") -> str:
    """``connect -N -L PORT:localhost:8080`` (``connect`` is an ``sm-ssh connect`` argv): the
    page at ``path`` of the container's port 8080, fetched through the forward once it
    answers."""
    local = free_port()
    proc = subprocess.Popen([*connect, "-N", "-L", f"{local}:localhost:8080"], env=dict(env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        return str(wait_until(lambda: get(f"http://127.0.0.1:{local}{path}"), proc, "-L"))
    finally:
        stop(proc)


def laptop_fetch(connect: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """``connect -R PORT:laptop -- python3 -c FETCH``: the container fetches a page served on
    the laptop through the remote forward and prints it ("page from the laptop")."""
    remote = free_port()
    fetch = ("import urllib.request; print(urllib.request.urlopen("
             f"'http://127.0.0.1:{remote}/').read().decode(), end='')")
    with laptop_page() as laptop:
        return run([*connect, "-R", f"{remote}:127.0.0.1:{laptop}", "--",
                    shlex.join(["python3", "-c", fetch])], dict(env))


def tarball(files: Mapping[str, str], package: bool = False) -> bytes:
    """A .tar.gz of ``files`` (name -> text), with this checkout's package folder next to them
    where ``package`` (as the SDK ships it as a dependency)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if package:
            tar.add(REPO / "sagemaker_ssh_helper", arcname="sagemaker_ssh_helper",
                    filter=lambda t: None if "__pycache__" in t.name else t)
    return buffer.getvalue()


def upload_source(sandbox: Any, prefix: str, scripts: Mapping[str, str]) -> str:
    """``sourcedir.tar.gz`` as the SDK uploads it (the ``scripts`` and the package) in the
    sandbox's bucket under ``prefix``; its S3 URI."""
    bucket, key = sandbox.state["bucket"], f"{prefix}/sourcedir.tar.gz"
    sandbox.client("s3").put_object(Bucket=bucket, Key=key, Body=tarball(scripts, package=True))
    return f"s3://{bucket}/{key}"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll ``check()`` until it returns something true (returned), with growing pauses; fail
    the test after ``timeout`` seconds."""
    deadline, delay = time.monotonic() + timeout, 0.05
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    return value
