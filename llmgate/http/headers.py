"""
Which headers cross the gateway, in each direction.

Pure functions over lists of ``(name, values)``: hop-by-hop headers belong to
one connection and never cross; the client's credentials never go upstream
when the gateway holds the key; the gateway's own control headers
(``x-llmgate-*``) are for the gateway alone.

Implements RFC 9110 section 7.6.1 (``Connection``: hop-by-hop fields, and
every name it lists, are dropped both ways), 7.2 (``Host`` set by the client
side of the gateway) and 12.5.3 (``Accept-Encoding`` narrowed to codings the
gateway can observe); RFC 9112 section 6.1 (``Transfer-Encoding`` is hop by
hop).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from twisted.web.http_headers import Headers

#: RFC 9110 section 7.6.1, plus the legacy names still seen in the wild.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Set again by the HTTP client for the upstream connection.
REQUEST_ONLY = frozenset({b"host", b"content-length", b"expect"})

#: Encodings the gateway can decode to observe a body it relays unchanged.
OBSERVABLE_ENCODINGS = frozenset({b"gzip", b"x-gzip", b"deflate", b"identity"})

CONTROL_PREFIX = b"x-llmgate-"

RawHeaders = Iterable[tuple[bytes, Sequence[bytes]]]


def connection_tokens(headers: RawHeaders) -> frozenset[bytes]:
    """
    The header names a ``Connection`` header lists, which are hop-by-hop for
    this message only.
    """
    tokens = set()
    for name, values in headers:
        if name.lower() == b"connection":
            for value in values:
                for token in value.split(b","):
                    token = token.strip().lower()
                    if token:
                        tokens.add(token)
    return frozenset(tokens)


def outbound_request_headers(
    headers: Headers,
    credential: tuple[bytes, bytes] | None,
    strip: frozenset[bytes],
    defaults: Mapping[bytes, bytes],
) -> Headers:
    """
    The headers to send upstream for a client's request.

    :param headers: the client's request headers.
    :param credential: ``(name, value)`` of an injected key, or None to let the
        client's own credential through.
    :param strip: lower-case names of credential headers to remove (when a
        key is injected, or clients present gateway tokens).
    :param defaults: headers added only when the client sent none.
    """
    raw = list(headers.getAllRawHeaders())
    listed = connection_tokens(raw)
    result = Headers()
    for name, values in raw:
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in REQUEST_ONLY
            or lower in listed
            or lower.startswith(CONTROL_PREFIX)
        ):
            continue
        if lower in strip:
            continue
        if lower == b"accept-encoding":
            values = [_observable_encodings(values)]
        result.setRawHeaders(name, values)
    if credential is not None:
        result.setRawHeaders(credential[0], [credential[1]])
    for name, value in defaults.items():
        if not result.hasHeader(name):
            result.setRawHeaders(name, [value])
    return result


def inbound_response_headers(headers: Headers) -> list[tuple[bytes, Sequence[bytes]]]:
    """
    The upstream response's headers that go back to the client: all of them
    but the hop-by-hop ones.  ``Content-Length`` and ``Content-Encoding`` are
    kept, since the body is relayed byte for byte.
    """
    raw = list(headers.getAllRawHeaders())
    listed = connection_tokens(raw)
    return [
        (name, values)
        for name, values in raw
        if (lower := name.lower()) not in HOP_BY_HOP and lower not in listed
    ]


def _observable_encodings(values: Sequence[bytes]) -> bytes:
    """
    Narrow a client's ``Accept-Encoding`` to codings the gateway can decode
    for its own observation (traces, usage), so compressed bodies still pass
    through intact and are never decoded on the client's behalf.
    """
    kept = []
    for value in values:
        for item in value.split(b","):
            coding = item.split(b";", 1)[0].strip().lower()
            if coding in OBSERVABLE_ENCODINGS:
                kept.append(item.strip())
    return b", ".join(kept) if kept else b"identity"
