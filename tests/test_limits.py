"""
Tests for llmgate.limits: the open-files limit raised at start, and the
concurrency cap's refusals reported once a minute.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.address import IPv4Address
from twisted.logger import LogLevel, Logger, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from llmgate.config import parse
from llmgate.limits import (
    OpenFiles,
    RefusalReport,
    descriptors_needed,
    log_open_files,
    raise_open_files_limit,
)
from llmgate.service import GatewayParts


class FakeRLimit:
    """
    The part of the ``resource`` module the limit code uses.
    """

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


class OpenFilesTests(SynchronousTestCase):
    def test_the_soft_limit_is_raised_to_the_hard_one(self) -> None:
        fake = FakeRLimit(1024, 524288)
        self.assertEqual(raise_open_files_limit(fake), OpenFiles(1024, 524288, 524288))
        self.assertEqual(fake.limits, (524288, 524288))

    def test_a_refusal_or_an_infinite_hard_limit_leaves_it_alone(self) -> None:
        self.assertEqual(
            raise_open_files_limit(FakeRLimit(1024, 4096, refuse=True)), OpenFiles(1024, 1024, 4096)
        )
        infinite = FakeRLimit(1024, resource.RLIM_INFINITY)
        self.assertEqual(raise_open_files_limit(infinite).soft, 1024)
        self.assertEqual(infinite.limits, (1024, resource.RLIM_INFINITY))

    def test_the_real_limit_ends_at_the_hard_limit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard == resource.RLIM_INFINITY or hard < 2:
            self.skipTest("no finite hard limit to raise to")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))
        result = raise_open_files_limit()
        self.assertEqual((result.before, result.soft), (hard // 2, hard))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))

    def said(self, limits: OpenFiles, max_concurrent: int = 1024) -> list[Any]:
        with capturedLogs() as events:
            log_open_files(limits, max_concurrent, 100, Logger())
        return list(events)

    def test_a_limit_below_what_the_cap_needs_is_a_warning(self) -> None:
        needed = descriptors_needed(1024, 100)
        self.assertGreater(needed, 2048)
        [event] = self.said(OpenFiles(1024, 1024, 1024))
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("server.max_concurrent", formatEvent(event))
        self.assertIn("LimitNOFILE", formatEvent(event))
        self.assertEqual(self.said(OpenFiles(1024, 1024, 1024), max_concurrent=0), [])

    def test_a_raised_limit_is_said_once_and_an_ample_one_not_at_all(self) -> None:
        [event] = self.said(OpenFiles(1024, 65536, 65536))
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertIn("1024 to 65536", formatEvent(event))
        self.assertEqual(self.said(OpenFiles(65536, 65536, 65536)), [])


class RefusalReportTests(SynchronousTestCase):
    def test_one_line_a_minute_while_calls_are_refused(self) -> None:
        clock = Clock()
        report = RefusalReport(clock, 1024)
        with capturedLogs() as events:
            for _ in range(5):
                report.refused()
            clock.advance(30)
            report.refused()
            self.assertEqual(len(events), 1)
            clock.advance(31)
            report.refused()
            self.assertEqual(len(events), 2)
            clock.advance(59)
            report.refused()
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("server.max_concurrent (1024) reached", lines[0])
        self.assertIn("6 call(s) refused with 503 in the last 61 s", lines[1])
        self.assertTrue(all(e["log_level"] == LogLevel.warn for e in events))

    def test_the_gateway_reports_its_refusals(self) -> None:
        reactor = MemoryReactorClock()
        parts = GatewayParts(parse({"server": {"max_concurrent": 1}}), reactor)
        parts.forwarder.open_calls["busy"] = object()  # type: ignore[assignment]
        with capturedLogs() as events:
            for _ in range(3):
                client = IPv4Address("TCP", "127.0.0.1", 1)
                transport = StringTransport(peerAddress=client)
                protocol = parts.site.buildProtocol(client)
                protocol.makeConnection(transport)
                protocol.dataReceived(b"GET /v1/models HTTP/1.0\r\nHost: g\r\n\r\n")
                self.assertTrue(transport.value().startswith(b"HTTP/1.0 503"))
                protocol.connectionLost(None)
        said = [formatEvent(e) for e in events if "max_concurrent" in formatEvent(e)]
        self.assertEqual(len(said), 1, said)
        self.assertEqual(parts.gateway.refused["overloaded"], 3)


class OncePerIntervalTests(SynchronousTestCase):
    def test_each_key_is_reported_at_once_then_once_an_interval_with_its_count(self) -> None:
        from llmgate.limits import OncePerInterval

        clock = Clock()
        due = OncePerInterval(clock, interval=60)
        self.assertEqual(due.due("a"), (0, 0.0))
        self.assertEqual(due.due("b"), (0, 0.0))
        clock.advance(30)
        self.assertIsNone(due.due("a"))
        self.assertIsNone(due.due("a"))
        clock.advance(30)
        self.assertEqual(due.due("a"), (3, 60.0))
        self.assertIsNone(due.due("a"))
        self.assertEqual(due.due("b"), (1, 60.0))
