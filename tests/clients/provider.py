"""
A fake model provider for the real command-line agents (``make
test-clients``): Anthropic Messages and OpenAI Responses streams event for
event as the providers send them, usage in the final event, every answer
and every usage recorded so a test can compare what the clients print and
what ``/metrics`` counts with what was sent.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web import server
from twisted.web.resource import Resource

from tests.fakeupstream import _sse, _words


@attrs.define
class Call:
    api: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    text: str = ""
    usage: dict[str, int] = attrs.field(factory=dict)


class Provider(Resource):
    """
    Answers ``/v1/messages`` (and its ``count_tokens``) and ``/v1/responses``;
    every answer is ``Answer <n>: ...`` with a serial of its own.

    :ivar calls: every call received, in order, with its answer and usage.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, gap: float = 0.001) -> None:
        super().__init__()
        self.clock = clock
        self.gap = gap
        self.calls: list[Call] = []

    def render_GET(self, request: server.Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": {"type": "not_found_error", "message": "no such path"}}).encode()

    def render_POST(self, request: server.Request) -> Any:
        body = request.content.read()
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            document = {}
        path = request.path.decode("ascii", "replace")
        headers = {k.decode().lower(): v[-1].decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()}
        if path == "/v1/messages/count_tokens":
            self.calls.append(Call("count_tokens", path, headers, document))
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"input_tokens": 100 + len(body) // 40}).encode()
        if path == "/v1/messages":
            return self._messages(request, self._call("anthropic", path, headers, document, len(body)))
        if path == "/v1/responses":
            return self._responses(request, self._call("openai", path, headers, document, len(body)))
        return self.render_GET(request)

    def _call(self, api: str, path: str, headers: dict[str, str], body: dict[str, Any], size: int) -> Call:
        serial = len(self.calls) + 1
        text = f"Answer {serial}: the fake provider heard you, turn {serial} of this test."
        call = Call(api, path, headers, body, text)
        uncached = 50 + size // 40
        cached = 7 * serial
        written = 3 * serial if api == "anthropic" else 0
        call.usage = {"input": uncached + cached + written, "output": len(text.split()) + 2}
        call.usage.update(uncached=uncached, cached=cached, written=written)
        self.calls.append(call)
        return call

    def _stream(self, request: server.Request, events: list[bytes]) -> Any:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def send(index: int) -> None:
            if gone:
                return
            request.write(events[index])
            if index + 1 < len(events):
                self.clock.callLater(self.gap, send, index + 1)
            else:
                # The stream ends with its final event, as the providers'
                # do: a client may hang up as soon as it has that event.
                request.finish()

        send(0)
        return server.NOT_DONE_YET

    # -- Anthropic Messages ---------------------------------------------------------

    def _messages(self, request: server.Request, call: Call) -> Any:
        usage = call.usage
        model = call.body.get("model", "claude-fake")
        ident = f"msg_fake{len(self.calls):06d}"
        counts = {
            "input_tokens": usage["uncached"],
            "cache_creation_input_tokens": usage["written"],
            "cache_read_input_tokens": usage["cached"],
        }
        if not call.body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {
                    "id": ident, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": call.text}],
                    "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {**counts, "output_tokens": usage["output"]},
                }
            ).encode()
        start = {
            "id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {**counts, "output_tokens": 1, "service_tier": "standard"},
        }
        events = [_sse("message_start", {"type": "message_start", "message": start})]
        index = 0
        thinking = call.body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
            events += [
                _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                _sse("ping", {"type": "ping"}),
                _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "thinking_delta", "thinking": "Thinking it over."}}),
                _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}),
                _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ]
            index = 1
        events.append(
            _sse("content_block_start", {"type": "content_block_start", "index": index,
                                         "content_block": {"type": "text", "text": ""}})
        )
        if index == 0:
            events.append(_sse("ping", {"type": "ping"}))
        events += [
            _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                         "delta": {"type": "text_delta", "text": word}})
            for word in _words(call.text)
        ]
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            _sse("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {**counts, "output_tokens": usage["output"]}})
        )
        events.append(_sse("message_stop", {"type": "message_stop"}))
        return self._stream(request, events)

    # -- OpenAI Responses ----------------------------------------------------------------

    def _responses(self, request: server.Request, call: Call) -> Any:
        usage = call.usage
        serial = len(self.calls)
        item_id = f"msg_fake{serial:06d}"
        item = {
            "id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": call.text, "annotations": [], "logprobs": []}],
        }
        reasoning = call.body.get("reasoning")
        thinks = isinstance(reasoning, dict) and reasoning.get("effort") not in (None, "none")
        thought = {
            "id": f"rs_fake{serial:06d}", "type": "reasoning", "encrypted_content": "ZW5jcnlwdGVk",
            "summary": [{"type": "summary_text", "text": "Thinking it over."}],
        }
        output = [thought, item] if thinks else [item]
        response = {
            "id": f"resp_fake{serial:06d}", "object": "response", "created_at": 1796400000,
            "status": "completed", "error": None, "incomplete_details": None,
            "instructions": call.body.get("instructions"), "model": call.body.get("model", "gpt-fake"),
            "output": output, "parallel_tool_calls": True, "previous_response_id": None,
            "store": False, "tool_choice": "auto", "tools": [],
            "usage": {
                "input_tokens": usage["input"],
                "input_tokens_details": {"cached_tokens": usage["cached"]},
                "output_tokens": usage["output"],
                "output_tokens_details": {"reasoning_tokens": 4 if thinks else 0},
                "total_tokens": usage["input"] + usage["output"],
            },
        }
        if not call.body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(response).encode()
        sequence = iter(range(1 << 30))

        def event(kind: str, **fields: Any) -> bytes:
            return _sse(kind, {"type": kind, "sequence_number": next(sequence), **fields})

        opening = dict(response, status="in_progress", output=[], usage=None)
        events = [event("response.created", response=opening), event("response.in_progress", response=opening)]
        at = 0
        if thinks:
            summary = thought["summary"][0]
            where = {"item_id": thought["id"], "output_index": 0, "summary_index": 0}
            events += [
                event("response.output_item.added", output_index=0, item=dict(thought, summary=[])),
                event("response.reasoning_summary_part.added", **where, part=dict(summary, text="")),
                event("response.reasoning_summary_text.delta", **where, delta=summary["text"]),
                event("response.reasoning_summary_text.done", **where, text=summary["text"]),
                event("response.reasoning_summary_part.done", **where, part=summary),
                event("response.output_item.done", output_index=0, item=thought),
            ]
            at = 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": item_id, "output_index": at, "content_index": 0}
        events += [
            event("response.output_item.added", output_index=at, item=dict(item, status="in_progress", content=[])),
            event("response.content_part.added", **where, part=part),
        ]
        events += [event("response.output_text.delta", **where, delta=word, logprobs=[]) for word in _words(call.text)]
        events += [
            event("response.output_text.done", **where, text=call.text, logprobs=[]),
            event("response.content_part.done", **where, part=item["content"][0]),
            event("response.output_item.done", output_index=at, item=item),
            event("response.completed", response=response),
        ]
        return self._stream(request, events)
