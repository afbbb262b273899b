"""
Tests for :mod:`llmgate.sse`: the WHATWG event stream interpretation rules,
chunking anywhere, the memory bound, and real provider streams.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmgate.sse import (
    DEFAULT_MAX_LINE_LENGTH,
    SSEError,
    SSEParser,
    ServerSentEvent,
)


def parse(
    *chunks: bytes, max_line_length: int = DEFAULT_MAX_LINE_LENGTH
) -> list[ServerSentEvent]:
    """
    Feed ``chunks`` in order to a new parser and return every event.
    """
    parser = SSEParser(max_line_length)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def bytewise(stream: bytes) -> list[bytes]:
    """
    The stream as one-byte chunks, the worst split there is.
    """
    return [stream[i : i + 1] for i in range(len(stream))]


def message(
    data: str, id: str | None = None, retry: int | None = None
) -> ServerSentEvent:
    """
    An event with the default name.
    """
    return ServerSentEvent("message", data, id, retry)


class DispatchTests(SynchronousTestCase):
    """
    Blank lines dispatch what the field lines before them collected.
    """

    def test_data_line_then_blank_line_dispatches_a_message_event(self) -> None:
        self.assertEqual(parse(b"data: hello\n\n"), [message("hello")])

    def test_event_field_names_the_event(self) -> None:
        self.assertEqual(
            parse(b"event: ping\ndata: {}\n\n"), [ServerSentEvent("ping", "{}")]
        )

    def test_empty_event_field_means_message(self) -> None:
        self.assertEqual(parse(b"event:\ndata: x\n\n"), [message("x")])

    def test_data_lines_are_joined_with_newlines(self) -> None:
        self.assertEqual(parse(b"data: a\ndata:\ndata: b\n\n"), [message("a\n\nb")])

    def test_empty_data_field_dispatches_an_event_with_empty_data(self) -> None:
        self.assertEqual(parse(b"data:\n\n"), [message("")])

    def test_block_without_data_is_not_dispatched(self) -> None:
        self.assertEqual(parse(b"event: ping\nid: 1\nretry: 5\n\n"), [])

    def test_event_name_resets_after_dispatch(self) -> None:
        self.assertEqual(
            parse(b"event: a\ndata: 1\n\ndata: 2\n\n"),
            [ServerSentEvent("a", "1"), message("2")],
        )

    def test_event_name_resets_after_block_that_is_not_dispatched(self) -> None:
        self.assertEqual(parse(b"event: a\n\ndata: 2\n\n"), [message("2")])

    def test_extra_blank_lines_dispatch_nothing(self) -> None:
        self.assertEqual(parse(b"\n\n\ndata: x\n\n\n\n"), [message("x")])

    def test_several_events_in_one_chunk_are_returned_in_order(self) -> None:
        self.assertEqual(
            parse(b"data: 1\n\ndata: 2\n\ndata: 3\n\n"),
            [message("1"), message("2"), message("3")],
        )

    def test_each_chunk_returns_the_events_it_completes(self) -> None:
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: 1\n\ndata: 2"), [message("1")])
        self.assertEqual(parser.feed(b"\n"), [])
        self.assertEqual(parser.feed(b"\ndata: 3\n\n"), [message("2"), message("3")])


class FieldTests(SynchronousTestCase):
    """
    How a line becomes a field name and value.
    """

    def test_comment_lines_are_ignored(self) -> None:
        self.assertEqual(
            parse(b": keep-alive\ndata: x\n:data: y\n\n: bye\n\n"), [message("x")]
        )

    def test_comment_alone_between_blank_lines_dispatches_nothing(self) -> None:
        self.assertEqual(parse(b":\n\n: ping\n\n"), [])

    def test_field_without_colon_has_an_empty_value(self) -> None:
        self.assertEqual(parse(b"data\ndata\n\n"), [message("\n")])

    def test_one_leading_space_after_the_colon_is_stripped(self) -> None:
        self.assertEqual(parse(b"data:  two\n\n"), [message(" two")])

    def test_value_without_space_after_colon_is_kept_whole(self) -> None:
        self.assertEqual(parse(b"data:x\n\n"), [message("x")])

    def test_value_keeps_later_colons_and_trailing_spaces(self) -> None:
        self.assertEqual(parse(b"data: a: b \n\n"), [message("a: b ")])

    def test_unknown_fields_are_ignored(self) -> None:
        self.assertEqual(parse(b"foo: bar\ndata: x\nbaz\n\n"), [message("x")])

    def test_field_names_are_case_sensitive(self) -> None:
        self.assertEqual(parse(b"Data: x\nEVENT: y\n\n"), [])

    def test_space_before_the_colon_is_part_of_the_name(self) -> None:
        self.assertEqual(parse(b"data : x\n\n"), [])


class IdTests(SynchronousTestCase):
    """
    ``id`` is the stream's last event ID, which persists between events.
    """

    def test_id_is_reported_on_the_event(self) -> None:
        self.assertEqual(parse(b"id: 7\ndata: x\n\n"), [message("x", id="7")])

    def test_event_without_any_id_has_none(self) -> None:
        self.assertEqual(parse(b"data: x\n\n")[0].id, None)

    def test_id_persists_to_later_events(self) -> None:
        self.assertEqual(
            parse(b"id: 7\ndata: x\n\ndata: y\n\n"),
            [message("x", id="7"), message("y", id="7")],
        )

    def test_id_in_a_block_that_is_not_dispatched_still_applies(self) -> None:
        self.assertEqual(parse(b"id: 3\n\ndata: y\n\n"), [message("y", id="3")])

    def test_empty_id_resets_the_last_event_id(self) -> None:
        self.assertEqual(
            parse(b"id: 7\ndata: x\n\nid\ndata: y\n\n"),
            [message("x", id="7"), message("y", id="")],
        )

    def test_id_containing_nul_is_ignored(self) -> None:
        self.assertEqual(
            parse(b"id: 1\n\nid: 2\x003\ndata: x\n\n"), [message("x", id="1")]
        )

    def test_parser_exposes_the_last_event_id(self) -> None:
        parser = SSEParser()
        parser.feed(b"id: abc\n")
        self.assertEqual(parser.last_event_id, "abc")


class RetryTests(SynchronousTestCase):
    """
    ``retry`` counts only when it is all ASCII digits.
    """

    def test_retry_of_ascii_digits_is_reported_on_its_event(self) -> None:
        self.assertEqual(
            parse(b"retry: 3000\ndata: x\n\n"), [message("x", retry=3000)]
        )

    def test_retry_with_leading_zeros_is_base_ten(self) -> None:
        self.assertEqual(parse(b"retry: 0010\ndata: x\n\n")[0].retry, 10)

    def test_retry_belongs_only_to_its_own_event(self) -> None:
        self.assertEqual(
            parse(b"retry: 5\ndata: x\n\ndata: y\n\n"),
            [message("x", retry=5), message("y")],
        )

    def test_retry_that_is_not_all_ascii_digits_is_ignored(self) -> None:
        for value in [b"", b"-1", b"+1", b"1.5", b"10a", b" 10", b"10 ", b"\xd9\xa1"]:
            parser = SSEParser()
            events = parser.feed(b"retry: " + value + b"\ndata: x\n\n")
            self.assertEqual(events, [message("x")], value)
            self.assertIsNone(parser.retry, value)

    def test_invalid_retry_does_not_undo_a_valid_one(self) -> None:
        self.assertEqual(
            parse(b"retry: 5\nretry: x\ndata: x\n\n"), [message("x", retry=5)]
        )

    def test_retry_with_more_digits_than_int_accepts_is_ignored(self) -> None:
        parser = SSEParser()
        self.assertEqual(
            parser.feed(b"retry: " + b"9" * 100_000 + b"\ndata: x\n\n"), [message("x")]
        )

    def test_retry_in_a_block_that_is_not_dispatched_sets_the_stream_retry(
        self,
    ) -> None:
        parser = SSEParser()
        self.assertEqual(parser.feed(b"retry: 250\n\n"), [])
        self.assertEqual(parser.retry, 250)


class LineEndingTests(SynchronousTestCase):
    """
    CRLF, LF and CR each end a line, wherever the chunks split.
    """

    def test_lf_crlf_and_cr_line_endings_are_equivalent(self) -> None:
        expected = [ServerSentEvent("e", "a\nb", "1"), message("c", id="1")]
        for eol in [b"\n", b"\r\n", b"\r"]:
            lines = [b"event: e", b"id: 1", b"data: a", b"data: b", b"", b"data: c"]
            stream = eol.join(lines) + eol + eol
            self.assertEqual(parse(stream), expected, eol)
            self.assertEqual(parse(*bytewise(stream)), expected, eol)

    def test_mixed_line_endings_in_one_stream(self) -> None:
        self.assertEqual(
            parse(b"data: a\rdata: b\r\ndata: c\n\r\n"), [message("a\nb\nc")]
        )

    def test_crlf_split_across_chunks_is_one_line_break(self) -> None:
        self.assertEqual(parse(b"data: a\r", b"\ndata: b\n\n"), [message("a\nb")])

    def test_empty_chunk_between_cr_and_lf_keeps_them_one_line_break(self) -> None:
        self.assertEqual(
            parse(b"data: a\r", b"", b"\n", b"data: b\n\n"), [message("a\nb")]
        )

    def test_cr_ending_a_chunk_dispatches_without_waiting_for_more(self) -> None:
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: a\r\r"), [message("a")])
        self.assertEqual(parser.feed(b"\ndata: b\n\n"), [message("b")])

    def test_cr_then_crlf_is_two_line_breaks(self) -> None:
        self.assertEqual(parse(b"data: a\r", b"\r\n"), [message("a")])

    def test_lf_then_cr_is_two_line_breaks(self) -> None:
        self.assertEqual(parse(b"data: a\n", b"\r"), [message("a")])

    def test_stream_ending_in_cr_is_complete(self) -> None:
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: a\r\r"), [message("a")])
        self.assertFalse(parser.pending)


class ChunkingTests(SynchronousTestCase):
    """
    A chunk may end anywhere, even inside a character.
    """

    def test_line_split_mid_line(self) -> None:
        self.assertEqual(parse(b"da", b"ta: hel", b"lo\n", b"\n"), [message("hello")])

    def test_field_name_split_at_the_colon(self) -> None:
        self.assertEqual(parse(b"data", b":", b" x\n\n"), [message("x")])

    def test_multibyte_character_split_across_chunks(self) -> None:
        euro = "\u20ac".encode("utf-8")
        self.assertEqual(
            parse(b"data: " + euro[:1], euro[1:2], euro[2:] + b"\n\n"),
            [message("\u20ac")],
        )

    def test_long_line_in_many_small_chunks(self) -> None:
        value = b"x" * 50_000
        chunks = [value[i : i + 7] for i in range(0, len(value), 7)]
        self.assertEqual(
            parse(b"data: ", *chunks, b"\n\n"), [message(value.decode("ascii"))]
        )


class DecodingTests(SynchronousTestCase):
    """
    UTF-8 with one leading BOM; invalid bytes are replaced, never raised.
    """

    def test_leading_bom_is_stripped(self) -> None:
        self.assertEqual(parse(b"\xef\xbb\xbfdata: x\n\n"), [message("x")])

    def test_leading_bom_split_across_chunks_is_stripped(self) -> None:
        self.assertEqual(
            parse(b"\xef", b"\xbb", b"", b"\xbf", b"data: x\n\n"), [message("x")]
        )

    def test_only_the_first_bom_is_stripped(self) -> None:
        self.assertEqual(parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"), [])

    def test_bom_after_the_start_of_the_stream_is_not_stripped(self) -> None:
        self.assertEqual(
            parse(b"data: x\n\n", b"\xef\xbb\xbfdata: y\n\n"), [message("x")]
        )

    def test_bom_inside_a_value_is_kept(self) -> None:
        self.assertEqual(parse(b"data: \xef\xbb\xbfx\n\n"), [message("\ufeffx")])

    def test_partial_bom_that_is_not_a_bom_stays_in_the_first_line(self) -> None:
        parser = SSEParser()
        self.assertEqual(parser.feed(b"\xef\xbb"), [])
        self.assertTrue(parser.pending)
        self.assertEqual(parser.feed(b"\n\n"), [])
        self.assertFalse(parser.pending)
        self.assertEqual(parser.feed(b"data: x\n\n"), [message("x")])

    def test_invalid_utf8_is_replaced(self) -> None:
        self.assertEqual(parse(b"data: a\xffb\xfe\n\n"), [message("a\ufffdb\ufffd")])

    def test_truncated_character_at_the_end_of_a_line_is_replaced(self) -> None:
        self.assertEqual(
            parse(b"data: \xe2\x82\ndata: ok\n\n"),
            [message(b"\xe2\x82".decode("utf-8", "replace") + "\nok")],
        )

    def test_invalid_utf8_in_event_name_and_id_is_replaced(self) -> None:
        self.assertEqual(
            parse(b"event: \xff\nid: \xc3\ndata: x\n\n"),
            [ServerSentEvent("\ufffd", "x", "\ufffd")],
        )

    def test_non_ascii_text_is_decoded(self) -> None:
        self.assertEqual(
            parse("event: \u00e9v\ndata: \u65e5\u672c \U0001f600\n\n".encode("utf-8")),
            [ServerSentEvent("\u00e9v", "\u65e5\u672c \U0001f600")],
        )


class EndOfStreamTests(SynchronousTestCase):
    """
    An event not ended by a blank line is discarded, but not silently.
    """

    def test_close_discards_an_incomplete_event_and_reports_it_pending(self) -> None:
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: x\n"), [])
        self.assertTrue(parser.pending)
        self.assertEqual(parser.close(), [])
        self.assertTrue(parser.pending)

    def test_partial_line_is_pending(self) -> None:
        parser = SSEParser()
        parser.feed(b"data: x\n\ndata: y")
        self.assertTrue(parser.pending)

    def test_partial_comment_line_is_pending(self) -> None:
        parser = SSEParser()
        parser.feed(b": keep")
        self.assertTrue(parser.pending)

    def test_field_without_data_is_pending(self) -> None:
        parser = SSEParser()
        parser.feed(b"event: done\n")
        self.assertTrue(parser.pending)

    def test_complete_stream_is_not_pending(self) -> None:
        parser = SSEParser()
        parser.feed(b"data: x\n\n")
        self.assertFalse(parser.pending)
        self.assertEqual(parser.close(), [])

    def test_complete_comment_after_the_last_event_is_not_pending(self) -> None:
        parser = SSEParser()
        parser.feed(b"data: x\n\n: bye\n")
        self.assertFalse(parser.pending)

    def test_new_parser_is_not_pending(self) -> None:
        parser = SSEParser()
        self.assertFalse(parser.pending)
        self.assertEqual(parser.feed(b""), [])
        self.assertFalse(parser.pending)


class LineLengthTests(SynchronousTestCase):
    """
    ``max_line_length`` bounds the memory one stream can take.
    """

    def test_default_max_line_length_is_16_mib(self) -> None:
        self.assertEqual(SSEParser().max_line_length, 16 * 1024 * 1024)

    def test_sserror_is_a_value_error(self) -> None:
        self.assertTrue(issubclass(SSEError, ValueError))

    def test_line_of_exactly_max_line_length_is_accepted(self) -> None:
        self.assertEqual(
            parse(b"data: 1234\n\n", max_line_length=10), [message("1234")]
        )

    def test_complete_line_longer_than_max_line_length_raises(self) -> None:
        self.assertRaises(SSEError, SSEParser(10).feed, b"data: 12345\n\n")

    def test_partial_line_longer_than_max_line_length_raises_before_its_break(
        self,
    ) -> None:
        self.assertRaises(SSEError, SSEParser(10).feed, b"data: 12345")

    def test_long_line_fed_in_small_chunks_raises(self) -> None:
        parser = SSEParser(10)
        for chunk in bytewise(b"data: 1234"):
            parser.feed(chunk)
        self.assertRaises(SSEError, parser.feed, b"5")

    def test_line_break_does_not_count_toward_the_length(self) -> None:
        self.assertEqual(
            parse(*bytewise(b"data: 1234\r\n\r\n"), max_line_length=10),
            [message("1234")],
        )

    def test_leading_bom_does_not_count_toward_the_length(self) -> None:
        self.assertEqual(
            parse(b"\xef\xbb\xbfdata: 1234\n\n", max_line_length=10), [message("1234")]
        )

    def test_parser_stays_failed_after_sserror(self) -> None:
        parser = SSEParser(10)
        self.assertRaises(SSEError, parser.feed, b"data: 1234567890\n")
        self.assertRaises(SSEError, parser.feed, b"\ndata: x\n\n")

    def test_many_short_lines_in_one_long_chunk_are_accepted(self) -> None:
        stream = b"data: 1234\n\n" * 100
        self.assertEqual(parse(stream, max_line_length=10), [message("1234")] * 100)


def openai_stream() -> bytes:
    """
    A streamed chat completion as the OpenAI API sends it.
    """
    chunks = []
    deltas = [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo \u2014 w\u00f6rld"},
        {},
    ]
    for i, delta in enumerate(deltas):
        chunks.append(
            {
                "id": "chatcmpl-9abc",
                "object": "chat.completion.chunk",
                "created": 1718000000,
                "model": "gpt-4o-mini",
                "system_fingerprint": "fp_1",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": "stop" if i == len(deltas) - 1 else None,
                    }
                ],
            }
        )
    body = b"".join(b"data: " + json.dumps(c).encode("utf-8") + b"\n\n" for c in chunks)
    return body + b"data: [DONE]\n\n"


def anthropic_stream() -> bytes:
    """
    A streamed message as the Anthropic API sends it, with ``event:`` lines.
    """
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-3-5-sonnet",
                "usage": {"input_tokens": 12, "output_tokens": 1},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        },
        {"type": "ping"},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": " \u4e16\u754c"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]
    return b"".join(
        b"event: %s\ndata: %s\n\n"
        % (data["type"].encode("ascii"), json.dumps(data, ensure_ascii=False).encode())
        for data in events
    )


class ProviderStreamTests(SynchronousTestCase):
    """
    Real provider streams parse the same whole or byte by byte.
    """

    def test_openai_stream_fed_byte_by_byte_matches_fed_whole(self) -> None:
        stream = openai_stream()
        whole = parse(stream)
        self.assertEqual(parse(*bytewise(stream)), whole)
        self.assertEqual(len(whole), 5)
        self.assertEqual({e.event for e in whole}, {"message"})
        self.assertEqual(whole[-1], message("[DONE]"))
        deltas = [json.loads(e.data)["choices"][0]["delta"] for e in whole[:-1]]
        text = "".join(delta.get("content", "") for delta in deltas)
        self.assertEqual(text, "Hello \u2014 w\u00f6rld")

    def test_anthropic_stream_fed_byte_by_byte_matches_fed_whole(self) -> None:
        stream = anthropic_stream()
        whole = parse(stream)
        self.assertEqual(parse(*bytewise(stream)), whole)
        self.assertEqual(
            [e.event for e in whole],
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ],
        )
        for event in whole:
            self.assertEqual(json.loads(event.data)["type"], event.event)

    def test_anthropic_stream_with_crlf_fed_byte_by_byte_matches_lf(self) -> None:
        stream = anthropic_stream()
        crlf = stream.replace(b"\n", b"\r\n")
        self.assertEqual(parse(*bytewise(crlf)), parse(stream))


def reference(stream: bytes) -> tuple[list[ServerSentEvent], str | None, int | None]:
    """
    A direct transcription of the spec over the whole decoded stream: slow,
    obviously right, for comparison.
    """
    text = stream.decode("utf-8-sig", "replace")
    lines = re.split("\r\n|\r|\n", text)[:-1]  # the last piece never ended
    events = []
    data, kind, last_id, retry, event_retry = "", "", None, None, None
    for line in lines:
        if line == "":
            if data:
                events.append(
                    ServerSentEvent(kind or "message", data[:-1], last_id, event_retry)
                )
            data, kind, event_retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = event_retry = int(value)
    return events, last_id, retry


#: Lines built from field names, separators, values and line breaks, so
#: that most examples dispatch events; plus loose fragments and raw bytes.
_lines = st.tuples(
    st.sampled_from(
        [b"data", b"event", b"id", b"retry", b"", b"\xef\xbb\xbf", b"Data"]
    ),
    st.sampled_from([b"", b":", b": ", b":  "]),
    st.one_of(
        st.sampled_from(
            [b"", b"x", b"12", b"1a", b"\x00", b"\xe2\x82\xac", b"\xe2\x82", b"\xff"]
        ),
        st.binary(max_size=4),
    ),
    st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n", b"\r\r", b""]),
).map(b"".join)
_fragments = st.sampled_from(
    [b"data", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\r\n", b"x",
     b"12", b"\x00", b"\xef\xbb\xbf", b"\xe2\x82\xac", b"\xe2\x82", b"\xff"]
)
_structured = st.lists(_lines, max_size=12).map(b"".join)
_streams = st.one_of(
    _structured,
    _structured,
    st.lists(st.one_of(_fragments, st.binary(max_size=3)), max_size=40).map(b"".join),
    st.binary(max_size=60),
)


def _split(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    """
    ``stream`` cut at ``cuts`` (clamped, deduplicated); the first or last
    piece may be empty, which a parser must also accept.
    """
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces: list[bytes] = []
    start = 0
    for point in points + [len(stream)]:
        pieces.append(stream[start:point])
        start = point
    return pieces


def _run(
    chunks: list[bytes], limit: int
) -> tuple[list[ServerSentEvent], bool, SSEParser]:
    """
    Feed ``chunks`` until the end or an SSEError; anything else propagates.

    :return: the events, whether SSEError stopped it, and the parser.
    """
    parser = SSEParser(limit)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        try:
            events.extend(parser.feed(chunk))
        except SSEError:
            return events, True, parser
    events.extend(parser.close())
    return events, False, parser


class PropertyTests(SynchronousTestCase):
    """
    Any bytes, split anywhere: nothing but SSEError, and the split never shows.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        stream=_streams,
        cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=10),
        limit=st.sampled_from([6, 20, DEFAULT_MAX_LINE_LENGTH]),
    )
    def test_any_bytes_split_anywhere_parse_the_same_and_raise_only_sserror(
        self, stream: bytes, cuts: list[int], limit: int
    ) -> None:
        whole, whole_failed, one = _run([stream], limit)
        split, split_failed, many = _run(_split(stream, cuts), limit)
        self.assertEqual(split_failed, whole_failed)
        if not whole_failed:
            self.assertEqual(split, whole)
            self.assertEqual(many.pending, one.pending)
            self.assertEqual(many.last_event_id, one.last_event_id)
            self.assertEqual(many.retry, one.retry)

    @settings(max_examples=200, deadline=None)
    @given(stream=_streams)
    def test_any_bytes_fed_byte_by_byte_match_the_spec_transcription(
        self, stream: bytes
    ) -> None:
        events, failed, parser = _run(bytewise(stream), DEFAULT_MAX_LINE_LENGTH)
        self.assertFalse(failed)
        state = (events, parser.last_event_id, parser.retry)
        self.assertEqual(state, reference(stream))


class EventJSONTests(SynchronousTestCase):
    def test_data_is_parsed_once_for_every_reader(self) -> None:
        from llmgate import sse as sse_module

        parsed: list[str] = []
        real = sse_module.fastjson.loads

        class CountingJSON:
            @staticmethod
            def loads(data: str) -> object:
                parsed.append(data)
                return real(data)

        self.patch(sse_module, "fastjson", CountingJSON)
        event = ServerSentEvent("message", '{"a": 1}')
        self.assertIs(event.json(), event.json())
        self.assertEqual(event.json(), {"a": 1})
        broken = ServerSentEvent("message", "{")
        self.assertRaises(ValueError, broken.json)
        self.assertRaises(ValueError, broken.json)
        self.assertEqual(parsed, ['{"a": 1}', "{"])
        self.assertEqual(event, ServerSentEvent("message", '{"a": 1}'))
