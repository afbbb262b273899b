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
    parser.add_argument("--agent", action="store_true", help="then stream slowly, again and again, in one session")
    parser.add_argument("--history", type=int, default=0, help="trace files of an earlier hour to write first")
    options = parser.parse_args()
    import os

    os.makedirs(options.traces, exist_ok=True)
    if options.history:
        history(options.traces, options.history)
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
    if options.agent:
        yield agent_session(fake, urls["openai"])


AGENT_TURNS = [
    {"role": "system", "content": "You are a coding agent. Use the tools to inspect the repository."},
    {"role": "user", "content": "Why does the relay stall when a client stops reading?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "llmgate/http/relay.py"}'}}]},
    {"role": "tool", "tool_call_id": "call_1",
     "content": "class Relay:\n    def pauseProducing(self): ...\n    def resumeProducing(self): ..."},
]


@inlineCallbacks
def agent_session(fake: AgentUpstream, url: str) -> Any:
    """
    One agent conversation in session ``sess_demo_agent``, its last answer
    streamed slowly, again and again: a stream to watch growing.
    """
    import json

    import treq

    headers = {"content-type": ["application/json"], "x-llmgate-session-id": ["sess_demo_agent"]}
    answer = (
        "The relay registers itself as a push producer of the client's connection, so when "
        "the client stops reading, Twisted pauses it and it pauses the upstream transport in "
        "turn: nothing is buffered without bound. If the client stays paused longer than "
        "llm.idle_timeout, the call is cut with error_kind client_stalled."
    )
    turns = list(AGENT_TURNS)
    fake.reply = lambda body: {
        "text": None, "tool_calls": [{"name": "read_file", "arguments": {"path": "llmgate/http/relay.py"}}]
    }
    body = {"model": "gpt-4o-mini", "messages": turns[:2]}
    yield treq.post(url + "/v1/chat/completions", json.dumps(body).encode(), headers=headers).addCallback(treq.content)
    fake.reply = lambda body: answer
    fake.gap = 0.15
    while True:
        body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                "messages": turns}
        yield treq.post(url + "/v1/chat/completions", json.dumps(body).encode(), headers=headers).addCallback(treq.content)


def history(directory: str, calls: int) -> None:
    """
    Trace files of an earlier hour of traffic (as the trace middleware
    writes them), so the charts have a past.
    """
    import json
    import random
    import time

    rng = random.Random(11)
    now = time.time()
    for n in range(calls):
        minute = rng.triangular(0, 60, 45)
        when = now - 3600 + minute * 60 - 30
        session = f"sess_hist_{rng.randrange(calls // 6):04d}"
        failed = rng.random() < 0.03
        duration = rng.lognormvariate(6.3, 0.45) * (1 + minute / 90)
        document = {
            "id": f"{n:032x}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z",
            "provider": "openai", "model": rng.choice(["gpt-4o-mini", "gpt-4.1"]),
            "session_id": session, "session_decision": "continued",
            "request": {"method": "POST", "path": "/v1/chat/completions", "query": "",
                        "body": {"messages": [{"role": "user", "content": "an earlier question"}]}},
            "response": {"status": 502 if failed else 200,
                         "message": None if failed else {"role": "assistant", "content": "an earlier answer"}},
            "usage": None if failed else {"input_tokens": rng.randrange(200, 1800), "output_tokens": rng.randrange(20, 600)},
            "duration_ms": round(duration, 3), "ttfb_ms": round(duration / 4, 3),
        }
        name = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when % 1 * 1e6):06d}Z-{n:032x}.json"
        with open(f"{directory}/{name}", "w", encoding="utf-8") as handle:
            json.dump(document, handle)


if __name__ == "__main__":
    reactor.callWhenRunning(lambda: main().addErrback(lambda f: (f.printTraceback(), reactor.stop())))
    reactor.run()
    sys.exit(0)
