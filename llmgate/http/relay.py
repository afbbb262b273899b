"""
The streaming relay: upstream body bytes written to the client as they
arrive, with flow control both ways.

One object is both the ``Protocol`` that receives the upstream body and the
``IPushProducer`` registered with the client's request: when the client reads
slowly, twisted.web pauses it and it pauses the upstream socket, so a slow
reader never makes the gateway hold a stream in memory.

Implements RFC 9112 section 6.3 item 8 (a body read until close ends with the
connection: ``PotentialDataLoss`` is a clean end) and 9.6 (an upstream body
that ends early is never relayed as whole); the event stream itself is
WHATWG HTML's ``text/event-stream``, relayed byte for byte.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IRequest
from zope.interface import implementer


class StreamIdle(Exception):
    """
    The upstream sent nothing for longer than the idle timeout.
    """


class ClientGone(Exception):
    """
    The client stopped reading: its connection is gone.
    """


class ClientStalled(Exception):
    """
    The client read nothing of a stream waiting for it for longer than the
    idle timeout: it holds an upstream connection and gives nothing back.
    """


@implementer(IPushProducer)
class Relay(Protocol):
    """
    Relay an upstream response body to a client request.

    :ivar done: fires with None when the upstream body ended cleanly, or with
        the exception that ended it (``StreamIdle`` after an idle timeout,
        ``ClientStalled`` when the client read nothing for as long,
        ``ClientGone`` after :meth:`stop`); it never errbacks.
    """

    log = Logger()

    def __init__(
        self,
        consumer: IRequest,
        clock: IReactorTime,
        idle_timeout: float,
        observe: Callable[[bytes], None],
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """
        :param consumer: the client's request, written to as data arrives.
        :param idle_timeout: seconds of upstream silence that end the stream;
            time spent paused by a slow client does not count, but a client
            that keeps the stream paused (reads nothing) for as long ends it
            too.
        :param observe: called with every chunk after it is written, for the
            exchange record; it must be cheap and must not raise.
        :param rewrite: changes the bytes the client gets (the observer still
            sees the upstream's); None for a byte-for-byte relay.
        """
        self._consumer = consumer
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._observe = observe
        self._rewrite = rewrite
        self._idle: IDelayedCall | None = None
        self._registered = False
        self._paused = False
        self.stopped = False
        self.done: Deferred[BaseException | None] = Deferred()

    # -- Protocol: the upstream body ------------------------------------------

    def connectionMade(self) -> None:
        self._consumer.registerProducer(self, True)
        self._registered = True
        self._arm(self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self.stopped:
            return
        if self._rewrite is None:
            self._consumer.write(data)
        else:
            relayed = self._rewrite(data)
            if relayed:
                self._consumer.write(relayed)
        self._observe(data)
        # While paused the timer is the client's: bytes already on their way
        # from the upstream say nothing of whether the client reads.
        if not self._paused and self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._cancelIdle()
        self._unregister()
        # The upstream side is gone: let go of it, leaving no cycle behind.
        self.transport = None
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.callback(reason.value)

    # -- IPushProducer: the client side ---------------------------------------

    def pauseProducing(self) -> None:
        if self.stopped or self.transport is None or self._paused:
            # Twisted pauses again on every write to a full buffer: the
            # client's time runs from the first pause.
            return
        self._paused = True
        # The upstream is not silent, the client is not reading: time the
        # client instead.
        self._arm(self._stalled)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.stopped or self.transport is None:
            return
        self._paused = False
        self._arm(self._timedOut)
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The client went away: drop the upstream connection at once.
        """
        self.stop()

    # -- control --------------------------------------------------------------

    def stop(self) -> None:
        """
        Abandon the stream and close the upstream connection.  Idempotent: the
        client's disconnect reaches us both here and through Klein's cancel.
        """
        if self.stopped:
            return
        self.stopped = True
        self._cancelIdle()
        # The channel is gone or going; unregistering now would touch it.
        self._registered = False
        if self.transport is not None:
            self.transport.stopProducing()
        if not self.done.called:
            self.done.callback(ClientGone())

    def _timedOut(self) -> None:
        self._end(StreamIdle(f"no data from upstream for {self._idle_timeout:g}s"))

    def _stalled(self) -> None:
        self._end(ClientStalled(f"client read nothing for {self._idle_timeout:g}s"))

    def _end(self, reason: Exception) -> None:
        """
        A timer ran out: drop the upstream connection and say why.
        """
        self._idle = None
        if self.stopped or self.done.called:
            return
        self.stopped = True
        self._unregister()
        if self.transport is not None:
            self.transport.stopProducing()
        self.done.callback(reason)

    def _arm(self, expired: Callable[[], None]) -> None:
        """
        Run ``expired`` after the idle timeout, in place of any timer set.
        """
        self._cancelIdle()
        self._idle = self._clock.callLater(self._idle_timeout, expired)

    def _cancelIdle(self) -> None:
        if self._idle is not None:
            if self._idle.active():
                self._idle.cancel()
            self._idle = None

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self._consumer.unregisterProducer()
