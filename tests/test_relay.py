"""
Tests for llmgate.http.relay: the body protocol and push producer in one.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from llmgate.http.relay import ClientGone, ClientStalled, Relay, StreamIdle


class FakeConsumer:
    """
    The client's request, as far as the relay sees it.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer = None
        self.streaming = None
        self.unregistered = 0

    def registerProducer(self, producer, streaming) -> None:
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered += 1

    def write(self, data: bytes) -> None:
        self.written.append(data)


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.consumer = FakeConsumer()
        self.observed: list[bytes] = []
        self.relay = Relay(self.consumer, self.clock, 10.0, self.observed.append)
        self.upstream = StringTransport()
        self.relay.makeConnection(self.upstream)

    def test_it_registers_as_a_streaming_producer(self) -> None:
        self.assertIs(self.consumer.producer, self.relay)
        self.assertTrue(self.consumer.streaming)

    def test_each_chunk_is_written_at_once_and_then_observed(self) -> None:
        self.relay.dataReceived(b"data: 1\n\n")
        self.assertEqual(self.consumer.written, [b"data: 1\n\n"])
        self.relay.dataReceived(b"data: 2\n\n")
        self.assertEqual(self.consumer.written, [b"data: 1\n\n", b"data: 2\n\n"])
        self.assertEqual(self.observed, self.consumer.written)

    def test_a_slow_client_pauses_the_upstream(self) -> None:
        self.relay.pauseProducing()
        self.assertEqual(self.upstream.producerState, "paused")
        self.relay.resumeProducing()
        self.assertEqual(self.upstream.producerState, "producing")

    def test_a_clean_end_unregisters_and_fires_with_none(self) -> None:
        self.relay.connectionLost(Failure(ResponseDone()))
        self.assertIsNone(self.successResultOf(self.relay.done))
        self.assertIsNone(self.consumer.producer)

    def test_a_body_without_length_ending_with_the_connection_is_clean(self) -> None:
        self.relay.connectionLost(Failure(PotentialDataLoss()))
        self.assertIsNone(self.successResultOf(self.relay.done))

    def test_an_upstream_death_fires_with_the_reason(self) -> None:
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        reason = self.successResultOf(self.relay.done)
        self.assertIsInstance(reason, ResponseFailed)
        self.assertIsNone(self.consumer.producer)

    def test_a_client_going_away_stops_the_upstream_at_once(self) -> None:
        self.relay.stopProducing()
        self.assertEqual(self.upstream.producerState, "stopped")
        self.assertIsInstance(self.successResultOf(self.relay.done), ClientGone)
        # The channel is going away: the relay must not touch it.
        self.assertEqual(self.consumer.unregistered, 0)

    def test_stopping_twice_is_harmless(self) -> None:
        self.relay.stopProducing()
        self.relay.stop()
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertIsInstance(self.successResultOf(self.relay.done), ClientGone)

    def test_data_after_a_stop_is_not_written(self) -> None:
        self.relay.stop()
        self.relay.dataReceived(b"late")
        self.assertEqual(self.consumer.written, [])

    def test_silence_past_the_idle_timeout_ends_the_stream(self) -> None:
        self.clock.advance(9)
        self.assertNoResult(self.relay.done)
        self.clock.advance(1)
        reason = self.successResultOf(self.relay.done)
        self.assertIsInstance(reason, StreamIdle)
        self.assertEqual(self.upstream.producerState, "stopped")
        self.assertIsNone(self.consumer.producer)

    def test_each_chunk_restarts_the_idle_timer(self) -> None:
        for _ in range(5):
            self.clock.advance(8)
            self.relay.dataReceived(b"data: x\n\n")
        self.assertNoResult(self.relay.done)
        self.clock.advance(10)
        self.assertIsInstance(self.successResultOf(self.relay.done), StreamIdle)

    def test_time_paused_by_a_slow_client_does_not_count_as_idle(self) -> None:
        self.clock.advance(5)
        self.relay.pauseProducing()
        self.clock.advance(9)
        self.assertNoResult(self.relay.done)
        self.relay.resumeProducing()
        self.clock.advance(9)
        self.assertNoResult(self.relay.done)
        self.clock.advance(1)
        self.assertIsInstance(self.successResultOf(self.relay.done), StreamIdle)

    def test_a_client_reading_nothing_past_the_idle_timeout_ends_the_stream(self) -> None:
        self.relay.pauseProducing()
        self.clock.advance(9)
        self.assertNoResult(self.relay.done)
        self.clock.advance(1)
        reason = self.successResultOf(self.relay.done)
        self.assertIsInstance(reason, ClientStalled)
        self.assertIn("10s", str(reason))
        self.assertEqual(self.upstream.producerState, "stopped")
        self.assertIsNone(self.consumer.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pausing_again_does_not_give_the_client_more_time(self) -> None:
        self.relay.pauseProducing()
        self.clock.advance(6)
        self.relay.pauseProducing()
        self.clock.advance(4)
        self.assertIsInstance(self.successResultOf(self.relay.done), ClientStalled)

    def test_a_slow_client_that_keeps_reading_is_never_cut(self) -> None:
        for _ in range(20):
            self.relay.pauseProducing()
            self.clock.advance(9)
            self.relay.resumeProducing()
            self.relay.dataReceived(b"data: x\n\n")
        self.assertNoResult(self.relay.done)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_upstream_bytes_arriving_while_paused_do_not_excuse_the_client(self) -> None:
        self.relay.pauseProducing()
        for _ in range(3):
            self.clock.advance(3)
            self.relay.dataReceived(b"data: already sent\n\n")
        self.clock.advance(1)
        self.assertIsInstance(self.successResultOf(self.relay.done), ClientStalled)

    def test_no_timer_is_left_behind_after_the_end(self) -> None:
        self.relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
