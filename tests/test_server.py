"""
Tests for llmgate.http.server: the request body limit, on a real HTTP channel
over a ``StringTransport``.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from llmgate.providers import ANTHROPIC, OPENAI
from llmgate.http.server import GatewaySite


def connect(site: GatewaySite, transport: StringTransport | None = None):
    """
    A channel of ``site`` connected over ``transport`` (a new
    ``StringTransport`` by default).
    """
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = transport if transport is not None else StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


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
        protocol, transport = connect(site)
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

    def test_a_refused_body_of_an_anthropic_call_gets_anthropics_error_shape(self) -> None:
        # The default upstream is OpenAI's; the call's path decides the shape.
        for data in (
            b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n",
            b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"80\r\n" + b"x" * 128 + b"\r\n",
        ):
            protocol, transport = self.connect(provider=OPENAI)
            protocol.dataReceived(data)
            head, body = self.split(transport)
            self.assertTrue(head.startswith(b"HTTP/1.1 413 "), head)
            self.assertEqual(body["type"], "error")
            self.assertEqual(body["error"]["type"], "request_too_large")

    def test_a_refused_body_of_an_openai_call_gets_openais_error_shape(self) -> None:
        protocol, transport = self.connect(provider=ANTHROPIC)
        protocol.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"
        )
        head, body = self.split(transport)
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertEqual(body["error"]["code"], "request_too_large")

    def test_a_refused_body_leaves_no_request_timeout_behind(self) -> None:
        clock = Clock()
        site = GatewaySite(Recorder(), provider=OPENAI, max_request_body=100, clock=clock)
        protocol, transport = connect(site)
        protocol.dataReceived(b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n")
        self.assertIn(b" 413 ", transport.value())
        written = transport.value()
        clock.advance(site.request_timeout + 1)
        self.assertEqual(site.refused["request_timeout"], 0)
        self.assertEqual(transport.value(), written)

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
        protocol, transport = connect(site, CountingTransport())
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


class Echo(Resource):
    """
    Answers with what the request was parsed into, so two parses of the same
    bytes can be compared by their answers.
    """

    isLeaf = True

    def render(self, request) -> bytes:
        return json.dumps(
            {
                "method": request.method.decode("latin-1"),
                "uri": request.uri.decode("latin-1"),
                "version": request.clientproto.decode("latin-1"),
                "args": {k.decode("latin-1"): [v.decode("latin-1") for v in vs]
                         for k, vs in request.args.items()},
                "cookies": {k.decode("latin-1"): v.decode("latin-1")
                            for k, v in request.received_cookies.items()},
                "headers": [[n.decode("latin-1"), [v.decode("latin-1") for v in vs]]
                            for n, vs in request.requestHeaders.getAllRawHeaders()],
                "body": request.content.read().decode("latin-1"),
            }
        ).encode()


#: Requests the whole-request path must parse as twisted.web does, or leave
#: to twisted.web.
REQUESTS = {
    "plain GET": b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n",
    "no headers": b"GET / HTTP/1.1\r\n\r\n",
    "POST with body": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": true}",
    "empty body": b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "odd spacing, case and repeats": b"GET /x?a=1&a=2&b= HTTP/1.1\r\nhost:a\r\n"
    b"X-Thing: \t one \t\r\nx-thing:two\r\nX-EMPTY:\r\nContent-length: 0\r\n\r\n",
    "obs-text value": b"GET /x HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n",
    "cookies": b"GET /x HTTP/1.1\r\nCookie: a=1; b=2\r\n\r\n",
    "HTTP/1.0": b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
    "Connection: close": b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
    "body over the limit": b"POST /x HTTP/1.1\r\nContent-Length: 101\r\n\r\n" + b"x" * 101,
    "too many headers": b"GET /x HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
    "head too large": b"GET /x HTTP/1.1\r\nX-A: " + b"a" * 40000 + b"\r\n\r\n",
    "space in a header name": b"GET /x HTTP/1.1\r\nX A: 1\r\n\r\n",
    "space before the colon": b"GET /x HTTP/1.1\r\nX-A : 1\r\n\r\n",
    "NUL in a value": b"GET /x HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "CR in a value": b"GET /x HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    "bare LF line": b"GET /x HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n",
    "folded line": b"GET /x HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",
    "no colon": b"GET /x HTTP/1.1\r\nX-A\r\n\r\n",
    "bad method": b"G(T /x HTTP/1.1\r\n\r\n",
    "HTTP/2.0": b"GET /x HTTP/2.0\r\n\r\n",
    "two spaces": b"GET  /x HTTP/1.1\r\n\r\n",
    "target *": b"OPTIONS * HTTP/1.1\r\n\r\n",
    "non-digit length": b"POST /x HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
    "two lengths": b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    "chunked": b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "expect": b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    "pipelined": b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    "body longer than declared": b"POST /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nhi",
    "empty line first": b"\r\nGET /x HTTP/1.1\r\n\r\n",
    "two Host headers": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "a length of 5000 digits": b"POST /x HTTP/1.1\r\nContent-Length: " + b"9" * 5000
    + b"\r\n\r\nhi",
    "a small length in 5000 digits": b"POST /x HTTP/1.1\r\nContent-Length: " + b"0" * 4999
    + b"2\r\n\r\nhi",
    "a chunk size of 5000 digits": b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"f" * 5000 + b"\r\nhi\r\n0\r\n\r\n",
}

#: What some of those must be answered, whichever parser takes them.
STATUS = {
    "two Host headers": b"400",
    "a length of 5000 digits": b"413",
    "a small length in 5000 digits": b"400",
    "a chunk size of 5000 digits": b"400",
    "body over the limit": b"413",
    "NUL in a value": b"400",
    "CR in a value": b"400",
}

#: Of those, the ones taken whole, without twisted.web's line parser.
TAKEN_WHOLE = {
    "plain GET",
    "no headers",
    "POST with body",
    "empty body",
    "odd spacing, case and repeats",
    "obs-text value",
    "cookies",
    "HTTP/1.0",
    "Connection: close",
    "body over the limit",
    "target *",
}


class WholeRequestTests(SynchronousTestCase):
    """
    A request that arrives whole is parsed in one step
    (``GatewayChannel._whole_request``); it must come out as twisted.web's
    line parser makes it, and anything outside the one-step path's subset
    must be left to that parser.
    """

    def exchange(self, data: bytes, whole: bool, cut: int | None = None) -> tuple[bytes, int]:
        """
        Feed ``data`` whole (in two writes if ``cut`` is given) or a byte at
        a time (which leaves every byte to twisted.web's parser); return
        what was answered and how many lines the line parser saw.
        """
        site = GatewaySite(Echo(), provider=OPENAI, max_request_body=100, clock=Clock())
        site.doStart()
        self.addCleanup(site.doStop)
        protocol, transport = connect(site)
        lines = []
        line_received = protocol.lineReceived

        def count(line: bytes) -> None:
            lines.append(line)
            line_received(line)

        protocol.lineReceived = count
        if whole and cut is not None:
            protocol.dataReceived(data[:cut])
            protocol.dataReceived(data[cut:])
        elif whole:
            protocol.dataReceived(data)
        else:
            for index in range(len(data)):
                protocol.dataReceived(data[index : index + 1])
        protocol.connectionLost(None)
        return transport.value(), len(lines)

    def test_answers_match_twisted_webs_parser(self) -> None:
        for name, data in REQUESTS.items():
            with self.subTest(name):
                whole, _ = self.exchange(data, whole=True)
                by_byte, _ = self.exchange(data, whole=False)
                self.assertTrue(whole.startswith(b"HTTP/1."), whole)
                self.assertEqual(whole, by_byte)
                if name in STATUS:
                    self.assertEqual(whole.split(b" ", 2)[1], STATUS[name], whole)

    def test_head_and_body_in_two_writes_match_twisted_webs_parser(self) -> None:
        for name, data in REQUESTS.items():
            for cut in sorted({data.find(b"\r\n\r\n") + 4, len(data) - 1}):
                if not 0 < cut < len(data):
                    continue
                with self.subTest(name, cut=cut):
                    split, _ = self.exchange(data, whole=True, cut=cut)
                    by_byte, _ = self.exchange(data, whole=False)
                    self.assertEqual(split, by_byte)

    def test_a_body_that_follows_its_head_is_taken_with_it(self) -> None:
        data = REQUESTS["POST with body"]
        answer, lines = self.exchange(data, whole=True, cut=data.find(b"\r\n\r\n") + 4)
        self.assertEqual(lines, 0)
        self.assertEqual(json.loads(answer.partition(b"\r\n\r\n")[2])["body"], '{"a": true}')

    def test_a_trickled_body_is_parsed_with_its_head_once(self) -> None:
        site = GatewaySite(Echo(), provider=OPENAI, max_request_body=100_000, clock=Clock())
        protocol, transport = connect(site)
        parses = []
        whole_request = protocol._whole_request

        def count(data: bytes) -> bool:
            parses.append(len(data))
            return whole_request(data)

        protocol._whole_request = count
        body = b"x" * 5000
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        for index in range(len(body)):
            protocol.dataReceived(body[index : index + 1])
        self.assertEqual(len(parses), 2)
        answer = json.loads(transport.value().partition(b"\r\n\r\n")[2])
        self.assertEqual(answer["body"], body.decode())
        protocol.connectionLost(None)

    def test_only_the_subset_skips_the_line_parser(self) -> None:
        for name, data in REQUESTS.items():
            with self.subTest(name):
                _, lines = self.exchange(data, whole=True)
                if name in TAKEN_WHOLE:
                    self.assertEqual(lines, 0)
                else:
                    self.assertGreater(lines, 0)

    def test_headers_values_and_body_arrive_as_sent(self) -> None:
        answer, _ = self.exchange(REQUESTS["odd spacing, case and repeats"], whole=True)
        document = json.loads(answer.partition(b"\r\n\r\n")[2])
        self.assertEqual(document["method"], "GET")
        self.assertEqual(document["args"], {"a": ["1", "2"], "b": [""]})
        headers = dict((name, values) for name, values in document["headers"])
        self.assertEqual(headers["X-Thing"], ["one", "two"])
        self.assertEqual(headers["X-Empty"], [""])
        self.assertEqual(headers["Host"], ["a"])

    def test_answers_carry_a_date_and_no_server_header(self) -> None:
        answer, _ = self.exchange(REQUESTS["plain GET"], whole=True)
        head = answer.partition(b"\r\n\r\n")[0].lower()
        self.assertIn(b"\r\ndate: thu, 01 jan 1970 00:00:00 gmt", head)
        self.assertNotIn(b"\r\nserver:", head)

    def test_the_date_is_formatted_once_a_second(self) -> None:
        clock = Clock()
        site = GatewaySite(Echo(), provider=OPENAI, max_request_body=100, clock=clock)
        first = site.http_date()
        self.assertIs(site.http_date(), first)
        clock.advance(0.5)
        self.assertIs(site.http_date(), first)
        clock.advance(0.5)
        self.assertEqual(site.http_date(), b"Thu, 01 Jan 1970 00:00:01 GMT")


class Slow(Resource):
    """
    Answers when told to.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list = []

    def render(self, request) -> object:
        from twisted.web.server import NOT_DONE_YET

        self.waiting.append(request)
        return NOT_DONE_YET


class IdleTimeoutTests(SynchronousTestCase):
    """
    A connection is closed after ``idle_timeout`` of silence between
    requests, never while an answer is still being given, on one timer.
    """

    def connect(self):
        self.clock = Clock()
        self.resource = Slow()
        site = GatewaySite(
            self.resource, provider=OPENAI, max_request_body=100, clock=self.clock,
            idle_timeout=10,
        )
        site.doStart()
        self.addCleanup(site.doStop)
        protocol, transport = connect(site)
        return protocol, transport

    def test_an_answer_longer_than_the_idle_timeout_is_not_cut(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
        self.clock.advance(25)
        self.assertFalse(transport.disconnecting)
        request = self.resource.waiting.pop()
        request.write(b"late")
        request.finish()
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_silence_after_an_answer_closes_the_connection(self) -> None:
        protocol, transport = self.connect()
        for _ in range(3):
            self.clock.advance(6)
            protocol.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
            self.resource.waiting.pop().finish()
        self.clock.advance(9.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(transport.disconnecting)

    def test_one_timer_serves_every_request(self) -> None:
        protocol, transport = self.connect()
        timers = set()
        for _ in range(5):
            protocol.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
            self.resource.waiting.pop().finish()
            (timer,) = self.clock.getDelayedCalls()
            timers.add(id(timer))
        self.assertEqual(len(timers), 1)

    def test_a_lost_connection_stops_the_timer(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
        self.resource.waiting.pop().finish()
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_connection_closing_after_its_answer_is_aborted_if_it_never_closes(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.resource.waiting.pop().finish()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        # The client never reads: the close never completes.
        self.clock.advance(9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)


class RefusedConnectionTests(SynchronousTestCase):
    def test_nothing_after_a_refused_body_is_served(self) -> None:
        # Found by review: a 413 taken whole left the parser at a request
        # boundary, and over TLS (one record per dataReceived) the next
        # request on the closing connection was still served.
        resource = Recorder()
        site = GatewaySite(resource, provider=OPENAI, max_request_body=100, clock=Clock())
        protocol, transport = connect(site)
        writes = [
            b"POST /big HTTP/1.1\r\nContent-Length: 101\r\n\r\n" + b"x" * 101,
            b"POST /s HTTP/1.1\r\n",
            b"Content-Length: 2\r\n",
            b"\r\n",
            b"hi",
            b"POST /t HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        ]
        for data in writes:
            protocol.dataReceived(data)
        self.assertEqual(resource.bodies, [])
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)
        self.assertEqual(site.refused_bodies, 1)


class RefusalShapeTests(SynchronousTestCase):
    """
    Errors the server writes before routing (408, 431) take the shape of the
    call's path, whatever the default upstream's type.
    """

    def connect(self):
        self.clock = Clock()
        site = GatewaySite(
            Recorder(), provider=OPENAI, max_request_body=100, clock=self.clock,
            request_timeout=5, max_header_bytes=200,
        )
        site.doStart()
        self.addCleanup(site.doStop)
        return connect(site)

    def body(self, transport: StringTransport) -> dict:
        return json.loads(transport.value().partition(b"\r\n\r\n")[2])

    def test_headers_too_large_on_an_anthropic_path_get_anthropics_shape(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nx-big: " + b"y" * 300 + b"\r\n")
        self.assertIn(b" 431 ", transport.value())
        self.assertEqual(self.body(transport)["type"], "error")

    def test_a_request_too_slow_on_an_anthropic_path_gets_anthropics_shape(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /v1/messages HTTP/1.1\r\nHost: a\r\n")
        self.clock.advance(6)
        self.assertIn(b" 408 ", transport.value())
        self.assertEqual(self.body(transport)["type"], "error")

    def test_a_request_too_slow_on_an_openai_path_gets_openais_shape(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /v1/responses HTTP/1.1\r\nHost: a\r\n")
        self.clock.advance(6)
        self.assertEqual(self.body(transport)["error"]["code"], "request_timeout")
