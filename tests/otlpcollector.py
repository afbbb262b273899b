"""
A real OTLP/HTTP trace receiver for end-to-end tests: a Twisted resource that
decodes ``ExportTraceServiceRequest`` bodies with ``opentelemetry-proto``, as
a Collector would, and keeps every span and the raw bytes it received.

It can also hang (accept the request and never answer), to show that a stuck
collector costs the gateway nothing but dropped spans.
"""

from __future__ import annotations

from typing import Any

import attrs
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from twisted.internet.defer import Deferred
from twisted.web import server
from twisted.web.resource import Resource


@attrs.define
class ReceivedSpan:
    """
    One decoded span, with the values tests compare, and its resource's.
    """

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    start: int
    end: int
    resource: dict[str, Any]
    trace_state: str
    flags: int = 0
    scope: tuple[str, str] = ("", "")


_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """
    The spans of one ``ExportTraceServiceRequest``, decoded by
    ``opentelemetry-proto``.
    """
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    spans = []
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = (scope_spans.scope.name, scope_spans.scope.version)
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=_KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        events=[(e.name, _attributes(e.attributes)) for e in span.events],
                        status_code=span.status.code,
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                        resource=resource,
                        trace_state=span.trace_state,
                        flags=span.flags,
                        scope=scope,
                    )
                )
    return spans


class Collector(Resource):
    """
    ``POST /v1/traces``.

    :ivar spans: every span received, in order.
    :ivar raw: every request body, undecoded (for the secret canaries).
    :ivar headers: the headers of every export request.
    :ivar hang: when true, requests are held open and never answered.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[ReceivedSpan] = []
        self.raw: list[bytes] = []
        self.headers: list[dict[bytes, list[bytes]]] = []
        self.hang = False
        self.held: list[server.Request] = []
        self._waiting: list[tuple[int, Deferred[list[ReceivedSpan]]]] = []
        self._requests: list[Deferred[None]] = []

    def requested(self) -> Deferred[None]:
        """
        Fires when the next export request arrives (answered or held).
        """
        d: Deferred[None] = Deferred()
        self._requests.append(d)
        return d

    def wait_for(self, count: int) -> Deferred[list[ReceivedSpan]]:
        """
        Fires with the spans once at least ``count`` have arrived.
        """
        d: Deferred[list[ReceivedSpan]] = Deferred()
        self._waiting.append((count, d))
        self._wake()
        return d

    def render_POST(self, request: server.Request) -> Any:
        body = request.content.read()
        self.raw.append(body)
        self.headers.append(
            {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()}
        )
        if request.path != b"/v1/traces":
            request.setResponseCode(404)
            return b""
        waiting, self._requests = self._requests, []
        for d in waiting:
            d.callback(None)
        if self.hang:
            self.held.append(request)
            return server.NOT_DONE_YET
        self.spans.extend(decode(body))
        self._wake()
        request.setHeader(b"content-type", b"application/x-protobuf")
        return ExportTraceServiceResponse().SerializeToString()

    def release(self) -> None:
        """
        Drop the held requests' connections and answer from now on (a hung
        collector restarted).
        """
        self.hang = False
        held, self.held = self.held, []
        for request in held:
            if request.channel is not None:
                request.channel.transport.abortConnection()

    def _wake(self) -> None:
        still = []
        for count, d in self._waiting:
            if len(self.spans) >= count:
                d.callback(list(self.spans))
            else:
                still.append((count, d))
        self._waiting = still
