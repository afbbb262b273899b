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
import ipaddress
from typing import Any, Iterable, Mapping

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.http_headers import Headers

from llmgate.config import AuthConfig, token_hash
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


def is_local_client(address: object) -> bool:
    """
    Whether a connection comes from this machine: a loopback address
    (IPv4-mapped IPv6 included) or a UNIX socket.  A reverse proxy on the
    same machine counts as local: put admin tokens in front of one.
    """
    if isinstance(address, UNIXAddress):
        return True
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return False
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@attrs.frozen
class AdminRefusal:
    status: int
    message: str
    kind: str


@attrs.frozen
class AdminGuard:
    """
    Who may use the admin surface (``/config``, ``/metrics``, and any
    admin view added later): one check every admin route makes.

    With ``auth.admin_tokens`` set, a request needs one of them.  With
    client auth on and no admin tokens, only local clients are answered, so
    turning auth on never leaves the admin surface open to the clients it
    was meant to keep out.  With no auth at all, anyone who can reach the
    gateway may look, as before.
    """

    admin_tokens: frozenset[bytes] = attrs.field(repr=False)
    local_only: bool

    @classmethod
    def from_config(cls, auth: AuthConfig) -> AdminGuard:
        return cls(
            admin_tokens=auth.admin_token_hashes,
            local_only=auth.enabled and not auth.admin_token_hashes,
        )

    def refusal(self, headers: Headers, client: object) -> AdminRefusal | None:
        """
        Why a request from ``client`` with ``headers`` may not see an admin
        view, or None when it may.
        """
        if self.admin_tokens:
            if token_allowed(presented_token(headers), self.admin_tokens):
                return None
            return AdminRefusal(401, "admin token required", "unauthorized")
        if self.local_only and not is_local_client(client):
            return AdminRefusal(
                403,
                "admin endpoints answer local clients only (set auth.admin_tokens)",
                "forbidden_admin",
            )
        return None

    def describe(self) -> str | None:
        """
        What an operator should read at start about the admin surface.
        """
        if self.local_only:
            return (
                "client auth is on and auth.admin_tokens is empty: /config, /metrics "
                "and the other admin views answer local clients only"
            )
        return None
