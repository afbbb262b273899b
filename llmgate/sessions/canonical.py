"""
Conversation histories reduced to what identifies them: one strong digest
per message, the same whichever API shape carried the message and however a
client re-serialises an answer it got (string or text blocks, extra null
fields, surrounding whitespace).

Pure functions over parsed JSON; nothing here raises on any input.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Sequence

import attrs

from llmgate.fastjson import orjson

DIGEST_SIZE = 16  # 128-bit BLAKE2b: collision-free for any realistic traffic
_blake2b = hashlib.blake2b

#: Context a client injects around the user's words (Claude Code's
#: ``<system-reminder>`` blocks: environment, instructions, notices), which
#: it renders anew between runs: never part of what a message is.
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)


def _without_reminders(text: str) -> str:
    return _REMINDER.sub("", text) if "<system-reminder>" in text else text


def digest(*parts: Any) -> bytes:
    """
    A 128-bit digest of JSON-able parts.
    """
    text = json.dumps(parts, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=DIGEST_SIZE).digest()


@attrs.frozen
class History:
    """
    A request's conversation, reduced.

    :ivar system: digest of the system prompt (or of nothing).
    :ivar messages: the messages in order, each kept as its parsed JSON so it
        is reduced and digested only when a key needs it (see :class:`Digests`).
    :ivar provider: the name of the API shape that read it.
    :ivar previous_response_id: OpenAI Responses API's server-side history.
    """

    system: bytes
    messages: Sequence[Any]
    provider: str
    previous_response_id: str | None = None

    def last_user_text(self) -> str:
        """
        The text of the last user message, lower-cased, for reset phrases.
        """
        for message in reversed(self.messages):
            reduced = reduce_message(self.provider, message)
            if reduced and reduced[0] == "user":
                return " ".join(
                    part[1] for part in reduced[1] if part and part[0] == "text"
                ).lower()
        return ""


def digest_reduced(reduced: Any) -> bytes:
    """
    The digest of a reduced message: tuples and lists of strings only, so
    no key sorting is needed.
    """
    return _blake2b(canonical_bytes(reduced), digest_size=DIGEST_SIZE).digest()


def system_digest(parts: Any) -> bytes:
    """
    The digest of a reduced system prompt; no prompt at all, the common
    case, costs nothing.
    """
    if not parts:
        return _NO_SYSTEM
    return digest_reduced(("system", parts))


def canonical_bytes(reduced: Any) -> bytes:
    """
    ``reduced`` as compact JSON, byte for byte what ``json.dumps`` with
    ``separators=(",", ":"), ensure_ascii=False`` gives, so digests stay
    those a Redis store already holds; ``orjson`` makes it 5 to 10 times
    faster, and a string it refuses (a lone surrogate) takes the slow path.
    """
    if orjson is not None:
        try:
            return orjson.dumps(reduced)
        except TypeError:
            pass
    text = json.dumps(reduced, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def key_of(tag: bytes, *parts: bytes | int | None) -> bytes:
    """
    A lookup key from fixed-size digests and small integers: hashed as
    bytes, with a type byte before each part, so no two lists of parts
    give one key.  The parts are joined and hashed at once: the same bytes,
    so the same key, as feeding them one by one, at a third of the calls.
    """
    joined = [tag]
    for part in parts:
        if part is None:
            joined.append(b"\x00")
        elif part.__class__ is bytes:
            joined.append(b"\x02" + part)
        else:
            joined.append(b"\x01" + part.to_bytes(8, "big"))
    return _blake2b(b"".join(joined), digest_size=DIGEST_SIZE).digest()


class Digests:
    """
    Message digests of one history, computed on first use and kept, so a
    lookup that only looks near the end of a long history hashes only there.
    """

    def __init__(self, history: History) -> None:
        self.history = history
        self._messages = history.messages
        self._provider = history.provider
        self._cache: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def __getitem__(self, index: int) -> bytes:
        cached = self._cache.get(index)
        if cached is None:
            cached = self._cache[index] = digest_reduced(
                reduce_message(self._provider, self._messages[index])
            )
        return cached


_registry: Any = None


def history_of(shape: Any, path: bytes, body: Any) -> History | None:
    """
    The conversation a request carries, or None when it carries none (a
    models listing, an embedding, a body that is not JSON).

    :param shape: the call's API shape (or its name), whose module reduces
        its history; a family name (``openai``, ``anthropic``) is read by the
        shape ``path`` belongs to, and leniently when the path is of none.
    """
    if not isinstance(body, dict):
        return None
    global _registry
    if _registry is None:
        # Imported on first use: the registry imports the shapes, which
        # import this module.
        from llmgate.providers import registry as _registry
    DEFAULT, shape_named = _registry.DEFAULT, _registry.shape_named
    if shape in ("openai", "anthropic"):
        by_path = DEFAULT.for_path(path)
        shape = by_path if by_path is not DEFAULT.opaque else shape
    try:
        return shape_named(shape).history(body)
    except RecursionError:
        return None


def _role(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    role = message.get("role")
    if role in ("system", "developer"):
        return "system"
    return role if isinstance(role, str) else None


def reduce_message(provider: str, message: Any) -> Any:
    """
    A message reduced to what makes it that message (see
    :func:`_reduce_message`); one nested too deeply to reduce is reduced to
    a marker rather than raising.
    """
    try:
        return _reduce_message(provider, message)
    except RecursionError:
        return ("too_deep",)


def _reduce_message(provider: str, message: Any) -> Any:
    """
    A message reduced to what makes it that message: its role, its text,
    tool calls and results, and digests of media; never formatting, null
    fields or thinking blocks that clients drop or rewrite.
    """
    if not isinstance(message, dict):
        return ("raw", repr(message)[:10_000])
    kind = message.get("type")
    if kind in ("function_call", "function_call_output", "reasoning", "message") or (
        kind is not None and "role" not in message
    ):
        return _reduce_response_item(message)
    role = _role(message) or "unknown"
    parts = _reduce_content(message.get("content"))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip() and not any(p[0] == "text" for p in parts):
        # OpenAI puts a refusal beside the content, not in it; a client sends
        # it back there, or as the content: one message either way.
        parts.append(("text", refusal.strip()))
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if isinstance(call, dict):
                function = call.get("function") or {}
                if not isinstance(function, dict):
                    function = {}
                parts.append(
                    (
                        "tool_use",
                        call.get("id"),
                        function.get("name"),
                        _normal_json_text(function.get("arguments")),
                    )
                )
    if role == "tool":
        parts.insert(0, ("tool_result_for", message.get("tool_call_id")))
        role = "user"  # a tool result answers like a user turn in every API
    return (role, parts)


def _reduce_response_item(item: dict[str, Any]) -> Any:
    kind = item.get("type")
    if kind == "function_call":
        return (
            "assistant",
            [("tool_use", item.get("call_id"), item.get("name"), _normal_json_text(item.get("arguments")))],
        )
    if kind == "function_call_output":
        return ("user", [("tool_result_for", item.get("call_id")), *_reduce_content(item.get("output"))])
    if kind == "reasoning":
        return ("assistant", [])
    role = _role(item) or "assistant"
    return (role, _reduce_content(item.get("content")))


def _reduce_content(content: Any) -> list[Any]:
    """
    Content as a list of parts, with adjacent text merged and stripped, so
    ``"hi"`` and ``[{"type": "text", "text": "hi"}]`` are the same.
    """
    if content is None:
        return []
    if isinstance(content, str):
        text = _without_reminders(content).strip()
        return [("text", text)] if text else []
    if not isinstance(content, list):
        return [("raw", json.dumps(content, sort_keys=True, default=str)[:100_000])]
    parts: list[Any] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            text = _without_reminders("".join(texts)).strip()
            if text:
                parts.append(("text", text))
            texts.clear()

    for block in content:
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("text", "input_text", "output_text"):
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
            continue
        if kind in ("thinking", "redacted_thinking", "reasoning", "refusal_delta"):
            continue
        flush()
        if kind == "tool_use":
            tool_input = block.get("input")
            if isinstance(tool_input, str):  # a stream's unparsed partial JSON
                parts.append(("tool_use", block.get("id"), block.get("name"), _normal_json_text(tool_input)))
            else:
                parts.append(("tool_use", block.get("id"), block.get("name"), _normal_json(tool_input)))
        elif kind == "tool_result":
            parts.append(("tool_result_for", block.get("tool_use_id")))
            parts.extend(_reduce_content(block.get("content")))
            if block.get("is_error"):
                parts.append(("error",))
        elif kind == "refusal":
            parts.append(("text", str(block.get("refusal", "")).strip()))
        else:
            # Images, audio, documents, files: their bytes or address decide.
            payload = {k: v for k, v in block.items() if k not in ("cache_control",)}
            parts.append(("media", digest(payload).hex()))
    flush()
    return parts


def _normal_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _normal_json_text(arguments: Any) -> str:
    """
    Tool-call arguments arrive as JSON text that clients may re-serialise:
    compare them parsed where they parse.
    """
    if isinstance(arguments, str):
        try:
            return _normal_json(json.loads(arguments))
        except (ValueError, RecursionError):
            return arguments.strip()
    return _normal_json(arguments)


def answer_digests(provider: str, answer: Any) -> list[bytes]:
    """
    The digests of an answer as the client will send it back in its next
    history: one message, or (Responses API) one item per output item.
    """
    if isinstance(answer, dict) and isinstance(answer.get("output"), list):
        return [
            digest_reduced(reduce_message(provider, item))
            for item in answer["output"]
            if not (isinstance(item, dict) and item.get("type") == "reasoning")
        ]
    return [digest_reduced(reduce_message(provider, answer))]


def iter_reduced(provider: str, messages: Iterable[Any]) -> list[Any]:
    return [reduce_message(provider, message) for message in messages]


_NO_SYSTEM = digest_reduced(("system", []))
