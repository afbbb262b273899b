"""
The way from the reactor thread to the collector: a bounded queue of encoded
spans, and a worker thread that joins them into OTLP requests and sends them
with the exporter package's HTTP client.

The reactor thread only appends bytes to a deque; encoding the request's
frame, the HTTP POST, its retries and its waiting happen on the worker.
Spans beyond ``max_queue`` waiting are refused and counted, before they cost
anything; so are spans whose export failed.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Any, Callable

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel

from llmgate.middleware.otlpwire import RequestHead

#: Under the ``opentelemetry`` logger, so :class:`LogBridge` carries it too.
_logger = logging.getLogger("opentelemetry.exporter.llmgate")

class LogBridge(logging.Handler):
    """
    The SDK's and exporter's stdlib log records (a failed export, a
    retry), handed to the reactor thread and logged through
    ``twisted.logger``, so they land where and as the gateway's own do.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        super().__init__(logging.WARNING)
        self.reactor = reactor

    def emit(self, record: logging.LogRecord) -> None:
        level = LogLevel.error if record.levelno >= logging.ERROR else LogLevel.warn
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        self.reactor.callFromThread(
            self.log.emit, level, "{otel_logger}: {message}",
            otel_logger=record.name, message=message,
        )

    def install(self) -> None:
        logger = logging.getLogger("opentelemetry")
        logger.addHandler(self)
        logger.propagate = False

    def remove(self) -> None:
        logger = logging.getLogger("opentelemetry")
        logger.removeHandler(self)
        if not logger.handlers:
            logger.propagate = True


class WireExporter(OTLPSpanExporter):
    """
    The exporter package's OTLP/HTTP exporter, for what it resolves and how
    it sends (``OTEL_EXPORTER_OTLP_*`` below the values given, headers, TLS,
    compression, retries with backoff, a kept connection), handed request
    bytes that llmgate encoded rather than SDK spans.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        client = getattr(self, "_client", None)
        if not callable(getattr(client, "export", None)):
            raise ImportError(
                "this opentelemetry-exporter-otlp-proto-http has no HTTP client "
                "that sends encoded bytes (llmgate is tested with 1.45)"
            )

    def send(self, data: bytes) -> bool:
        """
        POST one ``ExportTraceServiceRequest``; whether the collector took it.
        """
        if self._shutdown:
            return False
        limit = getattr(self, "_max_request_size", 0) or 0
        if 0 < limit < len(data):
            _logger.warning(
                "Dropping span batch: %d bytes exceed max_request_size %d", len(data), limit
            )
            return False
        return bool(self._client.export(data).success)


class SpanQueue:
    """
    A bounded way to the collector: encoded spans wait in a deque until a
    worker thread sends them in batches, when ``max_export_batch_size`` are
    waiting or ``schedule_delay_millis`` has passed, as the SDK's
    ``BatchSpanProcessor`` does (and with its ``OTEL_BSP_*`` settings).

    Each counter is written by one thread and read anywhere.

    :ivar queued: spans accepted (reactor thread).
    :ivar dropped: spans refused because ``max_queue`` were waiting (reactor thread).
    :ivar exported: spans the collector took (sending thread).
    :ivar failed: spans whose export failed (sending thread).
    """

    def __init__(
        self,
        send: Callable[[bytes], bool],
        head: RequestHead,
        max_queue: int = 2048,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
        on_shutdown: Callable[[], Any] | None = None,
    ) -> None:
        self._send = send
        self._head = head
        self._on_shutdown = on_shutdown
        self.max_queue = max_queue
        self.batch_size = _batch_size(max_export_batch_size, max_queue)
        if schedule_delay_millis is None:
            schedule_delay_millis = _environ_number("OTEL_BSP_SCHEDULE_DELAY", 5000)
        self.delay = max(schedule_delay_millis, 1) / 1000
        self.queued = 0
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        #: Spans taken from the deque to be sent (sending thread).
        self._taken = 0
        self._items: collections.deque[tuple[int, bytes]] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._closing: Deferred[None] | None = None
        self._worker = threading.Thread(target=self._run, name="llmgate-otel-export", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        """
        Spans accepted and not yet settled (queued or being sent).
        """
        return self.queued - self.exported - self.failed

    def submit(self, data: bytes, count: int) -> None:
        """
        Queue the encoded spans of one call (``count`` of them), or drop them
        all: a trace with a hole in it misleads more than a missing one.
        """
        if self.queued - self.exported - self.failed + count > self.max_queue or self._stopping:
            self.dropped += count
            return
        self.queued += count
        self._items.append((count, data))
        if self.queued - self._taken >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def state(self) -> dict[str, int]:
        return {
            "spans_exported": self.exported,
            "spans_export_failed": self.failed,
            "spans_dropped": self.dropped,
            "spans_waiting": self.waiting,
        }

    def force_flush(self) -> bool:
        """
        Send everything queued, on the calling thread (never the reactor's).
        """
        self._export(everything=True)
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """
        Stop the worker, send what is left, and shut the sender down.
        """
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._worker.join(timeout)
        try:
            self._export(everything=True)
        finally:
            if self._on_shutdown is not None:
                self._on_shutdown()

    def close(self, reactor: Any, patience: float) -> Deferred[None]:
        """
        :meth:`shutdown`, off the reactor thread.

        Fires when done or after ``patience`` seconds, whichever comes first:
        a dead collector must not hold the gateway's shutdown.
        """
        if self._closing is not None:
            return self._closing
        done: Deferred[None] = Deferred()
        self._closing = done
        delayed = reactor.callLater(patience, _fire, done)

        def finished() -> None:
            if delayed.active():
                delayed.cancel()
            _fire(done)

        thread = threading.Thread(
            target=_then(lambda: self.shutdown(patience), lambda: reactor.callFromThread(finished)),
            name="llmgate-otel-shutdown",
            daemon=True,
        )
        thread.start()
        return done

    def _run(self) -> None:
        while not self._stopping:
            woken = self._wake.wait(self.delay)
            self._wake.clear()
            if self._stopping:
                break
            # Woken by a full batch: send full batches; after the delay: all.
            self._export(everything=not woken)

    def _export(self, everything: bool) -> None:
        with self._lock:
            items = self._items
            while items and (everything or self.queued - self._taken >= self.batch_size):
                batch = []
                count = 0
                while items and count < self.batch_size:
                    spans, data = items.popleft()
                    batch.append(data)
                    count += spans
                self._taken += count
                try:
                    sent = self._send(self._head.request(batch))
                except Exception:
                    _logger.exception("OTLP export failed")
                    sent = False
                if sent:
                    self.exported += count
                else:
                    self.failed += count


def _environ_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _batch_size(wanted: int | None, max_queue: int) -> int:
    """
    Spans per export: as asked, else ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``,
    else half the queue (1024 by default, where the SDK sends 512: a POST
    costs the export thread about as much as 500 spans' encoding, measured
    in bench/README.md); never more than the queue holds.
    """
    if wanted is None:
        wanted = int(_environ_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", max(max_queue // 2, 1)))
    return max(1, min(wanted, max_queue))


def _then(first: Callable[[], Any], after: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            first()
        finally:
            after()

    return run


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)
