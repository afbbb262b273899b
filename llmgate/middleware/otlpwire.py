"""
OTLP trace requests written straight to protobuf bytes.

The exporter package's encoder builds a protobuf object per span, attribute
and value before serialising: about 150 us per llmgate span measured here,
more than a whole relayed call, on the gateway's one core.  This writes the
same ``ExportTraceServiceRequest`` (the tests decode both with
``opentelemetry-proto`` and compare) from the wire format directly, caching
the bytes of what repeats: the resource, the scope, and attribute pairs such
as ``gen_ai.provider.name=openai``.
"""

from __future__ import annotations

import struct
from typing import Any, Mapping, Sequence

_INT64 = (1 << 64) - 1
_VARINTS = []
for _n in range(1 << 14):
    _VARINTS.append(bytes([_n]) if _n < 0x80 else bytes([(_n & 0x7F) | 0x80, _n >> 7]))

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack

#: Span kinds as OTLP numbers them (the SDK's enum counts from 0).
_KINDS = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}

#: Span flags: "is_remote is known", and "the parent is remote".
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

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


def _field(tag: bytes, payload: bytes) -> bytes:
    """
    A length-delimited field: ``tag`` is the encoded key byte.
    """
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    # The oneof keeps even a default value (False, 0, ""), as protobuf does.
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value & _INT64)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if value is None:
        return b""
    if value.__class__ is tuple or value.__class__ is list:
        # Before the abstract checks below, which cost microseconds each.
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _field(b"\x32", pairs)
    if isinstance(value, Sequence):
        items = b"".join(_field(b"\x0a", _any_value(v)) for v in value)
        return _field(b"\x2a", items)
    raise TypeError(f"cannot encode {type(value).__name__} as an OTLP value")


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


class WireEncoder:
    """
    ``ExportTraceServiceRequest`` bytes for a batch of ``ReadableSpan``.

    Not thread-safe: one per exporter, used on the exporter's thread.
    """

    def __init__(self) -> None:
        self._pairs: dict[type, dict[str, dict[Any, bytes]]] = {}
        # Keyed by identity; the value holds the object too, so that its id
        # is never reused while cached.
        self._heads: dict[tuple[int, int], tuple[Any, bytes]] = {}

    def encode(self, spans: Sequence[Any]) -> bytes:
        groups: dict[tuple[int, int], tuple[Any, Any, list[bytes]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            key = (id(resource), id(scope))
            group = groups.get(key)
            if group is None:
                group = groups[key] = (resource, scope, [])
            group[2].append(_field(b"\x12", self._span(span)))
        out = []
        for resource, scope, encoded in groups.values():
            scope_spans = self._scope(scope) + b"".join(encoded)
            resource_spans = self._resource(resource) + _field(b"\x12", scope_spans)
            out.append(_field(b"\x0a", resource_spans))
        return b"".join(out)

    def _attributes(self, tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        caches = self._pairs
        out = []
        for key, value in attributes.items():
            kind = value.__class__
            # One cache per key and type (1, 1.0 and True are equal as dict
            # keys, not on the wire), nested so that a lookup allocates nothing.
            if key not in UNIQUE and (
                (kind is str and len(value) <= 64) or kind is int or kind is float
            ):
                by_key = caches.get(kind)
                if by_key is None:
                    by_key = caches[kind] = {}
                values = by_key.get(key)
                if values is None:
                    values = by_key[key] = {}
                encoded = values.get(value)
                if encoded is None:
                    if len(values) >= _CACHE_SIZE:
                        values.clear()
                    encoded = values[value] = _field(tag, _key_value(key, value))
            else:
                encoded = _field(tag, _key_value(key, value))
            out.append(encoded)
        return b"".join(out)

    def _resource(self, resource: Any) -> bytes:
        key = (id(resource), 0)
        cached = self._heads.get(key)
        if cached is None:
            if len(self._heads) > 64:
                self._heads.clear()
            body = _attributes_plain(b"\x0a", resource.attributes)
            head = _field(b"\x0a", body)
            if resource.schema_url:
                head += _field(b"\x1a", resource.schema_url.encode("utf-8"))
            cached = self._heads[key] = (resource, head)
        return cached[1]

    def _scope(self, scope: Any) -> bytes:
        key = (id(scope), 1)
        cached = self._heads.get(key)
        if cached is None:
            body = b""
            if scope is not None:
                if scope.name:
                    body += _field(b"\x0a", scope.name.encode("utf-8"))
                if scope.version:
                    body += _field(b"\x12", scope.version.encode("utf-8"))
                body += _attributes_plain(b"\x1a", scope.attributes)
            head = _field(b"\x0a", body)
            if scope is not None and scope.schema_url:
                head += _field(b"\x1a", scope.schema_url.encode("utf-8"))
            cached = self._heads[key] = (scope, head)
        return cached[1]

    def _span(self, span: Any) -> bytes:
        context = span.context
        parts = [
            b"\x0a\x10", context.trace_id.to_bytes(16, "big"),
            b"\x12\x08", context.span_id.to_bytes(8, "big"),
        ]
        state = context.trace_state
        if state:
            parts.append(
                _field(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items()).encode("utf-8"))
            )
        parent = span.parent
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        if span.name:
            parts.append(_field(b"\x2a", span.name.encode("utf-8")))
        kind = _KINDS[span.kind.value]
        parts += (b"\x30", _VARINTS[kind])
        if span.start_time:
            parts += (b"\x39", _fixed64(span.start_time))
        if span.end_time:
            parts += (b"\x41", _fixed64(span.end_time))
        parts.append(self._attributes(b"\x4a", span.attributes))
        for event in span.events:
            body = b""
            if event.timestamp:
                body += b"\x09" + _fixed64(event.timestamp)
            if event.name:
                body += _field(b"\x12", event.name.encode("utf-8"))
            body += _attributes_plain(b"\x1a", event.attributes)
            parts.append(_field(b"\x5a", body))
        status = span.status
        body = b""
        if status.description:
            body += _field(b"\x12", status.description.encode("utf-8"))
        if status.status_code.value:
            body += b"\x18" + _VARINTS[status.status_code.value]
        parts.append(_field(b"\x7a", body))
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
        parts += (b"\x85\x01", _fixed32(flags))
        return b"".join(parts)


def _attributes_plain(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join(_field(tag, _key_value(key, value)) for key, value in attributes.items())
