"""
Unit tests of the live view's index: what it keeps of a trace, the messages a
call added, bounds, and keeping current as files come and go.  The thread
hop is replaced by a synchronous call; time is a ``Clock``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmgate.middleware.live import Hub
from llmgate.ui.index import TraceIndex
from llmgate.ui.stats import MinuteStats
from llmgate.ui.summary import added_messages, parse_timestamp, summarize
from llmgate.ui.watch import PollWatcher

BASE = 1_800_000_000.0


def at_once(function: Any, *args: Any) -> Any:
    return succeed(function(*args))


def trace(
    call_id: str,
    when: float,
    session: str | None = "s1",
    messages: list[dict[str, Any]] | None = None,
    answer: str = "fine",
    **extra: Any,
) -> dict[str, Any]:
    stamp = _stamp(when)
    document = {
        "id": call_id,
        "timestamp": stamp,
        "provider": "openai",
        "model": "gpt-x",
        "session_id": session,
        "session_decision": "continued",
        "request": {
            "method": "POST",
            "path": "/v1/chat/completions",
            "body": {
                "model": "gpt-x",
                "messages": messages or [{"role": "user", "content": f"question {call_id}"}],
            },
        },
        "response": {"status": 200, "message": {"role": "assistant", "content": answer}},
        "usage": {"input_tokens": 10, "output_tokens": 3},
        "duration_ms": 12.5,
        "ttfb_ms": 4.0,
    }
    document.update(extra)
    return document


def _stamp(when: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


def write(directory: str, document: dict[str, Any]) -> str:
    import time

    when = parse_timestamp(document["timestamp"])
    assert when is not None
    name = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".000000Z-{document['id']}.json"
    with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    return name


class SummaryTests(SynchronousTestCase):
    def test_a_trace_is_summarised_with_tokens_timings_and_decision(self) -> None:
        document = trace("c1", BASE + 0.25, upstream="primary", attempts=[{"outcome": "refused"}, {"outcome": "answered"}])
        call = summarize(document, "f.json")
        assert call is not None
        self.assertEqual(call.time, BASE + 0.25)
        self.assertEqual((call.session_id, call.model, call.path), ("s1", "gpt-x", "/v1/chat/completions"))
        self.assertEqual((call.tokens_in, call.tokens_out, call.status), (10, 3, 200))
        self.assertEqual((call.duration_ms, call.ttfb_ms, call.decision), (12.5, 4.0, "continued"))
        self.assertEqual((call.upstream, call.attempts), ("primary", 2))
        self.assertEqual(call.preview, "question c1")
        self.assertFalse(call.failed)

    def test_what_is_not_a_trace_is_skipped(self) -> None:
        for document in (None, [], {"id": 1}, {"id": "x", "timestamp": "yesterday"}):
            self.assertIsNone(summarize(document, "f.json"))

    def test_a_strange_trace_still_gives_a_summary(self) -> None:
        call = summarize(
            {"id": "x", "timestamp": _stamp(BASE), "request": "??", "usage": {"input_tokens": "9"},
             "error": {"kind": "upstream_timeout", "message": "upstream timed out"}},
            "f.json",
        )
        assert call is not None
        self.assertEqual((call.tokens_in, call.error), (0, "upstream timed out"))
        self.assertTrue(call.failed)

    def test_a_first_call_adds_its_whole_opening_and_the_answer(self) -> None:
        document = trace(
            "c1", BASE,
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        )
        self.assertEqual(
            [(m["role"], m["text"]) for m in added_messages(document)],
            [("system", "be brief"), ("user", "hello"), ("assistant", "fine")],
        )

    def test_a_later_call_adds_what_follows_the_last_answer(self) -> None:
        document = trace(
            "c2", BASE,
            messages=[
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "t", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "t", "content": "a.txt"},
                {"role": "user", "content": [{"type": "text", "text": "<script>alert(1)</script>"}]},
            ],
        )
        self.assertEqual(
            [(m["role"], m["kind"], m["text"]) for m in added_messages(document)],
            [("tool", "tool_result", "a.txt"), ("user", "text", "<script>alert(1)</script>"),
             ("assistant", "text", "fine")],
        )

    def test_anthropic_blocks_become_tool_calls_and_results(self) -> None:
        document = trace(
            "c3", BASE,
            messages=[
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "name": "read", "input": {"p": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "data"}]}]},
            ],
        )
        document["request"]["body"]["system"] = "sys"
        document["response"]["message"] = {
            "role": "assistant",
            "content": [{"type": "text", "text": "done"}, {"type": "tool_use", "name": "w", "input": {}}],
        }
        self.assertEqual(
            [(m["kind"], m["text"]) for m in added_messages(document)],
            [("tool_result", "data"), ("text", "done"), ("tool_call", "w({})")],
        )


class IndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.directory))
        self.clock = Clock()
        self.hub = Hub()
        self.heard: list[tuple[str, dict[str, Any]]] = []
        self.hub.subscribe(lambda kind, data: self.heard.append((kind, data)))

    def index(self, **kwargs: Any) -> TraceIndex:
        index = TraceIndex(self.clock, self.directory, at_once, hub=self.hub, **kwargs)
        self.successResultOf(index.load())
        return index

    def test_loading_groups_calls_into_sessions_most_recent_first(self) -> None:
        write(self.directory, trace("a1", BASE, "A"))
        write(self.directory, trace("b1", BASE + 1, "B"))
        write(self.directory, trace("a2", BASE + 2, "A", error={"kind": "x", "message": "boom"}))
        write(self.directory, trace("n1", BASE + 3, None))
        with open(os.path.join(self.directory, "junk.json"), "w") as handle:
            handle.write("{not json")
        index = self.index()
        total, sessions = index.find_sessions()
        self.assertEqual(total, 3)
        self.assertEqual([s.id for s in sessions], ["call-n1", "A", "B"])
        a = index.sessions["A"]
        self.assertEqual((len(a.calls), a.tokens_in, a.errors, a.first, a.last), (2, 20, 1, BASE, BASE + 2))
        self.assertTrue(index.sessions["call-n1"].sessionless)
        self.assertIn("junk.json", index.skipped)
        # the first load is not published call by call: once, when done
        self.assertEqual([kind for kind, _ in self.heard], ["ready"])

    def test_the_filter_looks_at_id_model_and_text_and_pages(self) -> None:
        for n in range(5):
            write(self.directory, trace(f"c{n}", BASE + n, f"S{n}", messages=[{"role": "user", "content": f"topic {n % 2}"}]))
        index = self.index()
        self.assertEqual([s.id for s in index.find_sessions("topic 1")[1]], ["S3", "S1"])
        self.assertEqual(index.find_sessions("s4")[0], 1)
        self.assertEqual(index.find_sessions(model="gpt-x", offset=1, limit=2)[1][0].id, "S3")
        self.assertEqual(index.find_sessions(model="other")[0], 0)

    def test_only_the_newest_max_calls_files_are_read_and_more_evict_the_oldest(self) -> None:
        for n in range(6):
            write(self.directory, trace(f"c{n}", BASE + n, "S"))
        index = self.index(max_calls=4)
        self.assertEqual(sorted(index.calls), ["c2", "c3", "c4", "c5"])
        name = write(self.directory, trace("c6", BASE + 6, "S"))
        index.file_added(name)
        self.clock.advance(1)
        self.assertEqual(sorted(index.calls), ["c3", "c4", "c5", "c6"])
        self.assertEqual(index.sessions["S"].first, BASE + 3)
        self.assertEqual([k for k, _ in self.heard], ["ready", "call_indexed"])

    def test_sessions_beyond_max_sessions_go_least_recent_first(self) -> None:
        write(self.directory, trace("a1", BASE, "A"))
        write(self.directory, trace("b1", BASE + 1, "B"))
        write(self.directory, trace("a2", BASE + 2, "A"))
        write(self.directory, trace("c1", BASE + 3, "C"))
        index = self.index(max_sessions=2)
        self.assertEqual(sorted(index.sessions), ["A", "C"])
        self.assertEqual(sorted(index.calls), ["a1", "a2", "c1"])

    def test_a_call_out_of_order_takes_its_place_in_the_session(self) -> None:
        write(self.directory, trace("late", BASE + 5, "S"))
        index = self.index()
        index.file_added(write(self.directory, trace("early", BASE + 1, "S")))
        self.clock.advance(1)
        self.assertEqual(index.sessions["S"].calls, ["early", "late"])
        self.assertEqual(index.sessions["S"].last, BASE + 5)

    def test_a_removed_file_leaves_the_index(self) -> None:
        first = write(self.directory, trace("a1", BASE, "A"))
        write(self.directory, trace("a2", BASE + 1, "A"))
        index = self.index()
        index.file_removed(first)
        self.assertEqual(index.sessions["A"].calls, ["a2"])
        self.assertEqual(index.sessions["A"].tokens_in, 10)
        index.file_removed(write(self.directory, trace("zz", BASE, "Z")))  # never indexed
        self.assertNotIn("Z", index.sessions)

    def test_a_session_page_reads_each_calls_messages(self) -> None:
        write(self.directory, trace("a1", BASE, "A", messages=[{"role": "user", "content": "first"}]))
        write(self.directory, trace("a2", BASE + 1, "A", messages=[
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "fine"},
            {"role": "user", "content": "second"}]))
        index = self.index()
        calls = self.successResultOf(index.session_calls("A"))
        self.assertEqual(
            [[m["text"] for m in c["messages"] if m["role"] == "user"] for c in calls],
            [["first"], ["second"]],
        )
        self.assertNotIn("file", calls[0])
        self.assertIsNone(index.session_calls("nope"))
        self.assertEqual(self.successResultOf(index.read_call("a2"))["id"], "a2")

    def test_a_call_of_this_process_is_indexed_at_its_end_and_its_file_is_not_read(self) -> None:
        index = self.index()
        own = summarize(trace("own1", BASE, "A"), "unused")
        assert own is not None
        own.file = None
        index.add_own(own)
        self.assertEqual(index.sessions["A"].calls, ["own1"])
        self.assertIsNone(self.successResultOf(index.read_call("own1")))
        self.assertEqual(self.successResultOf(index.session_calls("A"))[0]["missing"], True)
        # its file lands: noted by name, never opened (this one holds garbage)
        name = "20270115T080000.000000Z-own1.json"
        with open(os.path.join(self.directory, name), "w") as handle:
            handle.write("not json")
        index.file_added(name)
        self.assertEqual((own.file, index.by_file), (name, {name: "own1"}))
        self.assertEqual([kind for kind, _ in self.heard], ["ready", "call_indexed"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_poll_finds_new_and_removed_files(self) -> None:
        gone = write(self.directory, trace("a1", BASE, "A"))
        index = self.index()
        watcher = PollWatcher(index, self.clock, 2.0)
        watcher.start()
        write(self.directory, trace("b1", BASE + 1, "B"))
        os.unlink(os.path.join(self.directory, gone))
        self.clock.advance(2)  # the listing
        self.clock.advance(1)  # the read of the new file
        self.assertEqual(sorted(index.sessions), ["B"])
        watcher.stop()

    def test_inotify_is_read_once_per_interval_not_once_per_file(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from llmgate.ui.watch import REST_SECONDS, INotifyWatcher

        reactor = MemoryReactorClock()
        index = self.index()
        self.successResultOf(index.load())
        watcher = INotifyWatcher(index, reactor)
        watcher.start()
        notifier = watcher.notifier
        self.assertIn(notifier, reactor.readers)

        def land(document: dict[str, Any]) -> None:  # by a rename, as the trace writes
            aside = tempfile.mkdtemp(dir=self.directory)
            name = write(aside, document)
            os.replace(os.path.join(aside, name), os.path.join(self.directory, name))
            os.rmdir(aside)

        land(trace("a1", BASE, "A"))
        notifier.doRead()
        self.assertNotIn(notifier, reactor.readers)  # resting
        land(trace("b1", BASE + 1, "B"))
        reactor.advance(REST_SECONDS)
        self.assertIn(notifier, reactor.readers)
        notifier.doRead()  # both files' events in one read
        self.clock.advance(1)  # the index reads the files
        self.assertEqual(sorted(index.sessions), ["A", "B"])
        watcher.stop()
        self.assertEqual(reactor.getDelayedCalls(), [])


class StatsTests(SynchronousTestCase):
    def test_the_last_hour_counts_calls_tokens_and_latency_per_minute(self) -> None:
        stats = MinuteStats()
        start = 60 * 30_000_000.0
        for n in range(100):
            call = summarize(trace(f"c{n}", start + 10, duration_ms=float(n + 1)), "f")
            assert call is not None
            stats.add(call)
        old = summarize(trace("old", start - 3 * 3600), "f")
        assert old is not None
        stats.add(old)
        hour = stats.last_hour(start + 30)
        self.assertEqual(len(hour["minutes"]), 60)
        self.assertEqual(hour["minutes"][-1], start)
        self.assertEqual((hour["calls"][-1], hour["tokens_in"][-1], hour["tokens_out"][-1]), (100, 1000, 300))
        self.assertEqual((hour["p50"][-1], hour["p90"][-1], hour["p99"][-1]), (50.0, 90.0, 99.0))
        self.assertEqual(sum(hour["calls"]), 100)
        self.assertIsNone(hour["p50"][0])
