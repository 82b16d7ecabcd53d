"""``session-manager-plugin`` stand-in for the offline sandbox (same invocation as the real one).

aws-cli (and our own client) run it as::

    session-manager-plugin <response JSON | AWS_SSM_START_SESSION_RESPONSE> <region> StartSession
                           <profile> <StartSession parameters JSON> <endpoint URL>

With ``AWS-StartPortForwardingSession`` it listens on ``localPortNumber`` and relays every
accepted connection; without a document (a shell session, as ``aws ssm start-session --target
mi-...`` starts) it connects the terminal to the remote shell; otherwise
(``AWS-StartSSHSession``) it relays stdin/stdout, so it can be an ssh ProxyCommand: stdout
carries only session bytes, messages go to stderr.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import Any

from sagemaker_ssh_sandbox.ssm.channel import (
    BUFFER_SIZE,
    CHANNEL_HEADER,
    TOKEN_HEADER,
    ChannelError,
    StreamEnd,
    open_channel,
    relay,
)

VERSION = "1.2.707.0"
ENV_RESPONSE = "AWS_SSM_START_SESSION_RESPONSE"
BANNER = ("\nThe Session Manager plugin was installed successfully. "
          "Use the AWS CLI to start a session.\n")
PORT_DOCUMENTS = ("AWS-StartPortForwardingSession", "AWS-StartPortForwardingSessionToRemoteHost")
SHELL_DOCUMENT = "SSM-SessionManagerRunShell"


class PluginError(Exception):
    pass


def _err(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def parse_args(args: list[str]) -> tuple:
    """(response dict, StartSession parameters dict) from the plugin's argv."""
    raw = args[0]
    if raw == ENV_RESPONSE:
        raw = os.environ.get(ENV_RESPONSE, "")
        if not raw:
            raise PluginError(f"{ENV_RESPONSE} is empty: nothing to start a session with.")
    try:
        response = json.loads(raw)
        params = json.loads(args[4]) if len(args) > 4 and args[4] else {}
    except ValueError as e:
        raise PluginError(f"Cannot parse the StartSession response or parameters: {e}") from e
    if not isinstance(response, dict) or not all(
            isinstance(response.get(k), str) for k in ("SessionId", "TokenValue", "StreamUrl")):
        raise PluginError("The StartSession response needs SessionId, TokenValue and StreamUrl.")
    return response, params if isinstance(params, dict) else {}


def _connect(response: dict[str, str], channel: str) -> StreamEnd:
    try:
        return open_channel(response["StreamUrl"], {TOKEN_HEADER: response["TokenValue"],
                                                    CHANNEL_HEADER: channel})
    except ChannelError as e:
        if e.status == 502:
            raise PluginError("Connection to destination port failed, check SSM Agent logs. "
                              f"({e.message})") from e
        raise PluginError(f"Cannot perform start session: {e}") from e
    except (OSError, ValueError) as e:
        raise PluginError(f"Cannot perform start session: {e}") from e


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_stdio(response: dict[str, str]) -> int:
    """stdin -> stream, stream -> stdout until the stream ends (exit 0)."""
    stream = _connect(response, "data")

    def upstream() -> None:
        while True:
            try:
                data = os.read(0, BUFFER_SIZE)
            except OSError:
                data = b""
            if not data:
                stream.shutdown_write()
                return
            try:
                stream.sendall(data)
            except OSError:
                return

    threading.Thread(target=upstream, daemon=True, name="stdin").start()
    while True:
        try:
            data = stream.recv(BUFFER_SIZE)
        except OSError:
            return 0
        if not data:
            return 0
        try:
            _write_all(1, data)
        except OSError:  # our reader (ssh) is gone
            return 0


def run_shell(response: dict[str, str]) -> int:
    """A shell session: the terminal (raw, when stdin is one) <-> the remote shell."""
    session_id = response["SessionId"]
    print(f"\nStarting session with SessionId: {session_id}\n", flush=True)
    saved = None
    if os.isatty(0):
        import termios
        import tty

        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        code = run_stdio(response)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    print(f"\n\nExiting session with sessionId: {session_id}.\n", flush=True)
    return code


def run_port_forwarding(response: dict[str, str], params: dict[str, Any]) -> int:
    """Listen on localPortNumber and relay each connection as its own stream."""
    session_id = response["SessionId"]
    local = (params.get("Parameters") or {}).get("localPortNumber") or ["0"]
    control = _connect(response, "control")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", int(local[0])))
    except (OSError, ValueError) as e:
        control.close()
        raise PluginError(f"Cannot listen on local port {local[0]}: {e}") from e
    listener.listen(64)
    port = listener.getsockname()[1]
    print(f"\nStarting session with SessionId: {session_id}", flush=True)
    print(f"Port {port} opened for sessionId {session_id}.\nWaiting for connections...\n",
          flush=True)

    def serve(conn: socket.socket) -> None:
        client = StreamEnd(conn)
        try:
            remote = _connect(response, "data")
        except PluginError as e:
            _err(str(e))
            client.close()
            return
        try:
            relay(client, remote)
        finally:
            client.close()
            remote.close()

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            print(f"Connection accepted for session [{session_id}]\n", flush=True)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True, name="accept").start()
    try:
        while control.recv(4096):  # the service closes it when the session ends
            pass
    except OSError:
        pass
    listener.close()
    print(f"\n\nExiting session with sessionId: {session_id}.\n", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(BANNER, flush=True)
        return 0
    if args[0] in ("--version", "-version", "version"):
        print(VERSION, flush=True)
        return 0
    try:
        response, params = parse_args(args)
        if params.get("DocumentName") in PORT_DOCUMENTS:
            return run_port_forwarding(response, params)
        if params.get("DocumentName") in (None, "", SHELL_DOCUMENT):
            return run_shell(response)
        return run_stdio(response)
    except PluginError as e:
        _err(str(e))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a daemon thread may still block on stdin
