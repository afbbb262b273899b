"""
Several gateway processes acting as one, through Redis: the session
simulator's calls alternate between two real gateway processes per provider,
and must be labelled exactly as one process labels them; Redis stopped in
the middle of traffic fails no call, and sessions go back to Redis when it
returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any, Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from tests.fakeupstream import AgentUpstream
from tests.redisserver import redis_server  # noqa: F401  (a fixture)
from tests.sessionsim import SCENARIOS, Simulation, explain, replay, score, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Gateway:
    """
    One gateway process (twistd), started on a free port.
    """

    def __init__(self, directory: str, name: str, document: dict[str, Any]) -> None:
        config = os.path.join(directory, f"{name}.yaml")
        with open(config, "w") as handle:
            json.dump(document, handle)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
        self.process = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", "llmgate", "--config", config,
             "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.url = ""
        self.log: list[str] = []

    def wait_listening(self) -> None:
        """
        Read the log until the site says which port it got (blocking: run in
        a thread).
        """
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "GatewaySite starting on" in line:
                port = int(line.rsplit(" ", 1)[1])
                self.url = f"http://127.0.0.1:{port}"
                # Keep reading its log, so a full pipe never blocks it.
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise AssertionError("gateway exited before listening")

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def model() -> Iterator[Any]:
    resource = AgentUpstream(reactor)
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}"
    yield resource
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def pool() -> Iterator[HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=True)
    yield pool
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def fleet(tmp_path, model, redis_server) -> Iterator[dict[str, list[Gateway]]]:  # noqa: F811
    """
    Two gateway processes for each provider, all on one Redis.
    """
    fleet: dict[str, list[Gateway]] = {}
    for provider in ("openai", "anthropic"):
        document = {
            "llm": {"base_url": model.url, "type": provider},
            "session": {"store": {"type": "redis", "url": redis_server.url}},
            "middlewares": [],
        }
        fleet[provider] = [
            Gateway(str(tmp_path), f"{provider}-{n}", document) for n in range(2)
        ]
    try:
        for gateways in fleet.values():
            for gateway in gateways:
                gateway.wait_listening()
        yield fleet
    finally:
        for gateways in fleet.values():
            for gateway in gateways:
                gateway.stop()


def alternating(fleet: dict[str, list[Gateway]]) -> Any:
    """
    A route for :func:`replay` that sends consecutive calls of each
    conversation to alternate gateway processes.
    """
    turns: dict[Any, int] = {}

    def route(call: Any) -> str:
        turn = turns[call.conversation_id] = turns.get(call.conversation_id, -1) + 1
        gateways = fleet[call.provider]
        return gateways[turn % len(gateways)].url

    return route


@pytest_twisted.inlineCallbacks
def test_two_processes_on_one_redis_label_as_one(fleet, model, pool) -> Any:
    sim = Simulation(seed=3, conversations=40)
    model.reply = sim.model
    outcomes = yield replay(sim, pool=pool, route=alternating(fleet)).addTimeout(120, reactor)
    scores = score(outcomes)
    report = table(scores) + "\n" + explain(outcomes)
    assert set(scores) == {"all", *SCENARIOS}, report
    for name, s in scores.items():
        assert s.precision >= 0.99, report
        assert s.recall >= 0.99, report


@pytest_twisted.inlineCallbacks
def test_redis_stopped_mid_traffic_fails_no_call_and_sessions_return(
    fleet, model, pool, redis_server  # noqa: F811
) -> Any:
    gateways = fleet["openai"]

    @inlineCallbacks
    def conversation(turns: int, gateway_offset: int) -> Any:
        messages = [{"role": "user", "content": f"topic {gateway_offset}"}]
        sessions = []
        for turn in range(turns):
            url = gateways[(turn + gateway_offset) % 2].url
            response = yield treq.post(
                url + "/v1/chat/completions",
                json.dumps({"model": "m", "messages": messages}).encode(),
                headers={"content-type": ["application/json"]}, pool=pool, persistent=True,
            )
            body = json.loads((yield treq.content(response)))
            assert response.code == 200
            sessions.append(response.headers.getRawHeaders(b"x-llmgate-session-id")[0])
            messages += [body["choices"][0]["message"], {"role": "user", "content": f"more {turn}"}]
        return sessions

    before = yield conversation(4, 0)
    assert len(set(before)) == 1
    yield deferToThread(redis_server.stop)
    during = yield gatherResults([conversation(4, n) for n in range(3)])
    assert all(len(s) == 4 for s in during)  # every call answered 200
    yield deferToThread(redis_server.start)
    from twisted.internet.task import deferLater

    @inlineCallbacks
    def metrics_views() -> Any:
        views = []
        for gateway in gateways:
            response = yield treq.get(gateway.url + "/metrics", pool=pool, persistent=True)
            views.append(json.loads((yield treq.content(response))))
        return views

    # The stores probe Redis again on a call, at most once per probe interval
    # (3 s); a call answered while its probe connects still uses the fallback.
    # Calls go on (polling, no fixed wait) until both gateways say they are
    # back on Redis.
    for _ in range(300):
        yield conversation(2, 0)
        metrics = yield metrics_views()
        if not any(view["sessions"]["fallback_active"] for view in metrics):
            break
        yield deferLater(reactor, 0.1, lambda: None)
    after = yield conversation(4, 1)
    assert len(set(after)) == 1  # one session across both processes again
    metrics = yield metrics_views()
    for view in metrics:
        sessions = view["sessions"]
        assert sessions["fallbacks"] >= 1
        assert sessions["fallback_active"] is False
