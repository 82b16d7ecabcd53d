"""Ship container output to CloudWatch Logs (moto), like SageMaker's log streams.

Streams are named ``<job>/algo-N-<epoch>`` in ``/aws/sagemaker/TrainingJobs`` (and
``ProcessingJobs``/``TransformJobs``), so ``estimator.logs()`` and Logs Insights lookups work.
Lines are batched and sent by one background thread; a failure to ship never affects a job.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

logger = logging.getLogger(__name__)

MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
MAX_EVENT_BYTES = 256 * 1024 - 26
EVENT_OVERHEAD = 26
LOG_GROUPS = {
    "training": "/aws/sagemaker/TrainingJobs",
    "processing": "/aws/sagemaker/ProcessingJobs",
    "transform": "/aws/sagemaker/TransformJobs",
}


def batches_of(events: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``events`` as PutLogEvents takes them, since one bad event fails the whole batch:
    no empty messages (debug output has blank lines; the service refuses them), chronological
    order within a batch (stdout and stderr are read by two threads, so their lines reach the
    queue slightly out of order), at most 10,000 events and 1 MiB per batch (26 bytes of
    overhead per event), each event at most 256 KiB (longer lines are cut)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for event in sorted(events, key=lambda e: e["timestamp"]):  # stable: keeps line order
        if not event["message"]:
            continue
        data = event["message"].encode("utf-8")
        if len(data) > MAX_EVENT_BYTES:
            event = dict(event, message=data[:MAX_EVENT_BYTES].decode("utf-8", "ignore"))
            data = event["message"].encode("utf-8")
        cost = len(data) + EVENT_OVERHEAD
        if batch and (len(batch) >= MAX_BATCH_EVENTS or size + cost > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += cost
    if batch:
        yield batch


class LogShipper:
    def __init__(self, logs_client: Any, interval: float = 0.5) -> None:
        self._client = logs_client
        self._interval = interval
        self._queue: queue.Queue[tuple[str, str, int, str]] = queue.Queue()
        self._known: set[tuple[str, str]] = set()
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloudwatch logs", daemon=True)
        self._thread.start()

    def sink(self, kind: str, job_name: str, host: str) -> Callable[[str, str], None]:
        """Output callback for a job container: stream ``<job>/<host>-<start time>``."""
        return self.sink_to(LOG_GROUPS[kind], f"{job_name}/{host}-{int(time.time())}")

    def sink_to(self, group: str, stream: str) -> Callable[[str, str], None]:
        """Output callback shipping each line to ``group``/``stream``."""
        def put(_container: str, line: str) -> None:
            self._queue.put((group, stream, int(time.time() * 1000), line))

        return put

    def _ensure(self, group: str, stream: str) -> None:
        if (group, stream) in self._known:
            return
        for call, kwargs in ((self._client.create_log_group, {"logGroupName": group}),
                             (self._client.create_log_stream,
                              {"logGroupName": group, "logStreamName": stream})):
            try:
                call(**kwargs)
            except self._client.exceptions.ResourceAlreadyExistsException:
                pass
        self._known.add((group, stream))

    def _drain(self) -> None:
        with self._drain_lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        batches: dict[tuple[str, str], list[dict[str, Any]]] = {}
        while True:
            try:
                group, stream, ts, line = self._queue.get_nowait()
            except queue.Empty:
                break
            batches.setdefault((group, stream), []).append({"timestamp": ts, "message": line})
        for (group, stream), events in batches.items():
            try:
                self._ensure(group, stream)
                for batch in batches_of(events):
                    self._client.put_log_events(logGroupName=group, logStreamName=stream,
                                                logEvents=batch)
            except Exception as e:  # never let log shipping break the sandbox
                logger.warning("cannot ship %d log line(s) to %s %s: %s",
                               len(events), group, stream, e)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()
        self._drain()

    def flush(self) -> None:
        self._drain()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
