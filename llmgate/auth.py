"""
Client authentication: who may spend the gateway's key.

Clients present a gateway token the way their SDK presents an API key
(``Authorization: Bearer`` or ``x-api-key``), so an unmodified OpenAI or
Anthropic SDK works with the token as its ``api_key``.  Tokens are kept only
as SHA-256 digests and compared in constant time; the token is never
forwarded (the forwarder strips every credential header when auth is on).
"""

from __future__ import annotations

import hmac
from typing import Any, Iterable, Mapping

from twisted.web.http_headers import Headers

from llmgate.config import token_hash
from llmgate.exchange import Exchange, LocalAnswer
from llmgate.middleware import Middleware
from llmgate.providers import Provider


def presented_token(headers: Headers) -> bytes | None:
    """
    The credential a client sent, from the headers SDKs use.
    """
    for value in headers.getRawHeaders(b"authorization", []):
        scheme, _, token = value.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    for name in (b"x-api-key", b"api-key"):
        values = headers.getRawHeaders(name)
        if values and values[0].strip():
            return values[0].strip()
    return None


def token_allowed(token: bytes | None, digests: Iterable[bytes]) -> bool:
    """
    Whether ``token`` is one of the tokens whose digests are given; every
    digest is compared, in constant time, whatever matches.
    """
    if token is None:
        return False
    presented = token_hash(token)
    allowed = False
    for digest in digests:
        allowed |= hmac.compare_digest(presented, digest)
    return allowed


class AuthStage(Middleware):
    """
    Refuse calls without a valid client token, with 401 in the call's API
    shape, before anything is forwarded.
    """

    name = "auth"

    def __init__(self, digests: frozenset[bytes], provider: Provider) -> None:
        self.digests = digests
        self.provider = provider
        self.refused = 0

    def request_received(self, exchange: Exchange) -> LocalAnswer | None:
        token = presented_token(exchange.request.headers)
        if token_allowed(token, self.digests):
            return None
        self.refused += 1
        message = "missing gateway token" if token is None else "invalid gateway token"
        exchange.error, exchange.error_kind = message, "unauthorized"
        return LocalAnswer(
            status=401,
            body=(exchange.api or self.provider).error_body(401, message, "unauthorized"),
            headers=((b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")),
        )

    def state(self) -> Mapping[str, Any]:
        return {"client_tokens": len(self.digests), "refused": self.refused}
