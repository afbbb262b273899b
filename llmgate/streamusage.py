"""
``usage.include_stream_usage``: ask OpenAI for a stream's token usage when
the client did not, and hide what that changes from the client, so its
stream is exactly what it would have got.

Asking adds ``stream_options.include_usage`` to the request; OpenAI then
adds ``"usage":null`` to every chunk and one last chunk with no choices and
the usage.  :class:`UsageChunkHider` removes both from the relayed bytes,
event by event; the gateway's own observer still sees them.
"""

from __future__ import annotations

import json
import re
from typing import Any

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null')
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def request_usage(path: bytes, body: Any) -> bytes | None:
    """
    The request body with usage asked for, or None when there is nothing
    to change (not an OpenAI chat stream, or the client asked itself).
    """
    if not path.endswith(b"/chat/completions") or not isinstance(body, dict):
        return None
    if body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return None
    changed = dict(body)
    changed["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(changed).encode("utf-8")


class UsageChunkHider:
    """
    Rewrite a relayed OpenAI stream, one whole event at a time: bytes of an
    unfinished event wait for its end (a client cannot use half an event
    anyway), everything else passes unchanged.
    """

    def __init__(self) -> None:
        self._pending = b""

    def __call__(self, data: bytes) -> bytes:
        buffer = self._pending + data
        last = None
        for last in _EVENT_END.finditer(buffer):
            pass
        if last is None:
            self._pending = buffer
            return b""
        complete, self._pending = buffer[: last.end()], buffer[last.end() :]
        if b'"usage"' not in complete:
            return complete
        out = []
        start = 0
        for match in _EVENT_END.finditer(complete):
            event = complete[start : match.end()]
            start = match.end()
            if _is_usage_only(event):
                continue
            out.append(_USAGE_NULL.sub(b"", event))
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def _is_usage_only(event: bytes) -> bool:
    if b'"usage"' not in event or b'"choices"' not in event:
        return False
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                document = json.loads(line[5:])
            except ValueError:
                return False
            return (
                isinstance(document, dict)
                and document.get("choices") == []
                and isinstance(document.get("usage"), dict)
            )
    return False
