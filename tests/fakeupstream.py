"""
A fake LLM upstream written in Twisted, for end-to-end tests over loopback.

It answers OpenAI chat completions and Anthropic messages (plain and
streamed, trickled with real gaps), and has paths that misbehave on purpose:
a stall before headers, a death mid-stream, a stall mid-stream, a redirect,
a cookie, a gzip body, a large stream.  Every request is recorded, and every
connection that closes is reported, so tests can see what reached it.
"""

from __future__ import annotations

import gzip
import json
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web import server
from twisted.web.resource import Resource


@attrs.define
class Seen:
    method: bytes
    uri: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def _words(reply: str) -> list[str]:
    parts = reply.split(" ")
    return [part if i == 0 else " " + part for i, part in enumerate(parts)]


def openai_completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def openai_chunks(text: str, model: str, usage: bool) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        document = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + json.dumps(document).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in _words(text)]
    events.append(chunk({}, "stop"))
    if usage:
        document = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
        events.append(b"data: " + json.dumps(document).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic_message(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 13, "output_tokens": 9},
    }


def anthropic_events(text: str, model: str) -> list[bytes]:
    def event(name: str, document: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + json.dumps(document).encode() + b"\n\n"

    start = anthropic_message("", model)
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = {"input_tokens": 13, "output_tokens": 1}
    events = [
        event("message_start", {"type": "message_start", "message": start}),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        b": keep-alive comment\n\n",
        event("ping", {"type": "ping"}),
    ]
    events += [
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
        )
        for word in _words(text)
    ]
    events += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 9},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return events


class FakeUpstream(Resource):
    """
    The fake upstream's root resource.

    :ivar seen: every request received, in order.
    :ivar closed: fires (a fresh Deferred each time it is replaced) when a
        connection the upstream was streaming on is lost early.
    :ivar reply: the text of every answer (a callable of the request body).
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, gap: float = 0.002) -> None:
        super().__init__()
        self.clock = clock
        self.gap = gap
        self.seen: list[Seen] = []
        self.stream_lost: list[Deferred[None]] = []
        self.reply: Callable[[dict[str, Any]], str] = lambda body: "Hello from the fake upstream"
        self.open_streams = 0

    def notify_stream_lost(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.stream_lost.append(d)
        return d

    def render(self, request: server.Request) -> Any:
        body = request.content.read()
        self.seen.append(
            Seen(
                method=request.method,
                uri=request.uri,
                headers={k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
                body=body,
            )
        )
        path = request.path
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            document = {}
        handler = getattr(self, "do_" + path.decode().strip("/").replace("/", "_").replace("-", "_"), None)
        if handler is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": {"message": "no such path", "type": "not_found"}}).encode()
        return handler(request, document)

    # -- well-behaved endpoints ---------------------------------------------------

    def do_v1_chat_completions(self, request: server.Request, document: dict[str, Any]) -> Any:
        text = self.reply(document)
        model = document.get("model", "gpt-fake")
        if document.get("stream"):
            usage = bool((document.get("stream_options") or {}).get("include_usage"))
            return self._stream(request, openai_chunks(text, model, usage))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(openai_completion(text, model)).encode()

    def do_v1_messages(self, request: server.Request, document: dict[str, Any]) -> Any:
        text = self.reply(document)
        model = document.get("model", "claude-fake")
        if document.get("stream"):
            return self._stream(request, anthropic_events(text, model))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(anthropic_message(text, model)).encode()

    def do_v1_models(self, request: server.Request, document: dict[str, Any]) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"object": "list", "data": [{"id": "gpt-fake", "object": "model"}]}).encode()

    def do_echo(self, request: server.Request, document: dict[str, Any]) -> bytes:
        """
        The request as the upstream saw it, as JSON.
        """
        seen = self.seen[-1]
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-upstream-header", b"kept")
        request.setHeader(b"connection", b"close, x-hop")
        request.setHeader(b"x-hop", b"dropped")
        request.setHeader(b"keep-alive", b"timeout=5")
        return json.dumps(
            {
                "method": seen.method.decode(),
                "uri": seen.uri.decode(),
                "headers": {k.decode(): [x.decode() for x in v] for k, v in seen.headers.items()},
                "body": seen.body.decode("utf-8", "replace"),
            }
        ).encode()

    def do_status_418(self, request: server.Request, document: dict[str, Any]) -> bytes:
        request.setResponseCode(418)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"retry-after", b"7")
        return b'{"error": {"message": "teapot", "type": "teapot"}}'

    def do_redirect(self, request: server.Request, document: dict[str, Any]) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", b"/v1/models")
        return b""

    def do_cookie(self, request: server.Request, document: dict[str, Any]) -> bytes:
        request.setHeader(b"set-cookie", b"upstream=secret-session; Path=/")
        request.setHeader(b"content-type", b"application/json")
        return b"{}"

    def do_gzip(self, request: server.Request, document: dict[str, Any]) -> bytes:
        payload = json.dumps(openai_completion("compressed answer", "gpt-fake")).encode()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-encoding", b"gzip")
        return gzip.compress(payload)

    # -- misbehaving endpoints ----------------------------------------------------

    def do_stall(self, request: server.Request, document: dict[str, Any]) -> Any:
        """
        Never answer; report when the gateway gives up the connection.
        """
        self._watch(request)
        return server.NOT_DONE_YET

    def do_die_mid_stream(self, request: server.Request, document: dict[str, Any]) -> Any:
        events = openai_chunks("this answer will be cut", "gpt-fake", False)[:3]
        return self._stream(request, events, then=lambda: request.channel.transport.abortConnection())

    def do_die_mid_body(self, request: server.Request, document: dict[str, Any]) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"1000")
        request.write(b'{"partial": ')
        self.clock.callLater(self.gap, request.channel.transport.abortConnection)
        return server.NOT_DONE_YET

    def do_stall_mid_stream(self, request: server.Request, document: dict[str, Any]) -> Any:
        events = openai_chunks("this answer will stall", "gpt-fake", False)[:2]
        self._watch(request)
        return self._stream(request, events, then=lambda: None)

    def do_big_stream(self, request: server.Request, document: dict[str, Any]) -> Any:
        """
        ``megabytes`` MB of SSE events, produced only as fast as the
        connection drains (the upstream itself honours backpressure).
        """
        total = int(document.get("megabytes", 1)) * 1024 * 1024
        request.setHeader(b"content-type", b"text/event-stream")
        _BigStream(request, total).start()
        self._watch(request)
        return server.NOT_DONE_YET

    def do_slow_stream(self, request: server.Request, document: dict[str, Any]) -> Any:
        """
        An endless trickle of events, one per gap, until the client goes.
        """
        request.setHeader(b"content-type", b"text/event-stream")
        self._watch(request)
        state = {"n": 0, "stopped": False}
        request.notifyFinish().addBoth(lambda _: state.update(stopped=True))

        def tick() -> None:
            if state["stopped"]:
                return
            state["n"] += 1
            request.write(b"data: {\"n\": %d}\n\n" % state["n"])
            self.clock.callLater(self.gap, tick)

        tick()
        return server.NOT_DONE_YET

    # -- endpoints added for the end-to-end relay and SDK tests -------------------

    def do_big_stream_counted(self, request: server.Request, document: dict[str, Any]) -> Any:
        """
        ``/big-stream`` whose producer is kept in ``big_streams``, so a test can
        read how many bytes the upstream has written so far (``sent``).
        """
        total = int(document.get("megabytes", 1)) * 1024 * 1024
        request.setHeader(b"content-type", b"text/event-stream")
        stream = _CountedBigStream(request, total)
        if not hasattr(self, "big_streams"):
            self.big_streams: list[_CountedBigStream] = []
        self.big_streams.append(stream)
        stream.start()
        self._watch(request)
        return server.NOT_DONE_YET

    def do_die_v1_chat_completions(self, request: server.Request, document: dict[str, Any]) -> Any:
        """
        An OpenAI chat completions stream (SDK path ``/die/v1/chat/completions``)
        that dies after three chunks.
        """
        model = document.get("model", "gpt-fake")
        events = openai_chunks("this answer will be cut", model, False)[:3]
        return self._stream(request, events, then=lambda: request.channel.transport.abortConnection())

    def do_die_v1_messages(self, request: server.Request, document: dict[str, Any]) -> Any:
        """
        An Anthropic messages stream (SDK path ``/die/v1/messages``) that dies
        after its first text delta.
        """
        model = document.get("model", "claude-fake")
        events = anthropic_events("this answer will be cut", model)[:5]
        return self._stream(request, events, then=lambda: request.channel.transport.abortConnection())

    def do_hang_up(self, request: server.Request, document: dict[str, Any]) -> Any:
        """
        Read the request, then close the connection without answering (a
        server that crashed while working on it).
        """
        request.channel.transport.abortConnection()
        return server.NOT_DONE_YET

    # -- helpers ---------------------------------------------------------------------

    def _watch(self, request: server.Request) -> None:
        self.open_streams += 1

        def lost(reason: Any) -> None:
            self.open_streams -= 1
            waiting, self.stream_lost = self.stream_lost, []
            for d in waiting:
                d.callback(None)

        request.notifyFinish().addBoth(lost)

    def _stream(
        self, request: server.Request, events: list[bytes], then: Callable[[], None] | None = None
    ) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def send(index: int) -> None:
            if gone:
                return
            if index < len(events):
                request.write(events[index])
                self.clock.callLater(self.gap, send, index + 1)
            elif then is not None:
                then()
            else:
                request.finish()

        send(0)
        return server.NOT_DONE_YET


class _BigStream:
    """
    A push producer for a large stream, so the fake upstream's own memory
    stays flat and only the gateway's behaviour is measured.
    """

    EVENT = b"data: " + b"x" * 1014 + b"\n\n"  # 1 KiB events

    def __init__(self, request: server.Request, total: int) -> None:
        self.request = request
        self.left = total
        self.paused = False
        self.stopped = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(lambda _: setattr(self, "stopped", True))
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

        batch = self.EVENT * 64
        while not self.paused and not self.stopped and self.left > 0:
            self.request.write(batch)
            self.left -= len(batch)
        if self.left <= 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.stopped = True


class _CountedBigStream(_BigStream):
    """
    A big stream that counts the bytes it has handed to the connection, made
    of events of exactly 1 KiB so ``megabytes`` MB is sent exactly (the base
    class's events are 1022 bytes, so its last batch overshoots the total).
    """

    EVENT = b"data: " + b"x" * 1016 + b"\n\n"

    def __init__(self, request: server.Request, total: int) -> None:
        super().__init__(request, total)
        self.total = total

    @property
    def sent(self) -> int:
        return self.total - self.left


__all__ = ["FakeUpstream", "Protocol", "deferLater"]


# -- an agent's model, for the session simulation (tests/sessionsim.py) ---------


def _sse(name: str | None, document: Any) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + json.dumps(document).encode() + b"\n\n"


def _pieces(text: str, size: int = 7) -> list[str]:
    """
    ``text`` cut in pieces of ``size`` characters, as a model streams JSON.
    """
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class AgentUpstream(FakeUpstream):
    """
    The fake upstream as an agent's model.

    ``reply(body)`` returns either a str (a text answer) or a dict
    ``{"text": str | None, "tool_calls": [{"name": str, "arguments": dict}]}``
    (an answer that calls tools); every tool call gets a unique id.  Besides
    chat completions and messages (plain and streamed, tool calls included)
    it answers the OpenAI Responses API (``/v1/responses``, ids ``resp_<n>``),
    and ``/fail/<any API path>`` answers 500 without calling ``reply``.
    """

    def __init__(self, clock: IReactorTime, gap: float = 0.0) -> None:
        super().__init__(clock, gap)
        self.serial = 0
        counter = iter(range(1, 1 << 62))
        self.reply = lambda body: f"answer {next(counter)} from the fake model"

    def _next(self) -> int:
        self.serial += 1
        return self.serial

    def _answer(self, document: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        reply: Any = self.reply(document)
        if isinstance(reply, str):
            return reply, []
        return reply.get("text"), list(reply.get("tool_calls") or [])

    # -- OpenAI chat completions ---------------------------------------------------

    def do_v1_chat_completions(self, request: server.Request, document: dict[str, Any]) -> Any:
        text, calls = self._answer(document)
        model = document.get("model", "gpt-fake")
        tool_calls = [
            {
                "id": f"call_{self._next():06d}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call["arguments"], separators=(",", ":")),
                },
            }
            for call in calls
        ]
        finish = "tool_calls" if tool_calls else "stop"
        if document.get("stream"):
            return self._stream(request, self._chat_chunks(text, tool_calls, model, finish, document))
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": [],
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        answer = openai_completion("", model)
        answer["id"] = f"chatcmpl-{self._next():06d}"
        answer["choices"][0]["message"] = message
        answer["choices"][0]["finish_reason"] = finish
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode()

    def _chat_chunks(
        self,
        text: str | None,
        tool_calls: list[dict[str, Any]],
        model: str,
        finish: str,
        document: dict[str, Any],
    ) -> list[bytes]:
        ident = f"chatcmpl-{self._next():06d}"

        def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
            return _sse(
                None,
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                },
            )

        events = [chunk({"role": "assistant", "content": "" if text is not None else None, "refusal": None})]
        if text is not None:
            events += [chunk({"content": word}) for word in _words(text)]
        for index, call in enumerate(tool_calls):
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            events += [
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                for piece in _pieces(call["function"]["arguments"])
            ]
        events.append(chunk({}, finish))
        if (document.get("stream_options") or {}).get("include_usage"):
            events.append(
                _sse(
                    None,
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": 1700000000,
                        "model": model,
                        "choices": [],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                    },
                )
            )
        events.append(b"data: [DONE]\n\n")
        return events

    # -- Anthropic messages ---------------------------------------------------------

    def do_v1_messages(self, request: server.Request, document: dict[str, Any]) -> Any:
        text, calls = self._answer(document)
        model = document.get("model", "claude-fake")
        blocks: list[dict[str, Any]] = []
        if text is not None:
            blocks.append({"type": "text", "text": text})
        for call in calls:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{self._next():06d}",
                    "name": call["name"],
                    "input": call["arguments"],
                }
            )
        message = anthropic_message("", model)
        message["id"] = f"msg_{self._next():06d}"
        message["content"] = blocks
        message["stop_reason"] = "tool_use" if calls else "end_turn"
        if document.get("stream"):
            return self._stream(request, self._anthropic_events(message))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(message).encode()

    def _anthropic_events(self, message: dict[str, Any]) -> list[bytes]:
        start = dict(message, content=[], stop_reason=None, usage={"input_tokens": 13, "output_tokens": 1})
        events = [_sse("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opening: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": word} for word in _words(block["text"])]
            else:
                opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                deltas = [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in _pieces(json.dumps(block["input"]))
                ]
            events.append(
                _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})
            )
            if index == 0:
                events.append(_sse("ping", {"type": "ping"}))
            events += [
                _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                for delta in deltas
            ]
            events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": 9},
                },
            )
        )
        events.append(_sse("message_stop", {"type": "message_stop"}))
        return events

    # -- OpenAI Responses API ---------------------------------------------------------

    def do_v1_responses(self, request: server.Request, document: dict[str, Any]) -> Any:
        text, calls = self._answer(document)
        serial = self._next()
        output: list[dict[str, Any]] = []
        if text is not None:
            output.append(
                {
                    "type": "message",
                    "id": f"msg_{serial:06d}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            )
        for call in calls:
            number = self._next()
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_{number:06d}",
                    "call_id": f"call_{number:06d}",
                    "name": call["name"],
                    "arguments": json.dumps(call["arguments"], separators=(",", ":")),
                    "status": "completed",
                }
            )
        response = {
            "id": f"resp_{serial:06d}",
            "object": "response",
            "created_at": 1700000000,
            "status": "completed",
            "model": document.get("model", "gpt-fake"),
            "previous_response_id": document.get("previous_response_id"),
            "output": output,
            "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18},
        }
        if not document.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(response).encode()
        sequence = iter(range(1 << 30))

        def event(kind: str, **fields: Any) -> bytes:
            return _sse(kind, {"type": kind, "sequence_number": next(sequence), **fields})

        opening = dict(response, status="in_progress", output=[], usage=None)
        events = [event("response.created", response=opening), event("response.in_progress", response=opening)]
        for index, item in enumerate(output):
            if item["type"] == "message":
                events.append(
                    event("response.output_item.added", output_index=index, item=dict(item, status="in_progress", content=[]))
                )
                events += [
                    event(
                        "response.output_text.delta",
                        item_id=item["id"], output_index=index, content_index=0, delta=word,
                    )
                    for word in _words(item["content"][0]["text"])
                ]
                events.append(
                    event(
                        "response.output_text.done",
                        item_id=item["id"], output_index=index, content_index=0, text=item["content"][0]["text"],
                    )
                )
            else:
                events.append(
                    event("response.output_item.added", output_index=index, item=dict(item, status="in_progress", arguments=""))
                )
                events += [
                    event("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece)
                    for piece in _pieces(item["arguments"])
                ]
            events.append(event("response.output_item.done", output_index=index, item=item))
        events.append(event("response.completed", response=response))
        return self._stream(request, events)

    def do_v1_messages_count_tokens(self, request: server.Request, document: dict[str, Any]) -> bytes:
        """
        Anthropic's token counting: the same body as a message, no answer.
        """
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"input_tokens": 10 + len(json.dumps(document)) // 4}).encode()

    # -- failures -------------------------------------------------------------------------

    def _fail(self, request: server.Request, document: dict[str, Any]) -> bytes:
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": {"message": "the fake model failed", "type": "server_error"}}).encode()

    do_fail_v1_chat_completions = _fail
    do_fail_v1_messages = _fail
    do_fail_v1_responses = _fail


# -- an OpenAI-like stream, for the usage.include_stream_usage tests -----------


def openai_like_chunks(text: str, model: str, usage: bool) -> list[bytes]:
    """
    A chat completions stream as OpenAI really sends it: when usage is asked
    for, every chunk carries ``"usage": null`` (last key, ``json.dumps``
    default separators) and one more chunk with no choices has the usage;
    without it, exactly :func:`openai_chunks`'s stream.
    """
    if not usage:
        return openai_chunks(text, model, False)
    events = []
    for event in openai_chunks(text, model, True):
        if event.startswith(b"data: {"):
            document = json.loads(event[len(b"data: ") :])
            document.setdefault("usage", None)
            event = b"data: " + json.dumps(document).encode() + b"\n\n"
        events.append(event)
    return events


def _do_openai_like_v1_chat_completions(
    self: FakeUpstream, request: server.Request, document: dict[str, Any]
) -> Any:
    """
    ``/openai-like/v1/chat/completions``: chat completions whose streams add
    ``"usage": null`` to every chunk when usage is asked for, as OpenAI does.
    """
    text = self.reply(document)
    model = document.get("model", "gpt-fake")
    if document.get("stream"):
        usage = bool((document.get("stream_options") or {}).get("include_usage"))
        return self._stream(request, openai_like_chunks(text, model, usage))
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(openai_completion(text, model)).encode()


FakeUpstream.do_openai_like_v1_chat_completions = _do_openai_like_v1_chat_completions  # type: ignore[attr-defined]
