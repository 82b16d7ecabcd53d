"""Network faults that the stand-ins' injected API errors cannot make, for tests and benchmarks.

``dropping_endpoint()``: an endpoint that accepts TCP connections and closes them at once, as a
wrong port behind a proxy or a broken VPC endpoint does.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class DroppingEndpoint:
    url: str
    accepted: int = 0  # connections taken (and closed) so far


@contextmanager
def dropping_endpoint() -> Iterator[DroppingEndpoint]:
    """An HTTP endpoint on loopback that closes every connection it accepts; gone afterwards."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    endpoint = DroppingEndpoint(f"http://127.0.0.1:{listener.getsockname()[1]}")

    def drop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the block has ended
                return
            endpoint.accepted += 1
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    try:
        yield endpoint
    finally:
        listener.close()
