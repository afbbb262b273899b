"""
Persistent connections to the upstream, and when a request is sent again.

Implements RFC 9112 section 9.3 and 9.8 (persistence and its limits: at
most ``max_requests`` answers per connection, at most ``max_idle`` seconds
idle, so a kept connection meets neither the upstream's keep-alive timer
nor a long-lived stray byte), and RFC 9110 section 9.2.2 with RFC 9112
section 9.3.1 (retrying requests): after a kept connection fails before any
byte of an answer, a request is sent again only when doing so cannot run it
twice, by Go's ``net/http`` rules (``isReplayable``): an idempotent method
(GET, HEAD, OPTIONS, TRACE), an ``Idempotency-Key`` or
``X-Idempotency-Key`` header, or a request that provably never left.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from llmgate.http.connection import ConnectionFactory, UpstreamConnection

#: Methods Go's ``net/http`` sends again after a kept connection died
#: (``isReplayable``): safe ones, and no body whose effect could double.
REPLAYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

#: Headers that make any request replayable: the upstream deduplicates it.
IDEMPOTENCY_HEADERS = frozenset({b"idempotency-key", b"x-idempotency-key"})

_STALE = (neterror.ConnectionDone, neterror.ConnectionLost)


def replayable(method: bytes, headers: Headers | None) -> bool:
    """
    Whether a request may be sent a second time after a kept connection
    died under it: Go's ``net/http`` rule.
    """
    if method in REPLAYABLE_METHODS:
        return True
    return headers is not None and any(headers.hasHeader(name) for name in IDEMPOTENCY_HEADERS)


class UpstreamPool:
    """
    Persistent connections to one upstream.

    Idle connections are kept newest first (the one least likely to have
    been closed by the upstream's own keep-alive timer), at most
    ``max_idle_connections`` of them, each for at most ``idle_timeout``
    seconds, each for at most ``max_requests`` answers.  A connection
    closed by the upstream while idle is forgotten at once.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: Any,
        max_idle: int = 64,
        idle_timeout: float = 4.0,
        max_requests: int = 1000,
    ) -> None:
        self.clock = reactor
        self._endpoint = endpoint
        self._factory = ConnectionFactory(self)
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self._idle: deque[UpstreamConnection] = deque()
        self._active: set[UpstreamConnection] = set()
        self._closing: list[Deferred[None]] = []
        self._connects: set[Deferred[Any]] = set()
        self._sweeper: IDelayedCall | None = None
        self._dying: set[UpstreamConnection] = set()
        #: Whether the pool keeps no connection any more (shutting down).
        self.closed = False
        self.connections_made = 0
        #: Requests sent a second time after a kept connection died.
        self.retries = 0
        #: Kept connections dropped because bytes or a close waited unread.
        self.dropped_unquiet = 0

    # -- sending ----------------------------------------------------------------

    def send(
        self, method: bytes, data: list[bytes], headers: Headers | None = None
    ) -> Deferred[IResponse]:
        """
        Send one request, already serialised, on a kept connection or a new
        one.

        :param headers: the request's headers, read only if a kept connection
            dies under it, to tell whether it may go again (see
            :func:`replayable`).
        """
        return _Attempts(self, method, data, headers).start()

    def _kept(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            connection = idle.popleft()
            if not connection.usable():
                continue
            if not connection.quiet():
                # Stray bytes or a close wait unread: never written to.
                self.dropped_unquiet += 1
                connection.transport.abortConnection()  # type: ignore[union-attr]
                continue
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
        if self.closed or len(self._idle) >= self.max_idle:
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
        self.closed = True
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
    once more on a new one when that connection died before any byte of an
    answer and sending again cannot run the request twice.
    """

    def __init__(
        self, pool: UpstreamPool, method: bytes, data: list[bytes], headers: Headers | None
    ) -> None:
        self._pool = pool
        self._method = method
        self._data = data
        self._headers = headers
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
        if self._reused and self._may_send_again(reason, connection):
            self._pool.retries += 1
            self._on_new_connection()
        else:
            self.outcome.errback(reason)

    def _may_send_again(self, reason: Failure, connection: UpstreamConnection) -> bool:
        """
        Whether the kept connection died under the request (closed, not
        failed by a protocol error or our own abort) with no byte of an
        answer, and sending again cannot run the request twice.
        """
        if not reason.check(ResponseNeverReceived) or connection.answering:
            return False
        reasons = reason.value.reasons
        if not reasons or not all(
            r.check(*_STALE) and not r.check(neterror.ConnectionAborted) for r in reasons
        ):
            return False
        return connection.unsent or replayable(self._method, self._headers)

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
