"""
One persistent HTTP/1.1 connection to the upstream, one request at a time.

Implements RFC 9112 section 9.3 (persistence: a connection is reused only
when the answer allowed it and ended exactly where its framing said) and
9.6 (tear-down: a connection that receives bytes while no request is in
flight is dropped, so stray bytes can never be read as the next answer),
and RFC 9110 section 9.2.2 through :attr:`UpstreamConnection.unsent` (a
request known never to have left may be sent again, whatever its method).
The bytes are parsed by :class:`llmgate.http.parser.ResponseParser`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet import error as neterror
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from llmgate.http.parser import DONE, IDLE, UNTIL_CLOSE, ResponseParser, UpstreamProtocolError
from llmgate.http.sendnow import send_now

if TYPE_CHECKING:
    from llmgate.http.pool import UpstreamPool, _Attempts

#: Transports whose socket :meth:`UpstreamConnection.quiet` may look at.
_PLAIN_TCP = (tcp.Client,)
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT

#: How every complete body ends; one instance, since a Failure is costly to
#: build and this one carries no traceback.
_COMPLETE = Failure(ResponseDone("response body complete"))


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


class UpstreamConnection(Protocol):
    """
    One connection to the upstream.  The pool hands it one request at a
    time; when the answer's body has been read to its end and both sides
    allow it, the connection goes back to the pool.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = ResponseParser(self)
        #: Whoever waits for the head of the answer to the request in flight.
        self._waiter: _Attempts | None = None
        self._answered: tuple[_Attempts, UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._paused = False
        self._lost = False
        #: Whether any byte of an answer came since the last request was sent:
        #: then the upstream had it, and it is never sent again.
        self.answering = False
        #: Whether the last request is known never to have left: the socket
        #: refused its first bytes.
        self.unsent = False
        #: Requests written on this connection.
        self.requests = 0
        self.idle_since = 0.0

    @property
    def state(self) -> int:
        return self._parser.state

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
        self._parser.expect(method)
        self._response = None
        self.answering = False
        self.requests += 1
        self._waiter = waiter
        self.unsent = send_now(self.transport, data[0]) is False
        for part in data[1:]:
            send_now(self.transport, part)

    def abandon(self) -> None:
        """
        The request's sender gave up before the head arrived: the
        connection holds a request in flight, and is dropped.
        """
        if self._waiter is None:
            return
        self._waiter = None
        self._parser.keep_alive = False
        self._parser.finish()
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- bytes from the upstream ----------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.answering = True
        try:
            self._parser.feed(data)
        except UpstreamProtocolError:
            failure = Failure()
            answered, self._answered = self._answered, None
            if answered is not None:
                # The head came with the bad bytes and nobody has it yet:
                # the request failed as a whole (a 502, not a cut answer).
                self._response = None
                self._parser.pieces = []
                self._waiter = answered[0]
            else:
                self._deliver()
            self._fail(failure)
        finally:
            self._deliver()
            # The head is announced after the bytes that came with it are
            # read: a small answer is then already complete.
            answered, self._answered = self._answered, None
            if answered is not None:
                answered[0].answered(answered[1])

    def _deliver(self) -> None:
        """
        Give the body bytes parsed so far to the response, in one piece.
        """
        pieces = self._parser.pieces
        if pieces:
            self._parser.pieces = []
            self._response._data(  # type: ignore[union-attr]
                pieces[0] if len(pieces) == 1 else b"".join(pieces)
            )

    # -- what the parser finds --------------------------------------------------

    def head_received(
        self, minor: int, code: int, phrase: bytes, headers: Headers, length: int | object
    ) -> None:
        response = self._response = UpstreamResponse(
            self, (b"HTTP", 1, minor), code, phrase, headers, length
        )
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._answered = (waiter, response)

    def body_ended(self, clean: bool) -> None:
        """
        The answer's body ended; ``clean`` is false when more bytes followed
        it, which no request asked for (the parser then keeps nothing alive).
        """
        self._deliver()
        response = self._response
        parser = self._parser
        pool = self._pool
        if not parser.keep_alive or pool.closed or self.requests >= pool.max_requests:
            parser.keep_alive = False
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif not self._lost:
            self.resume()
            parser.state = IDLE
            self._pool._release(self)
        if response is not None:
            response._end(_COMPLETE)

    # -- the end of a connection ------------------------------------------------

    def _fail(self, reason: Failure) -> None:
        """
        The connection cannot go on: fail whatever is waiting on it.
        """
        parser = self._parser
        state = parser.state if reason.check(UpstreamProtocolError) is None else -1
        parser.keep_alive = False
        parser.finish()
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
            self._parser.state == IDLE
            and self._parser.keep_alive
            and not self._lost
            and transport is not None
            and not getattr(transport, "disconnecting", False)
            and not getattr(transport, "_aborting", False)
        )

    def quiet(self) -> bool:
        """
        Whether the kernel holds nothing unread for this idle connection:
        no stray byte and no close the reactor has not read yet.  Looked at
        just before a request is written, it narrows the race HTTP/1.1
        cannot close (stray bytes taken as the next request's answer) to
        bytes still on the network.  Plain TCP only; any doubt is quiet.
        """
        handle = getattr(self.transport, "getHandle", None)
        if handle is None or type(self.transport) not in _PLAIN_TCP:
            return True
        try:
            pending = handle().recv(1, _PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        # Bytes, or b"" for a close: either way not a connection to write to.
        return pending is None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._lost = True
        parser = self._parser
        state = parser.state
        parser.finish()
        self._pool._lost(self)
        if state == UNTIL_CLOSE and reason.check(neterror.ConnectionDone):
            self._deliver()
            self._response._end(Failure(PotentialDataLoss()))  # type: ignore[union-attr]
            return
        self._lost_with(state, reason)

    def _lost_with(self, state: int, reason: Failure) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.lost(Failure(ResponseNeverReceived([reason])), self)
        elif state not in (IDLE, DONE) and self._response is not None:
            self._response._end(Failure(ResponseFailed([reason])))

    # -- flow control ---------------------------------------------------------

    def reading(self, response: UpstreamResponse) -> bool:
        """
        Whether this connection is still reading ``response``'s body (and not
        carrying another answer since).
        """
        return (
            self._response is response
            and self._parser.state not in (IDLE, DONE)
            and not self._lost
        )

    def pause(self) -> None:
        if not self._paused and not self._lost:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self._paused and not self._lost:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stop_body(self) -> None:
        """
        The body's consumer is gone: drop the connection mid-answer.
        """
        if self._parser.state in (IDLE, DONE) or self._lost:
            return
        # The body's protocol hears of it from connectionLost, as with
        # Twisted's client: never from inside its own call.
        self._parser.keep_alive = False
        self.transport.abortConnection()  # type: ignore[union-attr]


class ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return UpstreamConnection(self._pool)
