"""
The otel middleware: every call a SERVER span in the OpenTelemetry GenAI
conventions, each upstream attempt a CLIENT span under it, exported over
OTLP/HTTP by the SDK's batch processor on its own thread.

Context flows both ways: a client's W3C ``traceparent`` (and ``tracestate``)
makes the call's span its child, and the upstream request carries a
``traceparent`` naming the CLIENT span, so an upstream that traces joins the
same trace.

Spans are built whole when the call ends, as ``ReadableSpan`` values, rather
than through a ``Tracer``: an SDK ``Span`` validates and locks on every
attribute, which measured five to eight times the cost per call here, and
the gateway knows every value only at the end anyway.  The ids, the sampler
(parent-based, trace-id ratio) and the W3C propagator are the SDK's own.
"""

from __future__ import annotations

import time
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs
from twisted.logger import Logger

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.trace.status import Status, StatusCode

    from llmgate.middleware.otelexport import LogBridge, SpanQueue, WireExporter
except ImportError:  # without the otel extra: build() says what to install
    _INSTALLED = False
else:
    _INSTALLED = True
    _UNSET = Status(StatusCode.UNSET)
    _ERROR = Status(StatusCode.ERROR)
    _SAMPLED = TraceFlags(TraceFlags.SAMPLED)
    _LOW_64 = TraceIdRatioBased.TRACE_ID_LIMIT

from llmgate import __version__
from llmgate.config import ConfigError, OTLPConfig
from llmgate.exchange import Exchange
from llmgate.middleware import Middleware, MiddlewareContext
from llmgate.middleware import genai
from llmgate.middleware.attempts import attempts_of
from llmgate.redact import Scrubber

#: The key of this middleware's state in ``exchange.notes``.
NOTE = "otel"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def build(config: Mapping[str, Any], context: MiddlewareContext) -> "OtelMiddleware":
    """
    The otel middleware, from ``telemetry.otlp`` (not from its own entry in
    ``middlewares``: the gateway adds it when that section is there).
    """
    if config:
        raise ConfigError(
            "type: otel is configured under telemetry.otlp, not in middlewares"
        )
    otlp = context.config.telemetry.otlp
    if otlp is None:
        raise ConfigError("type: otel needs a telemetry.otlp section")
    if not _INSTALLED:
        raise ConfigError(
            "telemetry.otlp: needs the packages opentelemetry-sdk and "
            "opentelemetry-exporter-otlp-proto-http (pip install 'llmgate[otel]')"
        )
    exporter = WireExporter(
        endpoint=otlp.endpoint.rstrip("/") + "/v1/traces",
        headers=dict(otlp.headers),
        timeout=otlp.timeout,
    )
    llm = context.config.llm
    # Every upstream's key (with failover, each upstream has its own).
    upstreams = getattr(context.config, "upstreams", None) or {}
    keys = [llm.api_key, *(getattr(u, "api_key", None) for u in upstreams.values())]
    return OtelMiddleware(
        reactor=context.reactor,
        settings=otlp,
        exporter=exporter,
        upstream=llm.base_url,
        scrubber=Scrubber([*keys, *otlp.headers.values()]),
    )


@attrs.define
class CallContext:
    """
    What one call's trace needs between its request and its end.

    :ivar client_span_ids: the CLIENT span id of each attempt, in order; the
        upstream saw each in its ``traceparent``.
    """

    trace_id: int
    span_id: int
    sampled: bool
    parent: Any = None
    client_span_ids: list[int] = attrs.field(factory=list)


class OtelMiddleware(Middleware):
    """
    Record spans on the reactor thread; the SDK's batch processor exports
    them on its own.
    """

    name = "otel"
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: OTLPConfig,
        exporter: Any,
        upstream: str,
        scrubber: Scrubber | None = None,
        schedule_delay_millis: float | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.capture_content = settings.capture_content
        self.scrub = scrubber or Scrubber()
        # The file's service name wins over OTEL_SERVICE_NAME, which
        # Resource.create would let win; OTEL_RESOURCE_ATTRIBUTES still adds.
        self.resource = Resource.create({}).merge(
            Resource({"service.name": settings.service_name, "service.version": __version__})
        )
        self.scope = InstrumentationScope("llmgate", __version__)
        # The SDK's ParentBased(TraceIdRatioBased) decision, taken directly:
        # its should_sample builds a context and a result object per call.
        self.bound = TraceIdRatioBased(settings.sample_ratio).bound
        self.ids = RandomIdGenerator()
        self.propagator = TraceContextTextMapPropagator()
        parts = urlsplit(upstream)
        self.address = parts.hostname or ""
        self.port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        self.queue = SpanQueue(
            exporter,
            max_queue=settings.max_queue,
            schedule_delay_millis=schedule_delay_millis,
        )
        self.bridge = LogBridge(reactor)
        self.bridge.install()

    # -- the middleware ---------------------------------------------------------

    def request_received(self, exchange: Exchange) -> None:
        call = self._context(exchange)
        self._attempt_started(exchange, call)
        return None

    def exchange_finished(self, exchange: Exchange) -> None:
        call = self._context(exchange)
        if not call.sampled:
            return
        self.queue.submit(self._spans(exchange, call))

    def state(self) -> Mapping[str, Any]:
        return self.queue.state()

    def close(self) -> Any:
        return self.queue.close(self.reactor, self.settings.timeout + 1).addCallback(
            lambda _: self.bridge.remove()
        )

    def flush(self) -> Any:
        """
        A Deferred that fires once every span queued so far was sent (or
        failed), the sending done on a pool thread: for tests and the console.
        """
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self.queue.processor.force_flush
        )

    # -- context ------------------------------------------------------------------

    def _context(self, exchange: Exchange) -> CallContext:
        """
        The call's trace: the client's, when its ``traceparent`` is valid, or
        a new one; decided once, on the first hook that asks.
        """
        call: CallContext | None = exchange.notes.get(NOTE)
        if call is not None:
            return call
        headers = exchange.request.headers
        parent = None
        traceparent = headers.getRawHeaders(b"traceparent")
        # Two traceparent headers make no valid one (W3C Trace Context).
        if traceparent is not None and len(traceparent) == 1:
            carrier = {"traceparent": traceparent}
            tracestate = headers.getRawHeaders(b"tracestate")
            if tracestate:
                carrier["tracestate"] = tracestate
            parent = get_current_span(
                self.propagator.extract(carrier, getter=_GETTER)
            ).get_span_context()
            if not parent.is_valid:
                parent = None
        if parent is not None:
            trace_id, sampled = parent.trace_id, parent.trace_flags.sampled
        else:
            trace_id = self.ids.generate_trace_id()
            sampled = trace_id & _LOW_64 < self.bound
        call = CallContext(
            trace_id=trace_id, span_id=self.ids.generate_span_id(), sampled=sampled, parent=parent
        )
        exchange.notes[NOTE] = call
        return call

    def _attempt_started(self, exchange: Exchange, call: CallContext) -> None:
        """
        A new upstream attempt: a CLIENT span id, and a ``traceparent`` naming
        it on the request the upstream will see.  The client's is replaced;
        its ``tracestate`` goes on unchanged, or is dropped with a
        ``traceparent`` that was not valid (W3C: it belonged to that trace).
        """
        span_id = self.ids.generate_span_id()
        call.client_span_ids.append(span_id)
        flags = "01" if call.sampled else "00"
        headers = exchange.request.headers
        headers.setRawHeaders(
            b"traceparent", [f"00-{call.trace_id:032x}-{span_id:016x}-{flags}".encode()]
        )
        if call.parent is None and headers.hasHeader(b"tracestate"):
            headers.removeHeader(b"tracestate")

    # -- spans ----------------------------------------------------------------------

    def _spans(self, exchange: Exchange, call: CallContext) -> list[Any]:
        """
        The call's spans: a CLIENT span per upstream attempt, then the SERVER
        span.
        """
        # The exchange's times are the reactor's seconds; spans want the wall
        # clock's nanoseconds.
        offset = time.time_ns() - int(self.reactor.seconds() * 1e9)
        end = time.time_ns() if exchange.ended_at is None else int(exchange.ended_at * 1e9) + offset
        start = int(exchange.received * 1e9) + offset
        trace_state = call.parent.trace_state if call.parent is not None else None
        server = SpanContext(call.trace_id, call.span_id, False, _SAMPLED, trace_state)
        operation = genai.operation_of(exchange.request.path)
        attributes = genai.request_attributes(exchange, operation)
        name = genai.span_name(
            operation, attributes.get("gen_ai.request.model"), exchange.request.method
        )
        attempts = attempts_of(exchange, self.address, self.port)
        client_ids = self._client_ids(call, len(attempts))
        spans = []
        for attempt, span_id in zip(attempts, client_ids):
            client = _attempt_attributes(attributes, attempt)
            spans.append(
                ReadableSpan(
                    name=name,
                    context=SpanContext(call.trace_id, span_id, False, _SAMPLED, trace_state),
                    parent=server,
                    resource=self.resource,
                    attributes=client,
                    kind=SpanKind.CLIENT,
                    instrumentation_scope=self.scope,
                    status=_ERROR if "error.type" in client else _UNSET,
                    start_time=int(attempt.started * 1e9) + offset,
                    end_time=end if attempt.ended is None else int(attempt.ended * 1e9) + offset,
                )
            )
        self._server_attributes(exchange, attributes, attempts[-1] if attempts else None)
        events = ()
        if self.capture_content:
            events = (
                Event("gen_ai.client.inference.operation.details", self._content(exchange), end),
            )
        spans.append(
            ReadableSpan(
                name=name,
                context=server,
                parent=call.parent,
                resource=self.resource,
                attributes=attributes,
                events=events,
                kind=SpanKind.SERVER,
                instrumentation_scope=self.scope,
                status=_ERROR if "error.type" in attributes else _UNSET,
                start_time=start,
                end_time=end,
            )
        )
        return spans

    def _server_attributes(
        self, exchange: Exchange, attributes: dict[str, Any], last: Any
    ) -> None:
        """
        Add what the call answered to the request's ``attributes``: the
        response's GenAI figures, the upstream that answered (or was tried
        last), the session, the status the client got.
        """
        attributes.update(genai.response_attributes(exchange))
        attributes["server.address"] = last.address if last else self.address
        attributes["server.port"] = last.port if last else self.port
        if last is not None and last.upstream is not None:
            attributes["llmgate.upstream"] = last.upstream
        attributes["llmgate.exchange.id"] = exchange.id
        if exchange.session_id is not None:
            attributes["gen_ai.conversation.id"] = exchange.session_id
        how = exchange.notes.get("session_how")
        if isinstance(how, str):
            attributes["llmgate.session.decision"] = how
        response = exchange.response
        status = exchange.sent_status
        if status is None and response is not None:
            status = response.status
        if status is not None:
            attributes["http.response.status_code"] = status
        if response is not None and response.streaming and exchange.ttfb is not None:
            attributes["llmgate.time_to_first_token"] = exchange.ttfb
        failure = exchange.error_kind or (
            str(status) if status is not None and status >= 400 else None
        )
        if failure is not None:
            attributes["error.type"] = failure

    def _client_ids(self, call: CallContext, count: int) -> list[int]:
        """
        A CLIENT span id per attempt.  The ids sent upstream go to the last
        attempts: with one ``traceparent`` for every attempt (no hook per
        attempt yet), the upstream that answered is the one whose trace joins
        its CLIENT span; earlier attempts get fresh ids.
        """
        sent = call.client_span_ids
        missing = count - len(sent)
        if missing <= 0:
            return sent[:count] if count else []
        return [self.ids.generate_span_id() for _ in range(missing)] + sent

    def _content(self, exchange: Exchange) -> dict[str, str]:
        """
        The messages in and out, as the conventions' JSON attributes, with
        every known secret scrubbed.
        """
        content = {"gen_ai.input.messages": genai.content_json(genai.input_messages(exchange))}
        answer = exchange.answer
        if answer is not None:
            content["gen_ai.output.messages"] = genai.content_json([answer])
        return {key: self.scrub(value) for key, value in content.items()}


#: What a CLIENT span repeats of the call's request attributes.
_CLIENT_KEYS = (
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
    "http.request.method",
)


def _attempt_attributes(request: Mapping[str, Any], attempt: Any) -> dict[str, Any]:
    """
    A CLIENT span's attributes: the call's operation and model, and this
    attempt's upstream, status and failure.
    """
    attributes = {key: request[key] for key in _CLIENT_KEYS if key in request}
    attributes["server.address"] = attempt.address
    attributes["server.port"] = attempt.port
    if attempt.upstream is not None:
        attributes["llmgate.upstream"] = attempt.upstream
    status = attempt.status
    if status is not None:
        attributes["http.response.status_code"] = status
    failure = attempt.error_kind or (str(status) if status is not None and status >= 400 else None)
    if failure is not None:
        attributes["error.type"] = failure
    return attributes


class _Getter:
    """
    Read a plain dict of header lists for the W3C propagator.
    """

    def get(self, carrier: Mapping[str, list[bytes]], key: str) -> list[str] | None:
        values = carrier.get(key)
        if values is None:
            return None
        return [value.decode("latin-1") for value in values]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _Getter()


__all__ = ["CallContext", "OtelMiddleware", "build"]
