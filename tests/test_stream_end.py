"""
Each API shape says which event ends a complete stream of its API, and the
observer marks an exchange whose stream's end was relayed.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llmgate.exchange import Exchange, RequestRecord, ResponseRecord
from llmgate.observe import Observer
from llmgate.pipeline import Pipeline
from llmgate.middleware import Middleware
from llmgate.providers.registry import DEFAULT
from llmgate.sse import ServerSentEvent


def event(data: str, name: str = "message") -> ServerSentEvent:
    return ServerSentEvent(event=name, data=data)


class ShapesSayWhereTheirStreamsEnd(SynchronousTestCase):
    def shape(self, path: bytes):
        return DEFAULT.for_path(path)

    def test_openai_chat_ends_on_done_or_a_finish_reason(self) -> None:
        chat = self.shape(b"/v1/chat/completions")
        self.assertTrue(chat.stream_ended(event("[DONE]")))
        self.assertTrue(
            chat.stream_ended(event('{"choices":[{"index":0,"delta":{},"finish_reason": "stop"}]}'))
        )
        self.assertFalse(
            chat.stream_ended(event('{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}'))
        )

    def test_responses_end_on_response_completed_only(self) -> None:
        responses = self.shape(b"/v1/responses")
        self.assertTrue(responses.stream_ended(event('{"type":"response.completed"}', "response.completed")))
        self.assertTrue(responses.stream_ended(event('{"type": "response.completed", "response": {}}')))
        self.assertFalse(responses.stream_ended(event('{"type":"response.failed"}', "response.failed")))
        self.assertFalse(
            responses.stream_ended(event('{"type":"response.output_text.delta","delta":"response.completed"}'))
        )

    def test_anthropic_messages_end_on_message_stop(self) -> None:
        messages = self.shape(b"/v1/messages")
        self.assertTrue(messages.stream_ended(event('{"type":"message_stop"}', "message_stop")))
        self.assertFalse(messages.stream_ended(event('{"type":"message_delta"}', "message_delta")))

    def test_an_opaque_shape_never_says_its_stream_ended(self) -> None:
        self.assertFalse(DEFAULT.opaque.stream_ended(event("[DONE]")))


class ObserverMarksTheEnd(SynchronousTestCase):
    def observe(self, path: bytes, body: bytes) -> Exchange:
        shape = DEFAULT.for_path(path)
        exchange = Exchange(
            id="x", provider=shape.name, api=shape,
            request=RequestRecord(b"POST", path, Headers(), b"{}"), received=0.0,
        )
        record = ResponseRecord(status=200, headers=[], streaming=True)
        exchange.response = record
        observer = Observer(exchange, record, Pipeline([Middleware()]), MemoryReactorClock(), 1 << 20)
        observer(body)
        return exchange

    def test_a_relayed_end_event_marks_the_stream_ended(self) -> None:
        exchange = self.observe(b"/v1/messages", b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        self.assertTrue(exchange.stream_ended)

    def test_a_stream_cut_before_its_end_is_not_marked(self) -> None:
        exchange = self.observe(b"/v1/messages", b'event: message_delta\ndata: {"type":"message_delta"}\n\n')
        self.assertFalse(exchange.stream_ended)
