"""
Tests for llmgate.http.upstream: the HTTP/1.1 client the gateway sends with.

Driven byte by byte over ``StringTransport`` with a ``MemoryReactorClock``:
what goes on the wire, how every kind of answer is framed, when a
connection is kept, and which failures send a request again.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from llmgate.forward import BytesProducer
from llmgate.http.upstream import (
    Origin,
    UpstreamAgent,
    UpstreamPool,
    tls_policy,
    upstream_endpoint,
)

BASE = b"http://upstream.test:8000/api"


class FakeEndpoint:
    """
    Connects at once (or fails, or hangs), each connection over its own
    ``StringTransport``.
    """

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []
        self.protocols: list[Any] = []
        self.refuse = False
        self.hang: Deferred[Any] | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.refuse:
            from twisted.internet.defer import fail

            return fail(ConnectionRefusedError())
        if self.hang is not None:
            return self.hang
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return succeed(protocol)


class Body(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.reason = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def lose(protocol: Any, transport: StringTransport, reason: Exception) -> None:
    transport.disconnecting = True
    protocol.connectionLost(Failure(reason))


class UpstreamTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.pool = UpstreamPool(self.clock, self.endpoint, max_idle=4, idle_timeout=30)
        self.agent = UpstreamAgent(self.pool, BASE)

    def send(
        self, method: bytes = b"POST", path: bytes = b"/v1/chat", body: bytes | None = b"{}",
        headers: Headers | None = None,
    ) -> Deferred[Any]:
        producer = BytesProducer(body) if body is not None else None
        return self.agent.request(method, BASE + path, headers or Headers(), producer)

    def answer(self, data: bytes, index: int = -1) -> None:
        self.endpoint.protocols[index].dataReceived(data)

    def response(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)


class WireTests(UpstreamTestCase):
    def test_a_post_is_one_write_with_host_headers_and_length(self) -> None:
        headers = Headers({b"content-type": [b"application/json"], b"x-thing": [b"a", b"b"]})
        self.send(body=b'{"model":"m"}', headers=headers, path=b"/v1/chat?x=1")
        wire = self.endpoint.transports[0].value()
        head, _, body = wire.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"POST /api/v1/chat?x=1 HTTP/1.1")
        self.assertIn(b"Host: upstream.test:8000", lines)
        self.assertIn(b"Content-Type: application/json", lines)
        self.assertIn(b"X-Thing: a", lines)
        self.assertIn(b"X-Thing: b", lines)
        self.assertIn(b"Content-Length: 13", lines)
        self.assertEqual(body, b'{"model":"m"}')

    def test_a_get_has_no_length_and_an_empty_post_says_zero(self) -> None:
        self.send(method=b"GET", body=None)
        self.assertNotIn(b"Content-Length", self.endpoint.transports[0].value())
        self.endpoint.transports.clear()
        self.endpoint.protocols.clear()
        self.send(method=b"POST", body=None)
        self.assertIn(b"Content-Length: 0\r\n\r\n", self.endpoint.transports[0].value())

    def test_a_large_body_goes_as_its_own_buffer(self) -> None:
        body = b"x" * 200_000
        self.send(body=body)
        self.assertTrue(self.endpoint.transports[0].value().endswith(b"\r\n\r\n" + body))

    def test_only_the_base_url_is_sent_to(self) -> None:
        with self.assertRaises(ValueError):
            self.agent.request(b"GET", b"http://elsewhere.test/x")
        with self.assertRaises(ValueError):
            self.agent.request(b"GET", BASE + b"x/../secret")
        with self.assertRaises(ValueError):
            self.agent.request(b"GET", BASE + b"/a b")

    def test_host_header_leaves_default_ports_and_brackets_ipv6(self) -> None:
        self.assertEqual(Origin.of(b"https://api.test:443").host_header, b"api.test")
        self.assertEqual(Origin.of(b"http://[::1]:9000/v1").host_header, b"[::1]:9000")
        self.assertEqual(Origin.of(b"http://u:p@api.test/v1").host, "api.test")


class FramingTests(UpstreamTestCase):
    def test_content_length_body_then_the_connection_is_kept(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhel")
        response = self.response(d)
        self.assertEqual((response.code, response.phrase, response.length), (200, b"OK", 5))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
        body = Body()
        response.deliverBody(body)
        self.assertEqual(body.data, b"hel")
        self.assertIsNone(body.reason)
        self.answer(b"lo")
        self.assertEqual(body.data, b"hello")
        body.reason.trap(ResponseDone)
        self.assertEqual(self.pool.idle_connections, 1)
        self.send()
        self.assertEqual(len(self.endpoint.transports), 1, "the kept connection is reused")

    def test_a_body_already_complete_can_be_taken_whole(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        response = self.response(d)
        self.assertIsNone(response.complete_body(), "not all there yet")
        self.answer(b"lo")
        self.assertEqual(response.complete_body(), b"hello")
        self.assertRaises(RuntimeError, response.deliverBody, Body())
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        response = self.response(d)
        response.deliverBody(Body())
        self.assertIsNone(response.complete_body(), "already being delivered")

    def test_a_head_and_body_in_one_read_arrive_complete(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.response(d).complete_body(), b"ok")

    def test_chunked_body_fed_one_byte_at_a_time(self) -> None:
        d = self.send()
        wire = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: text/event-stream\r\n\r\n"
            b"8;ext=1\r\ndata: 1\n\r\n10\r\n" + b"d" * 16 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        body = Body()
        for byte in range(len(wire)):
            self.answer(wire[byte : byte + 1])
            if d.called and body.transport is None:
                response = self.response(d)
                self.assertIs(response.length, UNKNOWN_LENGTH)
                response.deliverBody(body)
        self.assertEqual(body.data, b"data: 1\n" + b"d" * 16)
        body.reason.trap(ResponseDone)
        self.assertEqual(self.pool.idle_connections, 1)

    def test_chunks_that_arrive_together_are_delivered_as_one_piece(self) -> None:
        # An SSE event sent as two chunks (the data line, then the blank line
        # that ends it) in one packet must reach the client in one write.
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = Body()
        self.response(d).deliverBody(body)
        self.answer(b"8\r\ndata: 1\n\r\n1\r\n\n\r\n8\r\ndata: 2\n\r\n1\r\n\n\r\n")
        self.assertEqual(body.chunks, [b"data: 1\n\ndata: 2\n\n"])
        self.answer(b"8\r\ndata: 3\n\r\n1\r\n\n\r\n0\r\n\r\n")
        self.assertEqual(body.chunks[1:], [b"data: 3\n\n"])
        body.reason.trap(ResponseDone)

    def test_body_bytes_before_a_framing_error_are_delivered_first(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = Body()
        self.response(d).deliverBody(body)
        self.answer(b"2\r\nok\r\n1\r\n!\r\nzz\r\n")
        self.assertEqual(body.chunks, [b"ok!"])
        lose(self.endpoint.protocols[-1], self.endpoint.transports[-1], ConnectionLost())
        body.reason.trap(ResponseFailed)

    def test_a_body_until_close_ends_with_potential_data_loss(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\n\r\npart one ")
        body = Body()
        self.response(d).deliverBody(body)
        self.answer(b"part two")
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
        self.assertEqual(body.data, b"part one part two")
        body.reason.trap(PotentialDataLoss)
        self.assertEqual(self.pool.idle_connections, 0)

    def test_connection_close_and_http10_are_not_kept(self) -> None:
        for head in (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        ):
            d = self.send()
            self.answer(head)
            self.response(d)
            self.assertTrue(self.endpoint.transports[-1].disconnecting)
            self.assertEqual(self.pool.idle_connections, 0)

    def test_head_204_and_304_have_no_body_whatever_their_length(self) -> None:
        cases = [(b"HEAD", b"200 OK"), (b"GET", b"204 No Content"), (b"GET", b"304 Not Modified")]
        for method, status in cases:
            d = self.send(method=method, body=None)
            self.answer(b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n")
            body = Body()
            response = self.response(d)
            self.assertEqual(response.length, 0)
            response.deliverBody(body)
            body.reason.trap(ResponseDone)
        self.assertEqual(len(self.endpoint.transports), 1)

    def test_interim_answers_are_skipped(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
        self.assertNoResult(d)
        self.answer(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.response(d).code, 201)

    def test_folded_headers_and_bare_line_feeds(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\nX-Long: one\n  two\nContent-Length: 0\n\n")
        response = self.response(d)
        self.assertEqual(response.headers.getRawHeaders(b"x-long"), [b"one two"])

    def test_transfer_encoding_wins_over_length_and_the_connection_is_dropped(self) -> None:
        d = self.send()
        self.answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        body = Body()
        self.response(d).deliverBody(body)
        self.assertEqual(body.data, b"hello")
        self.assertTrue(self.endpoint.transports[0].disconnecting)

    def test_bytes_after_an_answer_make_the_connection_unusable(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE")
        body = Body()
        self.response(d).deliverBody(body)
        self.assertEqual(body.data, b"ok")
        self.assertEqual(self.pool.idle_connections, 0)
        self.assertTrue(self.endpoint.transports[0].disconnecting)


class BrokenUpstreamTests(UpstreamTestCase):
    def assertRefusedHead(self, head: bytes) -> None:
        d = self.send()
        self.answer(head)
        failure = self.failureResultOf(d, ResponseNeverReceived)
        self.assertTrue(self.endpoint.transports[-1].disconnecting, head)
        self.assertEqual(len(failure.value.reasons), 1)

    def test_malformed_heads_fail_the_request(self) -> None:
        for head in (
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n x: folded first\r\n\r\n",
        ):
            self.assertRefusedHead(head)

    def test_an_endless_head_is_refused(self) -> None:
        self.assertRefusedHead(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000)

    def test_a_bad_chunk_size_fails_the_body(self) -> None:
        for chunk in (b"zz\r\n", b"-5\r\n", b"0x5\r\n", b"5\r\nhelloXX"):
            d = self.send()
            self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            body = Body()
            self.response(d).deliverBody(body)
            self.answer(chunk)
            transport = self.endpoint.transports[-1]
            self.assertTrue(transport.disconnecting, chunk)
            lose(self.endpoint.protocols[-1], transport, ConnectionLost())
            body.reason.trap(ResponseFailed)

    def test_a_connection_lost_mid_body_fails_the_body(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        body = Body()
        self.response(d).deliverBody(body)
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionLost())
        body.reason.trap(ResponseFailed)
        self.assertEqual(body.data, b"abc")

    def test_a_refused_connection_fails_with_its_own_reason(self) -> None:
        self.endpoint.refuse = True
        self.failureResultOf(self.send(), ConnectionRefusedError)

    def test_bytes_on_an_idle_connection_drop_it(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.response(d)
        self.answer(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(self.endpoint.transports[0].disconnecting)


class FlowControlTests(UpstreamTestCase):
    def test_body_transport_pauses_resumes_and_stops_the_connection(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        body = Body()
        self.response(d).deliverBody(body)
        transport = self.endpoint.transports[0]
        body.transport.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        body.transport.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        body.transport.stopProducing()
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(body.reason, "told by connectionLost, not from inside stopProducing")
        lose(self.endpoint.protocols[0], transport, ConnectionDone())
        body.reason.trap(ResponseFailed)

    def test_a_connection_paused_when_its_answer_ends_is_resumed_before_reuse(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        body = Body()
        self.response(d).deliverBody(body)
        body.transport.pauseProducing()
        self.answer(b"cd")
        self.assertEqual(self.endpoint.transports[0].producerState, "producing")
        self.assertEqual(self.pool.idle_connections, 1)

    def test_an_old_body_transport_cannot_touch_the_next_answer(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        first = Body()
        self.response(d).deliverBody(first)
        self.send()
        first.transport.pauseProducing()
        first.transport.stopProducing()
        transport = self.endpoint.transports[0]
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(transport.disconnecting)


class CancelTests(UpstreamTestCase):
    def test_cancel_before_the_head_aborts_the_connection(self) -> None:
        d = self.send()
        d.cancel()
        failure = self.failureResultOf(d, ResponseNeverReceived)
        failure.value.reasons[0].trap(CancelledError)
        self.assertTrue(self.endpoint.transports[0].disconnecting)

    def test_cancel_while_connecting(self) -> None:
        self.endpoint.hang = Deferred()
        d = self.send()
        d.cancel()
        failure = self.failureResultOf(d, ResponseNeverReceived)
        failure.value.reasons[0].trap(CancelledError)


class KeepingTests(UpstreamTestCase):
    def finish_one(self, index: int = -1) -> None:
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", index)

    def test_idle_connections_expire(self) -> None:
        self.send()
        self.finish_one()
        self.clock.advance(29)
        self.assertFalse(self.endpoint.transports[0].disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.endpoint.transports[0].disconnecting)

    def test_at_most_max_idle_are_kept(self) -> None:
        for _ in range(6):
            self.send()
        for index in range(6):
            self.finish_one(index)
        self.assertEqual(self.pool.idle_connections, 4)
        self.assertEqual(sum(t.disconnecting for t in self.endpoint.transports), 2)

    def test_the_newest_idle_connection_is_used_first(self) -> None:
        self.send()
        self.send()
        self.finish_one(0)
        self.finish_one(1)
        self.send()
        self.assertEqual(self.endpoint.transports[1].value().count(b"POST"), 2)

    def test_close_cached_connections_fires_when_they_are_gone(self) -> None:
        self.send()
        self.finish_one()
        d = self.pool.closeCachedConnections()
        self.assertNoResult(d)
        self.assertTrue(self.endpoint.transports[0].disconnecting)
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
        self.successResultOf(d)
        self.successResultOf(self.pool.closeCachedConnections())


class StaleRetryTests(UpstreamTestCase):
    """
    After a kept connection dies before any byte of an answer, only what Go's
    net/http re-sends goes again: idempotent methods, requests with an
    idempotency key, and requests that provably never left.
    """

    def kept_connection(self) -> None:
        self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_a_post_on_a_connection_found_closed_at_once_is_not_sent_again(self) -> None:
        # The upstream may have read it before closing: sending it again
        # could run (and bill) the generation twice.
        self.kept_connection()
        d = self.send(body=b'{"n":1}')
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.transports), 1)
        self.assertEqual(self.pool.retries, 0)

    def test_a_post_with_an_idempotency_key_goes_again(self) -> None:
        for name in (b"Idempotency-Key", b"x-idempotency-key"):
            self.setUp()
            self.kept_connection()
            d = self.send(body=b'{"n":1}', headers=Headers({name: [b"k1"]}))
            lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
            self.assertEqual(len(self.endpoint.transports), 2, name)
            self.assertTrue(self.endpoint.transports[1].value().endswith(b'{"n":1}'))
            self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            self.assertEqual(self.response(d).code, 200)

    def test_idempotent_methods_go_again_whenever(self) -> None:
        for method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE"):
            self.setUp()
            self.kept_connection()
            d = self.send(method=method, body=None)
            self.clock.advance(30)
            lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionLost())
            self.assertEqual(len(self.endpoint.transports), 2, method)
            self.assertNoResult(d)

    def test_put_patch_and_delete_are_not_replayed(self) -> None:
        # Go's isReplayable: DELETE and PUT are idempotent by RFC 9110, but
        # they carry effects a gateway cannot vouch for.
        for method in (b"PUT", b"PATCH", b"DELETE"):
            self.setUp()
            self.kept_connection()
            d = self.send(method=method)
            lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
            self.failureResultOf(d, ResponseNeverReceived)
            self.assertEqual(len(self.endpoint.transports), 1, method)

    def test_a_post_that_provably_never_left_goes_again(self) -> None:
        self.kept_connection()
        self.endpoint.protocols[0].unsent = True  # what send_now reports
        original = self.endpoint.protocols[0].send

        def refused(method: bytes, data: list[bytes], waiter: Any) -> None:
            original(method, data, waiter)
            self.endpoint.protocols[0].unsent = True

        self.endpoint.protocols[0].send = refused
        d = self.send(body=b'{"n":1}')
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionLost())
        self.assertEqual(len(self.endpoint.transports), 2)
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.response(d).code, 200)

    def test_a_new_connection_failing_is_not_retried(self) -> None:
        d = self.send(method=b"GET", body=None)
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.transports), 1)

    def test_a_retry_is_sent_once(self) -> None:
        self.kept_connection()
        d = self.send(method=b"GET", body=None)
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
        lose(self.endpoint.protocols[1], self.endpoint.transports[1], ConnectionDone())
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.transports), 2)

    def test_a_failure_after_the_head_is_never_retried(self) -> None:
        self.kept_connection()
        d = self.send(method=b"GET", body=None)
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        body = Body()
        self.response(d).deliverBody(body)
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
        body.reason.trap(ResponseFailed)
        self.assertEqual(len(self.endpoint.transports), 1)


class ConnectionLifetimeTests(UpstreamTestCase):
    def test_a_connection_closes_after_max_requests_answers(self) -> None:
        self.pool.max_requests = 3
        for _ in range(3):
            self.send()
            self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(self.endpoint.transports), 1)
        self.assertTrue(self.endpoint.transports[0].disconnecting)
        self.assertEqual(self.pool.idle_connections, 0)
        self.send()
        self.assertEqual(len(self.endpoint.transports), 2)

    def test_a_connection_idle_for_max_idle_is_closed_before_reuse(self) -> None:
        self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.clock.advance(self.pool.idle_timeout)
        self.assertTrue(self.endpoint.transports[0].disconnecting)
        self.send()
        self.assertEqual(len(self.endpoint.transports), 2)


class ReviewRegressionTests(UpstreamTestCase):
    """
    Defects found in review, each with the input that showed it.
    """

    def kept_connection(self) -> None:
        self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_a_post_is_not_sent_again_once_an_answer_began(self) -> None:
        for partial in (b"HTTP/1.1 500 Internal Ser", b"HTTP/1.1 100 Continue\r\n\r\n"):
            self.endpoint.transports.clear()
            self.endpoint.protocols.clear()
            self.kept_connection()
            d = self.send(body=b'{"charge":1}')
            self.answer(partial)
            lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
            self.failureResultOf(d, ResponseNeverReceived)
            self.assertEqual(len(self.endpoint.transports), 1, partial)

    def test_an_idle_connection_dropped_for_stray_bytes_is_not_handed_out(self) -> None:
        self.kept_connection()
        self.answer(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(self.endpoint.transports[0].disconnecting)
        self.send(body=b'{"n":2}')
        self.assertEqual(len(self.endpoint.transports), 2)
        self.assertNotIn(b'{"n":2}', self.endpoint.transports[0].value())

    def test_after_close_cached_connections_nothing_is_reused_or_kept(self) -> None:
        d = self.send()
        self.pool.closeCachedConnections()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.response(d)
        self.assertEqual(self.pool.idle_connections, 0)
        self.assertTrue(self.endpoint.transports[0].disconnecting)
        self.send()
        self.assertEqual(len(self.endpoint.transports), 2)

    def test_a_connection_being_closed_is_not_written_to(self) -> None:
        self.kept_connection()
        closing = self.pool.closeCachedConnections()
        self.send(body=b'{"n":3}')
        self.assertNotIn(b'{"n":3}', self.endpoint.transports[0].value())
        lose(self.endpoint.protocols[0], self.endpoint.transports[0], ConnectionDone())
        self.successResultOf(closing)

    def test_numbers_are_digits_only(self) -> None:
        for head in (b"HTTP/1.1 +99 OK\r\n\r\n", b"HTTP/1.1 2_0 OK\r\n\r\n", b"HTTP/1.11 200 OK\r\n\r\n"):
            d = self.send()
            self.answer(head)
            self.failureResultOf(d, ResponseNeverReceived)
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = Body()
        self.response(d).deliverBody(body)
        self.answer(b"1_0\r\n")
        self.assertTrue(self.endpoint.transports[-1].disconnecting)

    def test_a_close_is_never_undone(self) -> None:
        d = self.send()
        self.answer(
            b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        self.response(d)
        self.assertEqual(self.pool.idle_connections, 0)
        self.assertTrue(self.endpoint.transports[0].disconnecting)

    def test_http10_keep_alive_is_kept(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
        self.response(d)
        self.assertEqual(self.pool.idle_connections, 1)

    def test_a_bare_lf_head_ends_at_its_own_blank_line(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\nContent-Length: 8\n\nab\r\n\r\ncd")
        self.assertEqual(self.response(d).complete_body(), b"ab\r\n\r\ncd")


class EndpointTests(SynchronousTestCase):
    """
    Which endpoint reaches ``llm.base_url``: a refused upstream at an IP
    address must fail at once, not after ``HostnameEndpoint``'s attempt
    delay.
    """

    def refused_at(self, base_url: bytes) -> Deferred[Any]:
        from twisted.internet.protocol import Factory

        reactor = MemoryReactorClock()
        endpoint = upstream_endpoint(reactor, base_url, 5.0, tls_policy(None, True))
        connecting = endpoint.connect(Factory.forProtocol(Protocol))
        host, port, factory, timeout, bind = reactor.tcpClients[0]
        self.assertEqual(timeout, 5.0)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        return connecting

    def test_a_refused_ipv4_literal_fails_without_waiting(self) -> None:
        # No clock advanced: HostnameEndpoint would still be waiting here.
        self.failureResultOf(self.refused_at(b"http://127.0.0.1:9/v1"), ConnectionRefusedError)

    def test_a_refused_ipv6_literal_fails_without_waiting(self) -> None:
        self.failureResultOf(self.refused_at(b"http://[::1]:9/v1"), ConnectionRefusedError)

    def test_a_name_keeps_hostname_endpoint(self) -> None:
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint = upstream_endpoint(
            MemoryReactorClock(), b"http://api.test/v1", 5.0, tls_policy(None, True)
        )
        self.assertIsInstance(endpoint, HostnameEndpoint)
