"""
A live view to look at: the fake model, an OpenAI-shaped and an
Anthropic-shaped gateway writing one trace directory, and the session
simulator's traffic through them.  For screenshots and for trying the page::

    .venv/bin/python -m tests.uidemo --port 8931 --traces /tmp/traces

It prints the two gateways' URLs and serves until interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.server import Site

from llmgate import config as configuration
from llmgate.service import GatewayParts
from tests.fakeupstream import AgentUpstream
from tests.sessionsim import Simulation, replay


def gateway(kind: str, upstream: str, traces: str, port: int, admin: str | None) -> GatewayParts:
    document: dict[str, Any] = {
        "llm": {"type": kind, "base_url": upstream},
        "middlewares": [{"type": "trace", "config": {"directory": traces}}],
        "ui": {"watch": "auto"},
    }
    if admin:
        document["auth"] = {"admin_tokens": [admin]}
    parts = GatewayParts(configuration.parse(document), reactor)
    reactor.listenTCP(port, parts.site, interface="127.0.0.1")
    return parts


@inlineCallbacks
def main() -> Any:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--traces", required=True)
    parser.add_argument("--conversations", type=int, default=14)
    parser.add_argument("--admin-token", default=None)
    parser.add_argument("--gap", type=float, default=0.01, help="seconds between stream events")
    options = parser.parse_args()
    fake = AgentUpstream(reactor, gap=options.gap)
    site = Site(fake)
    site.noisy = False
    upstream_port = reactor.listenTCP(0, site, interface="127.0.0.1")
    upstream = f"http://127.0.0.1:{upstream_port.getHost().port}"
    urls = {}
    for offset, kind in enumerate(("openai", "anthropic")):
        gateway(kind, upstream, options.traces, options.port + offset, options.admin_token)
        urls[kind] = f"http://127.0.0.1:{options.port + offset}"
    print(f"live view: {urls['openai']}/ui/  and  {urls['anthropic']}/ui/", flush=True)
    sim = Simulation(seed=3, conversations=options.conversations, concurrency=4)
    fake.reply = sim.model
    yield replay(sim, urls)
    print(f"sent {len(sim.outcomes)} calls", flush=True)


if __name__ == "__main__":
    reactor.callWhenRunning(lambda: main().addErrback(lambda f: (f.printTraceback(), reactor.stop())))
    reactor.run()
    sys.exit(0)
