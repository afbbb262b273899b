"""
Tests for the printer middleware: one line per request and per response,
format fields kept for JSON logs, bodies only with ``log_body``, cut to
``max_body_chars``, and never a credential.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from llmgate.middleware.printer import PrinterMiddleware, _preview
from llmgate.redact import Scrubber
from tests.fakeupstream import openai_completion
from tests.test_trace import CANARY_KEY, exchange


class PrinterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, printer: PrinterMiddleware) -> list[str]:
        ex = exchange(body=json.dumps(openai_completion("the answer", "m")).encode())
        printer.request_received(ex)
        printer.exchange_finished(ex)
        return [
            formatEvent(e) for e in self.events if "printer" in e.get("log_namespace", "")
        ]

    def test_one_line_each_way_with_fields(self) -> None:
        request, response = self.lines(PrinterMiddleware())
        self.assertTrue(request.startswith("-> POST /v1/chat/completions model=m stream=False"))
        self.assertTrue(response.startswith("<- 200 POST /v1/chat/completions 500.0ms ttfb="))
        fields = [e for e in self.events if "printer" in e.get("log_namespace", "")]
        self.assertEqual(fields[0]["model"], "m")
        self.assertEqual(fields[1]["status"], 200)
        self.assertNotIn("body", fields[0])

    def test_bodies_only_with_log_body_cut_and_scrubbed(self) -> None:
        # The canary sits well inside the preview: it must be scrubbed, not
        # merely cut off.
        printer = PrinterMiddleware(
            log_body=True, max_body_chars=200, scrubber=Scrubber([CANARY_KEY])
        )
        request, response = self.lines(printer)
        self.assertIn(" body=", request)
        self.assertIn("[redacted]", request)
        self.assertNotIn(CANARY_KEY, request + response)
        self.assertIn(" body=", response)

    def test_a_key_across_the_cut_leaves_none_of_itself(self) -> None:
        # Scrubbing after the cut would leave the key's first characters.
        limit = 40
        scrub = Scrubber([CANARY_KEY])
        for start in range(limit - len(CANARY_KEY), limit + 1):
            body = (b"a" * start + CANARY_KEY.encode() + b"b" * 100)
            with self.subTest(start=start):
                shown = _preview(body, limit, scrub)
                self.assertTrue(shown.endswith(f"... [{len(body)} bytes]"), shown)
                kept = shown.rsplit("... [", 1)[0]
                self.assertNotIn(CANARY_KEY[:4], kept)

    def test_each_direction_can_be_switched_off(self) -> None:
        self.assertEqual(self.lines(PrinterMiddleware(log_requests=False, log_responses=False)), [])
