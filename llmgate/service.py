"""
Assembling a running gateway from its configuration: the pool, the
forwarder, the middleware pipeline, the Klein resource tree, the site and the
listening service, under one ``MultiService``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from llmgate import __version__
from llmgate.app import Gateway
from llmgate.config import GatewayConfig
from llmgate.forward import Forwarder, make_agent
from llmgate.pool import make_pool
from llmgate.logs import make_observer
from llmgate.metrics import Metrics
from llmgate.middleware.registry import build_middlewares
from llmgate.pipeline import Pipeline
from llmgate.providers import provider_for
from llmgate.server import GatewaySite
from llmgate.sessions.detect import SessionDetector
from llmgate.sessions.memory import MemorySessionStore
from llmgate.sessions.stage import SessionStage


class GatewayParts:
    """
    The live objects of one gateway, built but not listening; tests and the
    service share this assembly.
    """

    def __init__(self, config: GatewayConfig, reactor: Any, worker: int | str = 0) -> None:
        self.config = config
        self.reactor = reactor
        self.provider = provider_for(config.llm.type, config.llm.auth_header)
        self.pool = make_pool(reactor, config)
        self.agent = make_agent(reactor, self.pool, connect_timeout=config.llm.timeout)
        self.middlewares = build_middlewares(config, reactor)
        self.sessions: SessionStage | None = None
        stages: list[Any] = []
        if config.session.enabled:
            store = MemorySessionStore(
                reactor, config.session.max_sessions, config.session.session_ttl_seconds
            )
            self.sessions = SessionStage(SessionDetector(store, config.session))
            stages.append(self.sessions)
        self.metrics = Metrics(
            worker=str(worker),
            sources={
                "in_flight": lambda: len(self.forwarder.open_calls),
                "streams_open": self._streams_open,
                "refused": lambda: {"body_too_large": self.site.refused_bodies},
                "middleware_errors": lambda: self.pipeline.errors,
                "sessions": lambda: dict(self.sessions.state()) if self.sessions else None,
                "traces": lambda: [
                    dict(m.state()) for m in self.middlewares if getattr(m, "name", "") == "trace"
                ],
            },
        )
        if config.metrics.enabled:
            stages.append(self.metrics)
        self.pipeline = Pipeline([*stages, *self.middlewares])
        self.forwarder = Forwarder(
            self.agent, config, self.provider, self.pipeline, reactor
        )
        self.gateway = Gateway(
            self.forwarder, self.config_view, self.metrics.json_view, self.metrics
        )
        self.site = GatewaySite(
            self.gateway.resource(),
            provider=self.provider,
            max_request_body=config.server.max_request_body,
        )

    def config_view(self) -> dict[str, Any]:
        """
        ``/config``: the running configuration, secrets as configured-or-not,
        with each middleware's live state.
        """
        view = self.config.redacted()
        view["version"] = __version__
        states = []
        for spec, middleware in zip(
            [m for m in self.config.middlewares if m.enabled], self.middlewares
        ):
            states.append(
                {
                    "type": spec.type,
                    "enabled": spec.enabled,
                    "state": dict(middleware.state()),
                }
            )
        disabled = [
            {"type": m.type, "enabled": False, "state": {}}
            for m in self.config.middlewares
            if not m.enabled
        ]
        view["middlewares"] = states + disabled
        return view

    def _streams_open(self) -> int:
        return sum(
            1
            for call in self.forwarder.open_calls.values()
            if call.exchange.response is not None and call.exchange.response.streaming
        )


class GatewayService(MultiService):
    """
    The daemon: listens on the configured endpoint and closes the upstream
    pool on the way down.
    """

    log = Logger()

    def __init__(self, config: GatewayConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.parts = GatewayParts(config, reactor)
        self.listener = strports.service(
            config.server.endpoint(), self.parts.site, reactor=reactor
        )
        self.listener.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd writes its log through an ILogObserver component of the
        # application when there is one: ours applies level and format.
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, make_observer(self.config.logging))
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        # Services start before the reactor installs its own signal
        # handlers; take SIGTERM over once it has.
        self.parts.reactor.callWhenRunning(self._take_sigterm)
        config = self.config
        self.log.info(
            "llmgate {version} listening on {listen}, relaying to {upstream} "
            "({provider}, key {key}), middleware: {middleware}",
            version=__version__,
            listen=config.server.endpoint(),
            upstream=config.llm.base_url,
            provider=config.llm.type,
            key="injected" if config.llm.api_key else "from client",
            middleware=", ".join(m.type for m in config.middlewares if m.enabled)
            or "none",
        )

    def _take_sigterm(self) -> None:
        """
        Make SIGTERM a normal stop: twistd would re-raise the signal after
        shutting down, ending with status 143 where supervisors expect 0.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        reactor = self.parts.reactor

        def stop(signum: int, frame: Any) -> None:
            self.log.info("SIGTERM received: stopping")
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, stop)

    def stopService(self) -> Any:
        d = super().stopService()

        def close(result: Any) -> Any:
            closing = self.parts.pipeline.close()
            closing.addCallback(lambda _: self.parts.pool.closeCachedConnections())
            return closing

        return d.addBoth(close)
