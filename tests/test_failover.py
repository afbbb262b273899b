"""
Tests for routing calls among upstreams in the forwarder, with no sockets:
each upstream an in-memory resource behind its own agent, time a
``MemoryReactorClock``.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from llmgate.app import Gateway
from llmgate.config import parse
from llmgate.forward import Forwarder
from llmgate.interfaces import IApiShape
from llmgate.middleware import Middleware
from llmgate.pipeline import Pipeline
from llmgate.providers.registry import BUILTIN, Shapes
from tests.fakeupstream import FakeUpstream
from tests.test_forward import ScriptedAgent


class Status(Resource):
    """
    An upstream that answers every call with one status.
    """

    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code
        self.seen = 0

    def render(self, request: Any) -> bytes:
        self.seen += 1
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": {"message": "busy"}}'


class Recorder(Middleware):
    name = "recorder"

    def __init__(self) -> None:
        self.exchanges: list[Any] = []

    def exchange_finished(self, exchange: Any) -> None:
        self.exchanges.append(exchange)


class Routed:
    """
    A gateway with named upstreams, each an in-memory resource or a
    scripted agent.
    """

    def __init__(self, routes: list[dict], **upstreams: Any) -> None:
        self.clock = MemoryReactorClock()
        self.resources: dict[str, Any] = {}
        agents: dict[str, Any] = {}
        document: dict[str, Any] = {"upstreams": {}, "routes": routes}
        for name, spec in upstreams.items():
            target, settings = spec if isinstance(spec, tuple) else (spec, {})
            document["upstreams"][name] = {
                "type": settings.pop("type", "openai"),
                "base_url": f"http://{name}.invalid",
                **settings,
            }
            if isinstance(target, ScriptedAgent):
                agents[name] = target
            else:
                self.resources[name] = target
                agents[name] = RequestTraversalAgent(target)
        self.agents = agents
        self.config = parse(document)
        self.recorder = Recorder()
        self.forwarder = Forwarder.with_agents(
            agents, self.config, Pipeline([self.recorder]), self.clock
        )
        self.client = StubTreq(Gateway(self.forwarder, lambda: {}, lambda: {}).resource())

    def flush(self) -> None:
        for _ in range(5):
            for agent in self.agents.values():
                if isinstance(agent, RequestTraversalAgent):
                    agent.flush()
            self.client.flush()

    def call(
        self, path: str, document: Any, headers: dict | None = None, seconds: float = 1.0
    ) -> tuple[Any, bytes]:
        d = self.client.post(
            "http://gateway.invalid" + path,
            data=json.dumps(document).encode(),
            headers={b"content-type": [b"application/json"], **(headers or {})},
        )
        done: list[Any] = []
        d.addBoth(done.append)
        self.flush()
        elapsed = 0.0
        while not done and elapsed < seconds:
            self.clock.advance(0.01)
            elapsed += 0.01
            self.flush()
        assert done, "no answer"
        response = done[0]
        if isinstance(response, Failure):
            response.raiseException()
        body: list[bytes] = []
        response.content().addCallback(body.append)
        self.flush()
        return response, body[0]


def _upstream_of(response: Any) -> bytes | None:
    values = response.headers.getRawHeaders(b"x-llmgate-upstream")
    return values[0] if values else None


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


class RoutingTests(SynchronousTestCase):
    def test_calls_go_where_their_route_says_and_say_so(self) -> None:
        clock = MemoryReactorClock()
        a, b = FakeUpstream(clock), FakeUpstream(clock)
        gateway = Routed(
            [
                {"path": "/v1/messages", "upstream": "b"},
                {"model": "claude-*", "upstream": "b"},
                {"header": {"x-tenant": "beta"}, "upstream": "b"},
                {"upstream": "a"},
            ],
            a=a,
            b=(b, {"type": "anthropic"}),
        )
        response, _ = gateway.call("/v1/messages", MESSAGES)
        self.assertEqual((response.code, _upstream_of(response)), (200, b"b"))
        response, _ = gateway.call("/v1/chat/completions", {**CHAT, "model": "claude-3"})
        self.assertEqual(_upstream_of(response), b"b")
        response, _ = gateway.call("/v1/chat/completions", CHAT, {b"x-tenant": [b"beta"]})
        self.assertEqual(_upstream_of(response), b"b")
        response, _ = gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual(_upstream_of(response), b"a")
        self.assertEqual((len(a.seen), len(b.seen)), (1, 3))

    def test_each_upstream_gets_its_own_key_and_never_the_clients(self) -> None:
        clock = MemoryReactorClock()
        a, b = FakeUpstream(clock), FakeUpstream(clock)
        gateway = Routed(
            [{"path": "/v1/messages", "upstream": "b"}, {"upstream": "a"}],
            a=(a, {"api_key": "sk-key-of-a"}),
            b=(b, {"type": "anthropic", "api_key": "sk-key-of-b"}),
        )
        client = {b"authorization": [b"Bearer sk-client"], b"x-api-key": [b"sk-client"]}
        gateway.call("/v1/chat/completions", CHAT, client)
        gateway.call("/v1/messages", MESSAGES, client)
        self.assertEqual(a.seen[0].headers[b"authorization"], [b"Bearer sk-key-of-a"])
        self.assertNotIn(b"x-api-key", a.seen[0].headers)
        self.assertEqual(b.seen[0].headers[b"x-api-key"], [b"sk-key-of-b"])
        self.assertEqual(b.seen[0].headers[b"anthropic-version"], [b"2023-06-01"])
        self.assertNotIn(b"authorization", b.seen[0].headers)

    def test_a_call_no_route_matches_gets_404_in_its_own_shape(self) -> None:
        gateway = Routed([{"path": "/v1/chat", "upstream": "a"}], a=FakeUpstream(MemoryReactorClock()))
        response, body = gateway.call("/v1/messages", MESSAGES)
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body)["type"], "error")  # Anthropic's shape
        self.assertEqual(json.loads(body)["error"]["type"], "not_found_error")
        self.assertEqual(gateway.forwarder.refused["no_route"], 1)

    def test_an_upstream_that_does_not_allow_the_path_is_passed_over(self) -> None:
        clock = MemoryReactorClock()
        narrow = FakeUpstream(clock)
        gateway = Routed(
            [{"upstream": ["wide", "narrow"]}],
            wide=(ScriptedAgent(Failure(ConnectionRefusedError())), {}),
            narrow=(narrow, {"allowed_paths": ["/v1/chat/"]}),
        )
        response, _ = gateway.call("/v1/embeddings", {"model": "e", "input": "x"})
        self.assertEqual(response.code, 502)  # narrow was not tried
        self.assertEqual(len(narrow.seen), 0)

    def test_allowed_paths_are_the_routed_upstreams(self) -> None:
        clock = MemoryReactorClock()
        gateway = Routed(
            [{"upstream": "a"}],
            a=(FakeUpstream(clock), {"allowed_paths": ["/v1/chat/"]}),
        )
        response, _ = gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 200)
        response, body = gateway.call("/v1/embeddings", {"model": "e", "input": "x"})
        self.assertEqual(response.code, 403)
        self.assertIn(b"forbidden_path", body)


class FailoverTests(SynchronousTestCase):
    def test_a_refused_upstream_fails_over_and_the_next_gets_the_same_body_once(self) -> None:
        live = FakeUpstream(MemoryReactorClock())
        dead = ScriptedAgent(Failure(ConnectionRefusedError()))
        gateway = Routed([{"upstream": ["dead", "live"]}], dead=dead, live=live)
        response, body = gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual((response.code, _upstream_of(response)), (200, b"live"))
        self.assertEqual(len(live.seen), 1)
        self.assertEqual(json.loads(live.seen[0].body), CHAT)
        exchange = gateway.recorder.exchanges[0]
        self.assertEqual(
            [(a.upstream, a.outcome, a.status) for a in exchange.attempts],
            [("dead", "upstream_refused", None), ("live", "answered", 200)],
        )
        self.assertEqual(exchange.attempts[0].address, "dead.invalid:80")
        self.assertEqual(exchange.upstream, "live")

    def test_a_status_in_failover_on_fails_over_and_another_does_not(self) -> None:
        clock = MemoryReactorClock()
        busy, live = Status(503), FakeUpstream(clock)
        gateway = Routed([{"upstream": ["busy", "live"]}], busy=busy, live=live)
        response, _ = gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual((response.code, _upstream_of(response)), (200, b"live"))
        self.assertEqual((busy.seen, len(live.seen)), (1, 1))
        teapot = Status(418)
        gateway = Routed([{"upstream": ["teapot", "live"]}], teapot=teapot, live=live)
        response, _ = gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual((response.code, _upstream_of(response)), (418, b"teapot"))
        self.assertEqual(len(live.seen), 1)

    def test_failovers_are_logged_once_a_minute_per_upstream_with_a_count(self) -> None:
        from twisted.logger import capturedLogs

        busy, live = Status(503), FakeUpstream(MemoryReactorClock())
        gateway = Routed(
            [{"upstream": ["busy", "live"]}], busy=(busy, {"eject_after": 1000}), live=live
        )
        with capturedLogs() as events:
            for _ in range(5):
                response, _ = gateway.call("/v1/chat/completions", CHAT)
                self.assertEqual(_upstream_of(response), b"live")
            gateway.clock.advance(61)
            gateway.call("/v1/chat/completions", CHAT)
        lines = [e for e in events if e.get("upstream") == "busy" and "trying" in e["log_format"]]
        self.assertEqual(busy.seen, 6)
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0]["why"], "answered 503")
        self.assertEqual(lines[1]["count"], 5)

    def test_the_last_upstreams_failure_is_the_answer_and_names_it(self) -> None:
        gateway = Routed(
            [{"upstream": ["a", "b"]}],
            a=ScriptedAgent(Failure(ConnectionRefusedError())),
            b=ScriptedAgent(Failure(ConnectionRefusedError())),
        )
        response, body = gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual((response.code, _upstream_of(response)), (502, b"b"))
        message = json.loads(body)["error"]["message"]
        self.assertIn("upstream b at b.invalid:80", message)
        busy = Status(429)
        gateway = Routed([{"upstream": ["busy"]}], busy=busy)
        response, _ = gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 429)

    def test_a_head_timeout_fails_over_to_the_next(self) -> None:
        live = FakeUpstream(MemoryReactorClock())
        stalled = ScriptedAgent(Deferred())
        gateway = Routed(
            [{"upstream": ["stalled", "live"]}], stalled=(stalled, {"timeout": 0.5}), live=live
        )
        response, _ = gateway.call("/v1/chat/completions", CHAT, seconds=2)
        self.assertEqual((response.code, _upstream_of(response)), (200, b"live"))
        attempts = gateway.recorder.exchanges[0].attempts
        self.assertEqual(attempts[0].outcome, "upstream_timeout")
        self.assertAlmostEqual(attempts[0].duration, 0.5, delta=0.02)

    def test_an_ejected_upstream_is_skipped_then_tried_again(self) -> None:
        live = FakeUpstream(MemoryReactorClock())
        dead = ScriptedAgent(*[Failure(ConnectionRefusedError()) for _ in range(3)])
        gateway = Routed(
            [{"upstream": ["dead", "live"]}],
            dead=(dead, {"eject_after": 2, "cooldown": 10}),
            live=live,
        )
        gateway.call("/v1/chat/completions", CHAT)
        gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual(len(dead.requests), 2)
        self.assertFalse(gateway.forwarder.upstreams["dead"].state()["healthy"])
        gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual(len(dead.requests), 2)  # skipped while ejected
        gateway.clock.advance(10)
        gateway.call("/v1/chat/completions", CHAT)
        self.assertEqual(len(dead.requests), 3)  # tried again after the cool-down
        self.assertEqual(len(live.seen), 4)
        state = gateway.forwarder.upstreams["dead"].state()
        self.assertEqual(state["ejections"], 2)  # failed on probation: out again
        self.assertEqual(state["attempts"], {"upstream_refused": 3})

    def test_an_ejected_last_choice_is_still_tried(self) -> None:
        dead = ScriptedAgent(*[Failure(ConnectionRefusedError()) for _ in range(3)])
        gateway = Routed([{"upstream": "dead"}], dead=(dead, {"eject_after": 1}))
        for _ in range(3):
            response, _ = gateway.call("/v1/chat/completions", CHAT)
            self.assertEqual(response.code, 502)
        self.assertEqual(len(dead.requests), 3)


class ShapeTests(SynchronousTestCase):
    def test_every_builtin_shape_provides_the_interface(self) -> None:
        from llmgate.providers.registry import ANY_OPENAI, OPAQUE

        for shape in (*BUILTIN, ANY_OPENAI, OPAQUE):
            verifyObject(IApiShape, shape)

    def test_a_calls_shape_is_decided_from_its_path(self) -> None:
        shapes = Shapes()
        for path, name in (
            (b"/v1/chat/completions", "openai-chat"),
            (b"/openai/deployments/x/chat/completions", "openai-chat"),
            (b"/v1/responses", "openai-responses"),
            (b"/v1/messages", "anthropic-messages"),
            (b"/v1/messages/count_tokens", "anthropic-count-tokens"),
            (b"/v1/embeddings", "openai-embeddings"),
            (b"/v1/completions", "openai-completions"),
            (b"/v1/models", "opaque"),
            (b"/v1/messages/batches", "opaque"),
        ):
            self.assertEqual(shapes.for_path(path).name, name, path)

    def test_errors_the_gateway_writes_follow_the_calls_shape(self) -> None:
        shapes = Shapes()
        anthropic = json.loads(shapes.for_path(b"/v1/messages").error_body(503, "m", "k"))
        self.assertEqual(anthropic["error"]["type"], "overloaded_error")
        openai = json.loads(shapes.for_path(b"/v1/responses").error_body(503, "m", "k"))
        self.assertEqual(openai["error"]["code"], "k")
        self.assertTrue(shapes.for_path(b"/v1/messages").error_event("m").startswith(b"event: error"))

    def test_a_plugin_shape_is_found_and_comes_first_by_priority(self) -> None:
        import importlib
        import sys
        from pathlib import Path

        from llmgate.providers.registry import with_plugins

        root = Path(self.mktemp()).absolute()
        directory = root / "fake_plugins"
        directory.mkdir(parents=True)
        (directory / "__init__.py").write_text("")
        (directory / "gemini_shape.py").write_text(
            "from twisted.plugin import IPlugin\n"
            "from zope.interface import implementer\n"
            "from llmgate.interfaces import IApiShape\n"
            "from llmgate.providers.base import Shape\n"
            "@implementer(IPlugin, IApiShape)\n"
            "class Gemini(Shape):\n"
            "    name = 'gemini'\n"
            "    system = 'gemini'\n"
            "    priority = 200\n"
            "    suffixes = (b':generateContent',)\n"
            "gemini = Gemini()\n"
        )
        sys.path.insert(0, str(root))
        self.addCleanup(sys.path.remove, str(root))
        self.addCleanup(sys.modules.pop, "fake_plugins", None)
        self.addCleanup(sys.modules.pop, "fake_plugins.gemini_shape", None)
        package = importlib.import_module("fake_plugins")
        shapes = with_plugins("openai", package)
        self.assertEqual(
            shapes.for_path(b"/v1beta/models/gemini-pro:generateContent").name, "gemini"
        )
        self.assertEqual(shapes.for_path(b"/v1/chat/completions").name, "openai-chat")
        self.assertIn("gemini", shapes.describe())
