"""Request handlers that answer their own bugs: an unexpected exception while serving a request
becomes a 500 response in the service's error shape, never a connection closed without an answer
(which clients report as ``RemoteDisconnected`` and may retry as if the network had failed).

The traceback goes to the sandbox's log only; the client gets one line. Standard library only.
"""
from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler

logger = logging.getLogger(__name__)

AWS_JSON = "application/x-amz-json-1.1"


class GuardedHandler(BaseHTTPRequestHandler):
    """Mix-in base: ``internal_error`` builds the 500 body (AWS JSON: ``InternalFailure``)."""

    _answered = False

    def send_response_only(self, code: int, message: str | None = None) -> None:
        self._answered = True
        super().send_response_only(code, message)

    def mark_answered(self) -> None:
        """The connection left HTTP (e.g. after ``101 Switching Protocols``)."""
        self._answered = True

    def internal_error(self, error: Exception) -> tuple[str, bytes, dict[str, str]]:
        """(content type, body, extra headers) of the 500 answer to ``error``."""
        code = "InternalFailure"
        body = {"__type": code, "message": f"internal error in the sandbox: "
                                            f"{type(error).__name__}: {error} (see its log)"}
        return AWS_JSON, json.dumps(body).encode(), {"x-amzn-ErrorType": code}

    def handle_one_request(self) -> None:
        self._answered = False
        try:
            super().handle_one_request()
        except ConnectionError:  # the client went away mid-request
            self.close_connection = True
        except Exception as e:  # a bug in a handler: answer it, keep serving
            logger.exception("internal error serving %s %s", getattr(self, "command", None),
                             getattr(self, "path", None))
            self.close_connection = True  # the request's body may be unread
            if self._answered:
                return  # too late for a status line: closing is all that is left
            try:
                content_type, data, extra = self.internal_error(e)
                self.send_response(500)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:
                pass  # the client is gone
