"""
Tests for llmgate.pool: which failed requests are sent again.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import RequestNotSent, ResponseFailed, ResponseNeverReceived

from llmgate.forward import BytesProducer
from llmgate.pool import _StaleConnectionRetry


class StaleRetryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.retry = _StaleConnectionRetry(None, None, self.clock)
        self.retry._sent_at = self.clock.seconds()

    def never_received(self, *reasons: Exception) -> ResponseNeverReceived:
        return ResponseNeverReceived([Failure(reason) for reason in reasons])

    def test_a_post_on_a_connection_found_closed_at_once_is_retried(self) -> None:
        self.clock.advance(0.01)
        self.assertTrue(
            self.retry._shouldRetry(b"POST", self.never_received(ConnectionDone()), BytesProducer(b"{}"))
        )
        self.assertTrue(
            self.retry._shouldRetry(b"POST", RequestNotSent(), BytesProducer(b"{}"))
        )

    def test_a_post_that_failed_after_the_upstream_had_time_to_work_is_not(self) -> None:
        self.clock.advance(5)
        self.assertFalse(
            self.retry._shouldRetry(b"POST", self.never_received(ConnectionLost()), BytesProducer(b"{}"))
        )

    def test_a_cancelled_request_is_never_retried(self) -> None:
        self.assertFalse(
            self.retry._shouldRetry(b"GET", self.never_received(CancelledError()), None)
        )

    def test_other_failures_are_not_retried(self) -> None:
        self.assertFalse(
            self.retry._shouldRetry(b"POST", self.never_received(ConnectionRefusedError()), BytesProducer(b""))
        )
        self.assertFalse(
            self.retry._shouldRetry(b"POST", ResponseFailed([Failure(ConnectionDone())]), BytesProducer(b""))
        )

    def test_a_body_that_cannot_be_replayed_is_not_retried(self) -> None:
        class OneShot:
            length = 2

        self.assertFalse(
            self.retry._shouldRetry(b"POST", self.never_received(ConnectionDone()), OneShot())
        )

    def test_idempotent_requests_without_body_are_retried_as_twisted_does(self) -> None:
        self.clock.advance(30)
        self.assertTrue(self.retry._shouldRetry(b"GET", self.never_received(ConnectionLost()), None))
