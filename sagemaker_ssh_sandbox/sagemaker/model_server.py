"""The model server of a sandbox inference container: a framework serving container in script mode.

Run as the container's process by the sandbox (endpoints and batch transform)::

    python -m sagemaker_ssh_sandbox.sagemaker.model_server serve
    python -m sagemaker_ssh_sandbox.sagemaker.model_server transform --input-dir D --output-dir D \\
        [--content-type T] [--accept A] [--split-type None|Line] [--assemble-with None|Line] \\
        [--batch-strategy SingleRecord|MultiRecord]

Like the SageMaker serving toolkits, it puts the model's code on ``sys.path``
(``$SAGEMAKER_SUBMIT_DIRECTORY``, ``/opt/ml/model/code`` and its ``lib/`` where the SDK repacks
``dependencies``, or ``/opt/ml/code`` for an ``s3://`` source tarball), imports the entry module
named by ``SAGEMAKER_PROGRAM`` (where the user's ``setup_and_start_ssh()`` runs, and may hold),
calls ``model_fn(model_dir)`` and then

* ``serve``: prints :data:`READY_LINE` and answers ``GET /ping`` and ``POST /invocations`` on
  ``127.0.0.1:$SAGEMAKER_BIND_TO_PORT`` (default 8080) until SIGTERM;
* ``transform``: runs every file under ``--input-dir`` through the handlers and writes
  ``<file>.out`` under ``--output-dir`` (the sandbox moves both from and to S3), then exits 0.

Requests go through ``transform_fn(model, body, content_type, accept)`` when the entry module
defines it, else ``input_fn(body, content_type)`` -> ``predict_fn(data, model)`` ->
``output_fn(prediction, accept)``, with simple defaults for the ones it leaves out. Standard
library only: a serving container has none of this project installed, so the entry point imports
the copy of ``sagemaker_ssh_helper`` shipped in ``code/lib``, never the sandbox's.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

PACKAGE = "sagemaker_ssh_helper"
MODULE = "sagemaker_ssh_sandbox.sagemaker.model_server"
READY_LINE = "sandbox model server: model loaded, ready for requests"
MODEL_DIR = "/opt/ml/model"
S3_CODE_DIR = "/opt/ml/code"  # where an s3:// SAGEMAKER_SUBMIT_DIRECTORY is extracted
DEFAULT_PORT = 8080
DEFAULT_ACCEPT = "application/json"

logger = logging.getLogger("sandbox.model_server")


def _say(message: str, stream: Any = None) -> None:
    print(f"sandbox model server: {message}", file=stream or sys.stdout, flush=True)


# -- start-up ------------------------------------------------------------------------------------
def forget_own_package(package_parent: str | None = None) -> None:
    """Drop the sandbox's copy of the package (imported to start this module) from sys.modules,
    sys.path and PYTHONPATH, so that ``import sagemaker_ssh_helper`` finds the model's copy."""
    parent = os.path.realpath(package_parent or str(Path(__file__).resolve().parents[2]))
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != parent]
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.realpath(p) != parent]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)


def code_dirs(environ: Mapping[str, str], model_dir: str = MODEL_DIR) -> list[str]:
    """Directories the model's code is imported from, most specific first (existing ones)."""
    submit = environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    candidates = [S3_CODE_DIR if submit.startswith("s3://") else submit,
                  os.path.join(model_dir, "code"), os.path.join(model_dir, "code", "lib")]
    found: list[str] = []
    for path in candidates:
        if path and os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def add_code_dirs(dirs: list[str]) -> None:
    """Put ``dirs`` first on sys.path and on PYTHONPATH (for processes the model starts)."""
    sys.path[:0] = [d for d in dirs if d not in sys.path]
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in dirs]
    os.environ["PYTHONPATH"] = os.pathsep.join(dirs + rest)


def entry_module_name(program: str) -> str:
    name = program.strip()
    return name[:-3] if name.endswith(".py") else name


# -- handlers ------------------------------------------------------------------------------------
def default_input_fn(body: bytes, content_type: str) -> Any:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "application/json":
        return json.loads(body.decode("utf-8") or "null")
    if kind.startswith("text/"):
        return body.decode("utf-8")
    return body


def default_predict_fn(data: Any, model: Any) -> Any:
    return model(data) if callable(model) else data


def default_output_fn(prediction: Any, accept: str) -> Any:
    if isinstance(prediction, (bytes, str)):
        return prediction
    return json.dumps(prediction)


@dataclass
class Handlers:
    model_fn: Callable[..., Any] | None = None
    input_fn: Callable[..., Any] = default_input_fn
    predict_fn: Callable[..., Any] = default_predict_fn
    output_fn: Callable[..., Any] = default_output_fn
    transform_fn: Callable[..., Any] | None = None

    @classmethod
    def of(cls, module: Any) -> Handlers:
        found = {name: getattr(module, name) for name in ("model_fn", "input_fn", "predict_fn",
                                                          "output_fn", "transform_fn")
                 if callable(getattr(module, name, None))}
        return cls(**found)

    def load(self, model_dir: str) -> Any:
        return self.model_fn(model_dir) if self.model_fn else None

    def invoke(self, model: Any, body: bytes, content_type: str, accept: str
               ) -> tuple[bytes, str]:
        """One request: (response body, response content type)."""
        if self.transform_fn is not None:
            result = self.transform_fn(model, body, content_type, accept)
        else:
            result = self.output_fn(self.predict_fn(self.input_fn(body, content_type), model),
                                    accept)
        response_type = accept
        if isinstance(result, tuple) and len(result) == 2:
            result, response_type = result
        if isinstance(result, str):
            return result.encode("utf-8"), response_type
        if isinstance(result, (bytes, bytearray)):
            return bytes(result), response_type
        return json.dumps(result).encode("utf-8"), response_type


def load_entry_point(environ: Mapping[str, str]) -> Handlers:
    """Import ``SAGEMAKER_PROGRAM`` (this is where the user's SSH setup runs) for its handlers."""
    program = environ.get("SAGEMAKER_PROGRAM", "")
    if not program:
        _say("no SAGEMAKER_PROGRAM: serving with the default handlers")
        return Handlers()
    return Handlers.of(importlib.import_module(entry_module_name(program)))


# -- serve ---------------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handlers: Handlers, model: Any) -> None:
        super().__init__(address, _RequestHandler)
        self.handlers = handlers
        self.model = model


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug(format, *args)

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.split("?")[0] == "/ping":
            self._reply(200, b"\n")
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.split("?")[0] != "/invocations":
            self._reply(404, b"not found\n")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        content_type = self.headers.get("Content-Type") or "application/json"
        accept = self.headers.get("Accept") or DEFAULT_ACCEPT
        if accept == "*/*":
            accept = DEFAULT_ACCEPT
        try:
            out, out_type = self.server.handlers.invoke(self.server.model, body, content_type,
                                                        accept)
        except Exception as e:
            traceback.print_exc()
            self._reply(500, f"{type(e).__name__}: {e}\n".encode())
            return
        self._reply(200, out, out_type)


def serve(handlers: Handlers, model: Any, port: int) -> int:
    server = _Server(("127.0.0.1", port), handlers, model)

    def stop(_signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _say(f"listening on 127.0.0.1:{port}")
    print(READY_LINE, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    _say("stopped")
    return 0


# -- transform -----------------------------------------------------------------------------------
def split_records(body: bytes, split_type: str, strategy: str) -> list[bytes]:
    if split_type != "Line" or strategy == "MultiRecord":
        return [body]
    return [line for line in body.splitlines() if line.strip()]


def assemble(outputs: list[bytes], assemble_with: str) -> bytes:
    if assemble_with != "Line":
        return b"".join(outputs)
    return b"".join(o if o.endswith(b"\n") else o + b"\n" for o in outputs)


def transform(handlers: Handlers, model: Any, args: argparse.Namespace) -> int:
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    files = sorted(p for p in input_dir.rglob("*") if p.is_file()) if input_dir.is_dir() else []
    _say(f"transforming {len(files)} file(s)")
    for path in files:
        rel = path.relative_to(input_dir).as_posix()
        records = split_records(path.read_bytes(), args.split_type, args.batch_strategy)
        outputs = [handlers.invoke(model, record, args.content_type, args.accept)[0]
                   for record in records]
        target = output_dir / f"{rel}.out"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(assemble(outputs, args.assemble_with))
        _say(f"{rel} -> {rel}.out ({len(records)} record(s))")
    return 0


# -- main ----------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("serve", help="real-time endpoint: /ping and /invocations")
    batch = sub.add_parser("transform", help="batch transform of the files in --input-dir")
    batch.add_argument("--input-dir", required=True)
    batch.add_argument("--output-dir", required=True)
    batch.add_argument("--content-type", default="application/json")
    batch.add_argument("--accept", default=DEFAULT_ACCEPT)
    batch.add_argument("--split-type", default="None")
    batch.add_argument("--assemble-with", default="None")
    batch.add_argument("--batch-strategy", default="MultiRecord")
    return parser


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    forget_own_package()
    # Until the model is loaded, SIGTERM ends the process through SystemExit, so atexit hooks
    # (the SSH helper deregisters its managed instance) still run.
    signal.signal(signal.SIGTERM, _raise_exit)
    dirs = code_dirs(os.environ, os.environ.get("SM_MODEL_DIR", MODEL_DIR))
    add_code_dirs(dirs)
    if dirs:
        os.chdir(dirs[0])
    try:
        handlers = load_entry_point(os.environ)
        model = handlers.load(os.environ.get("SM_MODEL_DIR", MODEL_DIR))
    except Exception as e:
        traceback.print_exc()
        _say(f"cannot load the model: {type(e).__name__}: {e}", sys.stderr)
        return 1
    if args.mode == "serve":
        return serve(handlers, model, int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or DEFAULT_PORT))
    try:
        return transform(handlers, model, args)
    except Exception as e:
        traceback.print_exc()
        _say(f"transform failed: {type(e).__name__}: {e}", sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
