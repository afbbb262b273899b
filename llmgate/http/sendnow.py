"""
Writing to a TCP connection at once instead of on the next turn of the loop.

Twisted queues every write until the reactor next finds the socket
writable, switching the socket's write interest on and off around it (two
``epoll_ctl`` calls and one more ``epoll_wait`` per write).  For a gateway
whose writes are a whole request, a response head with its body, or one
event of a stream, that bookkeeping cost more CPU than the write itself and
a turn of the loop in latency.

No RFC is implemented here: this is about when bytes leave, never which.
Twisted's private names it reads are checked in
:mod:`llmgate.http.twisted_names`; without them, Twisted's own write is used.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from llmgate.http import twisted_names

#: Transports whose writes :func:`send_now` may start itself: plain TCP.
_PLAIN_TCP = (tcp.Client, tcp.Server)


def send_now(transport: Any, data: bytes) -> bool | None:
    """
    ``transport.write(data)``, but sent at once when nothing is waiting in
    the transport's buffer.  Anything not plain TCP (TLS, tests' string
    transports), or with bytes still queued, takes Twisted's own path; so
    does whatever the socket did not take (flow control then works as
    always: a full buffer pauses the producer) and any error, which Twisted's
    write then finds and reports as usual.

    :return: False when the socket refused the write with an error before
        taking any byte (the data provably never left), True when it took
        bytes, None when Twisted's own path was taken and nobody knows yet.
    """
    if (
        twisted_names.SEND_AT_ONCE
        and type(transport) in _PLAIN_TCP
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_aborting", True)
        and not getattr(transport, "_writeDisconnected", True)
        and not getattr(transport, "_tempDataLen", 1)
        and not transport.dataBuffer
    ):
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):
            transport.write(data)
            return False
        if sent > 0:
            if sent >= len(data):
                return True
            transport.write(data[sent:])
            return True
    transport.write(data)
    return None
