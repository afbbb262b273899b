"""
Tests for llmgate.pipeline: order, isolation, and the cost of hooks a
middleware does not use.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from llmgate.config import parse
from llmgate.exchange import Exchange, RequestRecord
from llmgate.interfaces import IMiddleware, IMiddlewareFactory
from llmgate.middleware import Middleware, MiddlewareContext
from llmgate.middleware.registry import middleware_factories
from llmgate.pipeline import Pipeline
from llmgate.sse import ServerSentEvent


def exchange() -> Exchange:
    return Exchange(
        id="x",
        provider="openai",
        request=RequestRecord(method=b"POST", uri=b"/", headers=Headers(), body=b""),
        received=0.0,
    )


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def request_received(self, exchange):
        self.log.append(f"in:{self.name}")

    def response_started(self, exchange):
        self.log.append(f"head:{self.name}")

    def event_received(self, exchange, event):
        self.log.append(f"event:{self.name}")

    def exchange_finished(self, exchange):
        self.log.append(f"out:{self.name}")


class PipelineTests(SynchronousTestCase):
    def test_config_order_on_the_way_in_and_reverse_on_the_way_out(self) -> None:
        log: list[str] = []
        pipeline = Pipeline([Recorder("a", log), Recorder("b", log)])
        ex = exchange()
        pipeline.request_received(ex)
        pipeline.response_started(ex)
        pipeline.event_received(ex, ServerSentEvent("message", "x"))
        pipeline.exchange_finished(ex)
        self.assertEqual(
            log,
            ["in:a", "in:b", "head:b", "head:a", "event:b", "event:a", "out:b", "out:a"],
        )

    def test_hooks_left_as_the_base_class_has_them_are_skipped(self) -> None:
        class OnlyFinish(Middleware):
            def exchange_finished(self, exchange):
                pass

        pipeline = Pipeline([OnlyFinish()])
        self.assertFalse(pipeline.wants_events)
        self.assertEqual(pipeline._on_request, [])
        self.assertEqual(len(pipeline._on_finish), 1)

    def test_a_raising_hook_does_not_stop_the_others(self) -> None:
        log: list[str] = []

        class Broken(Middleware):
            name = "broken"

            def exchange_finished(self, exchange):
                raise ValueError("bug")

        pipeline = Pipeline([Recorder("a", log), Broken()])
        pipeline.exchange_finished(exchange())
        self.assertEqual(log, ["out:a"])
        self.assertEqual(pipeline.errors["broken"], 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class ProviderTests(SynchronousTestCase):
    def test_builtin_middleware_provide_the_interfaces(self) -> None:
        factories = middleware_factories()
        self.assertIn("trace", factories)
        self.assertIn("printer", factories)
        context = MiddlewareContext(reactor=MemoryReactorClock(), config=parse({}))
        for name, factory in factories.items():
            verifyObject(IMiddlewareFactory, factory)
        printer = factories["printer"].build({}, context)
        verifyObject(IMiddleware, printer)
        trace = factories["trace"].build({"directory": self.mktemp()}, context)
        self.addCleanup(trace._stop_pool)
        verifyObject(IMiddleware, trace)
        verifyObject(IMiddleware, Middleware())
