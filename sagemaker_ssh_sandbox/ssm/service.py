"""SSM stand-in service: AWS JSON 1.1 over HTTP for boto3, plus the agent API and data channel.

    server = start_ssm_server(port=0)          # serves in a daemon thread
    os.environ["AWS_ENDPOINT_URL_SSM"] = server.url

Endpoints on one port:
  POST /                         AWS JSON 1.1, ``X-Amz-Target: AmazonSSM.<Operation>``
  POST /_agent/<name>            agent stand-in API (see ``channel``)
  GET  /v1/data-channel/<sid>    plugin side of a session stream (HTTP upgrade)
  GET  /_agent/stream/<id>       agent side of a session stream (HTTP upgrade)
  POST /_sandbox/faults          {"operation", "error_code", "count"[, "message"]}; GET lists,
                                 DELETE clears
  GET  /_sandbox/stats           call counts per operation; POST /_sandbox/stats/reset
  POST /_sandbox/rates           {"operation", "per_second"}: throttle the operation above that
                                 rate (0 removes the limit; none by default)
  GET  /_sandbox/health
The service never looks at peer addresses, so agents may reach it through port-preserving
relays (e.g. a unix-socket bridge out of a network namespace).

Session throughput: Session Manager tops out around 0.6-0.8 MB/s per session whatever the
instance (amazon-ssm-agent #664, session-manager-plugin #145), and the stand-in relays each
session stream at the same ceiling: ``SM_SSH_SANDBOX_SESSION_RATE`` bytes/s per direction
(default 700000; ``0`` or ``off`` for no ceiling), after a first
``SM_SSH_SANDBOX_SESSION_BURST`` bytes (default 4 MiB) that pass at once, so logins, commands
and interactive use never wait; bulk data does. Both are read when the service starts.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sagemaker_ssh_sandbox.httpguard import GuardedHandler
from sagemaker_ssh_sandbox.iam.sigv4 import credential_scope
from sagemaker_ssh_sandbox.ssm.backend import SSMBackend
from sagemaker_ssh_sandbox.ssm.channel import (
    AGENT_API_PATH,
    AGENT_STREAM_PATH,
    CHANNEL_HEADER,
    DATA_CHANNEL_PATH,
    TOKEN_HEADER,
    UPGRADE_PROTOCOL,
    RateLimit,
    StreamEnd,
    relay,
)
from sagemaker_ssh_sandbox.ssm.sessions import Session
from sagemaker_ssh_sandbox.ssm.state import SSMError

logger = logging.getLogger(__name__)

_JSON_TYPE = "application/x-amz-json-1.1"
_MAX_BODY = 16 * 1024 * 1024


RATE_ENV = "SM_SSH_SANDBOX_SESSION_RATE"
BURST_ENV = "SM_SSH_SANDBOX_SESSION_BURST"
DEFAULT_SESSION_RATE = 700_000.0  # bytes/s per direction, as the real service
DEFAULT_SESSION_BURST = 4 * 1024 * 1024


def session_ceiling(environ: dict[str, str] | None = None) -> tuple[float, float]:
    """(rate in bytes/s, or 0 for none; burst in bytes) from the environment."""
    import os

    environ = dict(os.environ) if environ is None else environ

    def number(name: str, default: float) -> float:
        text = environ.get(name, "").strip().lower()
        if not text:
            return default
        if text in ("off", "none"):
            return 0.0
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a number of bytes") from None
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {text!r}")
        return value

    return number(RATE_ENV, DEFAULT_SESSION_RATE), number(BURST_ENV, DEFAULT_SESSION_BURST)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    backend: SSMBackend
    session_rate: float = 0.0
    session_burst: float = DEFAULT_SESSION_BURST

    def stream_limit(self) -> RateLimit | None:
        """One direction's ceiling for a new session stream (None: no ceiling)."""
        if self.session_rate <= 0:
            return None
        return RateLimit(self.session_rate, self.session_burst)
    others: dict[str, SSMBackend]
    others_lock: threading.Lock

    def backend_for(self, region: str) -> SSMBackend:
        """The home backend for its region (or no region); an empty one, made on first use and
        never saved, for any other region. Agents register in the home region only."""
        if not region or region == self.backend.region:
            return self.backend
        with self.others_lock:
            if region not in self.others:
                other = SSMBackend(account_id=self.backend.account_id, region=region,
                                   heartbeat_timeout=self.backend.heartbeat_timeout)
                other.authorizer = self.backend.authorizer
                other.stream_endpoint = self.backend.stream_endpoint
                self.others[region] = other
            return self.others[region]


class _Handler(GuardedHandler):  # an unexpected exception: 500 InternalServerError
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        logger.debug("%s " + format, self.address_string(), *args)

    # ---- plumbing ----------------------------------------------------------------------
    def _send(self, status: int, payload: dict[str, Any], content_type: str = _JSON_TYPE,
              close: bool = False) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (e.g. an agent stopped in the middle of a poll)
            self.close_connection = True

    def internal_error(self, error: Exception) -> tuple[str, bytes, dict[str, str]]:
        body = SSMError("InternalServerError", f"internal error in the sandbox: "
                        f"{type(error).__name__}: {error} (see its log)", 500).to_json()
        return _JSON_TYPE, json.dumps(body).encode(), {}

    def _send_error(self, error: SSMError, close: bool = False) -> None:
        self._send(error.status, error.to_json(), close=close)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise SSMError("SerializationException", "Request body too large.", 413)
        raw = self.rfile.read(length) if length else b""
        try:
            doc = json.loads(raw.decode("utf-8") or "{}")
        except ValueError as e:
            raise SSMError("SerializationException", "Request body is not valid JSON.") from e
        if not isinstance(doc, dict):
            raise SSMError("SerializationException", "Request body must be a JSON object.")
        return doc

    def _caller(self) -> str:
        return credential_scope(self.headers, self.path)[0]

    def _backend(self) -> SSMBackend:
        """The backend of the region the request was signed for: each region has its own
        activations, instances, commands and sessions (unsigned requests: the home region)."""
        return self.server.backend_for(credential_scope(self.headers, self.path)[1])

    # ---- verbs -------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
        backend, path = self.server.backend, urlsplit(self.path).path
        try:
            body = self._body()
            if path == "/":
                target = self.headers.get("X-Amz-Target", "")
                prefix, _, operation = target.partition(".")
                if prefix != "AmazonSSM" or not operation:
                    raise SSMError("UnknownOperationException", f"Unknown target {target!r}")
                result = self._backend().handle(operation, body, self._caller())
            elif path.startswith(AGENT_API_PATH):
                result = backend.handle_agent(path[len(AGENT_API_PATH):], body)
            elif path == "/_sandbox/faults":
                backend.inject_fault(str(body["operation"]), str(body["error_code"]),
                                     int(body.get("count", 1)), body.get("message"))
                result = {"Faults": backend.stats()["Faults"]}
            elif path == "/_sandbox/rates":
                backend.set_rate_limit(str(body["operation"]), float(body["per_second"]))
                result = {"RateLimits": dict(backend.rate_limits)}
            elif path == "/_sandbox/stats/reset":
                backend.reset_call_counts()
                result = {}
            else:
                raise SSMError("NotFound", f"No such endpoint: POST {path}", 404)
        except SSMError as e:
            self._send_error(e)
            return
        except (KeyError, ValueError, TypeError) as e:
            self._send_error(SSMError("ValidationException", f"Bad request: {e}"))
            return
        self._send(200, result)

    def do_GET(self) -> None:  # noqa: N802
        backend, path = self.server.backend, urlsplit(self.path).path
        if path.startswith(DATA_CHANNEL_PATH):
            self._client_channel(path[len(DATA_CHANNEL_PATH):])
        elif path.startswith(AGENT_STREAM_PATH):
            self._agent_channel(path[len(AGENT_STREAM_PATH):])
        elif path == "/_sandbox/stats":
            self._send(200, backend.stats(), "application/json")
        elif path == "/_sandbox/faults":
            self._send(200, {"Faults": backend.stats()["Faults"]}, "application/json")
        elif path == "/_sandbox/health":
            self._send(200, {"Status": "ok", "Region": backend.region}, "application/json")
        else:
            self._send_error(SSMError("NotFound", f"No such endpoint: GET {path}", 404))

    def do_DELETE(self) -> None:  # noqa: N802
        if urlsplit(self.path).path == "/_sandbox/faults":
            self.server.backend.clear_faults()
            self._send(200, {"Faults": []}, "application/json")
        else:
            self._send_error(SSMError("NotFound", f"No such endpoint: DELETE {self.path}", 404))

    # ---- data channel ------------------------------------------------------------------
    def _switch(self) -> StreamEnd:
        self.close_connection = True
        self.mark_answered()
        self.wfile.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {UPGRADE_PROTOCOL}\r\n"
                         "Connection: Upgrade\r\n\r\n".encode("latin-1"))
        self.wfile.flush()
        return StreamEnd(self.connection, reader=self.rfile)

    def _client_channel(self, session_id: str) -> None:
        backend = self.server.backend
        token = self.headers.get(TOKEN_HEADER, "")
        end = StreamEnd(self.connection, reader=self.rfile)
        try:
            if self.headers.get(CHANNEL_HEADER, "data") == "control":
                self._control_channel(backend.open_control(session_id, token, end), end)
                return
            stream = backend.open_stream(session_id, token, end)
        except SSMError as e:
            self._send_error(e, close=True)
            return
        try:
            agent_end = backend.wait_agent(stream)
        except SSMError as e:
            self._send_error(e, close=True)
            return
        try:
            relay(self._switch(), agent_end, self.server.stream_limit)
        except OSError:  # the plugin went away before the stream started
            agent_end.abort()
        finally:
            backend.stream_finished(stream)

    def _control_channel(self, session: Session, end: StreamEnd) -> None:
        """Held open for the life of a port-forwarding session; either side may end it."""
        try:
            self._switch()
            while end.recv(4096):
                pass
        except OSError:
            pass
        finally:
            self.server.backend.control_closed(session, end)

    def _agent_channel(self, stream_id: str) -> None:
        backend, token = self.server.backend, self.headers.get(TOKEN_HEADER, "")
        try:
            backend.agent_stream(stream_id, token)
        except SSMError as e:
            self._send_error(e, close=True)
            return
        try:
            end = self._switch()  # before attaching: the client's relay may write at once
            stream = backend.attach_agent(stream_id, token, end)
        except (SSMError, OSError):
            return  # the client gave up meanwhile; closing tells the agent
        stream.done.wait()  # the client's handler thread relays; keep this socket open


class SSMServer:
    """A running stand-in: ``url``, ``port``, ``backend``, ``shutdown()``."""

    def __init__(self, httpd: _HTTPServer, host: str) -> None:
        self._httpd = httpd
        self.host = host
        self.port: int = httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.backend = httpd.backend
        self.backend.stream_endpoint = f"ws://{host}:{self.port}"
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.1,),
                                        name="ssm-stand-in", daemon=True)

    def start(self) -> SSMServer:
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self.backend.close()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> SSMServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def start_ssm_server(host: str = "127.0.0.1", port: int = 0, state_dir: Path | None = None,
                     account_id: str = "123456789012", region: str = "us-east-1",
                     heartbeat_timeout: float = 10.0,
                     invocation_visibility_delay: float = 0.2) -> SSMServer:
    """Start the stand-in on ``host:port`` (0 = any free port) in a daemon thread."""
    backend = SSMBackend(account_id=account_id, region=region,
                         heartbeat_timeout=heartbeat_timeout,
                         state_dir=Path(state_dir) if state_dir else None)
    backend.invocation_visibility_delay = invocation_visibility_delay
    httpd = _HTTPServer((host, port), _Handler)
    httpd.backend = backend
    httpd.others, httpd.others_lock = {}, threading.Lock()
    httpd.session_rate, httpd.session_burst = session_ceiling()
    public_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return SSMServer(httpd, public_host).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sagemaker_ssh_sandbox.ssm.service",
                                     description="Run the offline SSM stand-in service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account-id", default="123456789012")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ssm-stand-in %(levelname)s %(message)s")
    try:
        server = start_ssm_server(args.host, args.port, args.state_dir, args.account_id,
                                  args.region, args.heartbeat_timeout)
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(server.url, flush=True)
    logger.info("listening on %s (region %s)", server.url, args.region)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
