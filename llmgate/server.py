"""
The twisted.web server under the Klein app: a request class that enforces the
request body limit, and a site without the per-request access log (the
printer middleware logs calls, through ``twisted.logger``).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.web.server import Request, Site

from llmgate.providers import Provider


class GatewayRequest(Request):
    """
    A request whose body is held in memory and limited in size.

    twisted.web would read any body, of any size, before rendering, spilling
    to a temporary file on the reactor thread above 100 kB.  Here the body is
    bounded by ``server.max_request_body``, so memory is the right place, and
    a body over it is refused with 413 as soon as its size is known.
    """

    _too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        site: GatewaySite = self.channel.site
        if length is not None and length > site.max_request_body:
            self._refuse_body()
            return
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_request_body:
            self._refuse_body()
            return
        self.content.write(data)

    def process(self) -> None:
        if self._too_large:
            return
        super().process()

    def _refuse_body(self) -> None:
        """
        Answer 413 in the provider's error shape and drop the connection,
        without reading the rest of the body.
        """
        self._too_large = True
        self.content = BytesIO()
        # Do not invite the client to send the body we refuse.
        self.requestHeaders.removeHeader(b"expect")
        site: GatewaySite = self.channel.site
        site.refused_bodies += 1
        limit = site.max_request_body
        body = site.provider.error_body(
            413, f"request body exceeds {limit} bytes", "request_too_large"
        )
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n" % (len(body),)
            + body
        )
        self.channel.loseConnection()


class GatewaySite(Site):
    """
    The gateway's site.

    :ivar refused_bodies: requests refused for their body size.
    """

    requestFactory = GatewayRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self, resource: Any, provider: Provider, max_request_body: int, **kwargs: Any
    ) -> None:
        super().__init__(resource, **kwargs)
        self.provider = provider
        self.max_request_body = max_request_body
        self.refused_bodies = 0

    def log(self, request: Request) -> None:
        """
        No access log line per request: it would cost more than the relay.
        """
