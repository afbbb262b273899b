"""
End to end: a client that hangs up as soon as it has a stream's last event
(Codex on ``response.completed``), before the upstream ends its body, has a
complete answer.  The session remembers it, and neither the metrics nor the
trace call the call a failure.

The upstream here holds its end of stream until the test lets it go, so the
client's hang-up always comes first; no test sleeps.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from llmgate.providers.registry import DEFAULT
from llmgate.sse import SSEParser

WAIT = 10.0
ANSWER_TEXT = "the answer, whole"


def _sse(name: str | None, document: Any) -> bytes:
    data = document if isinstance(document, str) else json.dumps(document)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {data}\n\n".encode()


def responses_events() -> tuple[list[bytes], bytes]:
    item = {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": ANSWER_TEXT, "annotations": []}],
    }
    created = {"type": "response.created", "response": {"id": "resp_1", "object": "response", "output": []}}
    done = {"type": "response.output_item.done", "output_index": 0, "item": item}
    completed = {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [item],
            "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8},
        },
    }
    return [
        _sse("response.created", created),
        _sse("response.output_item.done", done),
        _sse("response.completed", completed),
    ], b"response.completed"


def anthropic_events() -> tuple[list[bytes], bytes]:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 0},
    }
    return [
        _sse("message_start", {"type": "message_start", "message": message}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": ANSWER_TEXT}}),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": 3}}),
        _sse("message_stop", {"type": "message_stop"}),
    ], b"message_stop"


def chat_events() -> tuple[list[bytes], bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(None, {"id": "c1", "object": "chat.completion.chunk", "model": "m",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": ANSWER_TEXT}),
        chunk({}, "stop"),
        _sse(None, "[DONE]"),
    ], b"[DONE]"


SHAPES = {
    "/v1/responses": (
        responses_events,
        lambda turns: {"model": "m", "stream": True, "input": turns},
        lambda first, answer, second: [first, *answer["output"], second],
    ),
    "/v1/messages": (
        anthropic_events,
        lambda turns: {"model": "m", "max_tokens": 9, "stream": True, "messages": turns},
        lambda first, answer, second: [first, answer, second],
    ),
    "/v1/chat/completions": (
        chat_events,
        lambda turns: {"model": "m", "stream": True, "messages": turns},
        lambda first, answer, second: [first, answer, second],
    ),
}


class HoldingUpstream(Resource):
    """
    Writes a whole stream at once and keeps its end (the close of the body)
    until the connection is dropped.  ``lost`` fires when the gateway drops it.
    """

    isLeaf = True

    def __init__(self, events: list[bytes]) -> None:
        super().__init__()
        self.events = events
        self.lost: Deferred[None] = Deferred()

    def render_POST(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        for event in self.events:
            request.write(event)
        request.notifyFinish().addBoth(lambda _: self.lost.called or self.lost.callback(None))
        return NOT_DONE_YET


class HangUpOn(Protocol):
    """
    Sends one request, reads until ``marker`` and the end of its event, then
    closes the connection (as Codex does).
    """

    def __init__(self, request: bytes, marker: bytes) -> None:
        self.request = request
        self.marker = marker
        self.received = b""
        self.hung_up: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        at = self.received.find(self.marker)
        if at >= 0 and b"\n\n" in self.received[at:] and not self.hung_up.called:
            self.transport.loseConnection()
            self.hung_up.callback(self.received)


def raw_post(path: str, body: dict[str, Any], port: int) -> bytes:
    payload = json.dumps(body).encode()
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port
        + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload)
        + payload
    )


@pytest.mark.parametrize("path", sorted(SHAPES))
@pytest_twisted.inlineCallbacks
def test_a_client_that_hangs_up_on_the_last_event_has_a_complete_answer(make_gateway, path):
    events, builder, history = SHAPES[path]
    stream, marker = events()
    resource = HoldingUpstream(stream)
    site = Site(resource)
    site.noisy = False
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        gateway = make_gateway(llm__base_url=f"http://127.0.0.1:{listening.getHost().port}")
        port = int(gateway.url.rsplit(":", 1)[1])
        first = {"role": "user", "content": "tell me the answer"}
        client = HangUpOn(raw_post(path, builder([first]), port), marker)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = yield client.hung_up.addTimeout(WAIT, reactor)
        assert ANSWER_TEXT.encode() in received
        # The gateway drops the upstream's unfinished body once the client left.
        yield resource.lost.addTimeout(WAIT, reactor)
        parts = gateway.parts
        assert parts.forwarder.open_calls == {}
        metrics = parts.metrics
        assert metrics.client_disconnects == 0
        assert not metrics.errors
        assert [key[2] for key in metrics.requests] == ["2xx"]

        # The next turn continues the session from the remembered answer.
        before = parts.sessions.detector.counts["continued"]
        shape = DEFAULT.for_path(path.encode())
        second = {"role": "user", "content": "and then?"}
        reassembled = _answer_of(shape, stream)
        remembered = history(first, reassembled, second)
        resource2 = HoldingUpstream(stream)
        site.resource = resource2
        client2 = HangUpOn(raw_post(path, builder(remembered), port), marker)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client2)
        yield client2.hung_up.addTimeout(WAIT, reactor)
        yield resource2.lost.addTimeout(WAIT, reactor)
        assert parts.sessions.detector.counts["continued"] == before + 1
    finally:
        yield listening.stopListening()


def _answer_of(shape: Any, stream: list[bytes]) -> Any:
    assembler = shape.stream_answer()
    for event in SSEParser().feed(b"".join(stream)):
        assembler.feed(event)
    return assembler.result()


@pytest_twisted.inlineCallbacks
def test_a_client_that_hangs_up_before_the_last_event_is_still_gone(make_gateway):
    stream, _ = responses_events()
    resource = HoldingUpstream(stream[:-1])
    site = Site(resource)
    site.noisy = False
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        gateway = make_gateway(llm__base_url=f"http://127.0.0.1:{listening.getHost().port}")
        port = int(gateway.url.rsplit(":", 1)[1])
        body = {"model": "m", "stream": True, "input": [{"role": "user", "content": "hi"}]}
        client = HangUpOn(raw_post("/v1/responses", body, port), b"response.output_item.done")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.hung_up.addTimeout(WAIT, reactor)
        yield resource.lost.addTimeout(WAIT, reactor)
        assert gateway.parts.metrics.client_disconnects == 1
    finally:
        yield listening.stopListening()
