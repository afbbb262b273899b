"""
Tests for the trace middleware's document, file handling and limits,
without a reactor: the writer thread's work is called directly.
"""

from __future__ import annotations

import errno
import json
import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llmgate.config import ConfigError, parse
from llmgate.exchange import Exchange, RequestRecord, ResponseRecord
from llmgate.middleware import MiddlewareContext
from llmgate.middleware import trace as trace_module
from llmgate.middleware.trace import TraceMiddleware, build
from llmgate.redact import Scrubber
from llmgate.sse import SSEParser
from tests.fakeupstream import anthropic_events, openai_completion

CANARY_KEY = "sk-canary-upstream-7f3a9c"


def exchange(streaming: bool = False, body: bytes = b"", events: list | None = None) -> Exchange:
    request_body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi " + CANARY_KEY}]}
    ).encode()
    result = Exchange(
        id="ab" * 16,
        provider="anthropic" if streaming else "openai",
        request=RequestRecord(
            method=b"POST",
            uri=b"/v1/chat/completions?x=1",
            headers=Headers(
                {
                    b"authorization": [b"Bearer client-token-canary"],
                    b"x-api-key": [b"client-token-canary"],
                    b"cookie": [b"a=b"],
                    b"content-type": [b"application/json"],
                }
            ),
            body=request_body,
        ),
        received=10.0,
    )
    record = ResponseRecord(
        status=200,
        headers=[(b"content-type", [b"application/json"]), (b"set-cookie", [b"s=1"])],
        streaming=streaming,
    )
    record.body += body
    record.body_size = len(body)
    record.events = events or []
    record.event_count = len(record.events)
    result.response = record
    result.upstream_headers_at = 10.1
    result.first_byte_at = 10.2
    result.ended_at = 10.5
    result.session_id = "sess_1"
    result.usage = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    return result


class TraceDocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.trace = TraceMiddleware(
            MemoryReactorClock(), self.directory, scrubber=Scrubber([CANARY_KEY])
        )
        self.addCleanup(self.trace._stop_pool)

    def write(self, ex: Exchange) -> tuple[str, dict]:
        path = self.trace._write(self.trace._snapshot(ex))
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return text, json.loads(text)

    def test_a_plain_answer_has_every_documented_field(self) -> None:
        body = json.dumps(openai_completion("the answer", "m")).encode()
        _, document = self.write(exchange(body=body))
        self.assertEqual(document["request"]["method"], "POST")
        self.assertEqual(document["request"]["path"], "/v1/chat/completions")
        self.assertEqual(document["request"]["query"], "x=1")
        self.assertEqual(document["request"]["body"]["model"], "m")
        self.assertEqual(document["response"]["status"], 200)
        self.assertEqual(document["response"]["body"]["object"], "chat.completion")
        self.assertEqual(document["response"]["message"]["content"], "the answer")
        self.assertEqual(document["session_id"], "sess_1")
        self.assertEqual(document["provider"], "openai")
        self.assertEqual(document["model"], "m")
        self.assertEqual(document["usage"]["total_tokens"], 3)
        self.assertEqual(document["duration_ms"], 500.0)
        self.assertEqual(document["ttfb_ms"], 200.0)
        self.assertNotIn("error", document)

    def test_a_stream_keeps_every_event_and_the_reassembled_message(self) -> None:
        parser = SSEParser()
        events = parser.feed(b"".join(anthropic_events("streamed words here", "claude")))
        _, document = self.write(exchange(streaming=True, events=events))
        self.assertEqual(len(document["response"]["events"]), len(events))
        self.assertEqual(document["response"]["events"][0]["event"], "message_start")
        self.assertEqual(
            document["response"]["message"]["content"][0]["text"], "streamed words here"
        )

    def test_credentials_never_reach_the_file(self) -> None:
        text, document = self.write(exchange(body=b"{}"))
        self.assertNotIn(CANARY_KEY, text)
        self.assertNotIn("client-token-canary", text)
        headers = document["request"]["headers"]
        self.assertEqual(headers["authorization"], ["[redacted]"])
        self.assertEqual(headers["x-api-key"], ["[redacted]"])
        self.assertEqual(headers["cookie"], ["[redacted]"])
        self.assertEqual(document["response"]["headers"]["set-cookie"], ["[redacted]"])

    def test_bodies_over_the_limit_are_cut_with_a_marker(self) -> None:
        self.trace.max_body_size = 10
        _, document = self.write(exchange(body=b"x" * 100))
        self.assertEqual(document["response"]["body"], "x" * 10)
        self.assertEqual(document["response"]["body_truncated"], {"size": 100, "kept": 10})
        self.assertIn("body_truncated", document["request"])

    def test_a_key_across_the_cut_leaves_none_of_itself(self) -> None:
        limit = self.trace.max_body_size = 40
        for start in range(limit - len(CANARY_KEY), limit + 1):
            body = b"a" * start + CANARY_KEY.encode() + b"b" * 100
            with self.subTest(start=start):
                text, document = self.write(exchange(body=body))
                self.assertIn("body_truncated", document["response"])
                self.assertNotIn(CANARY_KEY[:4], text)

    def test_headers_and_bodies_are_left_out_when_their_flags_say_so(self) -> None:
        self.trace.include_headers = False
        self.trace.include_body = False
        _, document = self.write(exchange(body=b"{}"))
        self.assertNotIn("headers", document["request"])
        self.assertNotIn("body", document["request"])
        self.assertNotIn("body", document["response"])

    def test_a_failed_call_records_its_error(self) -> None:
        ex = exchange()
        ex.response = None
        ex.error, ex.error_kind = "upstream unreachable", "upstream_refused"
        _, document = self.write(ex)
        self.assertEqual(document["error"], {"kind": "upstream_refused", "message": "upstream unreachable"})
        self.assertIsNone(document["response"])

    def test_a_client_closing_after_the_end_is_a_note_not_an_error(self) -> None:
        ex = exchange()
        ex.stream_ended = ex.closed_after_end = True
        _, document = self.write(ex)
        self.assertNotIn("error", document)
        self.assertEqual(document["note"], "client closed after the end of the stream")

    def test_files_are_named_by_time_and_id_and_written_atomically(self) -> None:
        first = exchange()
        second = exchange()
        second.id = "cd" * 16
        path1 = self.trace._write(self.trace._snapshot(first))
        path2 = self.trace._write(self.trace._snapshot(second))
        self.assertNotEqual(path1, path2)
        self.assertTrue(os.path.basename(path1).endswith("ab" * 16 + ".json"))
        self.assertEqual(sorted(os.listdir(self.directory)), sorted([os.path.basename(path1), os.path.basename(path2)]))

    def test_max_files_keeps_only_the_newest(self) -> None:
        self.trace.max_files = 2
        paths = []
        for index in range(4):
            ex = exchange()
            ex.id = f"{index:032x}"
            paths.append(self.trace._write(self.trace._snapshot(ex)))
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(os.path.basename(p) for p in paths[2:]))

    def test_max_age_removes_traces_older_than_it(self) -> None:
        self.trace.max_age_seconds = 100
        old, new = exchange(), exchange()
        old.id, new.id = "01" * 16, "02" * 16
        old_snap, new_snap = self.trace._snapshot(old), self.trace._snapshot(new)
        old_snap["wall_time"] -= 1000
        old_path = self.trace._write(old_snap)
        self.assertTrue(os.path.exists(old_path))
        new_path = self.trace._write(new_snap)
        self.assertEqual(os.listdir(self.directory), [os.path.basename(new_path)])

    def test_a_full_queue_drops_and_counts_instead_of_growing(self) -> None:
        self.trace.pending = self.trace.max_queue
        self.trace.exchange_finished(exchange())
        self.assertEqual(self.trace.dropped, 1)
        self.assertEqual(self.trace.state()["dropped"], 1)


class TraceConfigTests(SynchronousTestCase):
    def context(self) -> MiddlewareContext:
        return MiddlewareContext(reactor=MemoryReactorClock(), config=parse({}))

    def test_an_unwritable_directory_is_a_start_up_error_naming_it(self) -> None:
        blocker = self.mktemp()
        open(blocker, "w").close()
        directory = os.path.join(blocker, "traces")
        with self.assertRaises(ConfigError) as caught:
            build({"directory": directory}, self.context())
        self.assertIn(directory, str(caught.exception))
        self.assertIn("directory", str(caught.exception))

    def test_unknown_options_are_errors(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            build({"directory": self.mktemp(), "dirs": 1}, self.context())
        self.assertIn("dirs", str(caught.exception))


class TraceRenderingTests(SynchronousTestCase):
    """
    Documents are built and serialised on the reactor thread, on a later
    turn and in bounded slices; the writer thread gets bytes only.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.trace = TraceMiddleware(self.clock, self.mktemp(), scrubber=Scrubber([CANARY_KEY]))
        self.handed: list[list[tuple[str, bytes, float]]] = []
        # Stand in for the writer thread: record what it would be given.
        self.trace._thread = object()  # type: ignore[assignment]
        self.trace._queue = _Recorder(self.handed)  # type: ignore[assignment]

    def finish(self, count: int) -> None:
        for index in range(count):
            ex = exchange(body=b"{}")
            ex.id = f"{index:032x}"
            self.trace.exchange_finished(ex)

    def test_nothing_is_rendered_until_the_answer_is_out(self) -> None:
        self.finish(1)
        self.assertEqual(self.handed, [])
        self.assertEqual(self.trace.pending, 1)
        self.clock.advance(0)
        # Rendered, and gathering for the writer thread.
        self.assertEqual(self.handed, [])
        self.clock.advance(trace_module.GATHER_SECONDS)
        [[(name, data, _)]] = self.handed
        self.assertTrue(name.endswith(f"{0:032x}.json"))
        document = json.loads(data)
        self.assertEqual(document["request"]["body"]["model"], "m")
        self.assertNotIn(CANARY_KEY.encode(), data)

    def test_a_burst_is_rendered_in_slices_across_turns(self) -> None:
        self.patch(trace_module, "RENDER_SLICE", -1.0)
        self.finish(3)
        [turn] = self.clock.getDelayedCalls()
        self.clock.calls.remove(turn)
        self.trace._render_some()
        self.assertEqual(len(self.trace._ready), 1)
        [later] = [c for c in self.clock.getDelayedCalls() if c.getTime() == self.clock.seconds()]
        self.clock.advance(0)
        self.assertEqual(len(self.trace._ready), 3)
        # The three go to the writer thread together, in one wake-up.
        self.clock.advance(trace_module.GATHER_SECONDS)
        self.assertEqual([len(batch) for batch in self.handed], [3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_renders_and_hands_over_everything_at_once(self) -> None:
        self.patch(trace_module, "RENDER_SLICE", -1.0)
        self.finish(3)
        self.trace.close()
        self.assertEqual([len(batch) for batch in self.handed], [3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_document_that_cannot_be_rendered_is_a_counted_failure(self) -> None:
        def broken(snapshot: object) -> dict:
            raise RuntimeError("no")

        self.patch(self.trace, "_document", broken)
        self.finish(1)
        self.clock.advance(1)
        self.assertEqual(self.handed, [])
        self.assertEqual((self.trace.failed, self.trace.pending), (1, 0))


class _Recorder:
    def __init__(self, into: list) -> None:
        self.into = into

    def put(self, item: object) -> None:
        self.into.append(item)


class StoreTests(SynchronousTestCase):
    """
    Both ways a trace file is made whole before it has its name.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.trace = TraceMiddleware(reactor=MemoryReactorClock(), directory=self.directory)
        self.addCleanup(self.trace._close_directory)

    def written(self) -> list[str]:
        return sorted(os.listdir(self.directory))

    def test_unnamed_files_where_the_platform_has_them(self) -> None:
        if not self.trace.unnamed_files:
            self.skipTest("no O_TMPFILE or no /proc here")
        path = self.trace._write(self.trace._snapshot(exchange()))
        self.assertTrue(self.trace.unnamed_files)
        self.assertEqual(self.written(), [os.path.basename(path)])
        self.assertEqual(json.loads(open(path, "rb").read())["id"], "ab" * 16)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644 & ~_umask())

    def test_a_file_system_without_them_falls_back_to_a_rename(self) -> None:
        calls = []

        def refuse(path: str, flags: int, mode: int = 0o777) -> int:
            if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
                calls.append(path)
                raise OSError(errno.EOPNOTSUPP, "not supported")
            return real_open(path, flags, mode)

        real_open = os.open
        self.trace.unnamed_files = True
        self.patch(os, "open", refuse)
        first = self.trace._write(self.trace._snapshot(exchange()))
        second = exchange()
        second.id = "cd" * 16
        self.trace._write(self.trace._snapshot(second))
        self.assertEqual(len(calls), 1)  # asked once, then never again
        self.assertFalse(self.trace.unnamed_files)
        self.assertEqual(len(self.written()), 2)
        self.assertIn(os.path.basename(first), self.written())

    def test_an_existing_name_is_a_failure_not_an_overwrite(self) -> None:
        rendered = self.trace._render(self.trace._snapshot(exchange()))
        path = self.trace._store(rendered)
        with open(path, "wb") as handle:
            handle.write(b"first")
        self.assertRaises(FileExistsError, self.trace._store, rendered)
        self.assertEqual(open(path, "rb").read(), b"first")
        self.assertEqual(self.written(), [os.path.basename(path)])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
