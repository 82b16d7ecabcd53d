"""Standard-library helpers for the Studio end-to-end tests; also run inside emulated apps.

* :func:`run_notebook` runs a notebook's code cells in order the way an IPython kernel does:
  ``!cmd`` lines go to ``/bin/sh`` after ``{expression}`` / ``$name`` expansion from the
  notebook's namespace (a command ending in ``&`` is refused, as IPython refuses it), and
  ``%pip ...`` runs ``<this interpreter> -m pip ...``. Unlike IPython, the first failing
  command stops the run (exit 1), so a test sees it. From a shell::

      python ide_support.py run-notebook NOTEBOOK.ipynb

* :func:`setup_arguments` reads what a checkout's ``setup.py`` passes to ``setup()``.
* :func:`set_variable` edits the cell that assigns a variable, as a user would before running.
* :func:`websocket_first_bytes` opens a WebSocket (RFC 6455, client side) and reads its first
  data bytes.
"""
from __future__ import annotations

import base64
import json
import os
import re
import runpy
import shlex
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

MAGIC_LINE = re.compile(r"^(\s*)(!|%pip\s)(.*)$")
FIELD = re.compile(r"\{\{|\}\}|\{([^{}]+)\}|\$\$|\$([A-Za-z_]\w*)")


class CellError(Exception):
    pass


def expand(command: str, namespace: dict[str, Any]) -> str:
    """IPython's variable expansion of a ``!`` line; the line is kept as is if it fails."""
    def field(match: re.Match) -> str:
        text = match.group(0)
        if text in ("{{", "}}", "$$"):
            return text[0]
        if match.group(1) is not None:
            return str(eval(match.group(1), namespace))  # noqa: S307 - the notebook's own code
        name = match.group(2)
        if name not in namespace:
            raise KeyError(name)
        return str(namespace[name])

    try:
        return FIELD.sub(field, command)
    except Exception:
        return command


def transform(source: str) -> str:
    """A cell's Python, with ``!`` and ``%pip`` lines turned into calls of ``_nb_system_``."""
    lines = []
    for line in source.splitlines():
        match = MAGIC_LINE.match(line)
        if match is None:
            if line.lstrip().startswith("%"):
                raise CellError(f"unsupported magic: {line.strip()}")
            lines.append(line)
            continue
        indent, kind, rest = match.groups()
        if kind.startswith("%pip"):
            rest = f"{shlex.quote(sys.executable)} -m pip {rest}"
        lines.append(f"{indent}_nb_system_({rest!r})")
    return "\n".join(lines) + "\n"


def _system_for(namespace: dict[str, Any]) -> Any:
    def system(command: str) -> None:
        if command.rstrip().endswith("&"):
            raise OSError("Background processes not supported.")
        sys.stdout.flush()
        code = subprocess.call(expand(command, namespace), shell=True, stdin=subprocess.DEVNULL)
        namespace["_exit_code"] = code
        if code != 0:
            raise CellError(f"!{command} exited with {code}")
    return system


def code_cells(notebook: dict[str, Any]) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def run_notebook(path: Path) -> int:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    namespace["_nb_system_"] = _system_for(namespace)
    cells = code_cells(json.loads(path.read_text()))
    for number, source in enumerate(cells, 1):
        print(f"--- cell {number}", flush=True)
        try:
            exec(compile(transform(source), f"<cell {number}>", "exec"), namespace)  # noqa: S102
        except Exception as e:
            if not isinstance(e, CellError):
                traceback.print_exc()
            print(f"cell {number} failed: {e}", file=sys.stderr, flush=True)
            return 1
        sys.stdout.flush()
    print(f"--- ran {len(cells)} code cells", flush=True)
    return 0


def set_variable(notebook: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    """The notebook with ``name = <value>`` in the one cell that assigns ``name``."""
    pattern = re.compile(rf"^{re.escape(name)} = .*$", re.MULTILINE)
    edited = json.loads(json.dumps(notebook))
    hits = [c for c in edited["cells"]
            if c["cell_type"] == "code" and pattern.search("".join(c["source"]))]
    if len(hits) != 1:
        raise ValueError(f"{len(hits)} cells assign {name}")
    source = pattern.sub(f"{name} = {json.dumps(value)}", "".join(hits[0]["source"]))
    hits[0]["source"] = source.splitlines(keepends=True)
    return edited


# -- setup.py, as setuptools sees it ---------------------------------------------------------
def setup_arguments(checkout: Path) -> dict[str, Any]:
    """The keyword arguments ``setup.py`` passes to ``setuptools.setup``."""
    import setuptools

    captured: dict[str, Any] = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(checkout / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return captured


# -- a WebSocket client, just enough to read a server's first bytes -------------------------
def websocket_first_bytes(port: int, path: str, count: int, protocol: str = "binary",
                          timeout: float = 10.0) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request.encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += _recv(s)
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise OSError(f"no WebSocket upgrade: {status.decode(errors='replace')}")
        payload = b""
        while len(payload) < count:
            while len(buffer) < 2:
                buffer += _recv(s)
            length, start = buffer[1] & 0x7F, 2
            if length == 126:
                while len(buffer) < 4:
                    buffer += _recv(s)
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                while len(buffer) < 10:
                    buffer += _recv(s)
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            while len(buffer) < start + length:
                buffer += _recv(s)
            if buffer[0] & 0x0F in (0x1, 0x2, 0x0):
                payload += buffer[start:start + length]
            elif buffer[0] & 0x0F == 0x8:
                reason = buffer[start:start + length]
                raise OSError(f"WebSocket closed by the server: {reason[:2].hex()} "
                              f"{reason[2:].decode(errors='replace')}")
            buffer = buffer[start + length:]
        return payload[:count]


def _recv(s: socket.socket) -> bytes:
    chunk = s.recv(65536)
    if not chunk:
        raise OSError("connection closed")
    return chunk


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "run-notebook":
        return run_notebook(Path(args[1]))
    print("usage: python ide_support.py run-notebook NOTEBOOK.ipynb", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
