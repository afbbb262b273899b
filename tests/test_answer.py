"""
Tests for :mod:`llmgate.answer`: the assistant message from plain answers and
from streams, identical either way, and never an exception.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmgate import answer as answer_module
from llmgate import sse as sse_module
from llmgate.answer import StreamAnswer, answer_from_body
from llmgate.sse import SSEParser, ServerSentEvent
from tests.fakeupstream import (
    anthropic_events,
    anthropic_message,
    openai_chunks,
    openai_completion,
)

TEXTS = ["Hello from the fake upstream", "", "one", "  spaced  out  ", "ünïcödé \"quoted\" \\ text"]


def events_of(chunks: list[bytes]) -> list[ServerSentEvent]:
    """
    The events a gateway would see for the fake upstream's wire bytes.
    """
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def fed(provider: str, events: list[ServerSentEvent]) -> dict[str, Any] | None:
    """
    Feed ``events`` to a new :class:`StreamAnswer` and return its result.
    """
    stream = StreamAnswer(provider)
    for event in events:
        stream.feed(event)
    return stream.result()


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def chunk(delta: dict[str, Any], index: int = 0) -> ServerSentEvent:
    """
    A chat completion chunk with one choice.
    """
    document = {"object": "chat.completion.chunk", "choices": [{"index": index, "delta": delta}]}
    return ServerSentEvent("message", json.dumps(document))


def event(name: str, document: dict[str, Any]) -> ServerSentEvent:
    """
    A named event whose data's ``type`` is its name, as both providers send.
    """
    return ServerSentEvent(name, json.dumps({"type": name, **document}))


def tool_call(index: int, **fields: Any) -> dict[str, Any]:
    return {"index": index, **fields}


class AnswerFromBodyOpenAITests(SynchronousTestCase):
    """
    The message of a plain OpenAI chat completion or Responses API answer.
    """

    def test_chat_completion_gives_role_and_content(self) -> None:
        answer = answer_from_body("openai", body(openai_completion("hi there", "gpt-fake")))
        self.assertEqual(answer, {"role": "assistant", "content": "hi there"})

    def test_null_content_is_kept_as_none(self) -> None:
        document = {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}
        self.assertEqual(
            answer_from_body("openai", body(document)), {"role": "assistant", "content": None}
        )

    def test_tool_calls_are_included_when_present(self) -> None:
        calls = [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
        document = {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None},
                }
            ]
        }
        self.assertEqual(
            answer_from_body("openai", body(document)),
            {"role": "assistant", "content": None, "tool_calls": calls},
        )

    def test_empty_or_null_tool_calls_are_left_out(self) -> None:
        for calls in ([], None):
            document = {"choices": [{"message": {"role": "assistant", "content": "x", "tool_calls": calls}}]}
            self.assertEqual(
                answer_from_body("openai", body(document)), {"role": "assistant", "content": "x"}
            )

    def test_a_refusal_is_included_when_not_null(self) -> None:
        document = {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "no"}}]}
        self.assertEqual(
            answer_from_body("openai", body(document)),
            {"role": "assistant", "content": None, "refusal": "no"},
        )

    def test_only_the_first_choice_is_read(self) -> None:
        document = {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "first"}},
                {"index": 1, "message": {"role": "assistant", "content": "second"}},
            ]
        }
        self.assertEqual(answer_from_body("openai", body(document))["content"], "first")

    def test_responses_api_joins_output_text_and_keeps_the_output(self) -> None:
        output = [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hello ", "annotations": []},
                    {"type": "refusal", "refusal": "not this"},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "world"}]},
        ]
        document = {"object": "response", "output": output, "usage": {"input_tokens": 1}}
        self.assertEqual(
            answer_from_body("openai", body(document)),
            {"role": "assistant", "content": "Hello world", "output": output},
        )

    def test_responses_api_without_text_has_none_content(self) -> None:
        output = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]
        document = {"object": "response", "output": output}
        self.assertEqual(
            answer_from_body("openai", body(document)),
            {"role": "assistant", "content": None, "output": output},
        )

    def test_a_bytearray_body_is_read(self) -> None:
        document = bytearray(body(openai_completion("hi", "gpt-fake")))
        self.assertEqual(answer_from_body("openai", document), {"role": "assistant", "content": "hi"})

    def test_bodies_that_are_not_answers_are_none(self) -> None:
        for document in (
            b"",
            b"not json",
            b"\xff\xfe",
            b'{"choices": [{"mess',
            b"[1]",
            b'{"error": {"message": "bad"}}',
            b'{"choices": []}',
            b'{"choices": ["x"]}',
            b'{"choices": [{"message": "x"}]}',
            b'{"object": "response", "output": "x"}',
        ):
            self.assertIsNone(answer_from_body("openai", document), document)


class AnswerFromBodyAnthropicTests(SynchronousTestCase):
    """
    The message of a plain Anthropic answer.
    """

    def test_message_gives_role_and_content_blocks(self) -> None:
        blocks = [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ]
        document = dict(anthropic_message("", "claude-fake"), content=blocks)
        self.assertEqual(
            answer_from_body("anthropic", body(document)), {"role": "assistant", "content": blocks}
        )

    def test_bodies_that_are_not_answers_are_none(self) -> None:
        for document in (
            b"",
            b"{",
            b'"text"',
            b'{"type": "error", "error": {"type": "overloaded_error"}}',
            b'{"content": "text"}',
        ):
            self.assertIsNone(answer_from_body("anthropic", document), document)


class StreamMatchesBodyTests(SynchronousTestCase):
    """
    A streamed answer comes out identical to the same answer sent whole, as
    session detection needs.
    """

    def test_openai_chunks_match_the_chat_completion(self) -> None:
        for text in TEXTS:
            for usage in (False, True):
                plain = answer_from_body("openai", body(openai_completion(text, "gpt-fake")))
                streamed = fed("openai", events_of(openai_chunks(text, "gpt-fake", usage)))
                self.assertEqual(streamed, plain)
                self.assertIsNotNone(streamed)

    def test_anthropic_events_match_the_message(self) -> None:
        for text in TEXTS:
            plain = answer_from_body("anthropic", body(anthropic_message(text, "claude-fake")))
            streamed = fed("anthropic", events_of(anthropic_events(text, "claude-fake")))
            self.assertEqual(streamed, plain)
            self.assertIsNotNone(streamed)

    def test_openai_tool_call_chunks_match_the_chat_completion(self) -> None:
        calls = [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ]
        plain = answer_from_body(
            "openai",
            body({"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None}}]}),
        )
        events = [
            chunk({"role": "assistant", "content": None, "refusal": None,
                   "tool_calls": [tool_call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})]}),
            chunk({"tool_calls": [tool_call(0, function={"arguments": '{"city": '})]}),
            chunk({"tool_calls": [tool_call(1, id="call_b", type="function", function={"name": "get_time", "arguments": ""})]}),
            chunk({"tool_calls": [tool_call(0, function={"arguments": '"Paris"}'})]}),
            chunk({"tool_calls": [tool_call(1, function={"arguments": "{}"})]}),
            chunk({}),
            ServerSentEvent("message", "[DONE]"),
        ]
        self.assertEqual(fed("openai", events), plain)

    def test_anthropic_tool_use_and_thinking_events_match_the_message(self) -> None:
        blocks = [
            {"type": "thinking", "thinking": "Let me think.", "signature": "EqSig=="},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
        ]
        plain = answer_from_body("anthropic", body(dict(anthropic_message("", "claude-fake"), content=blocks)))
        events = [
            event("message_start", {"message": {"role": "assistant", "content": [], "usage": {"input_tokens": 1}}}),
            event("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "think."}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "EqSig=="}}),
            event("content_block_stop", {"index": 0}),
            event("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
            event("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Checking."}}),
            event("content_block_stop", {"index": 1}),
            event("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
            event("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            event("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}}),
            event("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": 'ris", "days": [1, 2]}'}}),
            event("content_block_stop", {"index": 2}),
            event("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}),
            event("message_stop", {}),
        ]
        self.assertEqual(fed("anthropic", events), plain)

    def test_responses_api_completed_event_matches_the_response(self) -> None:
        output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!", "annotations": []}]}]
        response = {"object": "response", "status": "completed", "output": output}
        events = [
            event("response.created", {"response": dict(response, output=[], status="in_progress")}),
            event("response.output_text.delta", {"output_index": 0, "content_index": 0, "delta": "Hi"}),
            event("response.output_text.delta", {"output_index": 0, "content_index": 0, "delta": "!"}),
            event("response.output_item.done", {"output_index": 0, "item": output[0]}),
            event("response.completed", {"response": response}),
        ]
        self.assertEqual(fed("openai", events), answer_from_body("openai", body(response)))


class StreamAnswerOpenAITests(SynchronousTestCase):
    """
    The rules for OpenAI chat chunks and Responses API events.
    """

    def test_nothing_seen_is_none(self) -> None:
        self.assertIsNone(StreamAnswer("openai").result())
        self.assertIsNone(fed("openai", [ServerSentEvent("message", "[DONE]")]))

    def test_content_deltas_are_concatenated(self) -> None:
        events = [chunk({"role": "assistant"}), chunk({"content": "Hel"}), chunk({"content": "lo"})]
        self.assertEqual(fed("openai", events), {"role": "assistant", "content": "Hello"})

    def test_content_stays_none_when_no_content_came(self) -> None:
        events = [chunk({"role": "assistant", "content": None}), chunk({})]
        self.assertEqual(fed("openai", events), {"role": "assistant", "content": None})

    def test_the_role_comes_from_the_deltas(self) -> None:
        self.assertEqual(fed("openai", [chunk({"role": "developer", "content": "x"})])["role"], "developer")

    def test_only_choice_index_zero_is_read(self) -> None:
        events = [chunk({"content": "zero"}, index=0), chunk({"content": "one"}, index=1)]
        self.assertEqual(fed("openai", events)["content"], "zero")

    def test_tool_call_pieces_are_merged_by_index(self) -> None:
        events = [
            chunk({"tool_calls": [tool_call(1, id="b", type="function", function={"name": "g", "arguments": "[1"})]}),
            chunk({"tool_calls": [tool_call(0, id="a", function={"name": "f", "arguments": ""})]}),
            chunk({"tool_calls": [tool_call(1, function={"arguments": "]"}), tool_call(0, function={"arguments": "{}"})]}),
        ]
        self.assertEqual(
            fed("openai", events)["tool_calls"],
            [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "g", "arguments": "[1]"}},
            ],
        )

    def test_tool_calls_without_index_are_told_apart_by_id(self) -> None:
        events = [
            chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}),
            chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
            chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "[]"}}]}),
        ]
        self.assertEqual(
            [call["function"] for call in fed("openai", events)["tool_calls"]],
            [{"name": "f", "arguments": "{}"}, {"name": "g", "arguments": "[]"}],
        )

    def test_refusal_deltas_are_concatenated(self) -> None:
        events = [chunk({"content": None, "refusal": "I can"}), chunk({"refusal": "not."})]
        self.assertEqual(
            fed("openai", events), {"role": "assistant", "content": None, "refusal": "I cannot."}
        )

    def test_responses_api_deltas_and_items_without_completion(self) -> None:
        item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
        events = [
            event("response.output_text.delta", {"delta": "Hel"}),
            event("response.output_text.delta", {"delta": "lo"}),
            event("response.output_item.done", {"output_index": 1, "item": item}),
        ]
        self.assertEqual(
            fed("openai", events), {"role": "assistant", "content": "Hello", "output": [item]}
        )

    def test_responses_api_events_are_recognised_without_event_names(self) -> None:
        events = [ServerSentEvent("message", json.dumps({"type": "response.output_text.delta", "delta": "x"}))]
        self.assertEqual(fed("openai", events), {"role": "assistant", "content": "x", "output": []})

    def test_an_incomplete_response_gives_its_output(self) -> None:
        output = [{"type": "message", "content": [{"type": "output_text", "text": "cut"}]}]
        events = [event("response.incomplete", {"response": {"object": "response", "output": output}})]
        self.assertEqual(fed("openai", events), {"role": "assistant", "content": "cut", "output": output})


class StreamAnswerAnthropicTests(SynchronousTestCase):
    """
    The rules for Anthropic content block events.
    """

    def start(self, index: int, block: dict[str, Any]) -> ServerSentEvent:
        return event("content_block_start", {"index": index, "content_block": block})

    def delta(self, index: int, delta: dict[str, Any]) -> ServerSentEvent:
        return event("content_block_delta", {"index": index, "delta": delta})

    def test_nothing_seen_is_none(self) -> None:
        self.assertIsNone(StreamAnswer("anthropic").result())
        self.assertIsNone(fed("anthropic", [event("ping", {})]))

    def test_message_start_alone_gives_no_blocks(self) -> None:
        events = [event("message_start", {"message": {"role": "assistant", "content": []}})]
        self.assertEqual(fed("anthropic", events), {"role": "assistant", "content": []})

    def test_blocks_come_out_in_index_order(self) -> None:
        events = [
            self.start(1, {"type": "text", "text": ""}),
            self.start(0, {"type": "text", "text": ""}),
            self.delta(1, {"type": "text_delta", "text": "second"}),
            self.delta(0, {"type": "text_delta", "text": "first"}),
        ]
        self.assertEqual(
            [block["text"] for block in fed("anthropic", events)["content"]], ["first", "second"]
        )

    def test_tool_input_that_does_not_parse_is_kept_raw(self) -> None:
        events = [
            self.start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
            self.delta(0, {"type": "input_json_delta", "partial_json": '{"a": '}),
            event("content_block_stop", {"index": 0}),
        ]
        self.assertEqual(fed("anthropic", events)["content"][0]["input"], '{"a": ')

    def test_tool_without_input_deltas_keeps_its_empty_input(self) -> None:
        events = [
            self.start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
            self.delta(0, {"type": "input_json_delta", "partial_json": ""}),
            event("content_block_stop", {"index": 0}),
        ]
        self.assertEqual(
            fed("anthropic", events)["content"],
            [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        )

    def test_citations_are_appended(self) -> None:
        citation = {"type": "char_location", "cited_text": "x"}
        events = [
            self.start(0, {"type": "text", "text": "", "citations": []}),
            self.delta(0, {"type": "citations_delta", "citation": citation}),
            self.delta(0, {"type": "text_delta", "text": "x"}),
        ]
        self.assertEqual(
            fed("anthropic", events)["content"],
            [{"type": "text", "text": "x", "citations": [citation]}],
        )

    def test_a_whole_block_without_deltas_is_kept_as_it_started(self) -> None:
        block = {"type": "redacted_thinking", "data": "opaque"}
        self.assertEqual(fed("anthropic", [self.start(0, block)])["content"], [block])

    def test_deltas_for_unknown_blocks_or_of_unknown_types_are_ignored(self) -> None:
        events = [
            self.start(0, {"type": "text", "text": ""}),
            self.delta(3, {"type": "text_delta", "text": "lost"}),
            self.delta(0, {"type": "future_delta", "text": "lost"}),
            self.delta(0, {"type": "text_delta", "text": "kept"}),
        ]
        self.assertEqual(fed("anthropic", events)["content"], [{"type": "text", "text": "kept"}])

    def test_events_without_names_are_recognised_by_their_type(self) -> None:
        events = [
            ServerSentEvent("message", json.dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ServerSentEvent("message", json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})),
        ]
        self.assertEqual(fed("anthropic", events)["content"], [{"type": "text", "text": "x"}])

    def test_a_cut_stream_gives_what_arrived(self) -> None:
        events = events_of(anthropic_events("this answer will be cut", "claude-fake"))[:5]
        self.assertEqual(
            fed("anthropic", events),
            {"role": "assistant", "content": [{"type": "text", "text": "this answer"}]},
        )


class StreamAnswerResultTests(SynchronousTestCase):
    """
    The result is the caller's to keep: changing it changes nothing inside.
    """

    def test_changing_a_result_does_not_change_the_next(self) -> None:
        for provider, chunks in (
            ("anthropic", anthropic_events("a b", "claude-fake")),
            ("openai", openai_chunks("a b", "gpt-fake", False)),
        ):
            stream = StreamAnswer(provider)
            for each in events_of(chunks):
                stream.feed(each)
            first = stream.result()
            assert first is not None
            if provider == "anthropic":
                first["content"][0]["text"] = "changed"
            first["content"] = "changed"
            self.assertNotEqual(stream.result(), first)

    def test_responses_api_result_is_a_copy(self) -> None:
        output = [{"type": "message", "content": [{"type": "output_text", "text": "x"}]}]
        stream = StreamAnswer("openai")
        stream.feed(event("response.completed", {"response": {"output": output}}))
        stream.result()["output"][0]["content"].clear()
        self.assertEqual(stream.result()["content"], "x")


class StreamAnswerCostTests(SynchronousTestCase):
    """
    Events that add nothing to the answer are skipped without parsing.
    """

    def setUp(self) -> None:
        self.parsed: list[str] = []
        real = json.loads

        class CountingJSON:
            @staticmethod
            def loads(data: Any) -> Any:
                self.parsed.append(data)
                return real(data)

        self.patch(answer_module, "json", CountingJSON)
        # Event data is parsed by the event itself, once for all readers.
        self.patch(sse_module, "fastjson", CountingJSON)

    def test_anthropic_ping_message_delta_and_message_stop_are_not_parsed(self) -> None:
        fed("anthropic", [event("ping", {}), event("message_delta", {"usage": {}}), event("message_stop", {})])
        self.assertEqual(self.parsed, [])

    def test_openai_done_and_uninteresting_responses_events_are_not_parsed(self) -> None:
        fed(
            "openai",
            [
                ServerSentEvent("message", "[DONE]"),
                event("response.created", {"response": {}}),
                event("response.function_call_arguments.delta", {"delta": "{"}),
                event("response.reasoning_summary_text.delta", {"delta": "x"}),
            ],
        )
        self.assertEqual(self.parsed, [])

    def test_each_chat_chunk_is_parsed_once(self) -> None:
        events = events_of(openai_chunks("one two three", "gpt-fake", True))
        fed("openai", events)
        self.assertEqual(len(self.parsed), len(events) - 1)


class StreamAnswerRobustnessTests(SynchronousTestCase):
    """
    Malformed events are ignored, whatever they hold.
    """

    def test_malformed_and_wrongly_typed_events_are_ignored(self) -> None:
        for provider in ("openai", "anthropic"):
            events = [
                ServerSentEvent("message", "{"),
                ServerSentEvent("message", "[1, 2]"),
                ServerSentEvent("message", "\x00"),
                ServerSentEvent("content_block_start", '{"index": [], "content_block": {}}'),
                ServerSentEvent("content_block_delta", '{"index": {}, "delta": []}'),
                ServerSentEvent("message", '{"choices": [1, {"delta": 5}, {"index": 0, "delta": {"content": 5, "tool_calls": [1, {"index": "x", "function": 3}]}}]}'),
                ServerSentEvent("message", '{"type": "response.output_item.done", "output_index": "0", "item": {}}'),
                ServerSentEvent("message", '{"usage": ' + "[" * 100000 + "]" * 100000 + "}"),
            ]
            stream = StreamAnswer(provider)
            for each in events:
                stream.feed(each)
            result = stream.result()
            self.assertTrue(result is None or isinstance(result, dict))


_KEYS = st.sampled_from(
    [
        "type", "index", "delta", "choices", "role", "content", "tool_calls", "id", "function",
        "name", "arguments", "refusal", "content_block", "text", "partial_json", "thinking",
        "signature", "citation", "citations", "input", "message", "response", "output",
        "output_index", "item",
    ]
)
_NAMES = st.sampled_from(
    [
        "message", "message_start", "content_block_start", "content_block_delta",
        "content_block_stop", "response.output_text.delta", "response.output_item.done",
        "response.completed", "text_delta", "input_json_delta", "thinking_delta",
        "signature_delta", "citations_delta", "output_text", "function",
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=False)
    | st.text(max_size=8) | _NAMES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=12,
)
_EVENTS = st.one_of(
    st.builds(ServerSentEvent, st.text(max_size=20) | _NAMES, st.text(max_size=60)),
    st.builds(
        lambda name, document: ServerSentEvent(name, json.dumps(document)),
        _NAMES,
        st.dictionaries(_KEYS, _JSON, max_size=6),
    ),
)


class StreamAnswerPropertyTests(SynchronousTestCase):
    """
    No event, however strange, makes either reader raise.
    """

    @settings(max_examples=50, deadline=None)
    @given(
        events=st.lists(_EVENTS, max_size=10),
        provider=st.sampled_from(["openai", "anthropic"]),
    )
    def test_arbitrary_events_never_raise(self, events: list[ServerSentEvent], provider: str) -> None:
        result = fed(provider, events)
        self.assertTrue(result is None or isinstance(result, dict))
        json.dumps(result)  # trace files write it as JSON

    @settings(max_examples=40, deadline=None)
    @given(
        body=st.binary(max_size=60)
        | st.dictionaries(_KEYS, _JSON, max_size=6).map(lambda document: json.dumps(document).encode())
    )
    def test_arbitrary_bodies_never_raise(self, body: bytes) -> None:
        for provider in ("openai", "anthropic"):
            result = answer_from_body(provider, body)
            self.assertTrue(result is None or isinstance(result, dict))
