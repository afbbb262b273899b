"""
Session detection with mixed traffic through ONE gateway: the simulator's
OpenAI chat, Responses and Anthropic conversations (tools, streams,
truncation, retries, resets) interleaved, the shape of each call decided
from its path.  Two topologies (see ``mixed_topologies``): routes sending
each API to an upstream of its own type, and a single ``type: openai``
upstream that answers every API.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from llmgate import config as configuration
from llmgate.service import GatewayParts
from tests.fakeupstream import AgentUpstream
from tests.sessionsim import (
    SCENARIOS,
    Simulation,
    explain,
    mixed_topologies,
    replay,
    score,
    score_by_api,
    table,
)

WAIT = 90.0


@pytest.fixture
def model() -> Iterator[tuple[AgentUpstream, str, str]]:
    """
    The fake model on two sockets (one per upstream of the routed topology).
    """
    resource = AgentUpstream(reactor)
    ports = []
    for _ in range(2):
        site = Site(resource)
        site.noisy = False
        ports.append(reactor.listenTCP(0, site, interface="127.0.0.1"))
    urls = [f"http://127.0.0.1:{p.getHost().port}" for p in ports]
    yield resource, urls[0], urls[1]
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.mark.parametrize("topology", ["routed", "single"])
@pytest.mark.parametrize("seed", [1, 2])
@pytest_twisted.inlineCallbacks
def test_mixed_traffic_through_one_gateway_is_labelled_by_conversation(
    model: Any, topology: str, seed: int
) -> Any:
    resource, openai_url, anthropic_url = model
    document = mixed_topologies(openai_url, anthropic_url)[topology]
    parts = GatewayParts(configuration.parse(document), reactor)
    port = reactor.listenTCP(0, parts.site, interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=True)
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        sim = Simulation(seed=seed, conversations=48)
        resource.reply = sim.model
        outcomes = yield replay(sim, pool=pool, route=lambda call: url).addTimeout(WAIT, reactor)
    finally:
        yield pool.closeCachedConnections()
        yield port.stopListening()
        yield parts.pipeline.close()
        yield parts.close_pools()
    by_api = score_by_api(outcomes)
    scores = score(outcomes)
    report = table(by_api) + "\n" + table(scores) + "\n" + explain(outcomes)
    assert set(by_api) == {"anthropic", "openai-chat", "openai-responses"}, report
    assert set(scores) == {"all", *SCENARIOS}, report
    for name, s in {**by_api, **scores}.items():
        assert s.precision >= 0.99 and s.recall >= 0.99, f"{name}\n{report}"
