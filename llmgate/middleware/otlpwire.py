"""
OTLP trace data written straight to protobuf bytes, from plain values.

The exporter package's encoder builds a protobuf object per span, attribute
and value before serialising (about 150 us per llmgate span measured here,
more than a whole relayed call), and an SDK span costs as much again to
build.  This writes the wire format of ``opentelemetry.proto.trace.v1``
directly (the tests decode it with ``opentelemetry-proto`` and compare),
caching the bytes of what repeats: the resource and scope, and attribute
pairs such as ``gen_ai.provider.name=openai``.  A span's bytes hold no
reference to anything, so a queue of them costs the garbage collector
nothing.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Mapping, Sequence

_INT64 = (1 << 64) - 1
_VARINTS = []
for _n in range(1 << 14):
    _VARINTS.append(bytes([_n]) if _n < 0x80 else bytes([(_n & 0x7F) | 0x80, _n >> 7]))

_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack

#: ``Span.SpanKind`` numbers.
SERVER = 2
CLIENT = 3

#: ``Span.flags``: "is_remote is known", and "the parent is remote".
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)

#: ``Span.status``: unset (an empty message, as the SDK's encoder writes it),
#: or ``STATUS_CODE_ERROR``.
_STATUS_UNSET = b"\x7a\x00"
_STATUS_ERROR = b"\x7a\x02\x18\x02"

#: Attributes whose values differ on every span: never cached.
UNIQUE = frozenset(
    {
        "gen_ai.response.id",
        "gen_ai.conversation.id",
        "llmgate.exchange.id",
        "llmgate.time_to_first_token",
    }
)

#: Values kept encoded per attribute at most; past it that cache starts again.
_CACHE_SIZE = 4096


def _varint(n: int) -> bytes:
    if n < 1 << 14:
        return _VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: bytes, payload: bytes) -> bytes:
    """
    A length-delimited field: ``tag`` is the encoded key byte(s).
    """
    return tag + _varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """
    An ``AnyValue`` message.  The oneof keeps even a default value (False,
    0, ""), as protobuf does.
    """
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value & _INT64)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return field(b"\x3a", value)
    if value is None:
        return b""
    if value.__class__ is tuple or value.__class__ is list:
        # Before the abstract checks below, which cost microseconds each.
        return field(b"\x2a", b"".join(field(b"\x0a", any_value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(field(b"\x0a", key_value(str(k), v)) for k, v in value.items())
        return field(b"\x32", pairs)
    if isinstance(value, Sequence):
        return field(b"\x2a", b"".join(field(b"\x0a", any_value(v)) for v in value))
    raise TypeError(f"cannot encode {type(value).__name__} as an OTLP value")


def key_value(key: str, value: Any) -> bytes:
    """
    A ``KeyValue`` message.
    """
    return field(b"\x0a", key.encode("utf-8")) + field(b"\x12", any_value(value))


def attributes_plain(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """
    ``attributes`` as repeated ``KeyValue`` fields numbered by ``tag``,
    uncached: for what is encoded once (a resource) or rarely (an event).
    """
    if not attributes:
        return b""
    return b"".join(field(tag, key_value(key, value)) for key, value in attributes.items())


def event(name: str, time_unix_nano: int, attributes: Mapping[str, Any]) -> bytes:
    """
    A ``Span.Event`` as a span's ``events`` field.
    """
    body = b"\x09" + _fixed64(time_unix_nano) if time_unix_nano else b""
    if name:
        body += field(b"\x12", name.encode("utf-8"))
    return field(b"\x5a", body + attributes_plain(b"\x1a", attributes))


class Pairs:
    """
    Span attributes as encoded ``KeyValue`` fields, the bytes of a pair
    cached by key, type and value for values that repeat (not the
    :data:`UNIQUE` keys, not long strings).

    Used on one thread (the reactor's).
    """

    def __init__(self) -> None:
        # One cache per type and key (1, 1.0 and True are equal as dict
        # keys, not on the wire), nested so that a lookup allocates nothing.
        self._caches: dict[type, dict[str, dict[Any, bytes]]] = {
            str: {}, int: {}, float: {}, tuple: {},
        }
        # A key's encoding, up to its value's tag.
        self._heads: dict[str, bytes] = {}

    def encode(self, attributes: Iterable[tuple[str, Any]]) -> bytes:
        """
        The span's ``attributes`` fields, in the order given.
        """
        caches = self._caches
        out = []
        for key, value in attributes:
            kind = value.__class__
            by_key = caches.get(kind)
            if by_key is None or key in UNIQUE or (kind is str and len(value) > 64):
                out.append(field(b"\x4a", key_value(key, value)))
                continue
            values = by_key.get(key)
            if values is None:
                values = by_key[key] = {}
            encoded = values.get(value)
            if encoded is None:
                if len(values) >= _CACHE_SIZE:
                    values.clear()
                encoded = values[value] = field(b"\x4a", key_value(key, value))
            out.append(encoded)
        return b"".join(out)

    def one(self, key: str, value: Any) -> bytes:
        """
        One attribute that is not cached (an id, a count).
        """
        return field(b"\x4a", key_value(key, value))


def string_heads(key: str, longest: int = 255) -> list[bytes]:
    """
    For a string attribute ``key``, the bytes that go before a value of
    each length up to ``longest`` bytes: an attribute whose values differ on
    every span (an id) is then written as ``heads[len(data)] + data``.
    """
    name = field(b"\x0a", key.encode("utf-8"))
    heads = []
    for size in range(longest + 1):
        value = b"\x0a" + _varint(size)
        pair = name + b"\x12" + _varint(len(value) + size) + value
        heads.append(b"\x4a" + _varint(len(pair) + size) + pair)
    return heads


_times = struct.Struct("<BBBQBQ").pack

#: A span's ``status`` and ``flags`` fields by (failed, parent is remote).
_ENDINGS = {
    (False, False): _STATUS_UNSET + _FLAGS_LOCAL,
    (False, True): _STATUS_UNSET + _FLAGS_REMOTE,
    (True, False): _STATUS_ERROR + _FLAGS_LOCAL,
    (True, True): _STATUS_ERROR + _FLAGS_REMOTE,
}


def span(
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes | None,
    parent_remote: bool,
    trace_state: bytes,
    name: bytes,
    kind: int,
    start: int,
    end: int,
    attributes: bytes,
    events: bytes = b"",
    error: bool = False,
) -> bytes:
    """
    One ``Span`` as a ``ScopeSpans.spans`` field.

    :param trace_id: the 16 bytes of the trace id; ``span_id`` and
        ``parent_id``, 8 bytes each.
    :param trace_state: the W3C ``tracestate`` header's value, already a
        ``Span.trace_state`` field (empty for none).
    :param name: the span's name, already a ``Span.name`` field.
    :param kind: :data:`SERVER` or :data:`CLIENT`.
    :param attributes: what :meth:`Pairs.encode` gave.
    :param events: what :func:`event` gave, joined.
    """
    body = b"".join(
        (
            b"\x0a\x10", trace_id, b"\x12\x08", span_id, trace_state,
            b"" if parent_id is None else b"\x22\x08" + parent_id,
            name,
            _times(0x30, kind, 0x39, start, 0x41, end),
            attributes,
            events,
            _ENDINGS[error, parent_remote],
        )
    )
    size = len(body)
    return b"\x12" + (_VARINTS[size] if size < 16384 else _varint(size)) + body


def name_field(name: str) -> bytes:
    """
    A span name as a ``Span.name`` field.
    """
    return field(b"\x2a", name.encode("utf-8")) if name else b""


def trace_state_field(header: str) -> bytes:
    return field(b"\x1a", header.encode("utf-8")) if header else b""


class RequestHead:
    """
    What every request of one exporter repeats: the resource and the
    instrumentation scope, encoded once.
    """

    def __init__(
        self,
        resource: Mapping[str, Any],
        scope_name: str,
        scope_version: str,
        resource_schema_url: str = "",
    ) -> None:
        head = field(b"\x0a", attributes_plain(b"\x0a", resource))
        if resource_schema_url:
            head += field(b"\x1a", resource_schema_url.encode("utf-8"))
        self.resource = head
        scope = b""
        if scope_name:
            scope += field(b"\x0a", scope_name.encode("utf-8"))
        if scope_version:
            scope += field(b"\x12", scope_version.encode("utf-8"))
        self.scope = field(b"\x0a", scope)

    def request(self, spans: Sequence[bytes]) -> bytes:
        """
        An ``ExportTraceServiceRequest`` holding ``spans`` (what
        :func:`span` gave), under one resource and scope.
        """
        scope_spans = field(b"\x12", self.scope + b"".join(spans))
        return field(b"\x0a", self.resource + scope_spans)
