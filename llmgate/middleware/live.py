"""
The live feed: calls starting, streams growing and calls ending, pushed to
whoever follows ``/api/events`` as they happen in this process.

It is a middleware the gateway adds itself when the live view is on.  With
no one following, every hook returns at once; with followers, calls in
flight and their stream text are sent at most every ``flush_seconds``, so a
fast stream costs one message per interval, not one per event, and a call
shorter than the interval costs none here (its trace, indexed, is told of
once: ``call_indexed``).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from llmgate import fastjson
from llmgate.exchange import Exchange
from llmgate.middleware import Middleware
from llmgate.sse import ServerSentEvent

Subscriber = Callable[[str, dict[str, Any]], None]

#: Stream text kept per call in flight, for a page that opens mid-stream.
MAX_LIVE_TEXT = 64 * 1024


class Hub:
    """
    Publish ``(kind, data)`` messages to subscribers; a subscriber that
    raises is dropped, never the publisher's problem.
    """

    log = Logger()

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._framed: tuple[dict[str, Any], bytes] | None = None

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    @property
    def followers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """
        :return: a callable that unsubscribes (safe to call twice).
        """
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def frame(self, kind: str, data: dict[str, Any]) -> bytes:
        """
        ``data`` as one Server-Sent Event, serialised once for every
        follower of the message being published.
        """
        framed = self._framed
        if framed is None or framed[0] is not data:
            encoded = b"event: %s\ndata: %s\n\n" % (kind.encode("ascii"), fastjson.dumps(data))
            framed = self._framed = (data, encoded)
        return framed[1]

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self._framed = None
        for subscriber in list(self._subscribers):
            try:
                subscriber(kind, data)
            except Exception:
                self.log.failure("live view subscriber failed; dropping it")
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)


def delta_text(event: ServerSentEvent) -> str:
    """
    The text a stream event adds (answer text or tool-call arguments), for
    OpenAI chat and Responses streams and Anthropic streams; "" for others.
    """
    if event.data[:1] != "{":
        return ""
    try:
        document = event.json()
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    delta = document.get("delta")
    if isinstance(delta, dict):  # Anthropic content_block_delta
        text = delta.get("text", delta.get("partial_json", delta.get("thinking")))
        return text if isinstance(text, str) else ""
    if isinstance(delta, str):  # Responses API *.delta events
        return delta if event.event.endswith(("output_text.delta", "arguments.delta")) else ""
    choices = document.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        piece = choices[0].get("delta")
        if isinstance(piece, dict):
            text = piece.get("content")
            out = text if isinstance(text, str) else ""
            for call in piece.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    out += (function.get("name") or "") + (function.get("arguments") or "")
            return out
    return ""


def started(exchange: Exchange, wall: float) -> dict[str, Any]:
    """
    What the feed says of a call that starts.
    """
    return {
        "id": exchange.id,
        "time": wall,
        "session_id": exchange.session_id,
        "decision": exchange.notes.get("session_how"),
        "provider": exchange.provider,
        "model": exchange.model,
        "path": exchange.request.path.decode("utf-8", "replace"),
        "streaming": exchange.stream_requested,
    }


class InFlight:
    """
    A call in flight while followed.  Its start is announced on the feed
    only once it has been in flight for a flush interval: a call that ends
    sooner is told of once, when its trace is indexed (``call_indexed``),
    not three times.
    """

    __slots__ = ("exchange", "wall", "text", "sent", "pending", "announced")

    def __init__(self, exchange: Exchange, wall: float) -> None:
        self.exchange = exchange
        self.wall = wall
        self.text = ""
        self.sent = 0
        self.pending: list[str] = []
        self.announced: dict[str, Any] | None = None

    @property
    def call(self) -> dict[str, Any]:
        """
        What the feed says of the call's start (``call_started``).
        """
        if self.announced is not None:
            return self.announced
        return started(self.exchange, self.wall)

    @property
    def session_id(self) -> str | None:
        return self.exchange.session_id


class LiveFeed(Middleware):
    """
    Push this process's calls to the hub while anyone listens.

    Everything is sent at most every ``flush_seconds``: the start of the
    calls in flight for that long (``call_started``), the stream text gathered
    since (``delta``); a call announced is ended on the feed
    (``call_ended``) when it ends.  A call shorter than the interval costs
    the feed nothing here: its ``call_indexed`` message, when
    its trace lands, is the one message it gets.

    :param reactor: for the flush timer and wall time.
    :param hub: where messages go.
    :param flush_seconds: how often calls in flight and stream text are sent.
    :param on_close: called when the gateway stops (the view stops with it).
    :param on_finished: told of every call's end, followed or not (the index).
    :param with_text: send stream text (off when the trace keeps no bodies:
        the view shows no more than the trace holds).
    :param scrub: hides secrets in stream text, as the trace does.
    :ivar live: calls in flight while followed, by id.
    """

    name = "live"

    def __init__(
        self,
        reactor: Any,
        hub: Hub,
        flush_seconds: float = 0.1,
        on_close: Callable[[], None] | None = None,
        on_finished: Callable[[Exchange], None] | None = None,
        with_text: bool = True,
        scrub: Callable[[str], str] = str,
    ) -> None:
        self.reactor = reactor
        self.on_close = on_close
        self.on_finished = on_finished
        self.with_text = with_text
        self.scrub = scrub
        self.hub = hub
        self.flush_seconds = flush_seconds
        self.live: dict[str, InFlight] = {}
        self._timer: Any = None

    def request_received(self, exchange: Exchange) -> None:
        if not self.hub.active:
            return None
        self.live[exchange.id] = InFlight(exchange, self.reactor.seconds())
        if self._timer is None:
            self._timer = self.reactor.callLater(self.flush_seconds, self._flush)
        return None

    def event_received(self, exchange: Exchange, event: ServerSentEvent) -> None:
        entry = self.live.get(exchange.id)
        if entry is None or not self.with_text:
            return
        text = delta_text(event)
        if not text:
            return
        text = self.scrub(text)
        if len(entry.text) < MAX_LIVE_TEXT:
            entry.text += text
        entry.pending.append(text)
        if self._timer is None:
            self._timer = self.reactor.callLater(self.flush_seconds, self._flush)

    def exchange_finished(self, exchange: Exchange) -> None:
        if self.on_finished is not None:
            self.on_finished(exchange)
        if not self.live:
            return
        entry = self.live.pop(exchange.id, None)
        if entry is None or entry.announced is None:
            return
        self._send(entry)
        usage = exchange.usage or {}
        self.hub.publish(
            "call_ended",
            {
                "id": exchange.id,
                "session_id": exchange.session_id,
                "status": exchange.sent_status
                or (exchange.response.status if exchange.response else None),
                "duration_ms": _ms(exchange.duration),
                "ttfb_ms": _ms(exchange.ttfb),
                "tokens_in": usage.get("input_tokens", 0),
                "tokens_out": usage.get("output_tokens", 0),
                "error": exchange.error,
            },
        )

    def close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.on_close is not None:
            self.on_close()

    def state(self) -> dict[str, Any]:
        return {"followers": self.hub.followers, "calls_followed": len(self.live)}

    def _flush(self) -> None:
        """
        Announce the calls in flight for ``flush_seconds`` or more not
        announced yet, then send the text of each stream gathered since the
        last flush; come back while younger calls wait.
        """
        self._timer = None
        if not self.hub.active:
            self.live.clear()
            return
        born = self.reactor.seconds() - self.flush_seconds
        waiting = False
        for entry in list(self.live.values()):
            if entry.announced is None:
                if entry.wall > born:
                    waiting = True
                    continue
                entry.announced = started(entry.exchange, entry.wall)
                self.hub.publish("call_started", entry.announced)
            self._send(entry)
        if waiting and self._timer is None:
            self._timer = self.reactor.callLater(self.flush_seconds, self._flush)

    def _send(self, entry: InFlight) -> None:
        """
        Send what the stream added since the last time, with its offset in
        the call's text: a page that fetched the text meanwhile (from
        ``/api/calls`` or ``/api/sessions/<id>``) skips what it has.
        """
        if entry.pending:
            text = "".join(entry.pending)
            entry.pending = []
            offset = entry.sent
            entry.sent = offset + len(text)
            self.hub.publish(
                "delta",
                {"id": entry.exchange.id, "session_id": entry.exchange.session_id,
                 "offset": offset, "text": text},
            )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
