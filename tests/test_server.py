"""
Tests for llmgate.server: the request body limit, on a real HTTP channel
over a ``StringTransport``.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from llmgate.providers import ANTHROPIC, OPENAI
from llmgate.server import GatewaySite


class Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request) -> bytes:
        self.bodies.append(request.content.read())
        return b"ok"


class BodyLimitTests(SynchronousTestCase):
    def connect(self, provider=OPENAI, limit: int = 100):
        self.resource = Recorder()
        site = GatewaySite(self.resource, provider=provider, max_request_body=limit)
        self.site = site
        site.doStart()
        self.addCleanup(site.doStop)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def split(self, transport: StringTransport) -> tuple[bytes, dict]:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        return head, json.loads(body)

    def test_a_body_within_the_limit_is_read_into_memory(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(self.resource.bodies, [b"hello"])
        self.assertIn(b"200 OK", transport.value())

    def test_a_declared_length_over_the_limit_gets_413_before_the_body(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n")
        head, body = self.split(transport)
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertIn("100 bytes", body["error"]["message"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.bodies, [])
        self.assertEqual(self.site.refused_bodies, 1)

    def test_a_chunked_body_growing_over_the_limit_gets_413(self) -> None:
        protocol, transport = self.connect(provider=ANTHROPIC)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):
            protocol.dataReceived(b"28\r\n" + b"x" * 40 + b"\r\n")
        protocol.dataReceived(b"0\r\n\r\n")
        head, body = self.split(transport)
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(body["error"]["type"], "request_too_large")
        self.assertEqual(self.resource.bodies, [])

    def test_expect_continue_is_not_answered_for_a_refused_body(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n"
        )
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertIn(b"413", transport.value())

    def test_no_access_log_line_is_written_per_request(self) -> None:
        protocol, transport = self.connect()
        logged = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        try:
            protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        finally:
            globalLogPublisher.removeObserver(logged.append)
        self.assertEqual(self.resource.bodies, [b"hi"])
        self.assertEqual([e for e in logged if "POST /x" in repr(e)], [])


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, seq) -> None:  # type: ignore[no-untyped-def]
        self.writes.append(b"".join(seq))
        super().writeSequence(seq)


class GatheredWriteTests(SynchronousTestCase):
    def answer(self, send_at_once: bool) -> CountingTransport:
        site = GatewaySite(
            Recorder(), provider=OPENAI, max_request_body=100, send_at_once=send_at_once
        )
        site.doStart()
        self.addCleanup(site.doStop)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = CountingTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        return transport

    def test_head_and_body_of_one_write_leave_in_one_piece(self) -> None:
        for send_at_once in (True, False):
            transport = self.answer(send_at_once)
            first = transport.writes[0]
            self.assertTrue(first.startswith(b"HTTP/1.1 200 OK\r\n"), first)
            self.assertTrue(first.endswith(b"\r\n\r\nok"), first)
            self.assertEqual(transport.value(), b"".join(transport.writes))


class SendAtOnceChoiceTests(SynchronousTestCase):
    def test_answers_wait_for_the_turn_only_with_a_shared_session_store(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from llmgate.config import parse
        from llmgate.service import GatewayParts

        def send_at_once(document: dict) -> bool:
            return GatewayParts(parse(document), MemoryReactorClock()).site.send_at_once

        self.assertTrue(send_at_once({}))
        self.assertTrue(send_at_once({"session": {"enabled": False}}))
        redis = {"session": {"store": {"type": "redis", "url": "redis://127.0.0.1:1"}}}
        self.assertFalse(send_at_once(redis))
