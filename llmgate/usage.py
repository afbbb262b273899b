"""
Token usage reported by the upstream, in one shape whatever the provider;
each API shape (``llmgate/providers/``) says which of these readers its
answers need.

Read from a plain JSON answer, or from a stream event by event: OpenAI chat
completions send it in a last chunk (when the client asked for it with
``stream_options.include_usage``), the Responses API in ``response.completed``,
and Anthropic splits it across ``message_start`` and ``message_delta``.

Pure: no reactor, no I/O.  Nothing here raises on any input: usage is
bookkeeping, and a surprising answer must never break the relay.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from llmgate.sse import ServerSentEvent

__all__ = ["StreamUsage", "Usage", "usage_from_body"]


@attrs.frozen
class Usage:
    """
    Token counts of one call, normalised to OpenAI's meaning so that totals
    and prices compare across providers.

    :param input_tokens: every prompt token, cached or not.  Anthropic reports
        uncached, cache-read and cache-written tokens apart; here they are
        summed, so Anthropic's own ``input_tokens`` is
        ``input_tokens - cache_read_tokens - cache_write_tokens``.
    :param output_tokens: generated tokens, reasoning included.
    :param cache_read_tokens: the part of ``input_tokens`` read from the cache.
    :param cache_write_tokens: the part of ``input_tokens`` written to the
        cache (Anthropic only; OpenAI caches without reporting it).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """
        Input plus output: the cache counts are already inside the input.
        """
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        """
        The counts for logs and :attr:`Exchange.usage`; cache fields only
        when non-zero, since most calls have none and they would be noise.
        """
        result = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            result["cache_read_tokens"] = self.cache_read_tokens
        if self.cache_write_tokens:
            result["cache_write_tokens"] = self.cache_write_tokens
        return result


_ANTHROPIC_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)

#: Anthropic stream events that never carry usage: skipped by name, before
#: even looking at their data, as they are nearly all of a stream.
_NO_USAGE_EVENTS = frozenset(
    {"content_block_delta", "content_block_start", "content_block_stop", "ping", "message_stop"}
)


def _count(mapping: Any, key: str) -> int | None:
    """
    ``mapping[key]`` if it is a token count (a non-negative int, not a bool).
    """
    if not isinstance(mapping, dict):
        return None
    value = mapping.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def openai_usage(usage: Any) -> Usage | None:
    """
    A chat completions ``usage`` (``prompt_tokens``...) or a Responses API
    one (``input_tokens``...); None when it has neither.
    """
    if not isinstance(usage, dict):
        return None
    details = "prompt_tokens_details"
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    if prompt is None and completion is None:
        details = "input_tokens_details"
        prompt = _count(usage, "input_tokens")
        completion = _count(usage, "output_tokens")
        if prompt is None and completion is None:
            return None
    cached = _count(usage.get(details), "cached_tokens")
    return Usage(prompt or 0, completion or 0, cached or 0)


def _anthropic_counts(usage: Any) -> dict[str, int]:
    """
    The valid counts in an Anthropic ``usage`` object, by Anthropic's names.
    """
    counts: dict[str, int] = {}
    for key in _ANTHROPIC_KEYS:
        value = _count(usage, key)
        if value is not None:
            counts[key] = value
    return counts


def _anthropic_usage(counts: dict[str, int]) -> Usage | None:
    """
    Anthropic's separate counts as a normalised :class:`Usage`.
    """
    if not counts:
        return None
    read = counts.get("cache_read_input_tokens", 0)
    write = counts.get("cache_creation_input_tokens", 0)
    return Usage(
        counts.get("input_tokens", 0) + read + write,
        counts.get("output_tokens", 0),
        read,
        write,
    )


def anthropic_usage(usage: Any) -> Usage | None:
    """
    An Anthropic ``usage`` object, normalised.
    """
    return _anthropic_usage(_anthropic_counts(usage))


def any_usage(document: Any) -> Usage | None:
    """
    The usage of an answer of no known shape: OpenAI's field names, else
    Anthropic's.
    """
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    return openai_usage(usage) or anthropic_usage(usage)


def usage_from_body(shape: Any, body: bytes | bytearray | Any) -> Usage | None:
    """
    The usage in a plain JSON answer.

    :param shape: the call's API shape or its name (``anthropic`` and
        ``openai`` read the family's fields).
    :param body: the answer's bytes, or the answer already parsed.
    :return: the usage, or None when the body is not an answer with usage
        (an error, a truncated capture, another shape).
    """
    from llmgate.providers.registry import shape_named

    try:
        document = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
        if not isinstance(document, dict):
            return None
        return shape_named(shape).usage_from_body(document)
    except Exception:
        return None


def _carries_usage(data: str) -> bool:
    """
    Whether ``data`` may hold a usage object, found by substring alone.

    OpenAI sends ``"usage": null`` in every chunk when usage was requested,
    and the Responses API in its early events, so a bare ``"usage"`` is not
    enough to be worth a ``json.loads``.  A quote inside a JSON string is
    escaped, so answer text that mentions ``"usage"`` does not match.
    """
    start = data.find('"usage"')
    while start >= 0:
        if not data[start + 7 : start + 24].lstrip(" \t\r\n:").startswith("null"):
            return True
        start = data.find('"usage"', start + 7)
    return False


class StreamUsage:
    """
    The usage of a stream, fed every event as it goes by.

    :meth:`feed` runs for every event on the reactor thread, so events that
    carry no usage cost a set lookup and a substring scan; only the one or
    two that do are parsed.

    :param provider: ``openai`` or ``anthropic`` to read only that provider's
        shapes; None to read both, since each is recognisable on its own.
    """

    def __init__(self, provider: str | None = None) -> None:
        self._openai = provider != "anthropic"
        self._anthropic = provider is None or provider == "anthropic"
        # Anthropic's counts arrive in two events and are merged by name.
        self._counts: dict[str, int] = {}
        self._result: Usage | None = None

    def feed(self, event: ServerSentEvent) -> None:
        """
        Take the usage from ``event`` if it has any; never raises.
        """
        try:
            if event.event in _NO_USAGE_EVENTS or not _carries_usage(event.data):
                return
            self._parse(event)
        except Exception:
            pass

    def result(self) -> Usage | None:
        """
        The latest usage seen, or None if the stream carried none (for an
        OpenAI chat stream, when the client did not ask for it).
        """
        return self._result

    def _parse(self, event: ServerSentEvent) -> None:
        name = event.event
        document = event.json()
        if not isinstance(document, dict):
            return
        kind = document.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "message_start":
            message = document.get("message")
            if self._anthropic and isinstance(message, dict):
                self._merge_anthropic(message.get("usage"))
            return
        if kind == "message_delta":
            # Cumulative counts: they replace message_start's, never add.
            if self._anthropic:
                self._merge_anthropic(document.get("usage"))
            return
        if not self._openai:
            return
        response = document.get("response")
        if isinstance(response, dict):
            usage = openai_usage(response.get("usage"))
        else:
            usage = openai_usage(document.get("usage"))
        if usage is not None:
            self._result = usage

    def _merge_anthropic(self, usage: Any) -> None:
        counts = _anthropic_counts(usage)
        if counts:
            self._counts.update(counts)
            self._result = _anthropic_usage(self._counts)
