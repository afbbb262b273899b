"""
The middleware system: a base class with no-op hooks, the context a factory
builds with, and the lookup of middleware types among Twisted plugins.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from zope.interface import implementer

from llmgate.config import GatewayConfig
from llmgate.exchange import Exchange, LocalAnswer
from llmgate.interfaces import IMiddleware
from llmgate.sse import ServerSentEvent


@attrs.frozen
class MiddlewareContext:
    """
    What a middleware factory may use to build its middleware.

    :ivar reactor: the reactor, for time and threads; never imported globally.
    :ivar config: the whole gateway configuration.
    """

    reactor: Any
    config: GatewayConfig


@implementer(IMiddleware)
class Middleware:
    """
    A middleware that does nothing; subclass it and override the hooks you
    need.  Hooks left alone are skipped by the pipeline at no cost.
    """

    name = "middleware"

    def request_received(self, exchange: Exchange) -> LocalAnswer | None:
        return None

    def response_started(self, exchange: Exchange) -> None:
        pass

    def event_received(self, exchange: Exchange, event: ServerSentEvent) -> None:
        pass

    def exchange_finished(self, exchange: Exchange) -> None:
        pass

    def close(self) -> Any:
        return None

    def state(self) -> Mapping[str, Any]:
        return {}
