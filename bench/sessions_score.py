#!/usr/bin/env python3
"""
Session detection accuracy: a large seeded run of the traffic simulator
(tests/sessionsim.py) replayed through two real gateways (OpenAI and
Anthropic) in front of the fake model, all in this process on 127.0.0.1
(ports chosen by the system); prints the pairwise precision and recall per
scenario as a Markdown table.

    .venv/bin/python bench/sessions_score.py [--seed N] [--conversations N] [--extra]

``--mixed`` instead replays mixed traffic through ONE gateway, once with
routes to an upstream per API type and once with a single ``type: openai``
upstream, and reports per API as well.

``--extra`` adds a second run of the scenarios outside the documented
guarantees (``EXTRA_SCENARIOS``), reported apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.web.client import HTTPConnectionPool  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from llmgate import config as configuration  # noqa: E402
from llmgate.service import GatewayParts  # noqa: E402
from tests.fakeupstream import AgentUpstream  # noqa: E402
from tests.sessionsim import (  # noqa: E402
    EXTRA_SCENARIOS,
    SCENARIOS,
    Simulation,
    coverage,
    explain,
    mixed_topologies,
    replay,
    score,
    score_by_api,
    table,
)


@inlineCallbacks
def run(reactor: Any, seed: int, conversations: int, scenarios: tuple[str, ...], title: str) -> Any:
    upstream = AgentUpstream(reactor)
    site = Site(upstream)
    site.noisy = False
    upstream_port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{upstream_port.getHost().port}"
    gateways: dict[str, GatewayParts] = {}
    ports = [upstream_port]
    urls = {}
    for kind in ("openai", "anthropic"):
        parts = GatewayParts(configuration.parse({"llm": {"base_url": base, "type": kind}}), reactor)
        port = reactor.listenTCP(0, parts.site, interface="127.0.0.1")
        ports.append(port)
        gateways[kind] = parts
        urls[kind] = f"http://127.0.0.1:{port.getHost().port}"
    pool = HTTPConnectionPool(reactor, persistent=True)
    sim = Simulation(seed=seed, conversations=conversations, scenarios=scenarios)
    upstream.reply = sim.model
    started = time.perf_counter()
    outcomes = yield replay(sim, urls, pool, reactor)
    elapsed = time.perf_counter() - started
    scores = score(outcomes)
    print(f"### {title}\n")
    print(
        f"seed {seed}, {conversations} clients, "
        f"{len({o.call.conversation_id for o in outcomes})} conversations, "
        f"{len(outcomes)} calls ({sum(1 for o in outcomes if o.session_id is None)} unlabelled: "
        f"the client gave up), replayed in {elapsed:.1f} s\n"
    )
    print(table(scores))
    print()
    counts: dict[str, int] = {}
    for parts in gateways.values():
        assert parts.sessions is not None
        for how, n in parts.sessions.detector.counts.items():
            counts[how] = counts.get(how, 0) + n
    print("decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("calls: " + coverage(outcomes))
    mistakes = explain(outcomes, max_lines=30)
    if mistakes != "no mistakes":
        print("\n```\n" + mistakes + "\n```")
    print()
    yield pool.closeCachedConnections()
    for parts in gateways.values():
        yield parts.pipeline.close()
        yield parts.close_pools()
    for port in ports:
        yield port.stopListening()
    return scores


@inlineCallbacks
def run_mixed(reactor: Any, seed: int, conversations: int) -> Any:
    """
    Mixed traffic through ONE gateway, in each topology of
    ``mixed_topologies``: scores per API and per scenario.
    """
    upstream = AgentUpstream(reactor)
    ports = []
    for _ in range(2):
        site = Site(upstream)
        site.noisy = False
        ports.append(reactor.listenTCP(0, site, interface="127.0.0.1"))
    openai_url, anthropic_url = (f"http://127.0.0.1:{p.getHost().port}" for p in ports)
    for topology, document in mixed_topologies(openai_url, anthropic_url).items():
        parts = GatewayParts(configuration.parse(document), reactor)
        port = reactor.listenTCP(0, parts.site, interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=True)
        sim = Simulation(seed=seed, conversations=conversations)
        upstream.reply = sim.model
        started = time.perf_counter()
        outcomes = yield replay(sim, pool=pool, reactor=reactor, route=lambda call: url)
        elapsed = time.perf_counter() - started
        print(f"### Mixed traffic, one gateway: {topology}\n")
        print(
            f"seed {seed}, {conversations} clients, {len(outcomes)} calls "
            f"({sum(1 for o in outcomes if o.session_id is None)} unlabelled), "
            f"replayed in {elapsed:.1f} s\n"
        )
        print(table(score_by_api(outcomes)).replace("| scenario |", "| API |"))
        print()
        print(table(score(outcomes)))
        print()
        mistakes = explain(outcomes, max_lines=30)
        if mistakes != "no mistakes":
            print("\n```\n" + mistakes + "\n```\n")
        yield pool.closeCachedConnections()
        yield port.stopListening()
        yield parts.pipeline.close()
        yield parts.close_pools()
    for port in ports:
        yield port.stopListening()


@inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--extra", action="store_true", help="also measure EXTRA_SCENARIOS")
    parser.add_argument(
        "--mixed", action="store_true", help="mixed traffic through one gateway, both topologies"
    )
    args = parser.parse_args(argv)
    if args.mixed:
        yield run_mixed(reactor, args.seed, args.conversations)
        return
    yield run(reactor, args.seed, args.conversations, SCENARIOS, "Documented scenarios")
    if args.extra:
        yield run(
            reactor,
            args.seed,
            max(40, args.conversations // 4),
            SCENARIOS + EXTRA_SCENARIOS,
            "With scenarios outside the documented guarantees",
        )


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
