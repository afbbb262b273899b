"""
Anthropic messages (``/v1/messages``) and its ``count_tokens``, as Anthropic
speaks it and as OpenAI-compatible servers (vLLM, llama.cpp, LiteLLM)
answer it too.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from zope.interface import implementer

from llmgate.interfaces import IApiShape
from llmgate.providers.base import Shape, role_of
from llmgate.sessions.canonical import History, _reduce_content, system_digest
from llmgate.sse import ServerSentEvent
from llmgate.usage import StreamUsage, anthropic_usage


def messages_history(body: Any) -> History | None:
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    return History(
        system=system_digest(_reduce_content(body.get("system"))),
        messages=messages,
        provider="anthropic-messages",
    )


def messages_answer(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict):
        return None
    content = document.get("content")
    if not isinstance(content, list):
        return None
    return {"role": role_of(document.get("role")), "content": content}


class _Block:
    """
    One content block: its start, and the deltas since.
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


#: Events that add nothing to the message, skipped unparsed.
_SKIP = frozenset({"ping", "message_delta", "message_stop", "error"})


class MessagesStream:
    """
    ``{"role", "content": [blocks in index order]}``, each block as
    ``content_block_start`` began it, its deltas applied; a tool's
    ``partial_json`` is parsed into ``input`` (kept as the raw string when it
    does not parse, as in a cut stream).
    """

    def __init__(self) -> None:
        self._started = False
        self._role = "assistant"
        self._blocks: dict[int, _Block] = {}

    def feed(self, event: ServerSentEvent) -> None:
        name = event.event
        if name in _SKIP:
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
                self._role = role_of(message.get("role"))

    def result(self) -> dict[str, Any] | None:
        if not self._started and not self._blocks:
            return None
        return {
            "role": self._role,
            "content": [self._blocks[i].result() for i in sorted(self._blocks)],
        }


class _AnthropicShape(Shape):
    system = "anthropic"

    def usage_from_body(self, document: Any) -> Any:
        return anthropic_usage(document.get("usage")) if isinstance(document, dict) else None

    def stream_usage(self) -> Any:
        return StreamUsage("anthropic")

    def stream_ended(self, event: ServerSentEvent) -> bool:
        return event.event == "message_stop" or (
            event.event == "message" and '"message_stop"' in event.data[:40]
        )


@implementer(IApiShape)
class Messages(_AnthropicShape):
    name = "anthropic-messages"
    priority = 50
    suffixes = (b"/messages",)

    def history(self, body: Any) -> History | None:
        return messages_history(body)

    def answer_from_body(self, document: Any) -> dict[str, Any] | None:
        return messages_answer(document)

    def stream_answer(self) -> MessagesStream:
        return MessagesStream()


@implementer(IApiShape)
class CountTokens(_AnthropicShape):
    """
    A token count: no conversation turn, no answer, no usage; errors in
    Anthropic's shape.
    """

    name = "anthropic-count-tokens"
    priority = 60
    suffixes = (b"/messages/count_tokens",)

    def usage_from_body(self, document: Any) -> None:
        return None


MESSAGES = Messages()
COUNT_TOKENS = CountTokens()
