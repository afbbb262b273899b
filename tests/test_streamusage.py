"""
Tests for llmgate.streamusage: asking for stream usage unseen by the client.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from llmgate.streamusage import UsageChunkHider, request_usage
from tests.fakeupstream import openai_chunks


def with_usage_nulls(events: list[bytes]) -> list[bytes]:
    """
    What OpenAI sends when usage is asked: ``"usage":null`` in every chunk.
    """
    result = []
    for event in events:
        if event.startswith(b"data: {") and b'"usage"' not in event:
            document = json.loads(event[6:])
            document["usage"] = None
            event = b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"
        result.append(event)
    return result


class RequestTests(SynchronousTestCase):
    def test_usage_is_asked_for_a_chat_stream_that_did_not_ask(self) -> None:
        body = json.loads(request_usage(b"/v1/chat/completions", {"stream": True, "model": "m"}))
        self.assertEqual(body["stream_options"], {"include_usage": True})
        self.assertEqual(body["model"], "m")

    def test_nothing_changes_when_the_client_asked_or_did_not_stream(self) -> None:
        asked = {"stream": True, "stream_options": {"include_usage": True}}
        self.assertIsNone(request_usage(b"/v1/chat/completions", asked))
        self.assertIsNone(request_usage(b"/v1/chat/completions", {"stream": False}))
        self.assertIsNone(request_usage(b"/v1/embeddings", {"stream": True}))


class HiderTests(SynchronousTestCase):
    def test_the_client_gets_exactly_the_stream_it_would_have_got(self) -> None:
        plain = openai_chunks("a few words", "m", usage=False)
        compact = [
            b"data: " + json.dumps(json.loads(e[6:]), separators=(",", ":")).encode() + b"\n\n"
            if e.startswith(b"data: {") else e
            for e in plain
        ]
        sent = with_usage_nulls(
            [
                b"data: " + json.dumps(json.loads(e[6:]), separators=(",", ":")).encode() + b"\n\n"
                if e.startswith(b"data: {") else e
                for e in openai_chunks("a few words", "m", usage=True)
            ]
        )
        wire = b"".join(sent)
        for size in (1, 7, 64, len(wire)):
            hider = UsageChunkHider()
            out = b"".join(hider(wire[i : i + size]) for i in range(0, len(wire), size))
            out += hider.flush()
            self.assertEqual(out, b"".join(compact), size)

    def test_streams_without_usage_pass_unchanged(self) -> None:
        wire = b"".join(openai_chunks("hello there", "m", usage=False))
        hider = UsageChunkHider()
        self.assertEqual(hider(wire) + hider.flush(), wire)
