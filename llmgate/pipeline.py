"""
Running the configured middleware on an exchange: in configuration order on
the way in, in reverse on the way out, each hook isolated so one broken
middleware never harms a call.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from llmgate.exchange import Exchange, LocalAnswer
from llmgate.interfaces import IMiddleware
from llmgate.sse import ServerSentEvent


def _overrides(middleware: Any, hook: str) -> bool:
    """
    Whether ``middleware`` does something in ``hook``: a hook inherited
    unchanged from the no-op base class is skipped, so it costs nothing.
    """
    from llmgate.middleware import Middleware

    method = getattr(type(middleware), hook, None)
    return method is not None and method is not getattr(Middleware, hook, None)


class Pipeline:
    """
    The ordered middleware of one gateway.

    :ivar errors: hook failures by middleware name, for ``/metrics``.
    """

    log = Logger()

    def __init__(self, middlewares: Sequence[IMiddleware] = ()) -> None:
        self.middlewares = tuple(middlewares)
        backwards = tuple(reversed(self.middlewares))
        self._on_request = [m for m in self.middlewares if _overrides(m, "request_received")]
        self._on_response = [m for m in backwards if _overrides(m, "response_started")]
        self._on_event = [m for m in backwards if _overrides(m, "event_received")]
        self._on_finish = [m for m in backwards if _overrides(m, "exchange_finished")]
        self.wants_events = bool(self._on_event)
        #: Whether anything reads a finished exchange; when nothing does, an
        #: answer is relayed without being parsed or kept.
        self.observed = bool(self.middlewares)
        self.errors: Counter[str] = Counter()

    def request_received(
        self, exchange: Exchange
    ) -> LocalAnswer | None | Deferred[LocalAnswer | None]:
        """
        Run the request hooks until one answers.  Synchronous hooks stay
        synchronous: no Deferred is made unless a hook returns one.
        """
        if not self._on_request:
            return None
        return self._run_request_hooks(exchange, 0)

    def _run_request_hooks(
        self, exchange: Exchange, start: int
    ) -> LocalAnswer | None | Deferred[LocalAnswer | None]:
        hooks = self._on_request
        for index in range(start, len(hooks)):
            middleware = hooks[index]
            try:
                result = middleware.request_received(exchange)
            except Exception:
                self._failed(middleware, "request_received", Failure())
                continue
            if isinstance(result, Deferred):
                return result.addCallbacks(
                    self._after_async_hook,
                    self._async_hook_failed,
                    callbackArgs=(exchange, index),
                    errbackArgs=(exchange, index, middleware),
                )
            if result is not None:
                return result
        return None

    def _after_async_hook(
        self, result: LocalAnswer | None, exchange: Exchange, index: int
    ) -> Any:
        if result is not None:
            return result
        return self._run_request_hooks(exchange, index + 1)

    def _async_hook_failed(
        self, failure: Failure, exchange: Exchange, index: int, middleware: Any
    ) -> Any:
        self._failed(middleware, "request_received", failure)
        return self._run_request_hooks(exchange, index + 1)

    def response_started(self, exchange: Exchange) -> None:
        for middleware in self._on_response:
            try:
                middleware.response_started(exchange)
            except Exception:
                self._failed(middleware, "response_started", Failure())

    def event_received(self, exchange: Exchange, event: ServerSentEvent) -> None:
        for middleware in self._on_event:
            try:
                middleware.event_received(exchange, event)
            except Exception:
                self._failed(middleware, "event_received", Failure())

    def exchange_finished(self, exchange: Exchange) -> None:
        for middleware in self._on_finish:
            try:
                middleware.exchange_finished(exchange)
            except Exception:
                self._failed(middleware, "exchange_finished", Failure())

    def close(self) -> Deferred[None]:
        """
        Close every middleware, last first; fires when all are done.
        """
        from twisted.internet.defer import DeferredList, maybeDeferred

        closing = [
            maybeDeferred(middleware.close).addErrback(
                lambda failure, m=middleware: self._failed(m, "close", failure)
            )
            for middleware in reversed(self.middlewares)
        ]
        return DeferredList(closing).addCallback(lambda _: None)

    def _failed(self, middleware: Any, hook: str, failure: Failure) -> None:
        name = getattr(middleware, "name", type(middleware).__name__)
        self.errors[name] += 1
        self.log.failure(
            "middleware {middleware} failed in {hook}",
            failure,
            middleware=name,
            hook=hook,
        )

