"""
The upstream HTTP/1.1 client: persistent connections to the one configured
upstream, one request at a time on each.

A gateway talks to a single origin, always with a body already in memory,
and relays the answer's bytes as they come.  Twisted's general ``Agent``
pays on every call for what that case never needs (a URI parsed again,
an endpoint looked up, a request object and its producer dance, a parser
built line by line), and that cost was half the gateway's CPU per call.
:class:`UpstreamAgent` is an ``IAgent`` for this one case: the request head
is written with the body in one write, the response head is parsed in one
step, and the body is framed (Content-Length, chunked, or until close) and
handed to the ``Protocol`` given to ``deliverBody``, with the connection's
pause and resume for flow control.  Errors are Twisted's own
(``ResponseNeverReceived``, ``ResponseFailed``, ``ResponseDone``,
``PotentialDataLoss``), so callers cannot tell the two agents apart.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet import error as neterror
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.client import (
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IAgent,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from llmgate.config import GatewayConfig
from llmgate.http.sendnow import send_now

#: A reused connection that fails this soon after a request was written to it
#: was closed by the upstream while idle: the request never reached it.
STALE_WINDOW = 1.0

#: Methods sent again after a stale connection whatever the time elapsed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})

#: Methods whose request carries a body (and so a Content-Length) even empty.
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})

#: The most a response head (status line and headers) may take.
MAX_HEAD = 65536

#: The longest chunk-size line of a chunked body.
MAX_CHUNK_LINE = 1024

_STALE = (neterror.ConnectionDone, neterror.ConnectionLost)

#: What a status code and a chunk size may look like, and nothing else
#: (``int`` would also take signs, underscores and spaces).
_STATUS_CODE = re.compile(rb"[1-5][0-9][0-9]")
_CHUNK_SIZE_FIELD = re.compile(rb"[0-9A-Fa-f]{1,16}")

#: How every complete body ends; one instance, since a Failure is costly to
#: build and this one carries no traceback.
_COMPLETE = Failure(ResponseDone("response body complete"))

#: Header names in Twisted's canonical form, cached: response heads are
#: built straight into a ``Headers``, each name checked to be a token.
_canonical: Callable[[bytes], bytes] = _nameEncoder.encode


class UpstreamProtocolError(Exception):
    """
    The upstream broke HTTP/1.1 framing; the connection cannot be trusted.
    """


@implementer(IPushProducer)
class _BodyTransport:
    """
    What a body ``Protocol`` sees as its transport: pause and resume reading
    from the upstream, or stop the response (which drops the connection).
    """

    def __init__(self, connection: UpstreamConnection, response: UpstreamResponse) -> None:
        self._connection = connection
        self._response = response

    def pauseProducing(self) -> None:
        if self._connection.reading(self._response):
            self._connection.pause()

    def resumeProducing(self) -> None:
        if self._connection.reading(self._response):
            self._connection.resume()

    def stopProducing(self) -> None:
        if self._connection.reading(self._response):
            self._connection.stop_body()

    loseConnection = stopProducing


@implementer(IResponse)
class UpstreamResponse:
    """
    An upstream answer's head, and its body as it arrives.  Body bytes that
    come before ``deliverBody`` are kept for the protocol given to it.
    """

    request = None
    previousResponse = None

    def __init__(
        self,
        connection: UpstreamConnection,
        version: tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        headers: Headers,
        length: int | object,
    ) -> None:
        self._connection = connection
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._protocol: Protocol | None = None
        self._early: list[bytes] = []
        self._ended: Failure | None = None

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def deliverBody(self, protocol: Protocol) -> None:
        if self._protocol is not None:
            raise RuntimeError("the body is already being delivered")
        self._protocol = protocol
        protocol.makeConnection(_BodyTransport(self._connection, self))  # type: ignore[arg-type]
        early, self._early = self._early, []
        for data in early:
            protocol.dataReceived(data)
        if self._ended is not None:
            self._protocol = _DELIVERED
            protocol.connectionLost(self._ended)

    def complete_body(self) -> bytes | None:
        """
        The whole body, when it has already arrived and ended cleanly and no
        protocol was given to ``deliverBody`` (then none may be): a small
        answer often comes in the same packet as its head.  None otherwise.
        """
        if self._protocol is not None or self._ended is not _COMPLETE:
            return None
        self._protocol = _DELIVERED
        early, self._early = self._early, []
        return b"".join(early)

    def _data(self, data: bytes) -> None:
        if self._protocol is None:
            self._early.append(data)
        else:
            self._protocol.dataReceived(data)

    def _end(self, reason: Failure) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        protocol = self._protocol
        if protocol is not None:
            # Drop the protocol (it holds our transport): no cycle to collect.
            self._protocol = _DELIVERED
            protocol.connectionLost(reason)


#: Stands for the body's protocol once the body was taken whole.
_DELIVERED = Protocol()

# Parser states of a connection.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _DONE = range(9)


class UpstreamConnection(Protocol):
    """
    One connection to the upstream.  The pool hands it one request at a
    time; when the answer's body has been read to its end and both sides
    allow it, the connection goes back to the pool.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._state = _IDLE
        self._buffer = b""
        #: Whoever waits for the head of the answer to the request in flight.
        self._waiter: _Attempts | None = None
        self._answered: tuple[_Attempts, UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._method = b""
        self._remaining = 0
        #: Body bytes parsed from the bytes at hand, given to the response
        #: in one piece: a chunked upstream often sends an event as several
        #: chunks in one packet, and each piece would be one write to the
        #: client.
        self._pieces: list[bytes] = []
        self._keep_alive = True
        self._paused = False
        self._lost = False
        #: Whether any byte of an answer came since the last request was sent:
        #: then the upstream had it, and it is never sent again.
        self.answering = False
        self.sent_at = 0.0
        self.idle_since = 0.0

    def connectionMade(self) -> None:
        # A request is one write: nothing gains from Nagle's delay.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass

    # -- the pool's side ------------------------------------------------------

    def send(self, method: bytes, data: list[bytes], waiter: _Attempts) -> None:
        """
        Write one request (head and body); ``waiter`` hears of its answer's
        head (``answered``) or of the connection failing first (``lost``).
        """
        self._state = _HEAD
        self._method = method
        self._keep_alive = True
        self._response = None
        self.answering = False
        self.sent_at = self._pool.clock.seconds()
        self._waiter = waiter
        for part in data:
            send_now(self.transport, part)

    def abandon(self) -> None:
        """
        The request's sender gave up before the head arrived: the
        connection holds a request in flight, and is dropped.
        """
        if self._waiter is None:
            return
        self._waiter = None
        self._keep_alive = False
        self._state = _DONE
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- bytes from the upstream ----------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.answering = True
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        try:
            self._parse(data)
        except UpstreamProtocolError:
            failure = Failure()
            self._deliver()
            self._fail(failure)
        finally:
            self._deliver()
            # The head is announced after the bytes that came with it are
            # read: a small answer is then already complete.
            answered, self._answered = self._answered, None
            if answered is not None:
                answered[0].answered(answered[1])

    def _parse(self, data: bytes) -> None:
        while data:
            state = self._state
            if state == _LENGTH:
                remaining = self._remaining
                if len(data) < remaining:
                    self._remaining = remaining - len(data)
                    self._pieces.append(data)
                    return
                body, data = data[:remaining], data[remaining:]
                self._remaining = 0
                if body:
                    self._pieces.append(body)
                self._body_done(clean=not data)
            elif state == _UNTIL_CLOSE:
                self._pieces.append(data)
                return
            elif state == _CHUNK_DATA:
                remaining = self._remaining
                if len(data) <= remaining:
                    self._remaining = remaining - len(data)
                    self._pieces.append(data)
                    if self._remaining == 0:
                        self._state = _CHUNK_CRLF
                    return
                self._pieces.append(data[:remaining])
                data = data[remaining:]
                self._remaining = 0
                self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(data) < 2:
                    self._buffer = data
                    return
                if data[:2] != b"\r\n":
                    raise UpstreamProtocolError("chunk not followed by CRLF")
                data = data[2:]
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > MAX_CHUNK_LINE:
                        raise UpstreamProtocolError("chunk size line too long")
                    self._buffer = data
                    return
                size_field = data[:end].split(b";", 1)[0].strip()
                data = data[end + 2 :]
                if not _CHUNK_SIZE_FIELD.fullmatch(size_field):
                    raise UpstreamProtocolError(f"bad chunk size {size_field[:40]!r}")
                size = int(size_field, 16)
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _TRAILERS:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise UpstreamProtocolError("trailers too long")
                    self._buffer = data
                    return
                line, data = data[:end], data[end + 2 :]
                if not line:
                    self._body_done(clean=not data)
            elif state == _HEAD:
                # The earlier of CRLF CRLF and a bare-LF blank line (which
                # HTTP/1.1 tolerates): the other may be inside the body.
                end, size = data.find(b"\r\n\r\n"), 4
                bare = data.find(b"\n\n", 0, end if end >= 0 else len(data))
                if bare >= 0:
                    end, size = bare, 2
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise UpstreamProtocolError("response head too long")
                    self._buffer = data
                    return
                if end > MAX_HEAD:
                    raise UpstreamProtocolError("response head too long")
                head, data = data[:end], data[end + size :]
                self._head(head, clean=not data)
                if self._state == _DONE and self._lost:
                    return
            elif state == _IDLE or state == _DONE:
                if state == _DONE and not self._keep_alive:
                    # Bytes after an answer on a connection that closes anyway.
                    return
                raise UpstreamProtocolError("upstream sent bytes with no request")
            else:  # pragma: no cover
                raise AssertionError(state)

    def _deliver(self) -> None:
        """
        Give the body bytes parsed so far to the response, in one piece.
        """
        pieces = self._pieces
        if pieces:
            self._pieces = []
            self._response._data(  # type: ignore[union-attr]
                pieces[0] if len(pieces) == 1 else b"".join(pieces)
            )

    def _head(self, head: bytes, clean: bool) -> None:
        lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
        status = lines[0].split(b" ", 2)
        if (
            len(status) < 2
            or status[0] not in (b"HTTP/1.0", b"HTTP/1.1")
            or not _STATUS_CODE.fullmatch(status[1])
        ):
            raise UpstreamProtocolError(f"bad status line {lines[0][:80]!r}")
        minor = 0 if status[0] == b"HTTP/1.0" else 1
        code = int(status[1])
        phrase = status[2] if len(status) > 2 else b""
        headers = Headers()
        raw = headers._rawHeaders
        encode = _canonical
        length_values: list[bytes] = []
        chunked = False
        transfer_encoded = False
        said_close = said_keep_alive = False
        previous: list[bytes] | None = None
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                # An obsolete folded line continues the previous header.
                if previous is None:
                    raise UpstreamProtocolError("folded line before any header")
                previous[-1] = previous[-1] + b" " + line.strip()
                continue
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise UpstreamProtocolError(f"bad header line {line[:80]!r}")
            value = value.strip()
            lower = name.lower()
            if lower == b"content-length":
                length_values.append(value)
                previous = None
                continue
            if lower == b"transfer-encoding":
                transfer_encoded = True
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif lower == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                said_close = said_close or b"close" in tokens
                said_keep_alive = said_keep_alive or b"keep-alive" in tokens
            try:
                key = encode(name)
            except ValueError:
                raise UpstreamProtocolError(f"bad header name {name[:80]!r}") from None
            previous = raw.get(key)
            if previous is None:
                previous = raw[key] = [value]
            else:
                previous.append(value)
        if 100 <= code < 200:
            if code == 101:
                raise UpstreamProtocolError("upstream switched protocols")
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            return
        # HTTP/1.0 closes unless it asks to keep alive; a close is never undone.
        close = said_close or (minor == 0 and not said_keep_alive)
        length: int | object = UNKNOWN_LENGTH
        if self._method == b"HEAD" or code in (204, 304):
            length = 0
            state = _DONE
        elif transfer_encoded:
            # Transfer-Encoding wins over any Content-Length, and the message
            # cannot be trusted to leave the connection clean.
            if length_values:
                close = True
            state = _CHUNK_SIZE if chunked else _UNTIL_CLOSE
        elif length_values:
            values = {part.strip() for value in length_values for part in value.split(b",")}
            if len(values) != 1:
                raise UpstreamProtocolError("conflicting Content-Length values")
            value = values.pop()
            if not value.isdigit():
                raise UpstreamProtocolError(f"bad Content-Length {value[:40]!r}")
            length = int(value)
            self._remaining = length
            state = _LENGTH if length else _DONE
        else:
            state = _UNTIL_CLOSE
        if state == _UNTIL_CLOSE:
            close = True
        self._keep_alive = not close
        self._state = state
        response = self._response = UpstreamResponse(
            self, (b"HTTP", 1, minor), code, phrase, headers, length
        )
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._answered = (waiter, response)
        if state == _DONE:
            self._body_done(clean)

    # -- the end of an answer ---------------------------------------------------

    def _body_done(self, clean: bool = True) -> None:
        """
        The answer's body ended; ``clean`` is false when more bytes followed
        it, which no request asked for.
        """
        self._deliver()
        response = self._response
        self._state = _DONE
        if not clean:
            self._keep_alive = False
        if not self._keep_alive:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif not self._lost:
            self._resume_transport()
            self._state = _IDLE
            self._pool._release(self)
        if response is not None:
            response._end(_COMPLETE)

    def _fail(self, reason: Failure) -> None:
        """
        The connection cannot go on: fail whatever is waiting on it.
        """
        self._keep_alive = False
        state = self._state
        self._state = _DONE
        self._pool._forget(self)
        if not self._lost:
            self.transport.abortConnection()  # type: ignore[union-attr]
        self._lost_with(state, reason)

    def usable(self) -> bool:
        """
        Whether a new request may be written here: idle, kept alive, and the
        transport neither closing nor aborted.
        """
        transport = self.transport
        return (
            self._state == _IDLE
            and self._keep_alive
            and not self._lost
            and transport is not None
            and not getattr(transport, "disconnecting", False)
            and not getattr(transport, "_aborting", False)
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._lost = True
        state = self._state
        self._state = _DONE
        self._pool._lost(self)
        if state == _UNTIL_CLOSE and reason.check(neterror.ConnectionDone):
            self._response._end(Failure(PotentialDataLoss()))  # type: ignore[union-attr]
            return
        self._lost_with(state, reason)

    def _lost_with(self, state: int, reason: Failure) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.lost(Failure(ResponseNeverReceived([reason])), self)
        elif state not in (_IDLE, _DONE) and self._response is not None:
            self._response._end(Failure(ResponseFailed([reason])))

    # -- flow control ---------------------------------------------------------

    def reading(self, response: UpstreamResponse) -> bool:
        """
        Whether this connection is still reading ``response``'s body (and not
        carrying another answer since).
        """
        return self._response is response and self._state not in (_IDLE, _DONE) and not self._lost

    def pause(self) -> None:
        if not self._paused and not self._lost:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self._paused and not self._lost:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _resume_transport(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stop_body(self) -> None:
        """
        The body's consumer is gone: drop the connection mid-answer.
        """
        if self._state in (_IDLE, _DONE) or self._lost:
            return
        # The body's protocol hears of it from connectionLost, as with
        # Twisted's client: never from inside its own call.
        self._keep_alive = False
        self.transport.abortConnection()  # type: ignore[union-attr]


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return UpstreamConnection(self._pool)


class UpstreamPool:
    """
    Persistent connections to one upstream.

    Idle connections are kept newest first (the one least likely to have
    been closed by the upstream's own keep-alive timer), at most
    ``max_idle`` of them, each for at most ``idle_timeout`` seconds.  A
    request that meets a kept connection the upstream had just closed is
    sent once more on a new one when that cannot run it twice: it is
    idempotent, or the connection failed within :data:`STALE_WINDOW` with
    no byte of an answer.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: Any,
        max_idle: int = 64,
        idle_timeout: float = 60.0,
    ) -> None:
        self.clock = reactor
        self._endpoint = endpoint
        self._factory = _ConnectionFactory(self)
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: deque[UpstreamConnection] = deque()
        self._active: set[UpstreamConnection] = set()
        self._closing: list[Deferred[None]] = []
        self._connects: set[Deferred[Any]] = set()
        self._sweeper: IDelayedCall | None = None
        self._dying: set[UpstreamConnection] = set()
        self._closed = False
        self.connections_made = 0

    # -- sending ----------------------------------------------------------------

    def send(self, method: bytes, data: list[bytes]) -> Deferred[IResponse]:
        """
        Send one request, already serialised, on a kept connection or a new
        one.
        """
        return _Attempts(self, method, data).start()

    def _kept(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            connection = idle.popleft()
            if connection.usable():
                self._active.add(connection)
                return connection
        return None

    def _connect(self) -> Deferred[UpstreamConnection]:
        connecting: Deferred[UpstreamConnection] = self._endpoint.connect(self._factory)
        self._connects.add(connecting)

        def connected(connection: UpstreamConnection) -> UpstreamConnection:
            self._connects.discard(connecting)
            self.connections_made += 1
            self._active.add(connection)
            return connection

        def failed(reason: Failure) -> Failure:
            self._connects.discard(connecting)
            if reason.check(CancelledError):
                return Failure(ResponseNeverReceived([reason]))
            return reason

        return connecting.addCallbacks(connected, failed)

    # -- keeping connections ------------------------------------------------------

    def _release(self, connection: UpstreamConnection) -> None:
        self._active.discard(connection)
        if self._closed or len(self._idle) >= self.max_idle:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            return
        connection.idle_since = self.clock.seconds()
        self._idle.appendleft(connection)
        if self._sweeper is None:
            self._sweeper = self.clock.callLater(self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """
        Close the connections idle for ``idle_timeout``: the oldest are at
        the right end.  One timer for the pool, not one per connection.
        """
        self._sweeper = None
        idle = self._idle
        limit = self.clock.seconds() - self.idle_timeout
        while idle and idle[-1].idle_since <= limit:
            idle.pop().transport.loseConnection()  # type: ignore[union-attr]
        if idle:
            wait = idle[-1].idle_since - limit
            self._sweeper = self.clock.callLater(wait, self._sweep)

    def _forget(self, connection: UpstreamConnection) -> None:
        """
        Never hand ``connection`` out again.
        """
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    def _lost(self, connection: UpstreamConnection) -> None:
        self._active.discard(connection)
        self._forget(connection)
        self._dying.discard(connection)
        if self._closing and not self._dying:
            closing, self._closing = self._closing, []
            for waiting in closing:
                waiting.callback(None)

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close every kept connection, and keep none from now on (this is for
        shutdown); fires when they are closed.  Connections still carrying
        an answer finish it and close then.
        """
        self._closed = True
        for connecting in list(self._connects):
            connecting.cancel()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.active():
            sweeper.cancel()
        idle, self._idle = list(self._idle), deque()
        self._dying.update(idle)
        for connection in idle:
            connection.transport.loseConnection()  # type: ignore[union-attr]
        if not self._dying:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._closing.append(done)
        return done

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def active_connections(self) -> int:
        return len(self._active)


class _Attempts:
    """
    One request on its way to the upstream: sent on a kept connection, and
    once more on a new one when that connection turns out to have been
    closed by the upstream before it read the request.
    """

    def __init__(self, pool: UpstreamPool, method: bytes, data: list[bytes]) -> None:
        self._pool = pool
        self._method = method
        self._data = data
        #: A connection being made, or the connection the request is on.
        self._current: Deferred[Any] | UpstreamConnection | None = None
        self._reused = False
        self.outcome: Deferred[IResponse] = Deferred(self._cancel)

    def start(self) -> Deferred[IResponse]:
        connection = self._pool._kept()
        if connection is None:
            self._on_new_connection()
        else:
            self._send_on(connection, reused=True)
        return self.outcome

    def _on_new_connection(self) -> None:
        self._current = connecting = self._pool._connect()
        connecting.addCallbacks(self._send_on, self._failed)

    def _send_on(self, connection: UpstreamConnection, reused: bool = False) -> None:
        self._current = connection
        self._reused = reused
        connection.send(self._method, self._data, self)

    def answered(self, response: IResponse) -> None:
        """
        The head of the answer arrived.
        """
        self._current = None
        self.outcome.callback(response)

    def lost(self, reason: Failure, connection: UpstreamConnection) -> None:
        """
        ``connection`` failed before the head of the answer arrived.
        """
        self._current = None
        if self._reused and self._stale(reason, connection):
            self._on_new_connection()
        else:
            self.outcome.errback(reason)

    def _stale(self, reason: Failure, connection: UpstreamConnection) -> bool:
        if not reason.check(ResponseNeverReceived):
            return False
        if connection.answering:
            # A byte of an answer came: the upstream had the request.
            return False
        reasons = reason.value.reasons
        if not reasons or not all(
            r.check(*_STALE) and not r.check(neterror.ConnectionAborted) for r in reasons
        ):
            return False
        quick = self._pool.clock.seconds() - connection.sent_at <= STALE_WINDOW
        return self._method in IDEMPOTENT or quick

    def _failed(self, reason: Failure) -> None:
        self._current = None
        if not self.outcome.called:
            self.outcome.errback(reason)

    def _cancel(self, outcome: Deferred[IResponse]) -> None:
        current, self._current = self._current, None
        if isinstance(current, Deferred):
            current.cancel()
        elif current is not None:
            current.abandon()
            outcome.errback(ResponseNeverReceived([Failure(CancelledError())]))


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
        return self.pool.send(method, self.serialise(method, target, headers, body))

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
        idle_timeout=llm.idle_connection_timeout,
    )
    return pool, UpstreamAgent(pool, base_url)
