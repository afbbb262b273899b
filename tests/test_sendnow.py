"""
Tests for llmgate.http.sendnow: writes sent at once, in order, and Twisted's path
for everything else.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase


class SendNowTests(SynchronousTestCase):
    """
    ``send_now`` on a plain TCP transport (its socket replaced by a script).
    """

    def transport(self, accepts: Any) -> Any:
        from twisted.internet import tcp

        transport = tcp.Server.__new__(tcp.Server)
        transport.connected = 1
        transport.disconnecting = False
        transport._writeDisconnected = False
        transport._tempDataLen = 0
        transport.dataBuffer = b""
        transport.sent = []
        transport.queued = []

        def write_some(data: Any) -> Any:
            taken = accepts(bytes(data))
            if isinstance(taken, int):
                transport.sent.append(bytes(data)[:taken])
            return taken

        transport.writeSomeData = write_some
        transport.write = transport.queued.append
        return transport

    def test_sent_at_once_when_nothing_is_queued(self) -> None:
        from llmgate.http.sendnow import send_now

        transport = self.transport(len)
        send_now(transport, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual((transport.sent, transport.queued), ([b"GET / HTTP/1.1\r\n\r\n"], []))

    def test_what_the_socket_does_not_take_is_queued(self) -> None:
        from llmgate.http.sendnow import send_now

        transport = self.transport(lambda data: 3)
        send_now(transport, b"abcdef")
        self.assertEqual((transport.sent, transport.queued), ([b"abc"], [b"def"]))

    def test_queued_bytes_keep_their_order(self) -> None:
        from llmgate.http.sendnow import send_now

        transport = self.transport(len)
        transport._tempDataLen = 5
        send_now(transport, b"later")
        self.assertEqual((transport.sent, transport.queued), ([], [b"later"]))

    def test_an_error_is_left_to_twisted(self) -> None:
        from twisted.internet.main import CONNECTION_LOST

        from llmgate.http.sendnow import send_now

        transport = self.transport(lambda data: CONNECTION_LOST)
        send_now(transport, b"data")
        self.assertEqual(transport.queued, [b"data"])

    def test_other_transports_take_their_own_path(self) -> None:
        from llmgate.http.sendnow import send_now

        transport = StringTransport()
        send_now(transport, b"data")
        self.assertEqual(transport.value(), b"data")
