"""
The otel middleware: every call a SERVER span in the OpenTelemetry GenAI
conventions, each upstream attempt a CLIENT span under it, exported over
OTLP/HTTP from a worker thread.

Context flows both ways: a client's W3C ``traceparent`` (and ``tracestate``)
makes the call's span its child, and the upstream request carries a
``traceparent`` naming the CLIENT span, so an upstream that traces joins the
same trace.

A call's spans are written as OTLP protobuf bytes when it ends, from the
values the exchange holds, with no SDK ``Span`` or ``ReadableSpan`` in
between: the SDK's objects, its batch processor and the exporter package's
encoder measured about 40% more work per call than the gateway's whole
relay, the bytes about 6% (docs/telemetry.md, "What it costs").  The SDK
still resolves the resource (``OTEL_RESOURCE_ATTRIBUTES``), parses an incoming
``traceparent``/``tracestate``, sets the sampler's bound, and its exporter
package sends (endpoint, headers, TLS, compression, retries).
"""

from __future__ import annotations

import binascii
import random
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web.http_headers import Headers

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from llmgate.middleware.otelexport import LogBridge, SpanQueue, WireExporter
except ImportError:  # without the otel extra: build() says what to install
    _INSTALLED = False
else:
    _INSTALLED = True
    _LOW_64 = TraceIdRatioBased.TRACE_ID_LIMIT

from llmgate import __version__
from llmgate.config import ConfigError, OTLPConfig
from llmgate.exchange import Exchange
from llmgate.middleware import Middleware, MiddlewareContext
from llmgate.middleware import genai
from llmgate.middleware import otlpwire
from llmgate.middleware.attempts import attempts_of
from llmgate.middleware.otlpwire import CLIENT, SERVER
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
    try:
        exporter = WireExporter(
            endpoint=otlp.endpoint.rstrip("/") + "/v1/traces",
            headers=dict(otlp.headers),
            timeout=otlp.timeout,
        )
    except ImportError as e:
        raise ConfigError(f"telemetry.otlp: {e}") from None
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


class CallContext:
    """
    What one call's trace needs between its request and its end.  Ids are
    the bytes spans carry (big-endian, as OTLP writes them).

    :ivar client_span_ids: the CLIENT span id of each attempt, in order; the
        upstream saw each in its ``traceparent``.
    :ivar parent: the client's span context (the SDK's), or None.
    """

    __slots__ = ("trace_id", "span_id", "sampled", "parent", "client_span_ids")

    def __init__(
        self,
        trace_id: bytes,
        span_id: bytes,
        sampled: bool,
        parent: Any = None,
        client_span_ids: list[bytes] | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.parent = parent
        self.client_span_ids = [] if client_span_ids is None else client_span_ids


class OtelMiddleware(Middleware):
    """
    Write each sampled call's spans as OTLP bytes on the reactor thread; a
    worker thread (:class:`~llmgate.middleware.otelexport.SpanQueue`) sends
    them in batches.

    What repeats from call to call (the request's attributes for one route
    and model, the answer's model and status, the upstream) is encoded once
    and found again by the plain values it came from; only ids, times,
    token counts and the call's own ids are written per call.

    :param exporter: what sends a request's bytes: ``send(bytes) -> bool``,
        and ``shutdown()`` if it has one.
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
        resource = Resource.create({}).merge(
            Resource({"service.name": settings.service_name, "service.version": __version__})
        )
        head = otlpwire.RequestHead(
            dict(resource.attributes), "llmgate", __version__, resource.schema_url
        )
        # The SDK's ParentBased(TraceIdRatioBased) decision, taken directly:
        # its should_sample builds a context and a result object per call.
        self.bound = TraceIdRatioBased(settings.sample_ratio).bound
        self.everything = self.bound > _LOW_64
        self.propagator = TraceContextTextMapPropagator()
        parts = urlsplit(upstream)
        self.address = parts.hostname or ""
        self.port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        self.pairs = otlpwire.Pairs()
        # Encoded attributes by the plain values they came from.
        self._asked: dict[Any, tuple[bytes, bytes, bytes]] = {}
        self._answered: dict[Any, tuple[bytes, bool]] = {}
        self._tried: dict[Any, tuple[bytes, bool]] = {}
        self._counts: dict[tuple[Any, Any], bytes] = {}
        self.queue = SpanQueue(
            exporter.send,
            head,
            max_queue=settings.max_queue,
            schedule_delay_millis=schedule_delay_millis,
            on_shutdown=getattr(exporter, "shutdown", None),
        )
        self.bridge = LogBridge(reactor)
        self.bridge.install()

    # -- the middleware ---------------------------------------------------------

    def request_received(self, exchange: Exchange) -> None:
        notes = exchange.notes
        call = notes.get(NOTE)
        headers = exchange.request.headers
        raw = headers._rawHeaders if _RAW_HEADERS else None
        if call is not None or raw is None or b"Traceparent" in raw:
            if call is None:
                call = self._context(exchange)
            self._attempt_started(exchange, call)
            return None
        # The common case, inlined (this hook runs on every call, sampled
        # or not): no client trace, a new trace id, the first attempt.
        ids = _getrandbits(256).to_bytes(32, "big")
        trace_id, span_id, client_id = ids[:16], ids[16:24], ids[24:]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN or client_id == _ZERO_SPAN:
            call = self._context(exchange)
            self._attempt_started(exchange, call)
            return None
        sampled = self.everything or int.from_bytes(ids[8:16], "big") < self.bound
        notes[NOTE] = CallContext(trace_id, span_id, sampled, None, [client_id])
        raw[b"Traceparent"] = [
            b"".join((b"00-", _hex(trace_id), b"-", _hex(client_id), b"-01" if sampled else b"-00"))
        ]
        if b"Tracestate" in raw:
            del raw[b"Tracestate"]
        return None

    def exchange_finished(self, exchange: Exchange) -> None:
        call = exchange.notes.get(NOTE) or self._context(exchange)
        if not call.sampled:
            return
        spans = self._spans(exchange, call)
        self.queue.submit(b"".join(spans), len(spans))

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
            self.reactor, self.reactor.getThreadPool(), self.queue.force_flush
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
        traceparent = headers.getRawHeaders(b"traceparent")
        parent = None if traceparent is None else self._parent(headers, traceparent)
        ids = _getrandbits(192).to_bytes(24, "big")
        if parent is not None:
            trace_id = parent.trace_id.to_bytes(16, "big")
            sampled = parent.trace_flags.sampled
        else:
            trace_id = ids[:16]
            if trace_id == _ZERO_TRACE:
                trace_id = _new_id(16)
            sampled = self.everything or int.from_bytes(trace_id[8:], "big") < self.bound
        span_id = ids[16:]
        if span_id == _ZERO_SPAN:
            span_id = _new_id(8)
        call = CallContext(trace_id, span_id, sampled, parent)
        exchange.notes[NOTE] = call
        return call

    def _parent(self, headers: Any, traceparent: list[bytes]) -> Any:
        """
        The client's span context, when its ``traceparent`` is valid.  Two
        ``traceparent`` headers make no valid one (W3C Trace Context).
        """
        if len(traceparent) != 1:
            return None
        carrier = {"traceparent": traceparent}
        tracestate = headers.getRawHeaders(b"tracestate")
        if tracestate:
            carrier["tracestate"] = tracestate
        parent = get_current_span(
            self.propagator.extract(carrier, getter=_GETTER)
        ).get_span_context()
        return parent if parent.is_valid else None

    def _attempt_started(self, exchange: Exchange, call: CallContext) -> None:
        """
        A new upstream attempt: a CLIENT span id, and a ``traceparent`` naming
        it on the request the upstream will see.  The client's is replaced;
        its ``tracestate`` goes on unchanged, or is dropped with a
        ``traceparent`` that was not valid (W3C: it belonged to that trace).
        """
        span_id = _getrandbits(64).to_bytes(8, "big")
        if span_id == _ZERO_SPAN:
            span_id = _new_id(8)
        call.client_span_ids.append(span_id)
        value = b"".join(
            (b"00-", _hex(call.trace_id), b"-", _hex(span_id), b"-01" if call.sampled else b"-00")
        )
        headers = exchange.request.headers
        raw = getattr(headers, "_rawHeaders", None) if _RAW_HEADERS else None
        if raw is not None:
            # Twisted's Headers re-checks a name and value on every call;
            # these are known good (measured: a fifth of this hook's cost).
            raw[b"Traceparent"] = [value]
            if call.parent is None and b"Tracestate" in raw:
                del raw[b"Tracestate"]
            return
        headers.setRawHeaders(b"traceparent", [value])
        if call.parent is None and headers.hasHeader(b"tracestate"):
            headers.removeHeader(b"tracestate")

    # -- spans ----------------------------------------------------------------------

    def _spans(self, exchange: Exchange, call: CallContext) -> list[bytes]:
        """
        The call's spans, encoded: a CLIENT span per upstream attempt, then
        the SERVER span.
        """
        # The exchange's times are the reactor's seconds; spans want the wall
        # clock's nanoseconds.
        now = self.reactor.seconds()
        offset = time.time_ns() - int(now * 1e9)
        ended = exchange.ended_at
        end = int((now if ended is None else ended) * 1e9) + offset
        trace_id = call.trace_id
        parent = call.parent
        state = b""
        if parent is not None and parent.trace_state:
            state = otlpwire.trace_state_field(parent.trace_state.to_header())
        asked, common, name = self._request_part(exchange)
        spans = []
        if not exchange.attempts and exchange.sent_at is not None:
            # Without failover (the common case, inlined): one attempt,
            # from the exchange's own times, as attempts_of makes it.
            response = exchange.response
            if response is None:
                outcome: tuple[Any, ...] = (self.address, self.port, None, None, exchange.error_kind)
            else:
                outcome = (self.address, self.port, None, response.status, None)
            tried, failed = self._tried.get(outcome) or self._attempt_part(outcome)
            sent = call.client_span_ids
            started, stopped = exchange.sent_at, exchange.ended_at
            spans.append(
                otlpwire.span(
                    trace_id, sent[0] if sent else _new_id(8), call.span_id, False, state, name,
                    CLIENT, int(started * 1e9) + offset,
                    end if stopped is None else int(stopped * 1e9) + offset,
                    common + tried, b"", failed,
                )
            )
            where = outcome[:3]
            attempts = None
        else:
            attempts = self._attempts(exchange)
        if attempts:
            span = otlpwire.span
            sent = call.client_span_ids
            client_ids = sent if len(sent) == len(attempts) else self._client_ids(call, len(attempts))
            for (started, stopped, *outcome), span_id in zip(attempts, client_ids):
                tried, failed = self._attempt_part(outcome)
                spans.append(
                    span(
                        trace_id, span_id, call.span_id, False, state, name, CLIENT,
                        int(started * 1e9) + offset,
                        end if stopped is None else int(stopped * 1e9) + offset,
                        common + tried,
                        b"",
                        failed,
                    )
                )
            where = attempts[-1][2:5]
        elif attempts is not None:
            where = (self.address, self.port, None)
        model, ident, reasons = genai.response_summary(exchange)
        answered, failed = self._answer_part(exchange, model, reasons, where)
        events = b""
        if self.capture_content:
            events = otlpwire.event(
                "gen_ai.client.inference.operation.details", end, self._content(exchange)
            )
        spans.append(
            otlpwire.span(
                trace_id, call.span_id,
                None if parent is None else parent.span_id.to_bytes(8, "big"),
                parent is not None and parent.is_remote,
                state, name, SERVER,
                int(exchange.received * 1e9) + offset, end,
                asked + answered + self._own_part(exchange, ident),
                events,
                failed,
            )
        )
        return spans

    def _request_part(self, exchange: Exchange) -> tuple[bytes, bytes, bytes]:
        """
        The SERVER span's request attributes, the CLIENT spans' share of
        them, and the span name, encoded; found again by the request fields
        they come from.
        """
        request = exchange.request
        body = exchange.request_json
        key: Any = (exchange.provider, request.method, request.uri)
        if body.__class__ is dict:
            fields = [key]
            for field, value in body.items():
                if field in _REQUEST_FIELDS:
                    # The type too: 1 and 1.0 are equal keys, not equal on the wire.
                    kind = value.__class__
                    fields += (field, kind, tuple(value) if kind is list else value)
            key = tuple(fields)
        try:
            found = self._asked.get(key)
        except TypeError:  # a value that cannot be hashed (a list of objects)
            found, key = None, None
        if found is not None:
            return found
        operation = genai.operation_of(request.path)
        attributes = genai.request_attributes(exchange, operation)
        name = genai.span_name(operation, attributes.get("gen_ai.request.model"), request.method)
        encode = self.pairs.encode
        found = (
            encode(attributes.items()),
            encode([(k, attributes[k]) for k in _CLIENT_KEYS if k in attributes]),
            otlpwire.name_field(name),
        )
        if key is not None:
            _remember(self._asked, key, found)
        return found

    def _attempts(self, exchange: Exchange) -> list[tuple[Any, ...]]:
        """
        The call's upstream attempts (:func:`attempts_of`) as plain tuples:
        started, ended, address, port, upstream, status, error kind.
        """
        if not exchange.attempts:
            # Without failover, one attempt, from the exchange's own times.
            if exchange.sent_at is None:
                return []
            response = exchange.response
            if response is None:
                outcome = (None, exchange.error_kind)
            else:
                outcome = (response.status, None)
            return [(exchange.sent_at, exchange.ended_at, self.address, self.port, None, *outcome)]
        return [
            (a.started, a.ended, a.address, a.port, a.upstream, a.status, a.error_kind)
            for a in attempts_of(exchange, self.address, self.port)
        ]

    def _attempt_part(self, outcome: Any) -> tuple[bytes, bool]:
        """
        A CLIENT span's own attributes, encoded, and whether it failed, from
        the attempt's address, port, upstream, status and error kind.
        """
        key = tuple(outcome)
        found = self._tried.get(key)
        if found is None:
            pairs = _attempt_attributes(*key)
            found = (self.pairs.encode(pairs), pairs[-1][0] == "error.type")
            _remember(self._tried, key, found)
        return found

    def _answer_part(
        self,
        exchange: Exchange,
        model: str | None,
        reasons: tuple[str, ...],
        where: tuple[Any, Any, Any],
    ) -> tuple[bytes, bool]:
        """
        What the call answered that repeats between calls (the answer's
        model and finish reasons, the status, the failure, the upstream,
        the session decision), encoded, and whether the call failed.
        """
        response = exchange.response
        status = exchange.sent_status
        if status is None and response is not None:
            status = response.status
        how = exchange.notes.get("session_how")
        key = (model, reasons, status, exchange.error_kind, how, where)
        found = self._answered.get(key)
        if found is None:
            attributes: dict[str, Any] = {}
            if model is not None:
                attributes["gen_ai.response.model"] = model
            if reasons:
                attributes["gen_ai.response.finish_reasons"] = reasons
            address, port, upstream = where
            attributes["server.address"] = address
            attributes["server.port"] = port
            if upstream is not None:
                attributes["llmgate.upstream"] = upstream
            if how.__class__ is str:
                attributes["llmgate.session.decision"] = how
            if status is not None:
                attributes["http.response.status_code"] = status
            failure = exchange.error_kind or (
                str(status) if status is not None and status >= 400 else None
            )
            if failure is not None:
                attributes["error.type"] = failure
            found = (self.pairs.encode(attributes.items()), failure is not None)
            _remember(self._answered, key, found)
        return found

    def _own_part(self, exchange: Exchange, ident: str | None) -> bytes:
        """
        What differs on every call: its ids (``ident``: the answer's), its
        token counts, its time to first token.
        """
        try:
            data = exchange.id.encode()
            parts = [_EXCHANGE_ID[len(data)], data]
            usage = exchange.usage
            if usage:
                counts = (usage.get("input_tokens"), usage.get("output_tokens"))
                encoded = self._counts.get(counts)
                if encoded is None:
                    encoded = self.pairs.encode(
                        [("gen_ai.usage." + key, value)
                         for key, value in zip(_USAGE_KEYS, counts) if value is not None]
                    )
                    _remember(self._counts, counts, encoded)
                parts.append(encoded)
            if ident is not None:
                data = ident.encode()
                parts += (_RESPONSE_ID[len(data)], data)
            session = exchange.session_id
            if session is not None:
                data = session.encode()
                parts += (_CONVERSATION_ID[len(data)], data)
        except (IndexError, AttributeError, UnicodeEncodeError):  # a long id, a surrogate...
            return self._own_part_slowly(exchange, ident)
        response = exchange.response
        if response is not None and response.streaming:
            ttfb = exchange.ttfb
            if ttfb is not None:
                parts.append(self.pairs.one("llmgate.time_to_first_token", ttfb))
        return b"".join(parts)

    def _own_part_slowly(self, exchange: Exchange, ident: str | None) -> bytes:
        own: list[tuple[str, Any]] = [("llmgate.exchange.id", exchange.id)]
        usage = exchange.usage or {}
        for key in _USAGE_KEYS:
            if usage.get(key) is not None:
                own.append(("gen_ai.usage." + key, usage[key]))
        if ident is not None:
            own.append(("gen_ai.response.id", ident))
        if exchange.session_id is not None:
            own.append(("gen_ai.conversation.id", exchange.session_id))
        response = exchange.response
        if response is not None and response.streaming and exchange.ttfb is not None:
            own.append(("llmgate.time_to_first_token", exchange.ttfb))
        one = self.pairs.one
        return b"".join(one(key, value) for key, value in own)

    def _client_ids(self, call: CallContext, count: int) -> list[bytes]:
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
        return [_new_id(8) for _ in range(missing)] + sent

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

#: The request body's fields that request attributes are made of.
_REQUEST_FIELDS = frozenset(
    {"model", "stop", "stop_sequences", *(field for field, _ in genai.REQUEST_PARAMETERS)}
)

_USAGE_KEYS = ("input_tokens", "output_tokens")
_EXCHANGE_ID = otlpwire.string_heads("llmgate.exchange.id")
_RESPONSE_ID = otlpwire.string_heads("gen_ai.response.id")
_CONVERSATION_ID = otlpwire.string_heads("gen_ai.conversation.id")

#: Entries kept per cache of encoded attributes; past it the cache starts again.
_CACHE_SIZE = 1024


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


def _attempt_attributes(
    address: str, port: int, upstream: str | None, status: int | None, error_kind: str | None
) -> list[tuple[str, Any]]:
    """
    A CLIENT span's own attributes: this attempt's upstream, status and
    failure (``error.type`` last, when there is one).
    """
    pairs: list[tuple[str, Any]] = [("server.address", address), ("server.port", port)]
    if upstream is not None:
        pairs.append(("llmgate.upstream", upstream))
    if status is not None:
        pairs.append(("http.response.status_code", status))
    failure = error_kind or (str(status) if status is not None and status >= 400 else None)
    if failure is not None:
        pairs.append(("error.type", failure))
    return pairs


_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_getrandbits = random.getrandbits
_hex = binascii.hexlify


def _new_id(size: int) -> bytes:
    """
    A random trace (16 bytes) or span (8 bytes) id, never all zeros, from
    ``random`` as the SDK's ``RandomIdGenerator`` draws them (the ``random``
    module reseeds itself in a forked child).
    """
    value = _getrandbits(size * 8).to_bytes(size, "big")
    while not any(value):
        value = _getrandbits(size * 8).to_bytes(size, "big")
    return value


def _raw_headers_hold_canonical_names() -> bool:
    """
    Whether Twisted's ``Headers`` keeps its values in ``_rawHeaders`` under
    capitalised names, as :meth:`OtelMiddleware._attempt_started` writes
    them; else that hook takes the public, slower way.
    """
    headers = Headers({b"traceparent": [b"1"], b"tracestate": [b"2"]})
    raw = getattr(headers, "_rawHeaders", None)
    return isinstance(raw, dict) and raw == {b"Traceparent": [b"1"], b"Tracestate": [b"2"]}


_RAW_HEADERS = _raw_headers_hold_canonical_names()


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
