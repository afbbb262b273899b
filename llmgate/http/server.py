"""
The twisted.web server under the Klein app: a request class that enforces the
request body limit, and a site without the per-request access log (the
printer middleware logs calls, through ``twisted.logger``).

Implements, over twisted.web's own parser, RFC 9112 section 2.2 (message
parsing: a strict one-step path for whole requests, everything else left to
twisted.web), 3 (the request line), 3.2 (exactly one ``Host``: two are a
400), 5 (field lines: a token name, no CR, LF or NUL in a value), 6.1-6.3
(body length: ``chunked`` is the only transfer coding, ``Content-Length``
is digits, more than 18 of them a 413) and 9.5 (timeouts: a whole request
within ``server.request_timeout``); RFC 9110 section 15.5.14 (413) and RFC
6585 section 5 (431).
"""

from __future__ import annotations

import re
from collections import Counter
from io import BytesIO
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from llmgate.providers import Provider
from llmgate.http import twisted_names
from llmgate.http.sendnow import send_now


#: A request line taken whole: a token method, an origin-form or other
#: printable ASCII target, HTTP/1.1 or 1.0.
_REQUEST_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/1\.[01])"
)

#: Header lines taken whole: a token name, a colon, a value without NUL,
#: CR or LF; each line ends in CRLF.
_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00\r\n]*\r\n)*")


#: The most digits a Content-Length may have: more is over any body limit,
#: and thousands would make ``int`` raise.
_MAX_LENGTH_DIGITS = 18

#: The largest request body held back until it is all here, to be taken
#: with its head in one step; a larger one is left to twisted.web's parser.
MAX_HELD_BODY = 65536


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
    _client_gone: Callable[[], object] | None = None

    def when_client_gone(self, callback: Callable[[], object]) -> None:
        """
        Call ``callback`` if the client's connection is lost before this
        request is finished: ``notifyFinish`` without a Deferred per request.
        """
        self._client_gone = callback

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        gone, self._client_gone = self._client_gone, None
        if gone is not None:
            gone()

    def finish(self) -> None:
        # The callback holds the call, which holds this request.
        self._client_gone = None
        super().finish()

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
        """
        twisted.web's ``Request.process`` less two things: no ``Server``
        header naming twisted.web and its version (an upstream's own Server
        header is relayed as it came), and a ``Date`` formatted once a
        second, not for every answer.  The target ``*`` is not special: the
        gateway refuses it as it refuses any target that is not a path.
        """
        if self._too_large:
            return
        self.site = site = self.channel.site
        self.responseHeaders.setRawHeaders(b"date", [site.http_date()])
        self.prepath = []
        self.postpath = [unquote_to_bytes(part) for part in self.path[1:].split(b"/")]
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data: bytes) -> None:
        channel = self.channel
        if not isinstance(channel, GatewayChannel) or channel.gathered is not None:
            super().write(data)
            return
        # What this write puts out (the head with the first body bytes, or
        # one chunk of a stream) leaves in one send, now.
        channel.gathered = gathered = []
        try:
            super().write(data)
        finally:
            channel.gathered = None
        if gathered and channel.transport is not None:
            if channel.site.send_at_once:
                send_now(channel.transport, b"".join(gathered))
            else:
                channel.transport.write(b"".join(gathered))

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
        site.refused["body_too_large"] += 1
        limit = site.max_request_body
        body = site.error_body(
            self.channel, 413, f"request body exceeds {limit} bytes", "request_too_large"
        )
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n" % (len(body),)
            + body
        )
        channel = self.channel
        if isinstance(channel, GatewayChannel):
            # Refused: no 408 may follow for the body it will never send.
            channel._cancel_deadline()
        channel.loseConnection()
        if isinstance(channel, GatewayChannel):
            channel.ignore_the_rest()


class GatewayChannel(HTTPChannel):
    """
    An HTTP connection that answers protocol abuse with a JSON error:
    malformed requests (400), oversized heads (431), and clients that take
    longer than ``server.request_timeout`` to send a whole request (408),
    however slowly they trickle it.
    """

    _deadline: IDelayedCall | None = None
    _host: Any = None
    _peer: Any = None
    #: While a request writes: what it wrote, sent by the request at its end.
    gathered: list[bytes] | None = None
    #: The start of a request taken whole once its body is here, its size,
    #: and the size it needs.
    _held: list[bytes] | None = None
    _held_size = 0
    _held_needed = 0
    _keep_idle_timer = False
    #: Answered with an error, and closing: nothing more is served.
    _refused = False

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self.gathered is None or not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        # As twisted.web writes them; Headers has sanitised every value.
        out = self.gathered
        out += (version, b" ", code, b" ", reason, b"\r\n")
        for name, values in headers.getAllRawHeaders():
            for value in values:
                out += (name, b": ", value, b"\r\n")
        out.append(b"\r\n")

    def write(self, data: bytes) -> None:
        if self.gathered is None:
            super().write(data)
        else:
            self.gathered.append(data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        if self.gathered is None:
            super().writeSequence(iovec)
        else:
            self.gathered.extend(iovec)

    def getHost(self) -> Any:
        # Asked by every request; one getsockname() per connection is enough.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def dataReceived(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            # Parsed again only once the whole body is here: a body trickled
            # in small pieces costs no more than twisted.web's own parsing.
            held.append(data)
            self._held_size += len(data)
            self.resetTimeout()
            if self._held_size < self._held_needed:
                return
            self._held = None
            data = b"".join(held)
            taken = self._whole_request(data)
        else:
            taken = self._at_request_start() and self._whole_request(data)
        if not taken:
            self._watch_deadline()
            super().dataReceived(data)

    def _at_request_start(self) -> bool:
        """
        Whether nothing of a request has been read yet: no partial line, no
        request being answered, no deadline running.
        """
        return (
            self.line_mode
            and not self._buffer
            and not self._handlingRequest
            and self._deadline is None
        )

    def _watch_deadline(self) -> None:
        if self._deadline is None and not self._handlingRequest:
            site: GatewaySite = self.site
            self._deadline = site.clock.callLater(site.request_timeout, self._too_slow)

    def _whole_request(self, data: bytes) -> bool:
        """
        Take a request that arrived whole in ``data`` (its head and a body of
        exactly its Content-Length) in one step, where twisted.web would
        split it into lines and take each header through several calls.

        Only a strict subset of what twisted.web accepts is taken here:
        anything else (a partial or pipelined request, chunked bodies,
        ``Expect``, folded or bare-LF lines, any limit reached, an unknown
        parser state) returns False before anything is changed, and
        twisted.web parses the same bytes, with its own errors.  What is
        taken ends in twisted.web's own ``allHeadersReceived`` and
        ``allContentReceived``, so the request is the one it would build.
        """
        if (
            not twisted_names.ONE_STEP_PARSER
            or self.paused
            or self._busyReceiving
            or self._transferDecoder is not None
            or not self.persistent
            or getattr(self, "_HTTPChannel__first_line", None) != 1
            or getattr(self, "_HTTPChannel__header", None) != b""
        ):
            return False
        end = data.find(b"\r\n\r\n")
        if end < 0 or end > self.totalHeadersSize or end > self.MAX_LENGTH:
            return False
        first = data.find(b"\r\n")
        request_line = _REQUEST_LINE.fullmatch(data, 0, first)
        if request_line is None or _HEADER_BLOCK.fullmatch(data, first + 2, end + 2) is None:
            return False
        lines = data[first + 2 : end].split(b"\r\n") if end > first else []
        if len(lines) > self.maxHeaders:
            return False
        headers = []
        length = 0
        framed = hosts = False
        for line in lines:
            name, _, value = line.partition(b":")
            value = value.strip(b" \t")
            lowered = name.lower()
            if lowered == b"content-length":
                if framed or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                    return False
                framed = True
                length = int(value)
            elif lowered == b"transfer-encoding" or lowered == b"expect":
                return False
            elif lowered == b"host":
                if hosts:
                    return False
                hosts = True
            headers.append((name, value))
        body_start = end + 4
        received = len(data) - body_start
        if received < length <= min(MAX_HELD_BODY, self.site.max_request_body):
            # Clients often send the head and the body in two writes: hold
            # the head until the body is here.
            self._held = [data]
            self._held_size = len(data)
            self._held_needed = body_start + length
            self.resetTimeout()
            self._watch_deadline()
            return True
        if received != length:
            return False

        self.resetTimeout()
        request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        add = request.requestHeaders.addRawHeader
        for name, value in headers:
            add(name, value)
        self._command, self._path, self._version = request_line.groups()
        self.length = length
        self.allHeadersReceived()
        if self.transport.disconnecting:
            # Refused on its headers (a body over the limit).
            return True
        if length:
            request.handleContentChunk(data[body_start:])
        self.allContentReceived()
        return True

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        if self._refused:
            return
        # twisted.web stops the idle timer here and makes a new one when the
        # answer is done: a DelayedCall cancelled and one made per request.
        # The timer keeps running instead (see setTimeout), is set back to
        # the full idle time when the answer is done, and, should it expire
        # while a long answer is still going, is started again.
        self._keep_idle_timer = bool(self.timeOut)
        try:
            super().allContentReceived()
        finally:
            self._keep_idle_timer = False

    def setTimeout(self, period: float | None) -> float | None:
        if period is None and self._keep_idle_timer:
            self._keep_idle_timer = False
            return self.timeOut
        return super().setTimeout(period)

    def timeoutConnection(self) -> None:
        if self._handlingRequest:
            if self.transport.disconnecting:
                # Closing since its last answer for a whole idle period, and
                # still not closed: a client that stopped reading.
                self.forceAbortClient()
            else:
                # Not idle: an answer is still being given.
                self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(408, "request_timeout", "request not received in time")

    def lineLengthExceeded(self, line: bytes) -> None:
        # One head line longer than MAX_LENGTH: twisted would just hang up.
        self._refuse(431, "headers_too_large", "request headers too large")

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        # Only "chunked" frames a request; twisted ignores "identity", which
        # leaves chunked not the final coding or the body unframed.
        if header == b"Transfer-Encoding" and data.lower() != b"chunked":
            return self._failChooseTransferDecoder()
        if header == b"Content-Length" and len(data) > _MAX_LENGTH_DIGITS and data.isdigit():
            # twisted.web's int() raises on thousands of digits; a length
            # of more than 18 digits is over any body limit anyway.
            if len(data.lstrip(b"0")) > _MAX_LENGTH_DIGITS:
                self._refuse(413, "body_too_large", "request body too large")
            else:
                self._refuse(400, "bad_request", "malformed HTTP request")
            return False
        return super()._maybeChooseTransferDecoder(header, data)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        hosts = request.requestHeaders.getRawHeaders(b"host")
        if hosts is not None and len(hosts) > 1:
            # RFC 9112, 3.2: a request with more than one Host is a 400.
            self._refuse(400, "bad_request", "more than one Host header")
            # twisted.web goes on to the body: there is none to read.
            self.length = 0
            return
        super().allHeadersReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        if (
            self._receivedHeaderSize > self.totalHeadersSize
            or self._receivedHeaderCount > self.maxHeaders
        ):
            self._refuse(431, "headers_too_large", "request headers too large")
        else:
            self._refuse(400, "bad_request", "malformed HTTP request")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._cancel_deadline()
        self._refused = True
        site: GatewaySite = self.site
        site.refused[reason] += 1
        body = site.error_body(self, status, message, reason)
        phrase = {
            400: b"Bad Request",
            408: b"Request Timeout",
            413: b"Payload Too Large",
            431: b"Request Header Fields Too Large",
        }
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, phrase[status], len(body), body)
        )
        self.loseConnection()
        self.ignore_the_rest()

    def ignore_the_rest(self) -> None:
        """
        Parse nothing more from this connection: it was refused and is
        closing.  (Bytes already read, as a TLS connection delivers them one
        record at a time, would otherwise still be parsed and served.)
        """
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore[method-assign]


class GatewaySite(Site):
    """
    The gateway's site.

    :ivar refused: requests refused before they reached the gateway's
        routes, by reason (``body_too_large``, ``headers_too_large``,
        ``bad_request``, ``request_timeout``).
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        resource: Any,
        provider: Provider,
        max_request_body: int,
        request_timeout: float = 60.0,
        max_headers: int = 100,
        max_header_bytes: int = 32768,
        clock: Any = None,
        idle_timeout: float = 120.0,
        send_at_once: bool = True,
        shapes: Any = None,
        **kwargs: Any,
    ) -> None:
        """
        :param shapes: the gateway's API shapes
            (:class:`llmgate.providers.registry.Shapes`), by which an error
            written before routing takes the shape of the call's path; None
            for the built-in ones.
        :param send_at_once: write answers to the socket at once rather than
            on the loop's next turn.  False when the end of a call writes to
            a shared store (Redis sessions): then the store's write leaves in
            the same turn as the answer, so a client whose next call reaches
            another worker finds its session there.
        """
        # No form parsing: every POST here is JSON, and Twisted's check of the
        # content type through the email package halves a small call's speed.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, timeout=idle_timeout, **kwargs)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.provider = provider
        self.max_request_body = max_request_body
        self.request_timeout = request_timeout
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.send_at_once = send_at_once
        if shapes is None:
            from llmgate.providers.registry import DEFAULT as shapes
        self.shapes = shapes
        self.refused: Counter[str] = Counter()
        self._date_second = -1
        self._date = b""

    def http_date(self) -> bytes:
        """
        The Date header's value for an answer given now.
        """
        now = int(self.clock.seconds())
        if now != self._date_second:
            self._date_second = now
            self._date = datetimeToString(now)
        return self._date

    def error_body(self, channel: Any, status: int, message: str, code: str) -> bytes:
        """
        An error the server writes itself (413, 408, 431, 400), in the shape
        of the call's path when its request line was read (an Anthropic
        ``/v1/messages`` call gets Anthropic's), else of the default
        upstream's type.
        """
        target = getattr(channel, "_path", None)
        if isinstance(target, bytes) and target.startswith(b"/"):
            shapes = self.shapes
            shape = shapes.for_path(target.split(b"?", 1)[0])
            if shape is not shapes.opaque:
                return shape.error_body(status, message, code)
        return self.provider.error_body(status, message, code)

    @property
    def refused_bodies(self) -> int:
        return self.refused["body_too_large"]

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.maxHeaders = self.max_headers
        channel.totalHeadersSize = self.max_header_bytes
        channel.MAX_LENGTH = self.max_header_bytes
        channel.callLater = self.clock.callLater
        return channel

    def log(self, request: Request) -> None:
        """
        No access log line per request: it would cost more than the relay.
        """
