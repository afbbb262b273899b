"""
An upstream that writes exact bytes, for tests of the wire.

A Twisted protocol, not twisted.web: it reads each request (head and a
Content-Length body) and answers with the bytes the mode in its path names
(``/v1/quirk/<mode>``), including ones no HTTP server library would write.
Every answer carries the request's ``marker`` (a field of its JSON body), so
a test can tell whose answer a client got.  It records what it saw: every
marker received (a marker seen twice is a call run twice), the stray bytes
it wrote while a connection was idle, and requests that arrived on a
connection after stray bytes were written to it.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol

from llmgate.http.sendnow import send_now

#: What each mode answers; ``{m}`` is the request's marker.
POISON = b"POISON"


def _json(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        + extra + b"Content-Length: %d\r\n\r\n" % (len(body),) + body
    )


def _poison(connection: int) -> bytes:
    return _json(b"200 OK", b'{"marker":"%s-%d"}' % (POISON, connection))


@attrs.define
class Seen:
    method: bytes
    path: bytes
    marker: str | None
    connection: int
    #: Stray bytes had been written to this connection before the request
    #: arrived: its answer may be them (HTTP/1.1 cannot tell).
    after_stray: bool = False


class QuirkyConnection(Protocol):
    def __init__(self, factory: QuirkyUpstream, number: int) -> None:
        self.factory = factory
        self.number = number
        self.buffer = b""
        #: When stray bytes are due on this idle connection.
        self.stray: Any = None
        self.stray_written = False
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path, _ = head[0].split(b" ", 2)
            self.request(method, path, body)
            if self.transport is None or self.transport.disconnecting:
                return

    def request(self, method: bytes, path: bytes, body: bytes) -> None:
        if self.stray is not None and self.stray.active():
            # A request came first: the stray bytes would race it, which
            # HTTP/1.1 cannot tell from an answer.  Not written.
            self.stray.cancel()
        self.stray = None
        if self.stray_written:
            self.factory.after_stray.append(self.number)
        try:
            marker = json.loads(body).get("marker") if body else None
        except ValueError:
            marker = None
        self.factory.seen.append(Seen(method, path, marker, self.number, self.stray_written))
        self.factory.events.append(("request", self.number, path, marker))
        mode = path.rsplit(b"/", 1)[-1].split(b"?")[0].decode()
        m = (marker or "").encode()
        ok = _json(b"200 OK", b'{"marker":"%s"}' % (m,))
        transport = self.transport

        def write(data: bytes) -> None:
            send_now(transport, data)

        if mode == "ok":
            write(ok)
        elif mode == "head":
            # A HEAD answer: the length of the body a GET would get, no body.
            write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n")
        elif mode == "trailing":
            # An answer and more bytes in the same write: never to be read
            # as the next answer.
            write(ok + _poison(self.number))
        elif mode == "stray":
            # An answer, then bytes while the connection is idle.
            write(ok)
            self.stray = self.factory.clock.callLater(
                self.factory.stray_delay, self.write_stray
            )
        elif mode == "close":
            # Read the request, then close without a byte of an answer.
            self.transport.loseConnection()
        elif mode == "huge_length":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}")
        elif mode == "bad_chunk":
            write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        elif mode == "huge_chunk":
            write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"f" * 5000 + b"\r\n{}\r\n0\r\n\r\n")
        elif mode == "nul_reason":
            write(_json(b"200 O\x00K", b'{"marker":"%s"}' % (m,)))
        elif mode == "cr_value":
            write(_json(b"200 OK", b'{"marker":"%s"}' % (m,), b"X-Split: a\rInjected: 1\r\n"))
        elif mode == "connection_listed":
            write(_json(b"200 OK", b'{"marker":"%s"}' % (m,),
                        b"Connection: x-hop, keep-alive\r\nX-Hop: secret\r\nX-Kept: yes\r\n"))
        else:
            write(_json(b"404 Not Found", b'{"error":"no mode %s"}' % (mode.encode(),)))

    def write_stray(self) -> None:
        self.stray = None
        if self.transport is None or self.transport.disconnecting:
            return
        if self.transport.dataBuffer or self.transport._tempDataLen:
            # The answer is not all out yet: stray bytes come after it.
            self.stray = self.factory.clock.callLater(
                self.factory.stray_delay, self.write_stray
            )
            return
        handle = self.transport.getHandle()
        try:
            pending = handle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            pending = None
        except OSError:
            return
        if pending is not None:
            # A request is already here, unread: stray bytes now would race
            # it, which HTTP/1.1 cannot tell from its answer.  Not written.
            self.factory.strays_skipped += 1
            return
        self.stray_written = True
        self.factory.strays += 1
        self.factory.events.append(("stray", self.number))
        # Straight to the socket, not through Twisted's write buffer: the
        # bytes are in the gateway's receive queue when this returns (on
        # loopback), so "written while idle" means what it says.
        poison = _poison(self.number)
        try:
            sent = handle.send(poison)
        except OSError:
            return
        if sent < len(poison):
            self.transport.write(poison[sent:])

    def connectionLost(self, reason: Any = None) -> None:
        if self.stray is not None and self.stray.active():
            self.stray.cancel()
        self.closed.callback(None)


class QuirkyUpstream(Factory):
    noisy = False

    def __init__(self, clock: IReactorTime, stray_delay: float = 0.002) -> None:
        self.clock = clock
        self.stray_delay = stray_delay
        self.seen: list[Seen] = []
        self.connections: list[QuirkyConnection] = []
        self.strays = 0
        #: What happened, in order: ("request", connection, path, marker)
        #: and ("stray", connection).
        self.events: list[tuple[Any, ...]] = []
        self.strays_skipped = 0
        #: Connections that got a request after stray bytes were written.
        self.after_stray: list[int] = []
        self.on_stray: Callable[[], None] | None = None

    def buildProtocol(self, addr: Any) -> QuirkyConnection:
        connection = QuirkyConnection(self, len(self.connections))
        self.connections.append(connection)
        return connection
