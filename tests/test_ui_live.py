"""
Unit tests of the live feed (middleware and hub), the event stream and the
view's answers, on a ``Clock`` and ``DummyRequest``s.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from llmgate.exchange import Exchange, RequestRecord, ResponseRecord
from llmgate.interfaces import IMiddleware
from llmgate.middleware.live import Hub, LiveFeed, delta_text
from llmgate.sse import ServerSentEvent
from llmgate.ui.events import HEARTBEAT_SECONDS, WRITE_SECONDS, EventStream
from llmgate.ui.index import TraceIndex
from llmgate.ui.summary import summary_of_exchange
from llmgate.ui.view import CSP, DisabledView, LiveView, is_view_path
from tests.test_ui_index import BASE, trace, write


def exchange(session: str = "s1", exchange_id: str = "e1") -> Exchange:
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    result = Exchange(
        id=exchange_id,
        provider="openai",
        request=RequestRecord(b"POST", b"/v1/chat/completions", Headers(), body),
        received=1.0,
    )
    result.session_id = session
    return result


def chunk(text: str) -> ServerSentEvent:
    return ServerSentEvent("message", data=json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}))


class Request(DummyRequest):
    """
    DummyRequest pulls from a producer in a loop; a real request only holds it.
    """

    producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


def request(path: bytes, **args: str) -> DummyRequest:
    made = Request([])
    made.path = path
    made.args = {k.encode(): [v.encode()] for k, v in args.items()}
    return made


class DeltaTests(SynchronousTestCase):
    def test_text_is_read_from_each_api_shape(self) -> None:
        self.assertEqual(delta_text(chunk("hel")), "hel")
        anthropic = ServerSentEvent(
            event="content_block_delta",
            data='{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}',
        )
        self.assertEqual(delta_text(anthropic), "lo")
        responses = ServerSentEvent(
            event="response.output_text.delta", data='{"type":"response.output_text.delta","delta":"!"}'
        )
        self.assertEqual(delta_text(responses), "!")
        for other in ("[DONE]", "{bad", '{"type":"message_stop"}', '{"choices":[]}'):
            self.assertEqual(delta_text(ServerSentEvent("message", data=other)), "")


class LiveFeedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = Hub()
        self.feed = LiveFeed(self.clock, self.hub, flush_seconds=0.1)
        self.heard: list[tuple[str, dict[str, Any]]] = []

    def test_it_is_a_middleware(self) -> None:
        verifyObject(IMiddleware, self.feed)

    def test_nothing_is_kept_while_no_one_follows(self) -> None:
        call = exchange()
        self.feed.request_received(call)
        self.feed.event_received(call, chunk("x"))
        self.feed.exchange_finished(call)
        self.assertEqual((self.feed.live, self.clock.getDelayedCalls()), ({}, []))

    def test_a_stream_is_sent_as_it_grows_in_one_message_per_interval(self) -> None:
        self.hub.subscribe(lambda kind, data: self.heard.append((kind, data)))
        call = exchange()
        self.feed.request_received(call)
        self.assertEqual(self.heard, [])  # announced at the next flush
        for word in ("Hel", "lo", " there"):
            self.feed.event_received(call, chunk(word))
        self.assertEqual(self.heard, [])
        self.clock.advance(0.1)
        self.assertEqual(self.heard[0][0], "call_started")
        self.assertEqual(self.heard[0][1]["session_id"], "s1")
        self.assertEqual(
            self.heard[1], ("delta", {"id": "e1", "session_id": "s1", "offset": 0, "text": "Hello there"})
        )
        self.assertEqual(self.feed.live["e1"].text, "Hello there")
        self.feed.event_received(call, chunk("!"))
        call.response = ResponseRecord(status=200, headers=[], streaming=True)
        call.ended_at = 1.5
        call.usage = {"input_tokens": 4, "output_tokens": 2}
        self.feed.exchange_finished(call)
        self.assertEqual(self.heard[2], ("delta", {"id": "e1", "session_id": "s1", "offset": 11, "text": "!"}))
        ended = self.heard[3][1]
        self.assertEqual((self.heard[3][0], ended["status"], ended["duration_ms"], ended["tokens_out"]),
                         ("call_ended", 200, 500.0, 2))
        self.assertEqual(self.feed.live, {})

    def test_a_call_shorter_than_the_interval_sends_nothing(self) -> None:
        self.hub.subscribe(lambda kind, data: self.heard.append((kind, data)))
        call = exchange()
        self.feed.request_received(call)
        self.feed.event_received(call, chunk("quick"))
        call.response = ResponseRecord(status=200, headers=[], streaming=True)
        call.ended_at = 1.05
        self.feed.exchange_finished(call)
        self.clock.advance(0.1)
        self.assertEqual((self.heard, self.feed.live), ([], {}))

    def test_a_call_is_announced_once_in_flight_for_an_interval(self) -> None:
        self.hub.subscribe(lambda kind, data: self.heard.append((kind, data)))
        first, second = exchange(exchange_id="e1"), exchange(exchange_id="e2")
        self.feed.request_received(first)
        self.clock.advance(0.05)
        self.feed.request_received(second)
        self.feed.event_received(second, chunk("hi"))
        self.clock.advance(0.05)  # the flush: e2 is too young
        self.assertEqual([(k, d["id"]) for k, d in self.heard], [("call_started", "e1")])
        self.clock.advance(0.1)
        self.assertEqual([(k, d["id"]) for k, d in self.heard],
                         [("call_started", "e1"), ("call_started", "e2"), ("delta", "e2")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_call_in_flight_is_announced_once(self) -> None:
        self.hub.subscribe(lambda kind, data: self.heard.append((kind, data)))
        call = exchange()
        self.feed.request_received(call)
        self.clock.advance(0.1)
        self.clock.advance(0.1)
        self.feed.exchange_finished(call)
        self.assertEqual([kind for kind, _ in self.heard], ["call_started", "call_ended"])

    def test_a_failing_subscriber_is_dropped(self) -> None:
        def broken(kind: str, data: dict[str, Any]) -> None:
            raise RuntimeError("no")

        self.hub.subscribe(broken)
        self.feed.request_received(exchange())
        self.clock.advance(0.1)
        self.assertFalse(self.hub.active)
        self.flushLoggedErrors(RuntimeError)


class SummaryOfExchangeTests(SynchronousTestCase):
    def exchange(self) -> Exchange:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "key sk-secret-123 here"}]})
        call = Exchange(id="e9", provider="openai", received=1.0,
                        request=RequestRecord(b"POST", b"/v1/chat/completions?a=1", Headers(), body.encode()))
        call.session_id, call.ended_at, call.usage = "s", 1.25, {"input_tokens": 3, "output_tokens": 4}
        call.response = ResponseRecord(status=200, headers=[], streaming=True)
        call.notes["session_how"] = "new"
        return call

    def test_a_call_is_summarised_from_its_exchange_as_its_trace_would_be(self) -> None:
        from llmgate.redact import Scrubber

        call = summary_of_exchange(self.exchange(), 50.0, True, Scrubber(["sk-secret-123"]))
        self.assertEqual((call.time, call.file, call.path, call.status), (50.0, None, "/v1/chat/completions", 200))
        self.assertEqual((call.duration_ms, call.tokens_out, call.decision, call.streaming), (250.0, 4, "new", True))
        self.assertEqual(call.preview, "key [redacted] here")

    def test_without_bodies_in_the_trace_no_text_is_kept(self) -> None:
        self.assertEqual(summary_of_exchange(self.exchange(), 50.0, False, str).preview, "")


class EventStreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = Hub()
        self.request = request(b"/api/events")

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for block in b"".join(self.request.written).decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":") and ": " in line)
            if "event" in lines:
                found.append((lines["event"], json.loads(lines["data"])))
        return found

    def test_a_message_is_serialised_once_for_every_follower(self) -> None:
        from llmgate.middleware import live

        dumped: list[Any] = []
        real = live.fastjson.dumps

        def counting(value: Any) -> bytes:
            dumped.append(value)
            return real(value)

        self.patch(live.fastjson, "dumps", counting)
        other = request(b"/api/events")
        EventStream(self.request, self.hub, self.clock)
        EventStream(other, self.hub, self.clock)
        self.hub.publish("call_started", {"id": "a", "session_id": "s1"})
        self.hub.publish("call_started", {"id": "b", "session_id": "s1"})
        self.clock.advance(WRITE_SECONDS)
        self.assertEqual(len(dumped), 2)
        self.assertEqual(b"".join(other.written[1:]), b"".join(self.request.written[1:]))
        self.assertEqual([e[1]["id"] for e in self.events()], ["a", "b"])

    def test_messages_of_the_session_are_written_as_server_sent_events(self) -> None:
        stream = EventStream(self.request, self.hub, self.clock, session="s1")
        self.assertEqual(self.request.responseHeaders.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        self.hub.publish("call_started", {"id": "a", "session_id": "s1"})
        self.hub.publish("call_started", {"id": "b", "session_id": "s2"})
        self.hub.publish("delta", {"id": "a", "session_id": "s1", "text": "<b>"})
        self.assertEqual(self.events(), [])
        self.clock.advance(WRITE_SECONDS)  # gathered, then written at once
        self.assertEqual(len(self.request.written), 2)
        self.assertEqual(self.events(), [("call_started", {"id": "a", "session_id": "s1"}),
                                         ("delta", {"id": "a", "session_id": "s1", "text": "<b>"})])
        self.clock.advance(HEARTBEAT_SECONDS)
        self.assertTrue(self.request.written[-1].startswith(b": ping"))
        stream.close()
        self.assertEqual(self.successResultOf(stream.done), b"")
        self.assertIsNone(self.request.producer)
        self.assertFalse(self.hub.active)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_a_session_stream_text_is_left_out(self) -> None:
        EventStream(self.request, self.hub, self.clock)
        self.hub.publish("delta", {"id": "a", "session_id": "s1", "text": "x"})
        self.hub.publish("call_ended", {"id": "a", "session_id": "s1"})
        self.clock.advance(WRITE_SECONDS)
        self.assertEqual([kind for kind, _ in self.events()], ["call_ended"])

    def test_a_follower_that_does_not_read_loses_messages_then_is_told_to_resync(self) -> None:
        stream = EventStream(self.request, self.hub, self.clock)
        stream.pauseProducing()
        for n in range(3):
            self.hub.publish("call_ended", {"id": str(n)})
        self.assertEqual(self.events(), [])
        stream.resumeProducing()
        self.assertEqual(self.events(), [("resync", {"dropped": 3})])

    def test_what_is_gathered_is_written_before_the_stream_ends(self) -> None:
        stream = EventStream(self.request, self.hub, self.clock)
        self.hub.publish("call_ended", {"id": "a"})
        stream.close()
        self.assertEqual(self.events(), [("call_ended", {"id": "a"})])

    def test_a_follower_that_goes_away_unsubscribes(self) -> None:
        stream = EventStream(self.request, self.hub, self.clock)
        stream.done.cancel()
        self.failureResultOf(stream.done)
        stream.stopProducing()
        self.assertFalse(self.hub.active)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ViewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(BASE + 30)
        directory = tempfile.mkdtemp()
        write(directory, trace("a1", BASE, "A"))
        write(directory, trace("a2", BASE + 1, "A", messages=[{"role": "user", "content": "<script>x()</script>"}]))
        self.hub = Hub()
        self.index = TraceIndex(self.clock, directory, lambda f, *a: succeed(f(*a)), hub=self.hub)
        self.successResultOf(self.index.load())
        self.feed = LiveFeed(self.clock, self.hub)
        self.view = LiveView(self.index, self.feed, self.hub, self.clock)

    def answer(self, path: bytes, **args: str) -> tuple[int, Any]:
        made = request(path, **args)
        result = self.view.api(made)
        if not isinstance(result, bytes):
            result = self.successResultOf(result)
        return made.responseCode or 200, json.loads(result)

    def test_sessions_are_listed_with_paging(self) -> None:
        code, document = self.answer(b"/api/sessions", q="a", limit="1")
        self.assertEqual((code, document["total"], document["limit"]), (200, 1, 1))
        self.assertEqual(document["sessions"][0]["calls"], 2)

    def test_a_session_holds_its_calls_with_their_messages_as_text(self) -> None:
        code, document = self.answer(b"/api/sessions/A")
        self.assertEqual(code, 200)
        self.assertEqual(document["calls"][1]["messages"][0]["text"], "<script>x()</script>")
        self.assertEqual(self.answer(b"/api/sessions/nope")[0], 404)

    def test_a_call_in_flight_is_answered_from_the_feed(self) -> None:
        self.hub.subscribe(lambda kind, data: None)
        call = exchange("A", "live1")
        self.feed.request_received(call)
        self.feed.event_received(call, chunk("so far"))
        code, document = self.answer(b"/api/calls/live1")
        self.assertEqual((document["in_progress"], document["text"]), (True, "so far"))
        self.assertEqual(self.answer(b"/api/sessions/A")[1]["in_flight"][0]["id"], "live1")
        self.assertEqual(self.answer(b"/api/calls/a1")[1]["trace"]["id"], "a1")
        self.assertEqual(self.answer(b"/api/calls/zzz")[0], 404)

    def test_stats_cover_the_last_hour(self) -> None:
        code, document = self.answer(b"/api/stats")
        self.assertEqual((sum(document["calls"]), document["index"]["calls"]), (2, 2))

    def test_pages_forbid_inline_scripts(self) -> None:
        made = request(b"/ui/sessions/A")
        body = self.view.page(made)
        self.assertIn(b'src="/ui/static/app.js"', body)
        self.assertEqual(made.responseHeaders.getRawHeaders(b"content-security-policy"), [CSP])
        self.assertIn(b"script-src 'self'", CSP)
        self.assertEqual(self.view.page(request(b"/ui/static/../view.py")), self.view.page(request(b"/ui/x")))

    def test_the_view_claims_only_its_own_api_paths(self) -> None:
        self.assertTrue(is_view_path(b"/api/sessions"))
        self.assertFalse(is_view_path(b"/api/chat"))  # an upstream's own /api/
        off = DisabledView("The live view needs trace.")
        self.assertTrue(off.claims(b"/ui/"))
        self.assertFalse(off.claims(b"/api/sessions"))
        made = request(b"/ui/")
        self.assertEqual(off.page(made), b"The live view needs trace.\n")
