"""
``/api/events``: the hub's messages as a Server-Sent Events stream.

A follower that does not read is never buffered for: the stream is a push
producer of its request, and while the transport is paused messages are
dropped and counted; when it drains, one ``resync`` event tells the page
to fetch the state again.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from llmgate.middleware.live import Hub

#: A comment line this often keeps proxies and browsers from timing out.
HEARTBEAT_SECONDS = 15.0
#: Messages are gathered for this long and written at once.
WRITE_SECONDS = 0.05


@implementer(IPushProducer)
class EventStream:
    """
    One follower of the feed.

    :param session: only this session's messages (with stream text), or
        None for every call's start, end and indexing (without stream text,
        unless ``deltas``).
    """

    def __init__(
        self,
        request: Any,
        hub: Hub,
        reactor: Any,
        session: str | None = None,
        deltas: bool = False,
        on_close: Callable[["EventStream"], None] | None = None,
    ) -> None:
        self.request = request
        self.hub = hub
        self.session = session
        self.deltas = deltas or session is not None
        self.paused = False
        self.dropped = 0
        self.closed = False
        self.reactor = reactor
        self._pending: list[bytes] = []
        self._timer: Any = None
        self.on_close = on_close
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop(cancelled=True))
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        request.write(b": llmgate live view\nretry: 2000\n\n")
        self._unsubscribe = hub.subscribe(self.message)
        self.heartbeat = LoopingCall(self._beat)
        self.heartbeat.clock = reactor
        self.heartbeat.start(HEARTBEAT_SECONDS, now=False)

    def message(self, kind: str, data: dict[str, Any]) -> None:
        if self.session is not None and data.get("session_id") != self.session:
            return
        if kind == "delta" and not self.deltas:
            return
        if self.paused:
            self.dropped += 1
            return
        self._pending.append(self.hub.frame(kind, data))
        if self._timer is None:
            self._timer = self.reactor.callLater(WRITE_SECONDS, self._write)

    def _write(self) -> None:
        """
        One write for the messages of an interval: at a thousand calls a
        second, one system call per message cost more than the rest.
        """
        self._timer = None
        if self._pending and not self.closed:
            pending, self._pending = self._pending, []
            self.request.write(b"".join(pending))

    def _beat(self) -> None:
        if not self.paused:
            self.request.write(b": ping\n\n")

    # -- IPushProducer --------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.request.write(b'event: resync\ndata: {"dropped":%d}\n\n' % dropped)

    def stopProducing(self) -> None:
        self._stop(cancelled=True)

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        """
        End the stream (the gateway is stopping).
        """
        if self.closed:
            return
        self._write()
        self._stop(cancelled=False)
        # Still connected (a disconnect closes through stopProducing first).
        self.request.unregisterProducer()
        self.done.callback(b"")

    def _stop(self, cancelled: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self._unsubscribe()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.heartbeat.running:
            self.heartbeat.stop()
        if self.on_close is not None:
            self.on_close(self)
