"""
The upstream HTTP/1.1 client: an ``IAgent`` for the one configured upstream.

Implements RFC 9112 section 3 (the request line, origin-form target, one
``Host``) and 6.2 (a request body framed by Content-Length), and RFC 9110
section 7.2 (``Host`` from the configured origin).  The rest of the client
is split by concern: :mod:`llmgate.http.parser` (the response framing state
machine), :mod:`llmgate.http.connection` (one kept connection) and
:mod:`llmgate.http.pool` (keeping connections and when to send again).

A gateway talks to a single origin, always with a body already in memory,
and relays the answer's bytes as they come.  Twisted's general ``Agent``
pays on every call for what that case never needs (a URI parsed again,
an endpoint looked up, a request object and its producer dance, a parser
built line by line), and that cost was half the gateway's CPU per call.
:class:`UpstreamAgent` writes the request head with the body in one write;
the answer's body is handed to the ``Protocol`` given to ``deliverBody``,
with the connection's pause and resume for flow control.  Errors are
Twisted's own (``ResponseNeverReceived``, ``ResponseFailed``,
``ResponseDone``, ``PotentialDataLoss``), so callers cannot tell the two
agents apart.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.web import client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from llmgate.config import GatewayConfig
from llmgate.http.connection import UpstreamConnection, UpstreamResponse
from llmgate.http.parser import MAX_CHUNK_LINE, MAX_HEAD, UpstreamProtocolError
from llmgate.http.pool import UpstreamPool

__all__ = [
    "BODY_METHODS",
    "MAX_CHUNK_LINE",
    "MAX_HEAD",
    "Origin",
    "UpstreamAgent",
    "UpstreamConnection",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "make_upstream",
    "tls_policy",
    "upstream_endpoint",
]

#: Methods whose request carries a body (and so a Content-Length) even empty.
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@implementer(IAgent)
class UpstreamAgent:
    """
    An ``IAgent`` for the one upstream behind ``base_url``: requests whose
    URI starts with it go over :class:`UpstreamPool`'s connections.
    """

    def __init__(self, pool: UpstreamPool, base_url: bytes) -> None:
        origin = Origin.of(base_url)
        self.pool = pool
        self._base = base_url.rstrip(b"/")
        self._base_path = origin.path
        self._host = origin.host_header

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        base = self._base
        if not uri.startswith(base) or uri[len(base) : len(base) + 1] not in (b"", b"/", b"?"):
            raise ValueError("the upstream agent only sends to its base URL")
        target = self._base_path + uri[len(base) :]
        if not target.startswith(b"/"):
            target = b"/" + target
        body = getattr(bodyProducer, "body", None) if bodyProducer is not None else None
        if bodyProducer is not None and body is None:
            raise TypeError("the upstream agent sends bodies held in memory only")
        return self.pool.send(method, self.serialise(method, target, headers, body), headers)

    def serialise(
        self, method: bytes, target: bytes, headers: Headers | None, body: bytes | None
    ) -> list[bytes]:
        """
        The request head and body, ready for one write.
        """
        if b"\r" in target or b"\n" in target or b" " in target:
            raise ValueError("request target holds whitespace or a line break")
        lines = [method, b" ", target, b" HTTP/1.1\r\nHost: ", self._host, b"\r\n"]
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                for value in values:
                    lines += (name, b": ", value, b"\r\n")
        if body is not None:
            lines += (b"Content-Length: %d\r\n\r\n" % (len(body),), body)
        elif method in BODY_METHODS:
            lines.append(b"Content-Length: 0\r\n\r\n")
        else:
            lines.append(b"\r\n")
        return [b"".join(lines)] if body is None or len(body) < 65536 else [
            b"".join(lines[:-1]),
            body,
        ]


@implementer(IPolicyForHTTPS)
class _NoVerification:
    """
    TLS without certificate checks, for ``llm.tls_verify: false`` only.
    """

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.CertificateOptions(verify=False)


def tls_policy(ca_file: str | None, verify: bool) -> IPolicyForHTTPS:
    """
    How the upstream's certificate is checked: against the system's CAs (the
    way a browser does, with service_identity), against ``ca_file``, or not
    at all.
    """
    if not verify:
        return _NoVerification()
    if ca_file:
        with open(ca_file, "rb") as handle:
            pem = handle.read()
        certificates = [
            ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + block)
            for block in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
        return client.BrowserLikePolicyForHTTPS(
            trustRoot=ssl.trustRootFromCertificates(certificates)
        )
    return client.BrowserLikePolicyForHTTPS()


@attrs.frozen
class Origin:
    """
    Where ``llm.base_url`` points: scheme, host, port, and a path prefix.
    """

    scheme: bytes
    host: str
    port: int
    path: bytes

    @classmethod
    def of(cls, base_url: bytes) -> Origin:
        parts = urlsplit(base_url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == b"https" else 80)
        host = (parts.hostname or b"").decode("idna")
        return cls(scheme, host, port, parts.path.rstrip(b"/"))

    @property
    def host_header(self) -> bytes:
        host = self.host.encode("idna")
        if ":" in self.host:
            host = b"[" + host + b"]"
        default = 443 if self.scheme == b"https" else 80
        return host if self.port == default else b"%s:%d" % (host, self.port)


def upstream_endpoint(
    reactor: Any, base_url: bytes, connect_timeout: float, policy: IPolicyForHTTPS
) -> Any:
    """
    The client endpoint of ``base_url``: TCP, wrapped in TLS checked by
    ``policy`` for https.

    An IP literal gets a plain TCP endpoint: ``HostnameEndpoint`` waits its
    attempt delay (0.3 s) after the last address failed before it gives up,
    so a refused upstream at an IP address would cost that much before its
    502, where a plain endpoint fails at once.  A name keeps
    ``HostnameEndpoint``, which tries each of its addresses in turn.
    """
    origin = Origin.of(base_url)
    endpoint: Any
    if isIPAddress(origin.host):
        endpoint = TCP4ClientEndpoint(reactor, origin.host, origin.port, timeout=connect_timeout)
    elif isIPv6Address(origin.host):
        endpoint = TCP6ClientEndpoint(reactor, origin.host, origin.port, timeout=connect_timeout)
    else:
        endpoint = HostnameEndpoint(reactor, origin.host, origin.port, timeout=connect_timeout)
    if origin.scheme == b"https":
        creator = policy.creatorForNetloc(origin.host.encode("idna"), origin.port)
        return wrapClientTLS(creator, endpoint)
    return endpoint


def make_upstream(
    reactor: Any, config: GatewayConfig, policy: IPolicyForHTTPS
) -> tuple[UpstreamPool, UpstreamAgent]:
    """
    The pool of connections to ``llm.base_url`` and the agent that sends
    through it.
    """
    llm = config.llm
    base_url = llm.base_url.encode("utf-8")
    pool = UpstreamPool(
        reactor,
        upstream_endpoint(reactor, base_url, llm.timeout, policy),
        max_idle=llm.max_idle_connections,
        # Both bound the idle age; the shorter one holds.
        idle_timeout=min(llm.idle_connection_timeout, config.pool.max_idle),
        max_requests=config.pool.max_requests,
    )
    return pool, UpstreamAgent(pool, base_url)
