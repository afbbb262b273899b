"""
Tests for llmgate.forward, with no sockets: the client is ``treq.testing``'s
``StubTreq`` on the gateway's Klein resource, the upstream is the fake
upstream behind a ``RequestTraversalAgent``, and time is a
``MemoryReactorClock``.
"""

from __future__ import annotations

import re

import json
from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from zope.interface import implementer

from llmgate.app import Gateway
from llmgate.config import parse
from llmgate.exchange import LocalAnswer
from llmgate.forward import Forwarder
from llmgate.middleware import Middleware
from llmgate.pipeline import Pipeline
from llmgate.providers import provider_for
from tests.fakeupstream import FakeUpstream


class Harness:
    """
    A gateway between a StubTreq client and an in-memory upstream.
    """

    def __init__(
        self,
        agent: IAgent | None = None,
        middlewares: list[Any] | None = None,
        **llm: Any,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.upstream = FakeUpstream(self.clock, gap=0.01)
        self.upstream_agent = RequestTraversalAgent(self.upstream)
        llm.setdefault("base_url", "http://upstream.invalid")
        self.config = parse({"llm": llm})
        self.provider = provider_for(self.config.llm.type, self.config.llm.auth_header)
        self.pipeline = Pipeline(middlewares or [])
        self.forwarder = Forwarder.with_agents(
            agent or self.upstream_agent, self.config, self.pipeline, self.clock
        )
        gateway = Gateway(self.forwarder, lambda: {}, lambda: {})
        self.client = StubTreq(gateway.resource())

    def flush(self) -> None:
        for _ in range(5):
            self.upstream_agent.flush()
            self.client.flush()

    def run(self, d: Deferred, seconds: float = 1.0, step: float = 0.01) -> None:
        """
        Advance time and pump both sides until ``d`` fires.
        """
        elapsed = 0.0
        fired: list[bool] = []

        def mark(result: Any) -> Any:
            fired.append(True)
            return result

        d.addBoth(mark)
        self.flush()
        while not fired and elapsed < seconds:
            self.clock.advance(step)
            elapsed += step
            self.flush()

    def post(self, path: str, document: Any, **kwargs: Any) -> Any:
        d = self.client.post(
            "http://gateway.invalid" + path,
            data=json.dumps(document).encode(),
            headers=kwargs.pop("headers", {b"content-type": [b"application/json"]}),
            **kwargs,
        )
        self.run(d)
        return d

    def body(self, response: Any) -> bytes:
        d = response.content()
        self.run(d)
        return self.successResultOf_(d)

    @staticmethod
    def successResultOf_(d: Deferred) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "Deferred has not fired"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


@implementer(IAgent)
class ScriptedAgent:
    """
    An agent whose answers are given in advance: each item a Deferred or a
    Failure; the requests it received are kept.
    """

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[tuple[bytes, bytes, Any]] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.requests.append((method, uri, headers))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Failure):
            return fail(outcome)
        return outcome


class ForwardingTests(SynchronousTestCase):
    def test_a_plain_call_is_relayed_with_status_headers_and_body(self) -> None:
        harness = Harness()
        response = self.successResultOf(
            harness.post("/v1/chat/completions", {"model": "m", "messages": []})
        )
        self.assertEqual(response.code, 200)
        body = json.loads(harness.body(response))
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello from the fake upstream")
        self.assertEqual(harness.forwarder.open_calls, {})

    def test_the_path_and_query_reach_the_upstream_unchanged(self) -> None:
        harness = Harness(base_url="http://upstream.invalid/prefix")
        agent = ScriptedAgent(Deferred())
        harness.forwarder.upstreams["default"].agent = agent
        harness.client.get("http://gateway.invalid/v1/models?limit=2&x=%20y")
        harness.flush()
        self.assertEqual(
            agent.requests[0][:2],
            (b"GET", b"http://upstream.invalid/prefix/v1/models?limit=2&x=%20y"),
        )

    def test_an_injected_key_replaces_the_clients(self) -> None:
        harness = Harness(api_key="sk-real")
        harness.post(
            "/echo", {}, headers={b"authorization": [b"Bearer client"], b"x-api-key": [b"c"]}
        )
        seen = harness.upstream.seen[-1]
        self.assertEqual(seen.headers[b"authorization"], [b"Bearer sk-real"])
        self.assertNotIn(b"x-api-key", seen.headers)

    def test_the_exchange_records_timings_in_order(self) -> None:
        finished = []

        class Recorder(Middleware):
            def exchange_finished(self, exchange):
                finished.append(exchange)

        harness = Harness(middlewares=[Recorder()])
        response = self.successResultOf(
            harness.post("/v1/chat/completions", {"model": "m", "stream": True})
        )
        harness.body(response)
        [exchange] = finished
        self.assertLessEqual(exchange.received, exchange.upstream_headers_at)
        self.assertLessEqual(exchange.upstream_headers_at, exchange.first_byte_at)
        self.assertLessEqual(exchange.first_byte_at, exchange.ended_at)
        self.assertTrue(exchange.response.streaming)
        self.assertEqual(exchange.model, "m")
        self.assertGreater(exchange.response.event_count, 3)
        self.assertEqual(exchange.response.events[-1].data, "[DONE]")

    def test_with_nothing_observing_the_answer_is_relayed_but_not_kept(self) -> None:
        harness = Harness()
        response = self.successResultOf(
            harness.post("/v1/chat/completions", {"model": "m", "stream": True})
        )
        self.assertIn(b"data: [DONE]", harness.body(response))
        calls = []
        harness.forwarder.pipeline = Pipeline([])
        original = harness.forwarder.forward

        def forward(request: Any) -> Any:
            d = original(request)
            calls.extend(harness.forwarder.open_calls.values())
            return d

        harness.forwarder.forward = forward  # type: ignore[method-assign]
        harness.body(self.successResultOf(
            harness.post("/v1/chat/completions", {"model": "m", "stream": True})
        ))
        [call] = calls
        record = call.exchange.response
        self.assertGreater(record.body_size, 0)
        self.assertEqual((record.events, record.body, record.event_count), ([], b"", 0))
        self.assertIsNone(call.exchange.usage)
        self.assertIsNotNone(call.exchange.first_byte_at)

    def test_exchange_ids_are_32_hex_digits_and_never_repeat(self) -> None:
        from llmgate.exchange import new_exchange_id

        ids = [new_exchange_id() for _ in range(10_000)]
        self.assertEqual(len(set(ids)), len(ids))
        hex_digits = re.compile(r"[0-9a-f]{32}")
        self.assertEqual([i for i in ids if not hex_digits.fullmatch(i)], [])


class ErrorTests(SynchronousTestCase):
    def error_of(self, harness: Harness, response: Any) -> dict:
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return json.loads(harness.body(response))

    def test_no_headers_within_the_timeout_is_a_504_in_openai_shape(self) -> None:
        harness = Harness(timeout=5)
        d = harness.client.post("http://gateway.invalid/stall", data=b"{}")
        harness.run(d, seconds=4.9, step=0.1)
        self.assertNoResult(d)
        harness.run(d, seconds=0.2, step=0.1)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        error = self.error_of(harness, response)["error"]
        self.assertEqual(error["code"], "upstream_timeout")
        self.assertIn("5s", error["message"])

    def test_a_timeout_is_a_504_in_anthropic_shape(self) -> None:
        harness = Harness(timeout=1, type="anthropic")
        d = harness.client.post("http://gateway.invalid/stall", data=b"{}")
        harness.run(d, seconds=1.2, step=0.1)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        body = self.error_of(harness, response)
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "timeout_error")

    def test_a_refused_upstream_is_a_502(self) -> None:
        agent = ScriptedAgent(Failure(ConnectionRefusedError()))
        harness = Harness(agent=agent)
        response = self.successResultOf(harness.post("/v1/chat/completions", {}))
        self.assertEqual(response.code, 502)
        self.assertEqual(self.error_of(harness, response)["error"]["code"], "upstream_refused")

    def test_a_stream_idle_past_the_idle_timeout_ends_with_an_error_event(self) -> None:
        harness = Harness(idle_timeout=2)
        d = harness.client.post("http://gateway.invalid/stall-mid-stream", data=b"{}")
        harness.run(d)
        response = self.successResultOf(d)
        body_d = response.content()
        harness.run(body_d, seconds=1.5, step=0.1)
        self.assertNoResult(body_d)
        harness.run(body_d, seconds=1.0, step=0.1)
        body = self.successResultOf(body_d)
        self.assertEqual(response.code, 200)
        last = body.strip().split(b"\n\n")[-1]
        self.assertTrue(last.startswith(b"data: {\"error\""))
        self.assertIn(b"idle", last)
        self.assertEqual(harness.forwarder.open_calls, {})


class MiddlewareHookTests(SynchronousTestCase):
    def test_a_middleware_can_answer_without_calling_the_upstream(self) -> None:
        class Refuse(Middleware):
            name = "refuse"

            def request_received(self, exchange):
                return LocalAnswer(status=401, body=b'{"error": "no"}')

        harness = Harness(middlewares=[Refuse()])
        response = self.successResultOf(harness.post("/v1/chat/completions", {}))
        self.assertEqual(response.code, 401)
        self.assertEqual(harness.body(response), b'{"error": "no"}')
        self.assertEqual(harness.upstream.seen, [])

    def test_a_middleware_that_raises_is_counted_and_the_call_goes_on(self) -> None:
        class Broken(Middleware):
            name = "broken"

            def request_received(self, exchange):
                raise RuntimeError("bug")

            def event_received(self, exchange, event):
                raise RuntimeError("bug")

        harness = Harness(middlewares=[Broken()])
        response = self.successResultOf(
            harness.post("/v1/chat/completions", {"model": "m", "stream": True})
        )
        self.assertIn(b"[DONE]", harness.body(response))
        self.assertGreater(harness.pipeline.errors["broken"], 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), harness.pipeline.errors["broken"])

    def test_an_asynchronous_request_hook_is_awaited(self) -> None:
        gate: Deferred[None] = Deferred()

        class Slow(Middleware):
            name = "slow"

            def request_received(self, exchange):
                return gate

        harness = Harness(middlewares=[Slow()])
        d = harness.client.post("http://gateway.invalid/v1/chat/completions", data=b"{}")
        harness.flush()
        self.assertEqual(harness.upstream.seen, [])
        gate.callback(None)
        harness.run(d)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(len(harness.upstream.seen), 1)


__all__ = ["succeed"]
