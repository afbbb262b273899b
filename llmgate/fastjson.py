"""
JSON for the per-call path: ``orjson`` where it gives the answer the
standard library would, the standard library where it would not.

Every call parses its request body and often its answer, and every trace is
serialised: ``orjson`` does that several times faster than ``json`` and
holds the GIL for correspondingly less.  What ``orjson`` refuses and
``json`` accepts (``NaN``, integers beyond 64 bits, nesting deeper than
1,024) falls back to ``json``, so no body that parsed before fails now.
One difference stays: ``orjson`` reads an integer beyond 64 bits as a
float, where ``json`` keeps it exact.  No figure llmgate reads (tokens,
``max_tokens``) comes near that.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    orjson = None  # type: ignore[assignment]


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """
    Parse JSON as :func:`json.loads` does.

    :raises ValueError: (or ``RecursionError``, ``UnicodeDecodeError``) for
        what :func:`json.loads` refuses.
    """
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    if isinstance(data, memoryview):
        data = bytes(data)
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """
    Serialise to UTF-8 JSON, compact, non-ASCII kept as is; anything that
    is not JSON (bytes, a stray object) as its ``str``.
    """
    if orjson is not None:
        try:
            return orjson.dumps(value, default=str)
        except TypeError:
            pass  # an integer beyond 64 bits, a non-string key
    return json.dumps(
        value, ensure_ascii=False, default=str, separators=(",", ":")
    ).encode("utf-8", "backslashreplace")  # a lone surrogate as its JSON escape


__all__ = ["loads", "dumps"]
