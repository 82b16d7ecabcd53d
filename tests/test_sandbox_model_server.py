"""The sandbox's model server: handler resolution and defaults in process, and the real process
(``python -m sagemaker_ssh_sandbox.sagemaker.model_server``) serving, transforming, failing and
being terminated, on a model laid out as the SDK repacks it (``code/``, ``code/lib/``)."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT, free_port

from sagemaker_ssh_sandbox.sagemaker import model_server
from sagemaker_ssh_sandbox.sagemaker.model_server import (
    READY_LINE,
    Handlers,
    assemble,
    code_dirs,
    entry_module_name,
    split_records,
)


# -- in process ----------------------------------------------------------------------------------
def test_default_handlers_decode_by_content_type_and_encode_json() -> None:
    handlers = Handlers()
    assert handlers.invoke(None, b'{"a": [1, 2]}', "application/json", "application/json") \
        == (b'{"a": [1, 2]}', "application/json")
    assert handlers.invoke(None, b"x,y", "text/csv; charset=utf-8", "text/csv") \
        == (b"x,y", "text/csv")
    assert handlers.invoke(None, b"\x00\x01", "application/octet-stream", "a/b") \
        == (b"\x00\x01", "a/b")
    # A callable model is applied by the default predict_fn.
    assert handlers.invoke(lambda data: {"n": len(data)}, b"[1, 2, 3]", "application/json",
                           "application/json") == (b'{"n": 3}', "application/json")


def test_user_handlers_replace_the_defaults_and_transform_fn_wins() -> None:
    module = types.ModuleType("entry")
    module.model_fn = lambda model_dir: {"dir": model_dir}  # type: ignore[attr-defined]
    module.input_fn = lambda body, ct: body.decode().upper()  # type: ignore[attr-defined]
    module.predict_fn = lambda data, model: f"{data}@{model['dir']}"  # type: ignore
    module.output_fn = lambda pred, accept: (pred + "!", "text/plain")  # type: ignore
    module.not_a_handler = 3  # type: ignore[attr-defined]
    handlers = Handlers.of(module)
    model = handlers.load("/m")
    assert handlers.invoke(model, b"hi", "text/plain", "application/json") \
        == (b"HI@/m!", "text/plain")
    module.transform_fn = lambda model, body, ct, accept: [ct, accept]  # type: ignore
    assert Handlers.of(module).invoke(model, b"", "a/b", "c/d") == (b'["a/b", "c/d"]', "c/d")
    assert Handlers().load("/m") is None


def test_records_split_by_line_for_single_record_batches_and_assemble() -> None:
    body = b"1,2\n\n3,4\n"
    assert split_records(body, "Line", "SingleRecord") == [b"1,2", b"3,4"]
    assert split_records(body, "Line", "MultiRecord") == [body]
    assert split_records(body, "None", "SingleRecord") == [body]
    assert assemble([b"a", b"b\n"], "Line") == b"a\nb\n"
    assert assemble([b"a", b"b"], "None") == b"ab"


def test_code_dirs_follow_the_submit_directory_and_the_repacked_layout(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "code" / "lib").mkdir(parents=True)
    code, lib = str(model / "code"), str(model / "code" / "lib")
    assert code_dirs({"SAGEMAKER_SUBMIT_DIRECTORY": code}, str(model)) == [code, lib]
    other = tmp_path / "other"
    other.mkdir()
    assert code_dirs({"SAGEMAKER_SUBMIT_DIRECTORY": str(other)}, str(model)) \
        == [str(other), code, lib]
    assert code_dirs({}, str(tmp_path / "missing")) == []
    assert entry_module_name("inference.py") == "inference"
    assert entry_module_name("pkg.serve") == "pkg.serve"


# -- the process ---------------------------------------------------------------------------------
ENTRY = """\
import atexit, json, os, sys, threading

import sagemaker_ssh_helper  # the model's own copy, in code/lib

atexit.register(lambda: open(os.environ["EXIT_MARK"], "w").write("atexit ran"))
print("entry imported", flush=True)
if os.environ.get("HOLD") == "1":
    threading.Event().wait()  # like an SSH hold in the entry point
if os.environ.get("BREAK") == "1":
    raise RuntimeError("broken on purpose")


def model_fn(model_dir):
    with open(os.path.join(model_dir, "weights.json")) as f:
        return {"scale": json.load(f)["scale"], "package": sagemaker_ssh_helper.WHERE}


def input_fn(body, content_type):
    if body == b"boom":
        raise ValueError("cannot parse boom")
    return [float(x) for x in body.decode().split(",")]


def predict_fn(data, model):
    return {"out": [x * model["scale"] for x in data], "package": model["package"]}
"""


class Server:
    """One model server process with its stdout read line by line."""

    def __init__(self, tmp: Path, mode: list[str], **env: str) -> None:
        self.model = tmp / "model"
        lib = self.model / "code" / "lib" / "sagemaker_ssh_helper"
        lib.mkdir(parents=True)
        (lib / "__init__.py").write_text('WHERE = "shipped with the model"\n')
        (self.model / "code" / "entry.py").write_text(ENTRY)
        (self.model / "weights.json").write_text('{"scale": 2}')
        self.exit_mark = tmp / "exit-mark"
        self.port = free_port()
        full_env = dict(os.environ, PYTHONPATH=REPO_ROOT, SM_MODEL_DIR=str(self.model),
                        SAGEMAKER_PROGRAM="entry.py",
                        SAGEMAKER_SUBMIT_DIRECTORY=str(self.model / "code"),
                        SAGEMAKER_BIND_TO_PORT=str(self.port), EXIT_MARK=str(self.exit_mark),
                        **env)
        self.proc = subprocess.Popen([sys.executable, "-m", model_server.MODULE, *mode],
                                     env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, wanted: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"ended before {wanted!r}: {self.seen} {self.stderr()}"
            self.seen.append(line)

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr \
            else ""

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                return code
            self.seen.append(line)

    def request(self, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> urllib.request.Request:
        return urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                      headers=headers or {})


def test_serve_answers_ping_and_invocations_with_the_models_package(tmp_path: Path) -> None:
    server = Server(tmp_path, ["serve"])
    try:
        server.wait_for_line(READY_LINE)
        with urllib.request.urlopen(server.request("/ping"), timeout=10) as response:
            assert response.status == 200
        request = server.request("/invocations", b"1,2.5",
                                 {"Content-Type": "text/csv", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"] == "application/json"
            answer = json.loads(response.read())
        assert answer == {"out": [2.0, 5.0], "package": "shipped with the model"}
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(server.request("/invocations", b"boom"), timeout=10)
        assert failed.value.code == 500
        assert failed.value.read() == b"ValueError: cannot parse boom\n"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.request("/nope"), timeout=10)
        assert missing.value.code == 404
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert "sandbox model server: stopped" in server.seen
    assert server.exit_mark.read_text() == "atexit ran"


def test_transform_writes_one_out_file_per_input(tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "a.csv").write_text("1,2\n3\n")
    (inputs / "sub" / "b.csv").write_text("4\n")
    server = Server(tmp_path, ["transform", "--input-dir", str(inputs), "--output-dir",
                               str(outputs), "--content-type", "text/csv", "--split-type",
                               "Line", "--assemble-with", "Line", "--batch-strategy",
                               "SingleRecord"])
    assert server.finish() == 0, server.stderr()
    a = [json.loads(line)["out"] for line in (outputs / "a.csv.out").read_text().splitlines()]
    assert a == [[2.0, 4.0], [6.0]]
    assert json.loads((outputs / "sub" / "b.csv.out").read_text())["out"] == [8.0]
    assert "sandbox model server: sub/b.csv -> sub/b.csv.out (1 record(s))" in server.seen


def test_an_entry_point_that_raises_ends_the_process_with_a_readable_last_line(
        tmp_path: Path) -> None:
    server = Server(tmp_path, ["serve"], BREAK="1")
    assert server.finish() == 1
    last = server.stderr().strip().splitlines()[-1]
    assert last == ("sandbox model server: cannot load the model: RuntimeError: broken on "
                    "purpose")
    assert READY_LINE not in server.seen


def test_sigterm_while_the_entry_point_holds_still_runs_exit_hooks(tmp_path: Path) -> None:
    server = Server(tmp_path, ["serve"], HOLD="1")
    server.wait_for_line("entry imported")
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 128 + signal.SIGTERM
    assert server.exit_mark.read_text() == "atexit ran"
