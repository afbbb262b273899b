"""
The assistant's answer, reassembled in its API's own message shape.

Session detection appends it to the conversation history, to recognise the
next request of the same conversation, and trace files record it; so a
streamed answer must come out exactly as the same answer sent whole would,
and both come out as the message the client will send back.  How each API
shapes it is its shape module's business (``llmgate/providers/``); this
module gives one door to them.

Pure: no reactor, no I/O.  Nothing here raises on any input: a surprising
answer must never break the relay.
"""

from __future__ import annotations

import json
from typing import Any

from llmgate.providers.registry import shape_named
from llmgate.sse import ServerSentEvent

__all__ = ["StreamAnswer", "answer_from_body"]


def answer_from_body(shape: Any, body: bytes | bytearray | Any) -> dict[str, Any] | None:
    """
    The assistant message of a plain JSON answer.

    :param shape: the call's API shape (an
        :class:`llmgate.interfaces.IApiShape`) or its name; the family names
        ``openai`` (chat completions or Responses, by content) and
        ``anthropic`` are read too.
    :param body: the answer's bytes, or the answer already parsed.
    :return: the message, or None when the body is not an answer (an error,
        a truncated capture, another shape).
    """
    try:
        document = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
        if not isinstance(document, dict):
            return None
        return shape_named(shape).answer_from_body(document)
    except Exception:
        return None


class StreamAnswer:
    """
    The assistant message of a stream, fed every event as it goes by; the
    result has the shape :func:`answer_from_body` gives for the same answer
    sent whole.

    :meth:`feed` runs for every event on the reactor thread: each shape's
    reader parses an event at most once and skips events of no interest by
    name first.

    :param shape: as for :func:`answer_from_body`.
    """

    def __init__(self, shape: Any) -> None:
        self.shape = shape_named(shape)
        self._stream = self.shape.stream_answer()

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
