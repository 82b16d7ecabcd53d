"""Session Manager operations of the SSM stand-in and the pairing of data-channel streams.

A session is created by StartSession; every ``data`` connection of the plugin to the session's
StreamUrl becomes one stream that the agent relays to ``Host:PortNumber`` on the target. See
``channel`` for the wire protocol.
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from sagemaker_ssh_sandbox.ssm.channel import DATA_CHANNEL_PATH, StreamEnd
from sagemaker_ssh_sandbox.ssm.state import (
    PING_ONLINE,
    BackendBase,
    SSMError,
    fingerprint,
    hex17,
    max_results,
    paginate,
    parse_iso,
    validation,
)

SSH_DOCUMENT = "AWS-StartSSHSession"
PORT_DOCUMENT = "AWS-StartPortForwardingSession"
REMOTE_PORT_DOCUMENT = "AWS-StartPortForwardingSessionToRemoteHost"
SHELL_DOCUMENT = "SSM-SessionManagerRunShell"  # what StartSession without a document opens
_DOCUMENTS = {  # document -> (default portNumber, allowed parameters)
    SHELL_DOCUMENT: ("", ()),
    SSH_DOCUMENT: ("22", ("portNumber",)),
    PORT_DOCUMENT: ("80", ("portNumber", "localPortNumber")),
    REMOTE_PORT_DOCUMENT: ("80", ("host", "portNumber", "localPortNumber")),
}
ENDED = ("Terminated", "Failed")
logger = logging.getLogger(__name__)


@dataclass
class Stream:
    stream_id: str
    session_id: str
    instance_id: str
    token: str
    client: StreamEnd
    agent: StreamEnd | None = None
    error: SSMError | None = None
    attached: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def abort(self) -> None:
        self.client.abort()
        if self.agent is not None:
            self.agent.abort()
        self.attached.set()
        self.done.set()


@dataclass
class Session:
    session_id: str
    target: str
    document_name: str
    parameters: dict[str, list[str]]
    owner: str
    reason: str
    token: str
    start: float
    seq: int
    status: str = "Connecting"
    end: float | None = None
    streams: dict[str, Stream] = field(default_factory=dict)
    controls: list[StreamEnd] = field(default_factory=list)
    multi_stream: bool = False
    opened: int = 0


def _session_parameters(document: str, value: Any) -> dict[str, list[str]]:
    default_port, allowed = _DOCUMENTS[document]
    value = value or {}
    if not isinstance(value, dict):
        raise validation(value, "parameters", "be a map of parameter lists")
    out: dict[str, list[str]] = {}
    for name, values in value.items():
        if name not in allowed:
            raise SSMError("InvalidParameters",
                           f"Parameter \"{name}\" is not defined in document {document}.")
        if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
            raise SSMError("InvalidParameters", f"Parameter \"{name}\" must be one string.")
        out[name] = list(values)
    if document == SHELL_DOCUMENT:  # a shell in the target, no port
        return out
    out.setdefault("portNumber", [default_port])
    for name in ("portNumber", "localPortNumber"):
        if name in out and not (out[name][0].isdigit() and 0 <= int(out[name][0]) <= 65535
                                and (name != "portNumber" or int(out[name][0]) > 0)):
            raise SSMError("InvalidParameters", f"Parameter \"{name}\" must be a port number.")
    if document == REMOTE_PORT_DOCUMENT and not out.get("host", [""])[0]:
        raise SSMError("InvalidParameters", "Parameter \"host\" is required.")
    return out


class SessionOps(BackendBase):
    """StartSession, TerminateSession, ResumeSession, DescribeSessions + stream pairing."""

    stream_endpoint = "ws://127.0.0.1:0"
    agent_attach_timeout = 15.0

    def _init_sessions(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.streams: dict[str, Stream] = {}
        self.caller = threading.local()

    # ---- public operations -------------------------------------------------------------
    def op_StartSession(self, body: dict[str, Any]) -> dict[str, Any]:
        target, document = body.get("Target"), body.get("DocumentName") or SHELL_DOCUMENT
        if document not in _DOCUMENTS:
            raise SSMError("InvalidDocument", f"Document {document} is not supported by the "
                           f"sandbox; use one of {sorted(_DOCUMENTS)}.")
        params = _session_parameters(document, body.get("Parameters"))
        reason = body.get("Reason", "")
        if not isinstance(reason, str) or len(reason) > 256:
            raise validation(reason, "reason", "have length less than or equal to 256")
        with self.lock:
            inst = self.live_instance(target)
            refusal = self.sagemaker_refusal(target)
            if inst is None or self.ping_status(inst) != PING_ONLINE or refusal:
                if refusal:
                    logger.info("StartSession %s refused: %s", target, refusal)
                raise SSMError("TargetNotConnected", f"{target} is not connected.")
            tier = getattr(self, "service_settings", {}).get(
                "/ssm/managed-instance/activation-tier", "advanced")
            if str(target).startswith("mi-") and tier != "advanced":
                raise SSMError("BadRequest", "Enable advanced-instances tier to use Session "
                                             "Manager with your on-premises instances")
            user = re.sub(r"[^A-Za-z0-9._@-]", "", getattr(self.caller, "user", "") or "")
            session = Session(f"{user[:64] or 'sandbox'}-{hex17()}", inst.instance_id, document,
                              params, self._owner(user), reason, secrets.token_urlsafe(48),
                              self.clock(), self.next_seq())
            self.sessions[session.session_id] = session
            return self._session_response(session)

    def sagemaker_refusal(self, target: Any) -> str | None:  # see SSMBackend
        return None

    def _owner(self, user: str) -> str:
        return f"arn:aws:iam::{self.account_id}:user/{user or 'sandbox'}"

    def _session_response(self, session: Session) -> dict[str, Any]:
        url = (f"{self.stream_endpoint}{DATA_CHANNEL_PATH}{session.session_id}"
               "?role=publish_subscribe")
        return {"SessionId": session.session_id, "TokenValue": session.token, "StreamUrl": url}

    def op_TerminateSession(self, body: dict[str, Any]) -> dict[str, Any]:
        session_id = body.get("SessionId")
        with self.lock:
            session = self.sessions.get(session_id)  # type: ignore[arg-type]
            if session is not None:
                self._terminate(session)
        return {"SessionId": session_id}

    def op_ResumeSession(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            session = self.sessions.get(body.get("SessionId"))  # type: ignore[arg-type]
            if session is None or session.status in ENDED:
                raise SSMError("DoesNotExistException",
                               f"Session with Id {body.get('SessionId')} does not exist.")
            session.token = secrets.token_urlsafe(48)
            return self._session_response(session)

    def op_DescribeSessions(self, body: dict[str, Any]) -> dict[str, Any]:
        state = body.get("State")
        if state not in ("Active", "History"):
            raise validation(state, "state", "satisfy enum value set: [Active, History]")
        limit = max_results(body, 1, 200, 20)
        with self.lock:
            rows = [s for s in sorted(self.sessions.values(), key=lambda s: s.seq)
                    if (s.status in ENDED) == (state == "History")]
            for flt in body.get("Filters") or []:
                rows = [s for s in rows if self._session_matches(s, flt)]
            page, token = paginate(rows, lambda s: s.seq, limit, body.get("NextToken"),
                                   fingerprint("DescribeSessions", state, body.get("Filters")))
            out: dict[str, Any] = {"Sessions": [self._session_json(s) for s in page]}
        if token:
            out["NextToken"] = token
        return out

    def _session_matches(self, session: Session, flt: dict[str, Any]) -> bool:
        key, value = flt.get("key"), flt.get("value")
        simple = {"Target": session.target, "Owner": session.owner, "Status": session.status,
                  "SessionId": session.session_id, "AccessType": "Standard"}
        if key in simple:
            return simple[key] == value
        if key in ("InvokedAfter", "InvokedBefore"):
            when = parse_iso(value)
            if when is None:
                raise SSMError("InvalidFilterValue", f"{value} is not a valid date.")
            return session.start >= when if key == "InvokedAfter" else session.start <= when
        raise SSMError("InvalidFilterKey", f"The filter key {key} is not valid.")

    def _session_json(self, session: Session) -> dict[str, Any]:
        out: dict[str, Any] = {
            "SessionId": session.session_id, "Target": session.target,
            "Status": session.status, "StartDate": session.start,
            "DocumentName": session.document_name, "Owner": session.owner,
            "Details": f"{len(session.streams)} open stream(s), {session.opened} in total",
            "OutputUrl": {}, "AccessType": "Standard",
        }
        if session.reason:
            out["Reason"] = session.reason
        if session.end is not None:
            out["EndDate"] = session.end
        return out

    # ---- session end -------------------------------------------------------------------
    def _terminate(self, session: Session, status: str = "Terminated") -> None:
        if session.status in ENDED:
            return
        session.status, session.end = status, self.clock()
        for stream in list(session.streams.values()):
            stream.error = stream.error or SSMError("SessionTerminated", "Session ended.", 410)
            stream.abort()
        for control in session.controls:
            control.abort()

    def terminate_sessions_of(self, instance_id: str) -> None:
        with self.lock:
            for session in self.sessions.values():
                if session.target == instance_id:
                    self._terminate(session)

    def close_sessions(self) -> None:
        with self.lock:
            for session in self.sessions.values():
                self._terminate(session)

    # ---- data channel ------------------------------------------------------------------
    def _usable_session(self, session_id: str, token: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SSMError("SessionNotFound", f"Session {session_id} does not exist.", 404)
        if not secrets.compare_digest(token.encode(), session.token.encode()):
            raise SSMError("AccessDeniedException", "The session token is not valid.", 403)
        if session.status in ENDED:
            raise SSMError("SessionTerminated", f"Session {session_id} has ended.", 410)
        return session

    def open_control(self, session_id: str, token: str, end: StreamEnd) -> Session:
        with self.lock:
            session = self._usable_session(session_id, token)
            session.multi_stream = True
            session.status = "Connected"
            session.controls.append(end)
            return session

    def control_closed(self, session: Session, end: StreamEnd) -> None:
        with self.lock:
            if end in session.controls:
                session.controls.remove(end)
            if not session.controls:
                self._terminate(session)

    def open_stream(self, session_id: str, token: str, end: StreamEnd) -> Stream:
        """Register a plugin connection and ask the agent to connect the target port."""
        with self.lock:
            session = self._usable_session(session_id, token)
            inst = self.live_instance(session.target)
            if inst is None or self.ping_status(inst) != PING_ONLINE:
                raise SSMError("TargetNotConnected", f"{session.target} is not connected.", 502)
            session.opened += 1
            stream = Stream(f"{session_id}-{session.opened}", session_id, inst.instance_id,
                            secrets.token_urlsafe(24), end)
            session.streams[stream.stream_id] = stream
            self.streams[stream.stream_id] = stream
            message: dict[str, Any] = {
                "Type": "OpenStream", "SessionId": session_id, "StreamId": stream.stream_id,
                "StreamToken": stream.token}
            if session.document_name == SHELL_DOCUMENT:
                message["Shell"] = True
            else:
                message["Host"] = session.parameters.get("host", ["127.0.0.1"])[0]
                message["PortNumber"] = int(session.parameters["portNumber"][0])
            self.enqueue(inst.instance_id, message)
            return stream

    def wait_agent(self, stream: Stream) -> StreamEnd:
        stream.attached.wait(self.agent_attach_timeout)
        with self.lock:
            if stream.agent is not None and stream.error is None:
                return stream.agent
            stream.error = stream.error or SSMError(
                "AgentTimeout", "The agent did not open the stream in time.", 504)
            self._finish(stream)
            raise stream.error

    def agent_stream(self, stream_id: str, token: str) -> Stream:
        """The stream the agent is allowed to attach to (raises if none)."""
        with self.lock:
            stream = self.streams.get(stream_id)
            if stream is None or not secrets.compare_digest(token.encode(), stream.token.encode()):
                raise SSMError("StreamNotFound", f"Stream {stream_id} does not exist.", 404)
            if stream.error is not None or stream.agent is not None:
                raise SSMError("StreamClosed", f"Stream {stream_id} is closed.", 410)
            return stream

    def attach_agent(self, stream_id: str, token: str, end: StreamEnd) -> Stream:
        """Hand the agent's socket to the waiting client (after its 101 has been sent)."""
        with self.lock:
            stream = self.agent_stream(stream_id, token)
            stream.agent = end
            self.sessions[stream.session_id].status = "Connected"
            stream.attached.set()
            return stream

    def agent_stream_failed(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            stream = self.streams.get(body.get("StreamId"))  # type: ignore[arg-type]
            if stream is not None and stream.agent is None:
                stream.error = SSMError("ConnectionFailed", str(body.get("Message")), 502)
                stream.attached.set()
        return {}

    def stream_finished(self, stream: Stream) -> None:
        with self.lock:
            self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        stream.done.set()
        self.streams.pop(stream.stream_id, None)
        session = self.sessions.get(stream.session_id)
        if session is None:
            return
        session.streams.pop(stream.stream_id, None)
        if not session.multi_stream and not session.streams:
            self._terminate(session)
