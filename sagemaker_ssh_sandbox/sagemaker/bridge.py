"""Transparent byte pipes between a TCP port and a unix socket.

The sandbox's containers have their own network namespace with only ``lo``. To let them reach the
emulated AWS endpoints at the *same* ``http://127.0.0.1:<port>`` URLs as the host, each port is
bridged twice:

* host side: a unix socket in the state directory, forwarding every connection to
  ``127.0.0.1:<port>`` in the host's network namespace (:class:`UnixToTcp`);
* container side: ``127.0.0.1:<port>`` inside the container, forwarding every connection to that
  unix socket (:class:`TcpToUnix`).

The pipe is protocol-agnostic (HTTP requests and the SSM session data channel alike), full duplex,
propagates half-closes, and serves any number of concurrent connections.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024
F = TypeVar("F", bound="Forwarder")


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """Copy src -> dst until EOF, then half-close dst for writing."""
    try:
        while True:
            data = src.recv(_CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        # A reset on either side ends both directions.
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def pipe(a: socket.socket, b: socket.socket) -> None:
    """Relay bytes both ways between two connected sockets; returns when both sides are done."""
    _tune(a)
    _tune(b)
    other = threading.Thread(target=_copy, args=(b, a), daemon=True)
    other.start()
    try:
        _copy(a, b)
        other.join()
    finally:
        a.close()
        b.close()


class Forwarder:
    """Accept connections on ``listener`` and pipe each to a fresh socket from ``connect``."""

    def __init__(self, listener: socket.socket, connect: Callable[[], socket.socket],
                 name: str) -> None:
        self._listener = listener
        self._connect = connect
        self.name = name
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"bridge {name}", daemon=True)

    def start(self: F) -> F:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                logger.exception("bridge %s: accept failed", self.name)
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = self._connect()
        except OSError as e:
            logger.warning("bridge %s: cannot connect upstream: %s", self.name, e)
            client.close()
            return
        pipe(client, upstream)

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()


def tcp_connector(host: str, port: int) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=10.0)
        sock.settimeout(None)
        return sock

    return connect


def unix_connector(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    return connect


class UnixToTcp(Forwarder):
    """Host side: a unix socket at ``path`` forwarding to ``host:port``."""

    def __init__(self, path: Path, host: str, port: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(128)
        self.path = path
        super().__init__(listener, tcp_connector(host, port), f"{path.name}->{host}:{port}")

    def close(self) -> None:
        super().close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class TcpToUnix(Forwarder):
    """Container side: ``host:port`` forwarding to the unix socket at ``path``.

    ``path`` may go through ``/proc/self/fd/<dirfd>/`` so that a directory hidden by later mounts
    stays reachable.
    """

    def __init__(self, host: str, port: int, path: str,
                 listener: socket.socket | None = None) -> None:
        if listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(128)
        super().__init__(listener, unix_connector(path), f"{host}:{port}->{path}")
