"""
The assistant's answer, reassembled in the provider's own message shape.

Session detection appends it to the conversation history, to recognise the
next request of the same conversation, and trace files record it; so a
streamed answer must come out exactly as the same answer sent whole would,
and both come out as the message the client will send back.

Pure: no reactor, no I/O.  Nothing here raises on any input: a surprising
answer must never break the relay.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from llmgate.sse import ServerSentEvent

__all__ = ["StreamAnswer", "answer_from_body"]


def answer_from_body(provider: str, body: bytes | bytearray | Any) -> dict[str, Any] | None:
    """
    The assistant message of a plain JSON answer.

    :param provider: ``anthropic``; anything else is read as OpenAI-compatible
        (chat completions, or the Responses API when ``object`` is
        ``response``).
    :param body: the answer's bytes, or the answer already parsed.
    :return: ``{"role", "content", ...}`` as described in :class:`StreamAnswer`,
        or None when the body is not an answer (an error, a truncated
        capture, another shape).
    """
    try:
        document = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
        if not isinstance(document, dict):
            return None
        if provider == "anthropic":
            return _anthropic_answer(document)
        return _openai_answer(document)
    except Exception:
        return None


def _role(value: Any) -> str:
    return value if isinstance(value, str) and value else "assistant"


def _anthropic_answer(document: dict[str, Any]) -> dict[str, Any] | None:
    content = document.get("content")
    if not isinstance(content, list):
        return None
    return {"role": _role(document.get("role")), "content": content}


def _openai_answer(document: dict[str, Any]) -> dict[str, Any] | None:
    if document.get("object") == "response":
        output = document.get("output")
        return _responses_answer(output) if isinstance(output, list) else None
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    answer: dict[str, Any] = {
        "role": _role(message.get("role")),
        "content": message.get("content"),
    }
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        answer["refusal"] = refusal
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        answer["tool_calls"] = tool_calls
    return answer


def _responses_answer(output: list[Any]) -> dict[str, Any]:
    """
    A Responses API answer: its output items whole (messages, function
    calls, reasoning), and their text joined for readers that want only it.
    """
    return {"role": "assistant", "content": _output_text(output), "output": output}


def _output_text(output: list[Any]) -> str | None:
    """
    The ``output_text`` parts of the message items, joined; None when there
    are none (an answer of function calls only).
    """
    parts: list[str] | None = None
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        content = item.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "output_text":
                text = part.get("text")
                if isinstance(text, str):
                    if parts is None:
                        parts = []
                    parts.append(text)
    return None if parts is None else "".join(parts)


class StreamAnswer:
    """
    The assistant message of a stream, fed every event as it goes by.

    The result has the shape :func:`answer_from_body` gives for the same
    answer sent whole:

    - OpenAI chat completions: ``{"role", "content", "tool_calls"?,
      "refusal"?}``, from choice 0 only; ``content`` stays None when no
      content came (an answer of tool calls only), as in the plain answer.
    - OpenAI Responses API: ``{"role", "content", "output"}``, from
      ``response.completed`` when it came, else from the text deltas and the
      finished output items.
    - Anthropic: ``{"role", "content": [blocks in index order]}``, each block
      as ``content_block_start`` began it, its deltas applied; a tool's
      ``partial_json`` is parsed into ``input`` (kept as the raw string when
      it does not parse, as in a cut stream).

    :meth:`feed` runs for every event on the reactor thread, so it parses
    each event at most once and skips events of no interest by name first.
    Text arrives in many small deltas, so pieces are kept in lists and
    joined only by :meth:`result`.

    :param provider: ``anthropic``; anything else is read as
        OpenAI-compatible.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._stream: _AnthropicStream | _OpenAIStream = (
            _AnthropicStream() if provider == "anthropic" else _OpenAIStream()
        )

    def feed(self, event: ServerSentEvent) -> None:
        """
        Apply ``event``; never raises.
        """
        try:
            self._stream.feed(event)
        except Exception:
            pass

    def result(self) -> dict[str, Any] | None:
        """
        The message so far, as a fresh object the caller may keep or change;
        None when no event of an answer was seen.
        """
        try:
            return self._stream.result()
        except Exception:
            return None


class _ToolCall:
    __slots__ = ("id", "type", "name", "arguments")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type: str | None = None
        self.name: list[str] = []
        self.arguments: list[str] = []

    def result(self) -> dict[str, Any]:
        call: dict[str, Any] = {}
        if self.id is not None:
            call["id"] = self.id
        call["type"] = self.type or "function"
        call["function"] = {"name": "".join(self.name), "arguments": "".join(self.arguments)}
        return call


#: Responses API events the answer is made of; every other named event
#: (reasoning, argument deltas, progress) is skipped without parsing.
_RESPONSES_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.output_item.done",
        "response.completed",
        "response.incomplete",
    }
)


class _OpenAIStream:
    """
    Chat completion chunks or Responses API events, told apart per event.
    """

    def __init__(self) -> None:
        self._chat = False
        self._role = "assistant"
        self._content: list[str] | None = None
        self._refusal: list[str] = []
        self._calls: dict[int, _ToolCall] = {}
        self._last_call: int | None = None
        self._responses = False
        self._text: list[str] | None = None
        self._items: dict[int, Any] = {}
        self._final: list[Any] | None = None

    def feed(self, event: ServerSentEvent) -> None:
        name = event.event
        if name != "message" and name not in _RESPONSES_EVENTS:
            return
        if event.data == "[DONE]":
            return
        document = event.json()
        if not isinstance(document, dict):
            return
        choices = document.get("choices")
        if isinstance(choices, list):
            self._chunk(choices)
            return
        kind = document.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "response.output_text.delta":
            delta = document.get("delta")
            if isinstance(delta, str):
                self._responses = True
                if self._text is None:
                    self._text = []
                self._text.append(delta)
        elif kind == "response.output_item.done":
            index = document.get("output_index")
            item = document.get("item")
            if isinstance(index, int) and isinstance(item, dict):
                self._responses = True
                self._items[index] = item
        elif kind in ("response.completed", "response.incomplete"):
            response = document.get("response")
            if isinstance(response, dict) and isinstance(response.get("output"), list):
                self._responses = True
                self._final = response["output"]

    def _chunk(self, choices: list[Any]) -> None:
        self._chat = True
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            role = delta.get("role")
            if isinstance(role, str) and role:
                self._role = role
            content = delta.get("content")
            if isinstance(content, str):
                if self._content is None:
                    self._content = []
                self._content.append(content)
            refusal = delta.get("refusal")
            if isinstance(refusal, str):
                self._refusal.append(refusal)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._merge_call(call)

    def _merge_call(self, piece: dict[str, Any]) -> None:
        index = piece.get("index")
        ident = piece.get("id")
        if not isinstance(index, int):
            # Some compatible servers leave the index out: a new id starts
            # a new call, anything else continues the last one.
            last = self._last_call
            if last is None:
                index = 0
            elif isinstance(ident, str) and ident and self._calls[last].id not in (None, ident):
                index = max(self._calls) + 1
            else:
                index = last
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _ToolCall()
        self._last_call = index
        if isinstance(ident, str) and ident and call.id is None:
            call.id = ident
        kind = piece.get("type")
        if isinstance(kind, str) and kind and call.type is None:
            call.type = kind
        function = piece.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if isinstance(name, str):
                call.name.append(name)
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments.append(arguments)

    def result(self) -> dict[str, Any] | None:
        if self._chat:
            answer: dict[str, Any] = {
                "role": self._role,
                "content": None if self._content is None else "".join(self._content),
            }
            refusal = "".join(self._refusal)
            if refusal:
                answer["refusal"] = refusal
            if self._calls:
                answer["tool_calls"] = [self._calls[i].result() for i in sorted(self._calls)]
            return answer
        if self._final is not None:
            return _responses_answer(copy.deepcopy(self._final))
        if self._responses:
            return {
                "role": "assistant",
                "content": None if self._text is None else "".join(self._text),
                "output": [copy.deepcopy(self._items[i]) for i in sorted(self._items)],
            }
        return None


class _Block:
    """
    One Anthropic content block: its start, and the deltas since.
    """

    __slots__ = ("start", "text", "thinking", "signature", "json", "citations")

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.signature: list[str] = []
        self.json: list[str] = []
        self.citations: list[Any] = []

    def result(self) -> dict[str, Any]:
        block = copy.deepcopy(self.start)
        for key, pieces in (
            ("text", self.text),
            ("thinking", self.thinking),
            ("signature", self.signature),
        ):
            if pieces:
                first = block.get(key)
                block[key] = (first if isinstance(first, str) else "") + "".join(pieces)
        raw = "".join(self.json)
        if raw.strip():
            try:
                block["input"] = json.loads(raw)
            except (ValueError, RecursionError):
                block["input"] = raw
        if self.citations:
            first = block.get("citations")
            block["citations"] = (first if isinstance(first, list) else []) + copy.deepcopy(
                self.citations
            )
        return block


#: Anthropic events that add nothing to the message, skipped unparsed.
_ANTHROPIC_SKIP = frozenset({"ping", "message_delta", "message_stop", "error"})


class _AnthropicStream:
    def __init__(self) -> None:
        self._started = False
        self._role = "assistant"
        self._blocks: dict[int, _Block] = {}

    def feed(self, event: ServerSentEvent) -> None:
        name = event.event
        if name in _ANTHROPIC_SKIP:
            return
        document = event.json()
        if not isinstance(document, dict):
            return
        kind = document.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "content_block_delta":
            index = document.get("index")
            block = self._blocks.get(index) if isinstance(index, int) else None
            delta = document.get("delta")
            if block is None or not isinstance(delta, dict):
                return
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                pieces, value = block.text, delta.get("text")
            elif delta_type == "input_json_delta":
                pieces, value = block.json, delta.get("partial_json")
            elif delta_type == "thinking_delta":
                pieces, value = block.thinking, delta.get("thinking")
            elif delta_type == "signature_delta":
                pieces, value = block.signature, delta.get("signature")
            elif delta_type == "citations_delta":
                citation = delta.get("citation")
                if citation is not None:
                    block.citations.append(citation)
                return
            else:
                return
            if isinstance(value, str):
                pieces.append(value)
        elif kind == "content_block_start":
            index = document.get("index")
            start = document.get("content_block")
            if isinstance(index, int) and isinstance(start, dict):
                self._blocks[index] = _Block(start)
        elif kind == "message_start":
            self._started = True
            message = document.get("message")
            if isinstance(message, dict):
                self._role = _role(message.get("role"))

    def result(self) -> dict[str, Any] | None:
        if not self._started and not self._blocks:
            return None
        return {
            "role": self._role,
            "content": [self._blocks[i].result() for i in sorted(self._blocks)],
        }
