"""Wire protocol shared by the SSM stand-in service, the agent stand-in and the plugin stand-in.

Standard library only: the agent imports this inside job containers.

Internal agent API (all ``POST <endpoint>/_agent/<name>``, JSON in and out; errors are HTTP 4xx
with ``{"__type": "<Code>", "message": "..."}`` exactly like the public AWS JSON 1.1 API):

* ``register``  {ActivationId, ActivationCode, Region, Hostname, IPAddress, PlatformName, ...}
  -> {InstanceId, Region, HeartbeatIntervalSeconds}
* ``heartbeat`` {InstanceId, Hostname, IPAddress, ...} -> {HeartbeatIntervalSeconds}
* ``poll``      {InstanceId, WaitSeconds} -> {Messages: [...]} (long poll; at most WaitSeconds)
  where a message is ``{"Type": "RunCommand", "CommandId", "DocumentName", "Parameters"}`` or
  ``{"Type": "OpenStream", "SessionId", "StreamId", "StreamToken", "Host", "PortNumber"}``
  (or, for a shell session, ``"Shell": true`` instead of Host and PortNumber)
* ``command-result`` {InstanceId, CommandId, Status, StatusDetails, ResponseCode,
  StandardOutputContent, StandardErrorContent, ExecutionStartDateTime, ExecutionEndDateTime}
* ``stream-failed`` {InstanceId, StreamId, Message}

``heartbeat``, ``poll`` and ``command-result`` answer ``InvalidInstanceId`` once the instance is
deregistered; the agent then exits.

Data channel (raw bytes after an HTTP/1.1 upgrade, so it survives any plain TCP relay):

* client (plugin): ``GET /v1/data-channel/<SessionId>?role=publish_subscribe`` with headers
  ``Upgrade: ssm-sandbox-stream``, ``X-SSM-Token: <TokenValue>`` and ``X-SSM-Channel: data``
  (one TCP stream to the target port) or ``control`` (held open for the life of a
  port-forwarding session; closed by the service when the session ends).
* agent: on an ``OpenStream`` message it connects to ``Host:PortNumber`` first, then sends
  ``GET /_agent/stream/<StreamId>`` with ``X-SSM-Token: <StreamToken>`` to its own endpoint.
* the service answers ``101 Switching Protocols`` to the agent at once and to the client once
  the agent is attached, then copies bytes both ways; EOF is propagated as a half-close.
  Failures are an HTTP status (403 bad token, 404 unknown, 410 ended, 502 target port
  unreachable or target offline, 504 agent did not attach) with a JSON error body.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

UPGRADE_PROTOCOL = "ssm-sandbox-stream"
TOKEN_HEADER = "X-SSM-Token"
CHANNEL_HEADER = "X-SSM-Channel"
DATA_CHANNEL_PATH = "/v1/data-channel/"
AGENT_STREAM_PATH = "/_agent/stream/"
AGENT_API_PATH = "/_agent/"
BUFFER_SIZE = 65536
_MAX_HEAD = 65536


class ChannelError(Exception):
    """The service refused or failed to open a data channel."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message


class StreamEnd:
    """One side of a relayed byte stream: a socket, possibly with bytes already read ahead.

    ``reader`` is a buffered file over the same socket (the HTTP server's ``rfile``): reading
    through ``read1`` first drains whatever it buffered past the request head.
    """

    def __init__(self, sock: socket.socket, reader: object | None = None,
                 leftover: bytes = b"") -> None:
        self.sock = sock
        self._reader = reader
        self._leftover = leftover
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # interactive traffic (ssh keystrokes) must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def recv(self, size: int = BUFFER_SIZE) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover[:size], self._leftover[size:]
            return data
        if self._reader is not None:
            return self._reader.read1(size)  # type: ignore[attr-defined]
        return self.sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        """Stop both directions now (wakes any thread blocked reading this socket)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RateLimit:
    """A token bucket: ``take(n)`` sleeps so that the bytes passed average at most ``rate``
    bytes/s, after a first ``burst`` bytes that pass at once (what a session's set-up and
    interactive use need never waits)."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.sleep = sleep
        self.last = clock()

    def take(self, count: int) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= count
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


def pump(read: Callable[[int], bytes], write: Callable[[bytes], None],
         limit: RateLimit | None = None) -> bool:
    """Copy until EOF (at ``limit``'s pace, if any). True on a clean EOF, False when either
    side failed."""
    while True:
        try:
            data = read(BUFFER_SIZE)
        except (OSError, ValueError):
            return False
        if not data:
            return True
        if limit is not None:
            limit.take(len(data))
        try:
            write(data)
        except (OSError, ValueError):
            return False


def relay(a: StreamEnd, b: StreamEnd,
          limits: Callable[[], RateLimit | None] | None = None) -> None:
    """Copy a<->b concurrently until both directions end; EOF becomes a half-close.
    ``limits`` makes each direction's rate limit (none by default).

    A failure in one direction aborts both, so no thread waits forever on a dead peer.
    """

    def one_way(src: StreamEnd, dst: StreamEnd) -> None:
        if pump(src.recv, dst.sendall, limits() if limits is not None else None):
            dst.shutdown_write()
        else:
            src.abort()
            dst.abort()

    thread = threading.Thread(target=one_way, args=(b, a), daemon=True, name="relay")
    thread.start()
    one_way(a, b)
    thread.join()


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path?query) of an http(s)/ws(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(f"unsupported stream URL: {url!r}")
    default = 443 if parts.scheme in ("https", "wss") else 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or default, path


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ChannelError(0, "ConnectionClosed", "the service closed the connection")
        buf += chunk
        if len(buf) > _MAX_HEAD:
            raise ChannelError(0, "BadResponse", "response head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _error_from(status: int, headers: dict[str, str], body: bytes) -> ChannelError:
    try:
        doc = json.loads(body.decode("utf-8") or "{}")
        return ChannelError(status, str(doc.get("__type", "")), str(doc.get("message", "")))
    except ValueError:
        return ChannelError(status, "", body.decode("utf-8", "replace").strip()
                            or f"HTTP {status}")


def open_channel(url: str, headers: dict[str, str], timeout: float = 30.0) -> StreamEnd:
    """Open a data channel (HTTP upgrade) and return the raw stream after ``101``."""
    host, port, path = split_url(url)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}",
                 f"Upgrade: {UPGRADE_PROTOCOL}", "Connection: Upgrade"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head, rest = _read_head(sock)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = status_line.split(" ", 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        parsed = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
        if status != 101:
            length = int(parsed.get("content-length", "0") or 0)
            while len(rest) < length:
                chunk = sock.recv(length - len(rest))
                if not chunk:
                    break
                rest += chunk
            raise _error_from(status, parsed, rest[:length])
        sock.settimeout(None)
        return StreamEnd(sock, leftover=rest)
    except BaseException:
        sock.close()
        raise
