"""
The upstream forwarder: each client call is routed to an upstream (see
:mod:`llmgate.routing`), becomes one request to it over that upstream's
persistent connection pool (or, failing before an answer's head, to the
route's next upstream, with the same body), and its answer is relayed back
as it arrives.

The forwarder drives an ``IAgent`` itself rather than through
``treq.HTTPClient.request``, which always adds a shared cookie jar, redirect
following and gzip decoding: a proxy must store no cookie between clients,
follow no redirect and pass bodies through intact.  The running gateway's
agent is :class:`llmgate.http.upstream.UpstreamAgent`; tests drive the same code
with ``treq.testing``'s in-memory agent.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.server import Request

from llmgate.call import BytesProducer, Call, FailoverReport, classify
from llmgate.config import GatewayConfig, RouteConfig
from llmgate.exchange import UNPARSED, Exchange, RequestRecord, new_exchange_id
from llmgate.pipeline import Pipeline
from llmgate.providers.registry import Shapes
from llmgate.routing import Router, model_key
from llmgate.upstreams import Upstream, build_upstreams


class Forwarder:
    """
    Forward client requests to the upstreams their route names, trying the
    next one of a failover list when one fails before its answer's head.

    :ivar open_calls: calls in progress by exchange id, for the console,
        metrics and a graceful shutdown.
    """

    log = Logger()

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        config: GatewayConfig,
        pipeline: Pipeline,
        clock: IReactorTime,
        capture_limit: int = 1024 * 1024,
        shapes: Shapes | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.config = config
        self.pipeline = pipeline
        self.clock = clock
        self.capture_limit = capture_limit
        self.shapes = shapes if shapes is not None else Shapes(opaque=_opaque_for(config))
        self.router = Router(config.routes)
        self.routes = []
        for route in self.router.routes:
            upstreams = tuple(self.upstreams[name] for name in route.config.upstreams)
            restricted = any(u.allowed_paths for u in upstreams)
            self.routes.append((_Route(route.config, restricted), upstreams))
        self.open_calls: dict[str, Call] = {}
        #: Calls refused here (no route, path not allowed), by reason.
        self.refused: Counter[str] = Counter()
        self.failovers = FailoverReport(clock)
        self.include_stream_usage = config.usage.include_stream_usage

    @classmethod
    def with_agents(
        cls,
        agents: IAgent | Mapping[str, IAgent],
        config: GatewayConfig,
        pipeline: Pipeline,
        clock: IReactorTime,
        **kwargs: Any,
    ) -> Forwarder:
        """
        A forwarder whose upstreams send through given agents (one for all,
        or one per upstream name) rather than pools of their own.
        """
        if not isinstance(agents, Mapping):
            agents = {name: agents for name in config.upstreams}
        upstreams = build_upstreams(config, clock, Call.head_timed_out, agents)
        return cls(upstreams, config, pipeline, clock, **kwargs)

    def close(self) -> None:
        """
        Stop every head deadline's timer (the gateway is stopping).
        """
        for upstream in self.upstreams.values():
            upstream.head_deadlines.close()

    def forward(self, request: Request) -> Deferred[None]:
        """
        Forward one client request and relay its answer.

        :return: a Deferred that fires when the answer is complete (the route
            returns it to Klein); cancelling it means the client went away.
        """
        body = request.content.read() if request.content is not None else b""
        shape = self.shapes.for_path(request.path)
        exchange = Exchange(
            id=new_exchange_id(),
            provider=shape.name,
            api=shape,
            request=RequestRecord(
                method=request.method,
                uri=request.uri,
                headers=request.requestHeaders,
                body=body,
            ),
            received=self.clock.seconds(),
        )
        call = Call(self, request, exchange)
        return call.start()

    def route(self, exchange: Exchange) -> tuple[_Route, tuple[Upstream, ...]] | None:
        """
        The route of a call and its upstreams, or None when no route matches.
        """
        record = exchange.request
        route = self.router.match(
            record.path,
            record.headers,
            lambda: model_key(record.body, _parsed(exchange), lambda: exchange.request_json),
        )
        return None if route is None else self.routes[route.index]

    def error_answer(self, request: Request, status: int, message: str, kind: str) -> bytes:
        """
        Set a JSON error in the call's own API shape on ``request`` and
        return its body.
        """
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return self.shapes.for_path(request.path).error_body(status, message, kind)


@attrs.frozen
class _Route:
    """
    What a call needs of its route once matched.

    :ivar restricted: some upstream of it has ``allowed_paths``.
    """

    config: RouteConfig
    restricted: bool


def _parsed(exchange: Exchange) -> Any:
    parsed = exchange.parsed_request_json()
    return None if parsed is UNPARSED else parsed


def _opaque_for(config: GatewayConfig) -> Any:
    from llmgate.providers.registry import OPAQUE, OPAQUE_ANTHROPIC

    return OPAQUE_ANTHROPIC if config.llm.type == "anthropic" else OPAQUE


__all__ = ["Forwarder", "Call", "BytesProducer", "classify"]
