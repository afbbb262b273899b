"""
One request and its answer as they pass the gateway: the record every
middleware reads, filled in once as the call goes.
"""

from __future__ import annotations

import itertools
from llmgate import fastjson
import os
from typing import Any, Sequence

import attrs
from twisted.web.http_headers import Headers

from llmgate.sse import ServerSentEvent


_UNPARSED = object()

#: What :meth:`ResponseRecord.parsed_document` and
#: :meth:`Exchange.built_answer` return when nothing has computed it yet.
UNPARSED = _UNPARSED


class _ExchangeIds:
    """
    Exchange ids: 64 random bits per process, then a counter from a random
    start, as 32 hex digits.  Unique across processes and machines, like a
    random 128-bit id, without a system call per request.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(6), "big"))

    def __call__(self) -> str:
        return "%s%016x" % (self._prefix, next(self._counter))


#: A new exchange id.
new_exchange_id = _ExchangeIds()


@attrs.define(eq=False)
class RequestRecord:
    method: bytes
    #: Path and query exactly as the client sent them (origin form).
    uri: bytes
    headers: Headers
    body: bytes

    @property
    def path(self) -> bytes:
        return self.uri.split(b"?", 1)[0]

    @property
    def query(self) -> bytes:
        parts = self.uri.split(b"?", 1)
        return parts[1] if len(parts) == 2 else b""


@attrs.define(eq=False)
class ResponseRecord:
    status: int
    headers: list[tuple[bytes, Sequence[bytes]]]
    #: True when the answer is a Server-Sent Events stream.
    streaming: bool = False
    #: The first ``capture_limit`` bytes of a plain answer, decoded.
    body: bytearray = attrs.field(factory=bytearray)
    #: Events of a stream, up to ``capture_limit`` bytes of data.
    events: list[ServerSentEvent] = attrs.field(factory=list)
    event_count: int = 0
    body_size: int = 0
    #: Bytes or events went past the capture limit and were not kept.
    truncated: bool = False

    _document: Any = attrs.field(default=_UNPARSED, init=False, repr=False)

    def document(self) -> Any:
        """
        A plain answer's body parsed as JSON, once for every reader; None for
        a stream, a cut body or one that is not JSON.
        """
        if self._document is _UNPARSED:
            self._document = None
            if not self.streaming and not self.truncated and self.body:
                try:
                    self._document = fastjson.loads(self.body)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    pass
        return self._document

    def parsed_document(self) -> Any:
        """
        :meth:`document` if something has asked for it already, else
        :data:`UNPARSED`: for readers that should not pay for the parse on
        the reactor thread.
        """
        return self._document

    def header(self, name: bytes) -> bytes | None:
        for key, values in self.headers:
            if key.lower() == name and values:
                return values[0]
        return None


@attrs.define(eq=False)
class LocalAnswer:
    """
    An answer a middleware gives in place of the upstream's.
    """

    status: int
    body: bytes
    headers: Sequence[tuple[bytes, bytes]] = (
        (b"content-type", b"application/json"),
    )


@attrs.define(eq=False)
class Attempt:
    """
    One try of a call at one upstream.  Times are the reactor clock's.

    :ivar outcome: ``pending`` while it runs; then ``answered`` (its answer
        went to the client), ``failover`` (a status in the route's
        ``failover_on``, the next upstream was tried), or why it failed
        (``upstream_refused``, ``upstream_timeout``, ``upstream_reset``...).
    """

    upstream: str
    #: ``host:port`` of the upstream, never with credentials.
    address: str
    started: float
    ended: float | None = None
    outcome: str = "pending"
    status: int | None = None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "address": self.address,
            "outcome": self.outcome,
            "status": self.status,
            "started": self.started,
            "duration": self.duration,
        }


@attrs.define(eq=False)
class Exchange:
    """
    Everything known about one call.  Times are the reactor clock's seconds.
    """

    id: str
    #: The name of the call's API shape (``openai-chat``, ``anthropic-messages``,
    #: ``opaque``...), decided from its path.
    provider: str
    request: RequestRecord
    received: float
    #: The call's API shape (:class:`llmgate.interfaces.IApiShape`); None
    #: when the exchange was built without one (then ``provider`` names it).
    api: Any = None
    #: The configured name of the upstream that answered (or was last tried).
    upstream: str | None = None
    #: Every try at an upstream, in order.
    attempts: list[Attempt] = attrs.field(factory=list)
    response: ResponseRecord | None = None
    #: When the request was handed to the upstream connection pool.
    sent_at: float | None = None
    upstream_headers_at: float | None = None
    #: When the response head had been passed on, before its body.
    headers_relayed_at: float | None = None
    first_byte_at: float | None = None
    ended_at: float | None = None
    #: The status the gateway answered with itself (an error, a local answer).
    sent_status: int | None = None
    #: Why the call failed, in words safe to show (no secret); None if it did not.
    error: str | None = None
    #: Short machine-readable reason for ``error`` (``upstream_timeout``...).
    error_kind: str | None = None
    #: The client went away before the answer was complete.
    client_gone: bool = False
    #: The event that ends a complete stream (per the call's shape) was
    #: relayed to the client.
    stream_ended: bool = False
    #: The client hung up after the stream's end was relayed but before the
    #: upstream closed it: the answer is complete, not an error.
    closed_after_end: bool = False
    session_id: str | None = None
    usage: dict[str, int] | None = None
    #: Free space for middleware, keyed by middleware name.
    notes: dict[str, Any] = attrs.field(factory=dict)
    _json: Any = attrs.field(default=_UNPARSED, init=False, repr=False)
    _answer: Any = attrs.field(default=_UNPARSED, init=False, repr=False)

    @property
    def answer(self) -> dict[str, Any] | None:
        """
        The assistant message of a successful answer, reassembled once from
        the body or the stream's events, in the provider's message shape;
        None for a failed call or one that is not a chat answer.
        """
        if self._answer is _UNPARSED:
            self._answer = None
            response = self.response
            if (
                response is not None
                and self.error is None
                and 200 <= response.status < 300
                and not response.truncated
            ):
                from llmgate.answer import StreamAnswer, answer_from_body

                shape = self.shape
                if response.streaming:
                    assembler = StreamAnswer(shape)
                    for event in response.events:
                        assembler.feed(event)
                    self._answer = assembler.result()
                else:
                    document = response.document()
                    if document is not None:
                        self._answer = answer_from_body(shape, document)
        return self._answer

    def built_answer(self) -> Any:
        """
        :attr:`answer` if something has asked for it already, else
        :data:`UNPARSED`.
        """
        return self._answer

    @property
    def shape(self) -> Any:
        """
        The call's API shape, or its name when the exchange was built
        without one: what the readers of answers and usage take.
        """
        return self.api if self.api is not None else self.provider

    @property
    def system(self) -> str:
        """
        The provider family the call speaks to (``openai``, ``anthropic``),
        as traces, metrics and the live view name it.
        """
        return self.api.system if self.api is not None else self.provider

    @property
    def request_json(self) -> Any:
        """
        The request body parsed as JSON, once; None when it is not JSON.
        """
        if self._json is _UNPARSED:
            try:
                self._json = fastjson.loads(self.request.body) if self.request.body else None
            except (ValueError, UnicodeDecodeError, RecursionError):
                self._json = None
        return self._json

    def parsed_request_json(self) -> Any:
        """
        :attr:`request_json` if something has asked for it already, else
        :data:`UNPARSED`.
        """
        return self._json

    def invalidate_request_json(self) -> None:
        """
        Forget the parsed body, after a middleware replaced it.
        """
        self._json = _UNPARSED

    @property
    def model(self) -> str | None:
        body = self.request_json
        if isinstance(body, dict):
            model = body.get("model")
            if isinstance(model, str):
                return model
        return None

    @property
    def stream_requested(self) -> bool:
        body = self.request_json
        return isinstance(body, dict) and body.get("stream") is True

    @property
    def duration(self) -> float | None:
        if self.ended_at is None:
            return None
        return self.ended_at - self.received

    @property
    def overhead(self) -> float | None:
        """
        Seconds spent in the gateway itself: before the request went
        upstream, and between the upstream's head and passing it on.
        """
        if self.sent_at is None:
            return None
        spent = self.sent_at - self.received
        if self.upstream_headers_at is not None and self.headers_relayed_at is not None:
            spent += self.headers_relayed_at - self.upstream_headers_at
        return max(spent, 0.0)

    @property
    def ttfb(self) -> float | None:
        if self.first_byte_at is None:
            return None
        return self.first_byte_at - self.received
