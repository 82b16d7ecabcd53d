"""The sandbox's AWS endpoint (``AWS_ENDPOINT_URL``): one port for every emulated service.

Requests are forwarded verbatim (method, path, headers including Host, body) to moto, except

* SageMaker job operations (``X-Amz-Target: SageMaker.CreateTrainingJob`` ...), and tag
  operations on those jobs, which :class:`~sagemaker_ssh_sandbox.sagemaker.jobs.JobsAPI` serves;
* the operations of the APIs in ``Gateway.apis`` (Studio domains, user profiles, spaces and apps:
  :mod:`~sagemaker_ssh_sandbox.sagemaker.studio`; notebook instances:
  :mod:`~sagemaker_ssh_sandbox.sagemaker.notebooks`);
* ``iam:SimulatePrincipalPolicy``, which moto lacks, and empty structures in moto's SageMaker
  answers (both in :mod:`~sagemaker_ssh_sandbox.sagemaker.moto_gaps`);
* S3 requests whose ``ExpectedBucketOwner`` is not the sandbox's account, which owns every
  bucket: ``403 AccessDenied`` as from S3 (moto ignores the header; ``moto_gaps``);
* ``/_sandbox/...`` control routes: ``GET /_sandbox/health``, ``GET /_sandbox/status``,
  ``POST /_sandbox/rule-status`` ({"job", "rule", "status"[, "details"]}).

A request the gateway fails on unexpectedly gets a 500 ``InternalFailure`` (AWS JSON), the
traceback goes to the daemon's log (:mod:`~sagemaker_ssh_sandbox.httpguard`).
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Callable

from sagemaker_ssh_sandbox.httpguard import GuardedHandler
from sagemaker_ssh_sandbox.iam.sigv4 import credential_scope
from sagemaker_ssh_sandbox.sagemaker import moto_gaps
from sagemaker_ssh_sandbox.sagemaker.jobs import ApiError, JobsAPI

logger = logging.getLogger(__name__)

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "expect", "content-length"}
TARGET_PREFIX = "SageMaker."

StatusProvider = Callable[[], dict[str, Any]]


class Gateway(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], upstream: tuple[str, int],
                 jobs: JobsAPI | None, status: StatusProvider | None = None,
                 region: str | None = None) -> None:
        super().__init__(address, GatewayHandler)
        self.upstream = upstream
        # the region the sandbox's jobs, endpoints and apps live in (None: any)
        self.region = region
        self.account: str | None = None  # owns every S3 bucket (ExpectedBucketOwner)
        self.jobs = jobs
        self.apis: list[Any] = []  # more SageMaker operations served here (e.g. Studio)
        self.status = status or (lambda: {})
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        self._thread = threading.Thread(target=self.serve_forever, name="gateway", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class GatewayHandler(GuardedHandler):  # an unexpected exception: 500 InternalFailure
    protocol_version = "HTTP/1.1"
    server: Gateway

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._body()
        path = self.path.split("?", 1)[0]
        if path.startswith("/_sandbox/"):
            self._control(path, body)
            return
        target = self.headers.get("X-Amz-Target", "")
        if target.startswith(TARGET_PREFIX) and self.command == "POST":
            operation = target[len(TARGET_PREFIX):]
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                request = None
            apis = [a for a in [self.server.jobs, *self.server.apis] if a is not None]
            api = next((a for a in apis if isinstance(request, dict)
                        and a.handles(operation, request)), None)
            region = credential_scope(self.headers, self.path)[1]
            home = self.server.region
            if api is not None and region and home and region != home:
                # Another region: none of the sandbox's resources are there (moto answers, as
                # an empty region would); new ones can only be made at home.
                if operation.startswith("Create"):
                    self._send_json(400, {"__type": "ValidationException", "message": (
                        f"the sandbox runs SageMaker resources in {home} only, not in "
                        f"{region}: use --region {home} (or AWS_REGION={home})")})
                    return
                api = None
            if api is not None and isinstance(request, dict):
                self._serve_job_api(api, operation, request)
                return
            self._forward(body, lambda data: moto_gaps.drop_empty_structures(operation, data))
            return
        form = moto_gaps.query_form(self.headers.get("Content-Type", ""), body) \
            if self.command == "POST" else None
        if form is not None and form.get("Action") == moto_gaps.SIMULATE:
            self._simulate_principal_policy(form)
            return
        refused = moto_gaps.bucket_owner_refusal(
            self.headers.get(moto_gaps.EXPECTED_OWNER_HEADER), self.server.account)
        if refused is not None:
            self.send_response_only(403, "Forbidden")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else
                             str(len(refused)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(refused)
            return
        self._forward(body)

    def _simulate_principal_policy(self, form: dict[str, str]) -> None:
        import boto3

        from sagemaker_ssh_sandbox import control

        host, port = self.server.upstream
        iam = boto3.client("iam", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                           aws_access_key_id=control.CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=control.CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        status, xml = moto_gaps.simulate_principal_policy(
            form, lambda arn: moto_gaps.principal_exists(iam, arn),
            moto_gaps.decide_in_process)
        data = xml.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _dispatch

    def _send_json(self, status: int, value: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        for key, val in (extra or {}).items():
            self.send_header(key, val)
        self.end_headers()
        self.wfile.write(data)

    def _serve_job_api(self, jobs: Any, operation: str, request: dict[str, Any]) -> None:
        try:
            result = jobs.handle(operation, request)
        except ApiError as e:
            self._send_json(e.status, {"__type": e.code, "message": e.message},
                            {"x-amzn-ErrorType": e.code})
            return
        except Exception as e:  # report as an AWS service error, keep serving
            logger.exception("SageMaker.%s failed", operation)
            self._send_json(500, {"__type": "InternalFailure", "message": str(e)})
            return
        self._send_json(200, result)

    def _control(self, path: str, body: bytes) -> None:
        try:
            if path == "/_sandbox/health":
                self._send_json(200, {"ok": True})
            elif path == "/_sandbox/status":
                self._send_json(200, self.server.status())
            elif path == "/_sandbox/rule-status" and self.command == "POST" and self.server.jobs:
                req = json.loads(body or b"{}")
                self._send_json(200, self.server.jobs.set_rule_status(
                    req["job"], req["rule"], req["status"], req.get("details")))
            else:
                self._send_json(404, {"message": f"no sandbox route {self.command} {path}"})
        except ApiError as e:
            self._send_json(e.status, {"__type": e.code, "message": e.message})
        except (KeyError, ValueError) as e:
            self._send_json(400, {"message": f"bad request: {e}"})

    def _forward(self, body: bytes, fix: Callable[[bytes], bytes] | None = None) -> None:
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    conn.putheader(key, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
        except OSError as e:
            logger.warning("upstream %s %s failed: %s", self.command, self.path, e)
            self._send_json(502, {"__type": "ServiceUnavailable", "message": str(e)})
            return
        finally:
            conn.close()
        if fix is not None and response.status == 200:
            data = fix(data)
        self.send_response_only(response.status, response.reason)
        upstream_length = None
        for key, value in response.getheaders():
            if key.lower() == "content-length":
                upstream_length = value
            elif key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        if self.command == "HEAD" and upstream_length is not None:
            self.send_header("Content-Length", upstream_length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
