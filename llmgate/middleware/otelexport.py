"""
Handing finished spans to OpenTelemetry's ``BatchSpanProcessor`` without ever
waiting for it, and counting what never reached the collector.

The processor's worker thread encodes and sends; the reactor thread only
appends to its queue.  The processor itself drops the oldest span silently
(and logs a warning for each) when its queue is full, so a gate in front
keeps the queue from filling: spans beyond ``max_queue`` waiting are refused
and counted, before they cost anything.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel

from llmgate.middleware.otlpwire import WireEncoder


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
    The exporter package's OTLP/HTTP exporter (its transport, retries,
    headers, TLS and compression) with :class:`WireEncoder` in place of its
    per-object encoder.  On an exporter release without the HTTP client this
    relies on, it exports as the stock class does.
    """

    log = Logger()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = WireEncoder()
        client = getattr(self, "_client", None)
        self.fast = callable(getattr(client, "export", None))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.fast or getattr(self, "_shutdown", False):
            return super().export(spans)
        try:
            data = self.encoder.encode(spans)
        except Exception:
            self.log.failure("OTLP span batch could not be encoded")
            return SpanExportResult.FAILURE
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


class CountingExporter(SpanExporter):
    """
    Another exporter, counting spans sent and spans lost.  Its counters are
    written by the processor's thread only, and read anywhere.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class SpanQueue:
    """
    A bounded way to the collector.

    :ivar queued: spans handed to the processor (reactor thread).
    :ivar dropped: spans refused because ``max_queue`` were waiting.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        max_queue: int = 2048,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
    ) -> None:
        self.counting = CountingExporter(exporter)
        self.max_queue = max_queue
        self.processor = BatchSpanProcessor(
            self.counting,
            max_queue_size=max_queue,
            schedule_delay_millis=schedule_delay_millis,
            # None: the SDK's default (512) or OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
            max_export_batch_size=_batch_size(max_export_batch_size, max_queue),
        )
        self.queued = 0
        self.dropped = 0
        self._closing: Deferred[None] | None = None

    @property
    def waiting(self) -> int:
        """
        Spans handed over and not yet settled (queued or being sent).
        """
        return self.queued - self.counting.exported - self.counting.failed

    def submit(self, spans: Sequence[ReadableSpan]) -> None:
        """
        Queue the spans of one call, or drop them all: a trace with a hole
        in it misleads more than a missing one.
        """
        if self.waiting + len(spans) > self.max_queue:
            self.dropped += len(spans)
            return
        self.queued += len(spans)
        on_end = self.processor.on_end
        for span in spans:
            on_end(span)

    def state(self) -> dict[str, int]:
        return {
            "spans_exported": self.counting.exported,
            "spans_export_failed": self.counting.failed,
            "spans_dropped": self.dropped,
            "spans_waiting": self.waiting,
        }

    def close(self, reactor: Any, patience: float) -> Deferred[None]:
        """
        Export what is queued and stop the worker, off the reactor thread.

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
            target=_then(self.processor.shutdown, lambda: reactor.callFromThread(finished)),
            name="llmgate-otel-shutdown",
            daemon=True,
        )
        thread.start()
        return done


def _batch_size(wanted: int | None, max_queue: int) -> int:
    """
    Spans per export: as asked, else ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` or
    the SDK's 512; never more than the queue holds.
    """
    if wanted is None:
        try:
            wanted = int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"))
        except ValueError:
            wanted = 512
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
