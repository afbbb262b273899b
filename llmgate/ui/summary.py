"""
What the live view keeps of a trace file, and the messages a call added.

Pure: plain dicts in, plain values out, nothing raises on a strange
document (a trace written by another version, a cut body): a field that
cannot be read is left empty.
"""

from __future__ import annotations

import calendar
from typing import Any, Callable

import attrs

#: Text kept of one message for the session page; the file keeps it all.
MAX_TEXT = 20_000
#: Text kept of a call's last user turn, for the filter box.
MAX_PREVIEW = 300


@attrs.define(slots=True, eq=False)
class CallSummary:
    """
    One indexed call: small, so a hundred thousand of them fit in memory.
    """

    id: str
    time: float
    #: The trace file's name; None until the file of a call this process
    #: relayed lands.
    file: str | None
    session_id: str | None = None
    provider: str | None = None
    model: str | None = None
    path: str | None = None
    status: int | None = None
    duration_ms: float | None = None
    ttfb_ms: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    decision: str | None = None
    upstream: str | None = None
    attempts: int | None = None
    error: str | None = None
    streaming: bool = False
    #: The call's last user text, cut, for the filter box.
    preview: str = ""

    def as_json(self) -> dict[str, Any]:
        # By hand: attrs.asdict cost as much as the rest of indexing a call.
        return {
            "id": self.id, "time": self.time, "session_id": self.session_id,
            "provider": self.provider, "model": self.model, "path": self.path,
            "status": self.status, "duration_ms": self.duration_ms, "ttfb_ms": self.ttfb_ms,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "decision": self.decision, "upstream": self.upstream, "attempts": self.attempts,
            "error": self.error, "streaming": self.streaming, "preview": self.preview,
        }

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.status is not None and self.status >= 400)


#: Epoch seconds of a timestamp's minute (``2026-12-04T16:25``), by prefix:
#: a directory's traces share few minutes, and ``timegm`` was a third of
#: the cost of summarising one.
_MINUTES: dict[str, int] = {}


def parse_timestamp(value: Any) -> float | None:
    """
    ``2026-12-04T16:25:43.123Z`` as seconds since the epoch (read by hand:
    ``strptime`` was half the cost of indexing a trace).
    """
    if not isinstance(value, str) or len(value) < 19 or value[10] != "T":
        return None
    minute = _MINUTES.get(value[:16])
    if minute is None:
        try:
            minute = calendar.timegm(
                (int(value[0:4]), int(value[5:7]), int(value[8:10]),
                 int(value[11:13]), int(value[14:16]), 0, 0, 0, 0)
            )
        except ValueError:
            return None
        if len(_MINUTES) > 10_000:
            _MINUTES.clear()
        _MINUTES[value[:16]] = minute
    seconds = value[17:].rstrip("Z")
    try:
        return minute + float(seconds)
    except ValueError:
        pass
    try:
        return float(minute + int(seconds[:2]))
    except ValueError:
        return None


def summarize(document: Any, file: str) -> CallSummary | None:
    """
    The summary of one trace document; None when it is not a trace.
    Written out flat (no helper per field): it runs once per file at start.
    """
    if type(document) is not dict:
        return None
    get = document.get
    call_id = get("id")
    if type(call_id) is not str:
        return None
    when = parse_timestamp(get("timestamp"))
    if when is None:
        return None
    request = get("request")
    if type(request) is not dict:
        request = {}
    response = get("response")
    if type(response) is not dict:
        response = {}
    usage = get("usage")
    if type(usage) is not dict:
        usage = {}
    error = get("error")
    message = error.get("message") if type(error) is dict else None
    upstream = get("upstream")
    if type(upstream) is dict:
        upstream = upstream.get("name") or upstream.get("url")
    attempts = get("attempts")
    if type(attempts) is list:
        attempts = len(attempts)
    return CallSummary(
        call_id,
        when,
        file,
        _str(get("session_id")),
        _str(get("provider")),
        _str(get("model")),
        _str(request.get("path")),
        _int(response.get("status")),
        _number(get("duration_ms")),
        _number(get("ttfb_ms")),
        _int(usage.get("input_tokens")) or 0,
        _int(usage.get("output_tokens")) or 0,
        _str(get("session_decision")),
        _str(upstream),
        _int(attempts),
        message if type(message) is str and message else None,
        "events" in response,
        _last_user_text(request.get("body"))[:MAX_PREVIEW],
    )


def summary_of_exchange(
    exchange: Any, wall: float, with_text: bool, scrub: Callable[[str], str]
) -> CallSummary:
    """
    The summary of a call this process relayed, from the exchange itself at
    its end: its trace file need not be read back.  Only what the trace
    keeps is used (no text when the trace keeps no bodies), scrubbed as the
    trace is.
    """
    response = exchange.response
    usage = exchange.usage or {}
    body = exchange.request_json
    preview = scrub(_last_user_text(body)[:MAX_PREVIEW]) if with_text else ""
    model = body.get("model") if isinstance(body, dict) else None
    attempts = exchange.attempts
    ended, ttfb = exchange.ended_at, exchange.ttfb
    # Positional, in field order: this runs for every call.
    return CallSummary(
        exchange.id,
        wall,
        None,
        exchange.session_id,
        exchange.system,
        model if isinstance(model, str) else None,
        exchange.request.path.decode("utf-8", "replace"),
        response.status if response is not None else exchange.sent_status,
        None if ended is None else round((ended - exchange.received) * 1000, 3),
        None if ttfb is None else round(ttfb * 1000, 3),
        usage.get("input_tokens") or 0,
        usage.get("output_tokens") or 0,
        exchange.notes.get("session_how"),
        exchange.upstream,
        len(attempts) if attempts else None,
        exchange.error,
        response is not None and response.streaming,
        preview,
    )


def added_messages(document: Any) -> list[dict[str, str]]:
    """
    The messages a call added to its conversation, as ``{role, kind,
    text}``: what its request holds after the last assistant turn (the
    user's turn, tool results; the whole opening for a first call), then
    the answer.  ``kind`` is ``text``, ``tool_call`` or ``tool_result``.
    Everything is plain text, for a page to show as text.
    """
    if not isinstance(document, dict):
        return []
    request = _dict(document.get("request"))
    body = request.get("body")
    items: list[dict[str, str]] = []
    if isinstance(body, dict):
        messages = _request_messages(body)
        last = max(
            (i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1
        )
        if last < 0 and isinstance(body.get("system"), (str, list)):
            items.append(_item("system", "text", _text(body["system"])))
        for message in messages[last + 1 :]:
            items.extend(_message_items(message))
    response = _dict(document.get("response"))
    answer = response.get("message")
    if isinstance(answer, dict):
        items.extend(_message_items(answer))
    return items


def _request_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if isinstance(messages, list):
        return [m for m in messages if isinstance(m, dict)]
    given = body.get("input")  # the Responses API
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if isinstance(given, list):
        return [m for m in given if isinstance(m, dict)]
    return []


def _message_items(message: dict[str, Any]) -> list[dict[str, str]]:
    role = _str(message.get("role")) or _str(message.get("type")) or "message"
    items: list[dict[str, str]] = []
    if message.get("type") == "function_call_output":
        return [_item("tool", "tool_result", _text(message.get("output")))]
    if message.get("type") == "function_call":
        return [_item("assistant", "tool_call", _call_text(message))]
    content = message.get("content")
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "tool_use":
                items.append(_item(role, "tool_call", _call_text(block)))
            elif kind == "tool_result":
                items.append(_item("tool", "tool_result", _text(block.get("content"))))
            else:
                text = _text(block)
                if text:
                    items.append(_item(role, "text", text))
    elif content is not None:
        kind = "tool_result" if role == "tool" else "text"
        items.append(_item(role, kind, _text(content)))
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            items.append(_item(role, "tool_call", _call_text(call.get("function") or call)))
    if isinstance(message.get("output"), list) and not items:
        for entry in message["output"]:
            if isinstance(entry, dict) and entry.get("type") == "function_call":
                items.append(_item(role, "tool_call", _call_text(entry)))
    return items


def _call_text(call: dict[str, Any]) -> str:
    name = _str(call.get("name")) or "tool"
    arguments = call.get("arguments", call.get("input"))
    if not isinstance(arguments, str):
        import json

        arguments = json.dumps(arguments, ensure_ascii=False)
    return f"{name}({arguments})"


def _item(role: str, kind: str, text: str) -> dict[str, str]:
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"... ({len(text) - MAX_TEXT} more characters)"
    return {"role": role, "kind": kind, "text": text}


def _text(value: Any) -> str:
    """
    The text of a content value: a string, a list of parts, a part.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(t for t in (_text(v) for v in value) if t)
    if isinstance(value, dict):
        for key in ("text", "content", "output", "refusal"):
            if key in value:
                return _text(value[key])
        return ""
    return "" if value is None else str(value)


def _last_user_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = _request_messages(body)
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else _text(content)
    return ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
