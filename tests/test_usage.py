"""
Tests for :mod:`llmgate.usage`: token counts from plain answers and streams
of every provider shape, normalised, and never an exception.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmgate import usage as usage_module
from llmgate import sse as sse_module
from llmgate.sse import SSEParser, ServerSentEvent
from llmgate.usage import StreamUsage, Usage, usage_from_body
from tests.fakeupstream import (
    anthropic_events,
    anthropic_message,
    openai_chunks,
    openai_completion,
)


def events_of(chunks: list[bytes]) -> list[ServerSentEvent]:
    """
    The events a gateway would see for the fake upstream's wire bytes.
    """
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def fed(events: list[ServerSentEvent], provider: str | None = None) -> Usage | None:
    """
    Feed ``events`` to a new :class:`StreamUsage` and return its result.
    """
    stream = StreamUsage(provider)
    for event in events:
        stream.feed(event)
    return stream.result()


def event(name: str, document: Any) -> ServerSentEvent:
    return ServerSentEvent(name, json.dumps(document))


def chunk(document: Any) -> ServerSentEvent:
    return ServerSentEvent("message", json.dumps(document))


class UsageTests(SynchronousTestCase):
    """
    The normalised counts and their dictionary form.
    """

    def test_counts_default_to_zero(self) -> None:
        self.assertEqual(Usage().total_tokens, 0)

    def test_total_is_input_plus_output(self) -> None:
        self.assertEqual(Usage(10, 5, 4, 3).total_tokens, 15)

    def test_as_dict_always_has_input_output_and_total(self) -> None:
        self.assertEqual(
            Usage(10, 5).as_dict(),
            {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        )

    def test_as_dict_includes_cache_counts_only_when_not_zero(self) -> None:
        self.assertEqual(
            Usage(10, 5, cache_read_tokens=4).as_dict(),
            {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cache_read_tokens": 4},
        )
        self.assertEqual(
            Usage(10, 5, cache_write_tokens=3).as_dict(),
            {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cache_write_tokens": 3},
        )


class UsageFromBodyTests(SynchronousTestCase):
    """
    Usage read from a plain JSON answer of each shape.
    """

    def test_openai_chat_completion_prompt_and_completion_tokens(self) -> None:
        body = json.dumps(openai_completion("hi", "gpt-fake")).encode()
        self.assertEqual(usage_from_body("openai", body), Usage(11, 7))

    def test_openai_chat_cached_tokens_are_cache_reads(self) -> None:
        body = {
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 10},
            }
        }
        self.assertEqual(usage_from_body("openai", json.dumps(body).encode()), Usage(100, 20, 64))

    def test_openai_null_details_count_no_cache(self) -> None:
        body = {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": None}}
        self.assertEqual(usage_from_body("openai", json.dumps(body).encode()), Usage(3, 2))

    def test_openai_responses_api_input_and_output_tokens(self) -> None:
        body = {
            "object": "response",
            "usage": {
                "input_tokens": 50,
                "output_tokens": 8,
                "input_tokens_details": {"cached_tokens": 32},
                "total_tokens": 58,
            },
        }
        self.assertEqual(usage_from_body("openai", json.dumps(body).encode()), Usage(50, 8, 32))

    def test_anthropic_message_input_and_output_tokens(self) -> None:
        body = json.dumps(anthropic_message("hi", "claude-fake")).encode()
        self.assertEqual(usage_from_body("anthropic", body), Usage(13, 9))

    def test_anthropic_cache_tokens_are_added_into_the_input(self) -> None:
        body = {
            "usage": {
                "input_tokens": 5,
                "output_tokens": 9,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20,
            }
        }
        result = usage_from_body("anthropic", json.dumps(body).encode())
        self.assertEqual(result, Usage(125, 9, 100, 20))

    def test_a_bytearray_body_is_read(self) -> None:
        body = bytearray(json.dumps(openai_completion("hi", "gpt-fake")).encode())
        self.assertEqual(usage_from_body("openai", body), Usage(11, 7))

    def test_invalid_json_is_none(self) -> None:
        self.assertIsNone(usage_from_body("openai", b'{"usage": {"prompt_tok'))
        self.assertIsNone(usage_from_body("anthropic", b"\xff\xfe not utf-8"))
        self.assertIsNone(usage_from_body("openai", b""))

    def test_json_that_is_not_an_object_is_none(self) -> None:
        self.assertIsNone(usage_from_body("openai", b"[1, 2]"))
        self.assertIsNone(usage_from_body("anthropic", b"null"))

    def test_an_answer_without_usage_is_none(self) -> None:
        error = b'{"error": {"message": "bad", "type": "invalid_request_error"}}'
        self.assertIsNone(usage_from_body("openai", error))
        self.assertIsNone(usage_from_body("anthropic", b'{"type": "error", "usage": null}'))

    def test_usage_without_known_counts_is_none(self) -> None:
        self.assertIsNone(usage_from_body("openai", b'{"usage": {"tokens": 5}}'))
        self.assertIsNone(usage_from_body("anthropic", b'{"usage": {}}'))

    def test_counts_that_are_not_non_negative_integers_are_ignored(self) -> None:
        body = b'{"usage": {"prompt_tokens": "5", "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": true}}}'
        self.assertEqual(usage_from_body("openai", body), Usage(0, 2))
        body = b'{"usage": {"input_tokens": -1, "output_tokens": 2.5, "cache_read_input_tokens": 4}}'
        self.assertEqual(usage_from_body("anthropic", body), Usage(4, 0, 4))

    def test_the_provider_decides_the_field_names(self) -> None:
        body = json.dumps(openai_completion("hi", "gpt-fake")).encode()
        self.assertIsNone(usage_from_body("anthropic", body))


class StreamUsageOpenAITests(SynchronousTestCase):
    """
    Usage from OpenAI chat completion chunks and Responses API events.
    """

    def test_nothing_seen_is_none(self) -> None:
        self.assertIsNone(StreamUsage().result())

    def test_the_final_usage_chunk_gives_the_usage(self) -> None:
        events = events_of(openai_chunks("a few words here", "gpt-fake", True))
        self.assertEqual(fed(events, "openai"), Usage(11, 7))

    def test_a_stream_without_requested_usage_is_none(self) -> None:
        events = events_of(openai_chunks("a few words here", "gpt-fake", False))
        self.assertIsNone(fed(events, "openai"))

    def test_null_usage_in_every_chunk_is_ignored(self) -> None:
        events = [
            chunk({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None}),
            ServerSentEvent("message", '{"choices": [], "usage" :  null}'),
            chunk(
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 4,
                        "completion_tokens": 1,
                        "prompt_tokens_details": {"cached_tokens": 2},
                    },
                }
            ),
            chunk({"choices": [], "usage": None}),
        ]
        self.assertEqual(fed(events), Usage(4, 1, 2))

    def test_a_later_usage_replaces_an_earlier_one(self) -> None:
        events = [
            chunk({"usage": {"prompt_tokens": 4, "completion_tokens": 1}}),
            chunk({"usage": {"prompt_tokens": 4, "completion_tokens": 9}}),
        ]
        self.assertEqual(fed(events), Usage(4, 9))

    def test_responses_api_completed_event_gives_the_usage(self) -> None:
        events = [
            event(
                "response.created",
                {"type": "response.created", "response": {"object": "response", "usage": None}},
            ),
            event("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
            event(
                "response.completed",
                {
                    "type": "response.completed",
                    "response": {
                        "object": "response",
                        "usage": {
                            "input_tokens": 30,
                            "output_tokens": 6,
                            "input_tokens_details": {"cached_tokens": 16},
                        },
                    },
                },
            ),
        ]
        self.assertEqual(fed(events, "openai"), Usage(30, 6, 16))

    def test_an_openai_reader_ignores_anthropic_events(self) -> None:
        events = events_of(anthropic_events("hi there", "claude-fake"))
        self.assertIsNone(fed(events, "openai"))


class StreamUsageAnthropicTests(SynchronousTestCase):
    """
    Usage from Anthropic's message_start and message_delta events.
    """

    def test_the_fake_upstream_stream_gives_the_plain_answers_usage(self) -> None:
        events = events_of(anthropic_events("a few words here", "claude-fake"))
        body = json.dumps(anthropic_message("a few words here", "claude-fake")).encode()
        self.assertEqual(fed(events, "anthropic"), usage_from_body("anthropic", body))
        self.assertEqual(fed(events, "anthropic"), Usage(13, 9))

    def test_message_start_alone_gives_its_counts(self) -> None:
        start = {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 3,
                    "output_tokens": 1,
                    "cache_read_input_tokens": 50,
                    "cache_creation_input_tokens": 7,
                }
            },
        }
        self.assertEqual(fed([event("message_start", start)]), Usage(60, 1, 50, 7))

    def test_message_delta_output_tokens_replace_rather_than_add(self) -> None:
        events = [
            event("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 1}}}),
            event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 5}}),
            event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 12}}),
        ]
        self.assertEqual(fed(events, "anthropic"), Usage(3, 12))

    def test_message_delta_input_and_cache_counts_are_taken_when_present(self) -> None:
        events = [
            event("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 1}}}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "usage": {
                        "input_tokens": 4,
                        "output_tokens": 12,
                        "cache_read_input_tokens": 10,
                        "cache_creation_input_tokens": None,
                    },
                },
            ),
        ]
        self.assertEqual(fed(events), Usage(14, 12, 10))

    def test_events_without_names_are_recognised_by_their_type(self) -> None:
        events = [chunk({"type": "message_delta", "usage": {"output_tokens": 2}})]
        self.assertEqual(fed(events, "anthropic"), Usage(0, 2))

    def test_an_anthropic_reader_ignores_openai_usage_chunks(self) -> None:
        events = events_of(openai_chunks("hi there", "gpt-fake", True))
        self.assertIsNone(fed(events, "anthropic"))


class StreamUsageCostTests(SynchronousTestCase):
    """
    Events that carry no usage are not parsed at all.
    """

    def setUp(self) -> None:
        self.parsed: list[str] = []
        real = json.loads

        class CountingJSON:
            @staticmethod
            def loads(data: Any) -> Any:
                self.parsed.append(data)
                return real(data)

        self.patch(usage_module, "json", CountingJSON)
        # Event data is parsed by the event itself, once for all readers.
        self.patch(sse_module, "fastjson", CountingJSON)

    def test_only_the_usage_chunk_of_an_openai_stream_is_parsed(self) -> None:
        events = events_of(openai_chunks("one two three four", "gpt-fake", True))
        fed(events)
        self.assertEqual(len(self.parsed), 1)
        self.assertIn('"prompt_tokens"', self.parsed[0])

    def test_chunks_with_null_usage_are_not_parsed(self) -> None:
        fed([chunk({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None})] * 5)
        self.assertEqual(self.parsed, [])

    def test_only_message_start_and_message_delta_of_an_anthropic_stream_are_parsed(self) -> None:
        fed(events_of(anthropic_events("one two three four", "claude-fake")))
        self.assertEqual(
            [json.loads(data)["type"] for data in self.parsed], ["message_start", "message_delta"]
        )

    def test_answer_text_quoting_usage_is_not_parsed(self) -> None:
        text = 'the "usage": {"x": 1} field'
        fed(events_of(openai_chunks(text, "gpt-fake", False)))
        # Named "message", so that only the substring check can skip them.
        deltas = events_of(anthropic_events(text, "claude-fake"))[1:-2]
        fed([ServerSentEvent("message", each.data) for each in deltas])
        self.assertEqual(self.parsed, [])


class StreamUsageRobustnessTests(SynchronousTestCase):
    """
    Malformed events are ignored, whatever they hold.
    """

    def test_malformed_json_carrying_usage_is_ignored(self) -> None:
        stream = StreamUsage()
        stream.feed(ServerSentEvent("message", '{"usage": {"prompt_tokens": 1'))
        stream.feed(ServerSentEvent("message_start", '"usage" nonsense'))
        self.assertIsNone(stream.result())

    def test_wrong_types_are_ignored(self) -> None:
        events = [
            chunk(["usage"]),
            chunk({"usage": ["prompt_tokens", 1]}),
            chunk({"type": "message_start", "message": "usage"}),
            chunk({"type": "message_delta", "usage": 7}),
            chunk({"type": 5, "response": {"usage": "x"}}),
        ]
        self.assertIsNone(fed(events))

    def test_deeply_nested_json_is_ignored(self) -> None:
        data = '{"usage": ' + "[" * 100000 + "]" * 100000 + "}"
        self.assertIsNone(fed([ServerSentEvent("message", data)]))


_KEYS = st.sampled_from(
    [
        "type", "usage", "message", "response", "choices", "index", "delta", "prompt_tokens",
        "completion_tokens", "input_tokens", "output_tokens", "cache_read_input_tokens",
        "cache_creation_input_tokens", "prompt_tokens_details", "input_tokens_details",
        "cached_tokens",
    ]
)
_NAMES = st.sampled_from(
    ["message", "message_start", "message_delta", "response.completed", "ping", "content_block_delta"]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | _NAMES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=12,
)
_EVENTS = st.one_of(
    st.builds(ServerSentEvent, st.text(max_size=20) | _NAMES, st.text(max_size=60)),
    st.builds(
        lambda name, document: ServerSentEvent(name, json.dumps(document)),
        _NAMES,
        st.dictionaries(_KEYS, _JSON, max_size=5),
    ),
)


class StreamUsagePropertyTests(SynchronousTestCase):
    """
    No event, however strange, makes the reader raise.
    """

    @settings(max_examples=50, deadline=None)
    @given(
        events=st.lists(_EVENTS, max_size=8),
        provider=st.sampled_from([None, "openai", "anthropic"]),
    )
    def test_arbitrary_events_never_raise(
        self, events: list[ServerSentEvent], provider: str | None
    ) -> None:
        result = fed(events, provider)
        if result is not None:
            self.assertIsInstance(result.as_dict(), dict)

    @settings(max_examples=40, deadline=None)
    @given(body=st.binary(max_size=60) | st.dictionaries(_KEYS, _JSON, max_size=5).map(
        lambda document: json.dumps(document).encode()
    ))
    def test_arbitrary_bodies_never_raise(self, body: bytes) -> None:
        for provider in ("openai", "anthropic"):
            result = usage_from_body(provider, body)
            self.assertTrue(result is None or isinstance(result, Usage))
