"""
Tests for llmgate.logs: lines identical to Twisted's own observers, written
off the reactor thread, bounded, and flushed on demand.
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

from twisted.logger import LogLevel, Logger, LogPublisher, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from llmgate.config import LoggingConfig
from llmgate.logs import ClassicText, LogWriter, make_observer


def events_of(emit: Any) -> list[dict[str, Any]]:
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    emit(Logger(namespace="llmgate.test", observer=publisher))
    return seen


class ClassicTextTests(SynchronousTestCase):
    def test_lines_are_the_ones_twisted_writes(self) -> None:
        def emit(log: Logger) -> None:
            log.info("-> {method} {path} model={model} stream={stream}", method="POST",
                     path="/v1/chat", model=None, stream=True)
            log.warn("{count:05d} {ratio:.2f} {name!r} {name!s} {name!a} {{braces}}",
                     count=7, ratio=0.5, name="é")
            log.info("two\nlines {x}", x=1)
            log.error("no fields")
            log.info("{attribute.real} and {call()}", attribute=3, call=lambda: "called")
            log.info("{missing}")
            log.info("{bad:d}", bad="text")
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("it broke {x}", Failure(), x=2)

        text = ClassicText()
        for event in events_of(emit):
            self.assertEqual(text(event), formatEventAsClassicLogText(event), event["log_format"])

    def test_a_format_with_no_fields_and_one_without_format(self) -> None:
        text = ClassicText()
        event = {"log_format": None, "log_time": 0.0, "log_level": LogLevel.info,
                 "log_namespace": "x"}
        self.assertEqual(text(event), formatEventAsClassicLogText(event))


class LogWriterTests(SynchronousTestCase):
    def test_lines_reach_the_stream_from_the_writer_thread(self) -> None:
        written = threading.Event()
        threads: list[str] = []

        class Stream(io.StringIO):
            def flush(self) -> None:
                threads.append(threading.current_thread().name)
                written.set()

        stream = Stream()
        writer = LogWriter(stream, lambda event: event["line"])
        writer({"line": "one\n"})
        self.assertTrue(written.wait(10))
        writer.flush()
        self.assertEqual(stream.getvalue(), "one\n")
        self.assertIn("llmgate-log", threads)

    def test_past_the_bound_lines_are_dropped_and_the_drop_is_written(self) -> None:
        stream = io.StringIO()
        writer = LogWriter(stream, lambda event: event["line"], max_pending=2)
        writer._thread = threading.current_thread()  # no writer thread: pending stays
        for n in range(5):
            writer({"line": f"{n}\n"})
        writer.flush()
        self.assertEqual(stream.getvalue(), "0\n1\n[llmgate] 3 log lines dropped: output too slow\n")

    def test_a_broken_stream_does_not_raise(self) -> None:
        stream = io.StringIO()
        stream.close()
        writer = LogWriter(stream, lambda event: event["line"])
        writer._thread = threading.current_thread()
        writer({"line": "x\n"})
        writer.flush()
        self.assertEqual(writer._pending, type(writer._pending)())


class ObserverTests(SynchronousTestCase):
    def test_level_and_format_from_the_config(self) -> None:
        text, data = io.StringIO(), io.StringIO()
        observers = [
            make_observer(LoggingConfig(level="warn", format="text"), text),
            make_observer(LoggingConfig(level="info", format="json"), data),
        ]

        def emit(log: Logger) -> None:
            log.info("hello {who}", who="info")
            log.warn("hello {who}", who="warn")

        for event in events_of(emit):
            for observer in observers:
                observer(event)
        for observer in observers:
            observer.flush()  # type: ignore[attr-defined]
        self.assertNotIn("hello info", text.getvalue())
        self.assertIn("[llmgate.test#warn] hello warn", text.getvalue())
        records = [json.loads(line) for line in data.getvalue().split("\x1e") if line.strip()]
        self.assertEqual([r["who"] for r in records], ["info", "warn"])
