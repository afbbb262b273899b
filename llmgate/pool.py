"""
The upstream connection pool: persistent connections, quiet, and one retry
for a request that met a connection the upstream had already closed.
"""

from __future__ import annotations

from typing import Any, Hashable

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.web import client

from llmgate.config import GatewayConfig

#: A reused connection that fails this soon after a request was written to it
#: was closed by the upstream while idle: the request never reached it.
STALE_WINDOW = 1.0

_STALE = (neterror.ConnectionDone, neterror.ConnectionLost)
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})


class _QuietClientFactory(client._HTTP11ClientFactory):
    """
    The pool's connection factory without a log line per upstream connection.
    """

    noisy = False


class _StaleConnectionRetry(client._RetryingHTTP11ClientProtocol):
    """
    A reused pooled connection.  Twisted retries only idempotent requests
    without a body on a new connection; a POST (every LLM call) is retried
    too when its body can be replayed and the connection was found closed at
    once: an upstream's keep-alive timeout (uvicorn's is 5 s) races with reuse.
    A connection that fails later may have carried the request to a live
    upstream, and is never retried: that could bill a call twice.
    """

    def __init__(self, protocol: Any, new_connection: Any, clock: Any) -> None:
        super().__init__(protocol, new_connection)
        self._clock = clock
        self._sent_at = 0.0

    def request(self, request: Any) -> Deferred[Any]:
        self._sent_at = self._clock.seconds()
        return super().request(request)

    def _shouldRetry(self, method: bytes, exception: Exception, bodyProducer: Any) -> bool:
        if not isinstance(
            exception,
            (client.RequestNotSent, client.RequestTransmissionFailed, client.ResponseNeverReceived),
        ):
            return False
        reasons = getattr(exception, "reasons", [])
        if any(reason.check(CancelledError) for reason in reasons):
            return False
        if method in _IDEMPOTENT and bodyProducer is None:
            return True
        replayable = getattr(bodyProducer, "replayable", False)
        quick = self._clock.seconds() - self._sent_at <= STALE_WINDOW
        stale = bool(reasons) and all(reason.check(*_STALE) for reason in reasons)
        return replayable and quick and (stale or isinstance(exception, client.RequestNotSent))


class GatewayPool(client.HTTPConnectionPool):
    """
    ``HTTPConnectionPool`` with the stale-connection retry above.
    ``maxPersistentPerHost`` caps idle connections kept, not concurrency.
    """

    _factory = _QuietClientFactory
    retryAutomatically = True

    def __init__(self, reactor: Any, persistent: bool = True) -> None:
        super().__init__(reactor, persistent)
        self._clock = reactor

    def getConnection(self, key: Hashable, endpoint: Any) -> Deferred[Any]:
        d = super().getConnection(key, endpoint)

        def wrap(connection: Any) -> Any:
            if isinstance(connection, client._RetryingHTTP11ClientProtocol):
                return _StaleConnectionRetry(
                    connection._clientProtocol, connection._newConnection, self._clock
                )
            return connection

        return d.addCallback(wrap)


def make_pool(reactor: Any, config: GatewayConfig) -> GatewayPool:
    pool = GatewayPool(reactor, persistent=True)
    pool.maxPersistentPerHost = config.llm.max_idle_connections
    pool.cachedConnectionTimeout = config.llm.idle_connection_timeout
    return pool
