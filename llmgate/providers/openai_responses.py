"""
The OpenAI Responses API (``/v1/responses``): input items in, output items
out, optionally a server-side history (``previous_response_id``).
"""

from __future__ import annotations

import copy
from typing import Any

from zope.interface import implementer

from llmgate.interfaces import IApiShape
from llmgate.providers.openai_chat import _OpenAIShape
from llmgate.sessions.canonical import History, _reduce_content, _role, system_digest
from llmgate.sse import ServerSentEvent


def responses_history(body: Any) -> History | None:
    if not isinstance(body, dict) or not ("input" in body or "previous_response_id" in body):
        return None
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    elif not isinstance(items, list):
        items = []
    # Clients may or may not send reasoning items back: they never count.
    items = [i for i in items if not (isinstance(i, dict) and i.get("type") == "reasoning")]
    previous = body.get("previous_response_id")
    # Codex sends its prompt as leading developer (or system) items and no
    # instructions: they are the system prompt, as chat's leading messages.
    start = 0
    while start < len(items) and _role(items[start]) == "system":
        start += 1
    system: Any = _reduce_content(body.get("instructions"))
    if start:
        system = [system, *(_reduce_content(i.get("content")) for i in items[:start])]
    return History(
        system=system_digest(system),
        messages=items[start:],
        provider="openai-responses",
        previous_response_id=previous if isinstance(previous, str) else None,
    )


def responses_answer(output: list[Any]) -> dict[str, Any]:
    """
    The output items whole (messages, function calls, reasoning), and their
    text joined for readers that want only it.
    """
    return {"role": "assistant", "content": _output_text(output), "output": output}


def answer_of_document(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict) or document.get("object") != "response":
        return None
    output = document.get("output")
    return responses_answer(output) if isinstance(output, list) else None


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


#: Events the answer is made of; every other named event (reasoning,
#: argument deltas, progress) is skipped without parsing.
_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.output_item.done",
        "response.completed",
        "response.incomplete",
    }
)


class ResponsesStream:
    """
    From ``response.completed`` when it came, else from the text deltas and
    the finished output items.
    """

    def __init__(self) -> None:
        self._responses = False
        self._text: list[str] | None = None
        self._items: dict[int, Any] = {}
        self._final: list[Any] | None = None

    def feed(self, event: ServerSentEvent) -> None:
        name = event.event
        if name != "message" and name not in _EVENTS:
            return
        if event.data == "[DONE]":
            return
        document = event.json()
        if not isinstance(document, dict):
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

    def result(self) -> dict[str, Any] | None:
        if self._final is not None:
            return responses_answer(copy.deepcopy(self._final))
        if self._responses:
            return {
                "role": "assistant",
                "content": None if self._text is None else "".join(self._text),
                "output": [copy.deepcopy(self._items[i]) for i in sorted(self._items)],
            }
        return None


@implementer(IApiShape)
class Responses(_OpenAIShape):
    name = "openai-responses"
    priority = 50
    suffixes = (b"/responses",)

    def history(self, body: Any) -> History | None:
        return responses_history(body)

    def answer_from_body(self, document: Any) -> dict[str, Any] | None:
        return answer_of_document(document)

    def stream_answer(self) -> ResponsesStream:
        return ResponsesStream()

    def stream_ended(self, event: ServerSentEvent) -> bool:
        """
        ``response.completed`` (Codex hangs up on it), or ``[DONE]``.
        """
        name = event.event
        if name == "response.completed" or event.data == "[DONE]":
            return True
        # A server that names no events says the type in the data only.
        return name == "message" and '"type":"response.completed"' in event.data[:64].replace(" ", "")


RESPONSES = Responses()
