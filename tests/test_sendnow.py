"""
Tests for llmgate.http.sendnow over a real loopback socket pair: a Twisted
TCP client transport on one end, a plain socket on the other, read without
turning the reactor (so "sent at once" means the bytes left before the
reactor could have sent them).
"""

from __future__ import annotations

import select
import socket
import struct
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from llmgate.http import sendnow, twisted_names
from llmgate.http.sendnow import send_now


@attrs.define
class Pair:
    transport: Any
    peer: socket.socket

    def queued(self) -> int:
        return len(self.transport.dataBuffer) + self.transport._tempDataLen

    def read(self, size: int) -> bytes:
        """
        ``size`` bytes from the plain end, blocking (bounded).
        """
        self.peer.settimeout(5)
        data = b""
        while len(data) < size:
            chunk = self.peer.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data


@pytest.fixture
def pair() -> Iterator[Pair]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    protocol = pytest_twisted.blockon(
        connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1]), Protocol()
        )
    )
    peer, _ = listener.accept()
    listener.close()
    yield Pair(protocol.transport, peer)
    protocol.transport.abortConnection()
    peer.close()


def test_sent_at_once_when_nothing_is_queued(pair: Pair) -> None:
    assert send_now(pair.transport, b"GET / HTTP/1.1\r\n\r\n") is True
    assert pair.queued() == 0
    # Read with the reactor stopped in this test: only a write made now
    # can have reached the socket.
    assert pair.read(18) == b"GET / HTTP/1.1\r\n\r\n"


@pytest_twisted.inlineCallbacks
def test_what_the_socket_does_not_take_is_queued_in_order(pair: Pair) -> Any:
    pair.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096  # 1 MiB: more than the kernel takes at once
    assert send_now(pair.transport, data) is True
    assert 0 < pair.queued() < len(data)
    # The rest leaves on the reactor's turns while a thread reads.
    received = yield deferToThread(pair.read, len(data))
    assert received == data


@pytest_twisted.inlineCallbacks
def test_bytes_already_queued_keep_their_order(pair: Pair) -> Any:
    pair.transport.write(b"first ")
    assert send_now(pair.transport, b"second") is None
    received = yield deferToThread(pair.read, 12)
    assert received == b"first second"


def test_a_write_the_socket_refuses_says_so(pair: Pair) -> None:
    # The peer resets the connection; once the reset is here, the write
    # provably did not leave.
    pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    pair.peer.close()
    readable, _, _ = select.select([pair.transport.getHandle()], [], [], 5)
    assert readable
    assert send_now(pair.transport, b"data") is False


def test_other_transports_take_their_own_path() -> None:
    transport = StringTransport()
    assert send_now(transport, b"data") is None
    assert transport.value() == b"data"


@pytest_twisted.inlineCallbacks
def test_without_twisteds_private_names_twisteds_own_write_is_used(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setattr(twisted_names, "SEND_AT_ONCE", False)
    assert sendnow.send_now(pair.transport, b"slow path") is None
    assert pair.queued() == len(b"slow path")
    received = yield deferToThread(pair.read, 9)
    assert received == b"slow path"
