"""
Tests for llmgate.http.deadlines: many timeouts of one length on one timer.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmgate.http.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.deadlines: Deadlines[str] = Deadlines(self.clock, 10.0, self.expired.append)

    def test_each_key_expires_its_own_length_after_it_started(self) -> None:
        self.deadlines.start("a")
        self.clock.advance(4)
        self.deadlines.start("b")
        self.clock.advance(5.5)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.5)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(3.5)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(0.5)
        self.assertEqual(self.expired, ["a", "b"])
        self.assertEqual(len(self.deadlines), 0)

    def test_a_stopped_key_never_expires(self) -> None:
        self.deadlines.start("a")
        self.deadlines.start("b")
        self.deadlines.stop("a")
        self.deadlines.stop("never started")
        self.clock.advance(10)
        self.assertEqual(self.expired, ["b"])

    def test_one_timer_whatever_the_number_of_keys(self) -> None:
        for index in range(100):
            self.deadlines.start(str(index))
            self.clock.advance(0.01)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for index in range(100):
            self.deadlines.stop(str(index))
        self.clock.advance(10)
        self.assertEqual(self.expired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_timer_is_armed_again_after_all_were_stopped(self) -> None:
        self.deadlines.start("a")
        self.deadlines.stop("a")
        self.clock.advance(7)
        self.deadlines.start("b")
        self.clock.advance(3)
        self.assertEqual(self.expired, [])
        self.clock.advance(7)
        self.assertEqual(self.expired, ["b"])

    def test_a_failing_expiry_is_logged_and_the_others_still_expire(self) -> None:
        def expired(key: str) -> None:
            if key == "bad":
                raise RuntimeError("boom")
            self.expired.append(key)

        deadlines: Deadlines[str] = Deadlines(self.clock, 1.0, expired)
        deadlines.start("bad")
        deadlines.start("good")
        self.clock.advance(1)
        self.assertEqual(self.expired, ["good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_close_forgets_every_deadline_and_the_timer(self) -> None:
        self.deadlines.start("a")
        self.deadlines.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.expired, [])
