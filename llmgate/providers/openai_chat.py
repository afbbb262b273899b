"""
OpenAI chat completions (``/v1/chat/completions``), as OpenAI and every
OpenAI-compatible server (vLLM, llama.cpp, Ollama, LiteLLM, Azure) speak it.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from llmgate.interfaces import IApiShape
from llmgate.providers.base import Shape, role_of
from llmgate.sessions.canonical import History, _reduce_content, _role, system_digest
from llmgate.sse import ServerSentEvent
from llmgate.usage import StreamUsage, openai_usage


def chat_history(body: Any) -> History | None:
    """
    Leading system (or developer) messages are the prompt, the rest turns.
    """
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    messages = body["messages"]
    system_parts = []
    start = 0
    while start < len(messages) and _role(messages[start]) == "system":
        system_parts.append(_reduce_content(messages[start].get("content")))
        start += 1
    return History(
        system=system_digest(system_parts),
        messages=messages[start:],
        provider="openai-chat",
    )


def chat_answer(document: Any) -> dict[str, Any] | None:
    """
    ``{"role", "content", "tool_calls"?, "refusal"?}`` of choice 0.
    """
    if not isinstance(document, dict):
        return None
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    answer: dict[str, Any] = {
        "role": role_of(message.get("role")),
        "content": message.get("content"),
    }
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        answer["refusal"] = refusal
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        answer["tool_calls"] = tool_calls
    return answer


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


class ChatStream:
    """
    Chat completion chunks, choice 0 only; ``content`` stays None when no
    content came (an answer of tool calls only), as in the plain answer.
    """

    def __init__(self) -> None:
        self._chat = False
        self._role = "assistant"
        self._content: list[str] | None = None
        self._refusal: list[str] = []
        self._calls: dict[int, _ToolCall] = {}
        self._last_call: int | None = None

    def feed(self, event: ServerSentEvent) -> None:
        if event.event != "message" or event.data == "[DONE]":
            return
        document = event.json()
        if isinstance(document, dict):
            choices = document.get("choices")
            if isinstance(choices, list):
                self._chunk(choices)

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
        if not self._chat:
            return None
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


class _OpenAIShape(Shape):
    system = "openai"

    def stream_ended(self, event: ServerSentEvent) -> bool:
        """
        ``[DONE]``, or a chunk that gives a finish reason: what follows it
        (a usage chunk, ``[DONE]``) adds nothing to the answer.
        """
        data = event.data
        return data == "[DONE]" or (
            event.event == "message"
            and ('"finish_reason":"' in data or '"finish_reason": "' in data)
        )

    def usage_from_body(self, document: Any) -> Any:
        return openai_usage(document.get("usage")) if isinstance(document, dict) else None

    def stream_usage(self) -> Any:
        return StreamUsage("openai")


@implementer(IApiShape)
class ChatCompletions(_OpenAIShape):
    name = "openai-chat"
    priority = 50
    suffixes = (b"/chat/completions",)

    def history(self, body: Any) -> History | None:
        return chat_history(body)

    def answer_from_body(self, document: Any) -> dict[str, Any] | None:
        return chat_answer(document)

    def stream_answer(self) -> ChatStream:
        return ChatStream()


@implementer(IApiShape)
class Embeddings(_OpenAIShape):
    """
    Embeddings and legacy completions: read for usage only.
    """

    name = "openai-embeddings"
    priority = 40
    suffixes = (b"/embeddings",)


@implementer(IApiShape)
class Completions(_OpenAIShape):
    name = "openai-completions"
    priority = 30  # after chat, whose path ends the same way
    suffixes = (b"/completions",)


CHAT = ChatCompletions()
EMBEDDINGS = Embeddings()
COMPLETIONS = Completions()
