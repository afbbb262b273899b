"""
Assembling a running gateway from its configuration: the pool, the
forwarder, the middleware pipeline, the Klein resource tree, the site and the
listening service, under one ``MultiService``.
"""

from __future__ import annotations

import gc
import signal
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.tcp import makeBinding
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from llmgate import __version__, systemd
from llmgate.app import Gateway
from llmgate.config import ConfigError, GatewayConfig
from llmgate.auth import AuthStage
from llmgate.forward import Call, Forwarder
from llmgate.logs import make_observer
from llmgate.metrics import Metrics
from llmgate.middleware.registry import build_middlewares
from llmgate.pipeline import Pipeline
from llmgate.providers import provider_for
from llmgate.http.server import GatewaySite
from llmgate.sessions.detect import SessionDetector
from llmgate.sessions.memory import MemorySessionStore
from llmgate.sessions.stage import SessionStage
from llmgate.providers.registry import with_plugins
from llmgate.upstreams import build_upstreams
from llmgate.stalls import StallWatch


def make_session_store(config: GatewayConfig, reactor: Any) -> Any:
    """
    The configured session store: in memory, or Redis (shared by every
    worker and gateway) with this process's memory as its fallback.
    """
    session = config.session
    memory = MemorySessionStore(reactor, session.max_sessions, session.session_ttl_seconds)
    if session.store.type != "redis":
        return memory
    from llmgate.sessions.redis import RedisSessionStore

    return RedisSessionStore(
        reactor,
        session.store.url,
        key_prefix=session.store.key_prefix,
        max_sessions=session.max_sessions,
        ttl=session.session_ttl_seconds,
        fallback=memory,
    )


def tune_gc() -> None:
    """
    Once started, move everything built so far (modules, config, the
    resource tree) out of the cyclic collector's sight: a full collection
    over them took 35-40 ms, a stall for every call in flight.  The young
    generation keeps CPython's threshold: raising it made each collection
    proportionally longer (10 ms at 20,000) without less work in total.
    """
    gc.collect()
    gc.freeze()


class GatewayParts:
    """
    The live objects of one gateway, built but not listening; tests and the
    service share this assembly.
    """

    log = Logger()

    def __init__(self, config: GatewayConfig, reactor: Any, worker: int | str = 0) -> None:
        self.config = config
        self.reactor = reactor
        #: The default upstream's conventions: errors written before a call's
        #: path is read (413, 408) take its type's shape.
        self.provider = provider_for(config.llm.type, config.llm.auth_header)
        self.upstreams = build_upstreams(config, reactor, Call.head_timed_out)
        self.middlewares = build_middlewares(config, reactor)
        self.sessions: SessionStage | None = None
        self.stalls = StallWatch(reactor)
        stages: list[Any] = []
        self.auth: AuthStage | None = None
        if config.auth.enabled:
            self.auth = AuthStage(config.auth.token_hashes, self.provider)
            stages.append(self.auth)
        if config.session.enabled:
            store = make_session_store(config, reactor)
            self.sessions = SessionStage(SessionDetector(store, config.session))
            stages.append(self.sessions)
        self.metrics = Metrics(
            worker=str(worker),
            sources={
                "in_flight": lambda: len(self.forwarder.open_calls),
                "upstreams": self.upstream_states,
                "streams_open": self._streams_open,
                "refused": self._refused,
                "middleware_errors": lambda: self.pipeline.errors,
                "sessions": lambda: dict(self.sessions.state()) if self.sessions else None,
                "stalls": lambda: self.stalls,
                "traces": lambda: [
                    dict(m.state()) for m in self.middlewares if getattr(m, "name", "") == "trace"
                ],
                "telemetry": self._telemetry_state,
            },
        )
        if config.metrics.enabled:
            stages.append(self.metrics)
        from llmgate.ui.parts import ViewParts

        # The live view's feed goes last: it sees the session decided.
        self.ui = ViewParts(config, reactor, self.middlewares)
        self.pipeline = Pipeline([*stages, *self.middlewares, *self.ui.stages])
        self.forwarder = Forwarder(
            self.upstreams,
            config,
            self.pipeline,
            reactor,
            shapes=with_plugins(config.llm.type),
        )
        self.gateway = Gateway(
            self.forwarder,
            self.config_view,
            self.metrics.json_view,
            self.metrics if config.metrics.enabled else None,
            ui=self.ui.view,
        )
        self.site = GatewaySite(
            self.gateway.resource(),
            provider=self.provider,
            shapes=self.forwarder.shapes,
            max_request_body=config.server.max_request_body,
            request_timeout=config.server.request_timeout,
            max_headers=config.server.max_headers,
            max_header_bytes=config.server.max_header_bytes,
            clock=reactor,
            send_at_once=not (self.sessions and self.sessions.detector.store.shared),
        )

    def config_view(self) -> dict[str, Any]:
        """
        ``/config``: the running configuration, secrets as configured-or-not,
        with each middleware's live state.
        """
        view = self.config.redacted()
        view["version"] = __version__
        built = iter(self.middlewares)
        listed = []
        for spec in self.config.middlewares:
            state = self._state_of(next(built)) if spec.enabled else {}
            listed.append({"type": spec.type, "enabled": spec.enabled, "state": state})
        view["middlewares"] = listed
        if self.config.telemetry.otlp is not None:
            view["telemetry"]["state"] = self._telemetry_state()
        view["sessions"] = dict(self.sessions.state()) if self.sessions else None
        view["api_shapes"] = self.forwarder.shapes.describe()
        for name, state in self.upstream_states().items():
            view["upstreams"][name]["state"] = state
        return view

    def _telemetry_state(self) -> dict[str, Any] | None:
        """
        The otel middleware's export figures, or None when telemetry is off.
        """
        for middleware in self.middlewares:
            if getattr(middleware, "name", "") == "otel":
                return self._state_of(middleware)
        return None
    @property
    def pool(self) -> Any:
        """
        The default upstream's connection pool (with ``llm:``, the only one).
        """
        return next(u.pool for u in self.upstreams.values() if u.config is self.config.llm)

    def upstream_states(self) -> dict[str, dict[str, Any]]:
        """
        Each upstream's health and attempts by outcome.
        """
        return {name: u.state() for name, u in self.upstreams.items()}

    def close_pools(self) -> Deferred[Any]:
        return gatherResults(
            [
                maybeDeferred(u.pool.closeCachedConnections)
                for u in self.upstreams.values()
                if u.pool is not None
            ]
        )

    def _state_of(self, middleware: Any) -> dict[str, Any]:
        try:
            return dict(middleware.state())
        except Exception:
            name = getattr(middleware, "name", type(middleware).__name__)
            self.pipeline.errors[name] += 1
            self.log.failure("middleware {middleware} failed in state()", middleware=name)
            return {"error": "state() raised"}

    def _refused(self) -> dict[str, int]:
        refused = dict(self.site.refused)
        refused.update(self.gateway.refused)
        refused.update(self.forwarder.refused)
        if self.auth is not None:
            refused["unauthorized"] = self.auth.refused
        return refused

    def _streams_open(self) -> int:
        return sum(
            1
            for call in self.forwarder.open_calls.values()
            if call.exchange.response is not None and call.exchange.response.streaming
        )


class GatewayService(MultiService):
    """
    The daemon: listens on the configured endpoint, tells systemd when it is
    ready and when it stops, and on the way down lets calls in flight finish
    (up to ``server.shutdown_timeout``), writes pending traces and closes
    the upstream pool.
    """

    log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        worker: int | str = 0,
        reuse_port: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.worker = worker
        self.parts = GatewayParts(config, reactor, worker)
        try:
            if reuse_port:
                self.listener = _ReusePortListener(
                    reactor, config.server.host, config.server.port, self.parts.site
                )
            else:
                self.listener = strports.service(
                    config.server.endpoint(), self.parts.site, reactor=reactor
                )
        except Exception as error:  # the endpoint's own complaint, in one line
            raise ConfigError(
                f"server.listen: cannot listen on {config.server.endpoint()!r} "
                f"({type(error).__name__}: {error})"
            ) from None
        self.listener.setServiceParent(self)
        self._stopping = False
        self.console = None
        if config.manhole.enabled:
            from llmgate.console import make_console

            assert config.manhole.authorized_keys is not None
            self.console = make_console(
                config.manhole.listen,
                config.manhole.authorized_keys,
                config.manhole.host_key,
                self.console_namespace,
                reactor,
            )
            self.console.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd writes its log through an ILogObserver component of the
        # application when there is one: ours applies level and format.
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, make_observer(self.config.logging))
        super().setServiceParent(parent)

    def console_namespace(self) -> dict[str, Any]:
        """
        What an operator finds in a new console session.  No secret is
        referenced here; the console is still a full Python shell, for
        trusted operators only.
        """
        parts = self.parts
        return {
            "config": parts.config_view(),
            "sessions": parts.sessions.detector.store if parts.sessions else None,
            "metrics": parts.metrics.json_view,
            "upstreams": parts.upstreams,
            "stalls": parts.stalls,
            "exchanges": parts.forwarder.open_calls,
            "service": self,
            "reactor": self.reactor,
        }

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            # A port in use is an operator's mistake: one line, no traceback.
            self.log.critical("cannot listen: {error}", error=str(error))
            raise SystemExit(2) from None

    def startService(self) -> None:
        super().startService()
        # Services start before the reactor installs its own signal
        # handlers; take SIGTERM over once it has.
        self.reactor.callWhenRunning(self._take_sigterm)
        self.reactor.callWhenRunning(self._ready)
        self.reactor.callWhenRunning(tune_gc)
        self.reactor.callWhenRunning(self.parts.stalls.start)

    def _ready(self) -> None:
        config = self.config
        if config.server.allow_open_relay and config.injects_key and not config.auth.enabled:
            self.log.warn(
                "server.allow_open_relay is set: anyone who can reach {listen} spends "
                "the injected key",
                listen=config.server.endpoint(),
            )
        for name, upstream in config.upstreams.items():
            if not upstream.tls_verify:
                self.log.warn(
                    "tls_verify is false for upstream {upstream}: its certificate is not "
                    "checked",
                    upstream=name,
                )
        traces = [
            m.state().get("directory") for m in self.parts.middlewares if m.name == "trace"
        ]
        self.log.info(
            "llmgate {version} worker {worker} listening on {listen}, relaying to {upstream} "
            "({provider}, key {key}), middleware: {middleware}, traces: {traces}, "
            "console: {console}",
            version=__version__,
            worker=self.worker,
            listen=config.server.endpoint(),
            upstream=", ".join(
                f"{name} {_without_userinfo(u.base_url)}" for name, u in config.upstreams.items()
            ),
            provider=", ".join(sorted({u.type for u in config.upstreams.values()})),
            key="injected" if config.injects_key else "from clients",
            middleware=", ".join(m.type for m in config.middlewares if m.enabled) or "none",
            traces=", ".join(str(t) for t in traces) or "off",
            console=config.manhole.listen if config.manhole.enabled else "off",
        )
        systemd.notify("READY=1\nSTATUS=serving")

    def _take_sigterm(self) -> None:
        """
        Make SIGTERM a normal stop: twistd would re-raise the signal after
        shutting down, ending with status 143 where supervisors expect 0.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        reactor = self.reactor

        def stop_once() -> None:
            if reactor.running and not self._stopping:
                self._stopping = True
                reactor.stop()

        def stop(signum: int, frame: Any) -> None:
            reactor.callFromThread(stop_once)

        signal.signal(signal.SIGTERM, stop)

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, drain, flush, close.
        """
        systemd.notify("STOPPING=1")
        self.log.info(
            "stopping: {calls} calls in flight, waiting up to {timeout}s",
            calls=len(self.parts.forwarder.open_calls),
            timeout=self.config.server.shutdown_timeout,
        )
        self.parts.stalls.stop()
        d = maybeDeferred(self.listener.stopService)
        d.addCallback(lambda _: self._drain())
        d.addCallback(lambda _: self.parts.forwarder.close())
        d.addCallback(lambda _: self.parts.pipeline.close())
        d.addCallback(lambda _: self.parts.close_pools())
        d.addCallback(lambda _: self._stop_others())
        d.addErrback(lambda f: self.log.failure("error while stopping", f))
        return d

    def _stop_others(self) -> Deferred[Any]:
        Service.stopService(self)
        return gatherResults(
            [
                maybeDeferred(child.stopService)
                for child in self
                if child is not self.listener and child.running
            ]
        )

    def _drain(self) -> Deferred[None]:
        """
        Wait until no call is open, or the shutdown timeout passes (the
        remaining calls are then cut).
        """
        forwarder = self.parts.forwarder
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + self.config.server.shutdown_timeout

        def check() -> None:
            if not forwarder.open_calls:
                done.callback(None)
            elif self.reactor.seconds() >= deadline:
                self.log.warn(
                    "shutdown timeout: cutting {calls} calls", calls=len(forwarder.open_calls)
                )
                for call in list(forwarder.open_calls.values()):
                    call.abort()
                done.callback(None)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return done


class _ReusePortListener(Service):
    """
    Listen on host and port with SO_REUSEPORT, beside the other workers.
    """

    def __init__(self, reactor: Any, host: str, port: int, factory: Any) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.listening: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        binding = makeBinding(self.host, self.port, reuseAddress=True, reusePort=True)
        self.listening = self.reactor.listenTCP(binding, self.factory, backlog=1024)

    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None


class SupervisorService(MultiService):
    """
    With ``server.workers`` above one, the process twistd starts listens on
    nothing itself: it runs the workers, and speaks to systemd for them.
    """

    log = Logger()

    def __init__(self, config: GatewayConfig, reactor: Any, argv: list[str]) -> None:
        super().__init__()
        from llmgate.workers import Supervisor

        self.config = config
        self.reactor = reactor
        self.supervisor = Supervisor(
            reactor,
            config.server.workers,
            argv,
            config.server.shutdown_timeout,
            on_ready=self._ready,
        )
        self.supervisor.setServiceParent(self)
        self._stopping = False

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, make_observer(self.config.logging))
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._take_sigterm)

    _take_sigterm = GatewayService._take_sigterm

    def _ready(self) -> None:
        self.log.info(
            "llmgate {version}: {count} workers listening on {listen}",
            version=__version__,
            count=self.config.server.workers,
            listen=self.config.server.endpoint(),
        )
        systemd.notify("READY=1\nSTATUS=serving")

    def stopService(self) -> Any:
        systemd.notify("STOPPING=1")
        return super().stopService()


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
