"""
The configured upstreams as live objects: each with its own connection
pool, key, head deadline and passive health.

Health is Envoy's outlier detection kept small: ``eject_after`` consecutive
failures take an upstream out of its routes for a cool-down; once it is
over the upstream gets calls again, and one more failure sends it back for
twice as long (up to ``max_cooldown``), while one success clears it.  An
upstream that is a route's last choice is still tried: a call is better
answered late than refused by the gateway.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llmgate.config import GatewayConfig, LLMConfig
from llmgate.http.deadlines import Deadlines
from llmgate.providers import CREDENTIAL_HEADERS, Provider, provider_for


class Health:
    """
    One upstream's recent record.

    :ivar failures: consecutive failed attempts.
    :ivar ejections: how many times in a row it was ejected (0 once it
        succeeds again); the cool-down doubles with each.
    """

    def __init__(
        self, clock: IReactorTime, eject_after: int, cooldown: float, max_cooldown: float
    ) -> None:
        self.clock = clock
        self.eject_after = eject_after
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.total_ejections = 0

    def ejected(self) -> bool:
        return self.ejected_until > 0 and self.clock.seconds() < self.ejected_until

    def succeeded(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0

    def failed(self) -> bool:
        """
        Count a failure.

        :return: whether it ejected the upstream just now.
        """
        self.failures += 1
        if not self.eject_after:
            return False
        probation = self.ejections > 0 and not self.ejected()
        if self.failures >= self.eject_after or probation:
            seconds = min(self.cooldown * 2**self.ejections, self.max_cooldown)
            self.ejections += 1
            self.total_ejections += 1
            self.failures = 0
            self.ejected_until = self.clock.seconds() + seconds
            return True
        return False

    def state(self) -> dict[str, Any]:
        ejected = self.ejected()
        return {
            "healthy": not ejected,
            "consecutive_failures": self.failures,
            "ejected_for_seconds": round(self.ejected_until - self.clock.seconds(), 3)
            if ejected
            else 0,
            "ejections": self.total_ejections,
        }


class Upstream:
    """
    One configured upstream, ready to send to.

    :ivar address: ``host:port``, for errors, logs and traces: never a key.
    :ivar credential: the header an injected key goes in and its value, or
        None when clients bring their own key.
    :ivar strip: request headers removed before sending (every credential
        header when a key is injected, so no client secret goes upstream).
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        config: LLMConfig,
        agent: Any,
        pool: Any,
        clock: IReactorTime,
        head_timed_out: Callable[[Any], object],
        client_auth: bool,
    ) -> None:
        from llmgate.http.upstream import Origin

        self.name = name
        self.config = config
        self.agent = agent
        self.pool = pool
        self.provider: Provider = provider_for(config.type, config.auth_header)
        self.base = config.base_url.encode("utf-8")
        origin = Origin.of(self.base)
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        self.address = f"{host}:{origin.port}"
        self.name_bytes = name.encode("utf-8")
        #: How errors name it: the configured name and where it is.
        self.described = f"upstream {name} at {self.address}"
        self.allowed_paths = tuple(p.encode("utf-8") for p in config.allowed_paths or ())
        if config.api_key is not None:
            header = self.provider.auth_header
            self.credential: tuple[bytes, bytes] | None = (
                header,
                self.provider.credential(config.api_key),
            )
            self.strip = CREDENTIAL_HEADERS | {header}
        else:
            self.credential = None
            # A client's gateway token is the gateway's, never the upstream's.
            self.strip = CREDENTIAL_HEADERS if client_auth else frozenset()
        self.defaults = self.provider.extra_request_headers()
        #: Calls waiting for the head of their answer, up to ``timeout``.
        self.head_deadlines: Deadlines[Any] = Deadlines(clock, config.timeout, head_timed_out)
        self.health = Health(clock, config.eject_after, config.cooldown, config.max_cooldown)
        #: Attempts by outcome, for /metrics.
        self.outcomes: dict[str, int] = {}

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def failed(self) -> None:
        if self.health.failed():
            self.log.warn(
                "upstream {upstream} ({address}) ejected for {seconds:g}s after failures",
                upstream=self.name,
                address=self.address,
                seconds=self.health.ejected_until - self.health.clock.seconds(),
            )

    def state(self) -> dict[str, Any]:
        return {**self.health.state(), "attempts": dict(self.outcomes)}

    def __repr__(self) -> str:
        return f"<Upstream {self.name} {self.address}>"


def build_upstreams(
    config: GatewayConfig,
    reactor: Any,
    head_timed_out: Callable[[Any], object],
    agents: Mapping[str, Any] | None = None,
) -> dict[str, Upstream]:
    """
    Every configured upstream with a pool of its own.

    :param agents: an agent per upstream name to use instead of a pool (tests).
    """
    from llmgate.http.upstream import make_upstream, tls_policy

    built = {}
    for name, llm in config.upstreams.items():
        pool: Any = None
        if agents is not None and name in agents:
            agent = agents[name]
        else:
            # The wire layer builds a pool for ``config.llm``: give it this one.
            pool, agent = make_upstream(
                reactor, attrs.evolve(config, llm=llm), tls_policy(llm.ca_file, llm.tls_verify)
            )
        built[name] = Upstream(
            name, llm, agent, pool, reactor, head_timed_out, config.auth.enabled
        )
    return built
