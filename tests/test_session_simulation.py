"""
Session detection measured end to end: the seeded traffic simulator
(tests/sessionsim.py) replayed through two real gateways (one OpenAI, one
Anthropic) on loopback, in front of the fake model (``AgentUpstream``); every
call's ``x-llmgate-session-id`` is compared with its true conversation.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from tests.conftest import Running
from tests.fakeupstream import AgentUpstream
from tests.sessionsim import SCENARIOS, Simulation, explain, replay, score, table

#: Bound on a whole replay, so a broken gateway fails the test, not the run.
WAIT = 60.0


@pytest.fixture
def upstream() -> Iterator[Running]:
    """
    The fake model (overrides conftest's plain fake upstream for this module).
    """
    resource = AgentUpstream(reactor)
    site = Site(resource)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield Running(url=f"http://127.0.0.1:{port.getHost().port}", port=port, resource=resource)
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def gateways(upstream: Running, make_gateway: Any) -> dict[str, Running]:
    return {"openai": make_gateway(), "anthropic": make_gateway(llm__type="anthropic")}


@pytest.fixture
def pool() -> Iterator[HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=True)
    yield pool
    pytest_twisted.blockon(pool.closeCachedConnections())


def decisions(gateways: dict[str, Running]) -> dict[str, int]:
    total: dict[str, int] = {}
    for running in gateways.values():
        assert running.parts is not None and running.parts.sessions is not None
        for how, n in running.parts.sessions.detector.counts.items():
            total[how] = total.get(how, 0) + n
    return total


@pytest.mark.parametrize("seed", [1, 2])
@pytest_twisted.inlineCallbacks
def test_simulated_traffic_is_labelled_by_conversation(
    seed: int, upstream: Running, gateways: dict[str, Running], pool: HTTPConnectionPool
) -> Any:
    """
    Over a few hundred interleaved calls of every scenario, calls share a
    session id exactly when they share a conversation: pairwise precision
    and recall of at least 0.99, overall and for each scenario.
    """
    sim = Simulation(seed=seed, conversations=56)
    upstream.resource.reply = sim.model
    urls = {name: running.url for name, running in gateways.items()}
    outcomes = yield replay(sim, urls, pool).addTimeout(WAIT, reactor)
    scores = score(outcomes)
    report = table(scores) + "\n" + explain(outcomes) + f"\ndecisions: {decisions(gateways)}"
    assert set(scores) == {"all", *SCENARIOS}, report
    assert 300 <= scores["all"].calls, report
    for name, s in scores.items():
        assert s.precision >= 0.99 and s.recall >= 0.99, f"{name}\n{report}"
    # The run went through every rule, not just the easy one.
    counts = decisions(gateways)
    for how in ("new", "continued", "branched", "retry", "truncated", "previous_response", "system_changed", "header"):
        assert counts[how] > 0, (how, counts)
    fuzzy = ("branched", "retry", "truncated", "system_changed")
    assert counts["fuzzy_matches"] == sum(counts[how] for how in fuzzy)


@pytest_twisted.inlineCallbacks
def test_concurrent_identical_openings_stay_apart(
    upstream: Running, gateways: dict[str, Running], pool: HTTPConnectionPool
) -> Any:
    """
    Three clients send the same opening at the same moment: three sessions,
    and each one's second turn stays in its own.
    """
    counter = iter(range(1000))
    upstream.resource.reply = lambda body: f"answer {next(counter)} to the same question"
    url = gateways["openai"].url + "/v1/chat/completions"
    opening = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]

    def post(messages: list[Any]) -> Any:
        d = treq.post(url, json={"model": "gpt-x", "messages": messages}, pool=pool)
        d.addCallback(lambda r: treq.json_content(r).addCallback(lambda doc: (r, doc)))
        return d

    firsts = yield DeferredList([post(opening) for _ in range(3)], fireOnOneErrback=True)
    sessions = [r.headers.getRawHeaders(b"x-llmgate-session-id")[0] for _, (r, _) in firsts]
    assert len(set(sessions)) == 3
    seconds = yield DeferredList(
        [
            post([*opening, doc["choices"][0]["message"], {"role": "user", "content": "And of Spain?"}])
            for _, (_, doc) in firsts
        ],
        fireOnOneErrback=True,
    )
    assert [r.headers.getRawHeaders(b"x-llmgate-session-id")[0] for _, (r, _) in seconds] == sessions


@inlineCallbacks
def _sdk_conversation(base: str) -> Any:
    """
    Two conversations driven by the official SDKs (in threads), each three
    turns, streamed and not: the session ids the gateway gave.
    """
    import anthropic
    import openai
    from twisted.internet.threads import deferToThread

    def run_openai() -> list[str]:
        client = openai.OpenAI(base_url=base["openai"] + "/v1", api_key="sk-client", max_retries=0, timeout=10)
        messages: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        seen = []
        for turn in range(3):
            if turn == 1:
                stream = client.chat.completions.with_raw_response.create(
                    model="gpt-x", messages=messages, stream=True
                )
                seen.append(stream.headers["x-llmgate-session-id"])
                text = "".join(
                    chunk.choices[0].delta.content or "" for chunk in stream.parse() if chunk.choices
                )
                messages.append({"role": "assistant", "content": text})
            else:
                raw = client.chat.completions.with_raw_response.create(model="gpt-x", messages=messages)
                seen.append(raw.headers["x-llmgate-session-id"])
                messages.append(raw.parse().choices[0].message.model_dump())
            messages.append({"role": "user", "content": f"turn {turn}"})
        return seen

    def run_anthropic() -> list[str]:
        client = anthropic.Anthropic(base_url=base["anthropic"], api_key="sk-ant", max_retries=0, timeout=10)
        messages: list[Any] = [{"role": "user", "content": "Hi"}]
        seen = []
        for turn in range(3):
            if turn == 1:
                with client.messages.stream(model="claude-x", max_tokens=50, system="Be brief.", messages=messages) as s:
                    seen.append(s.response.headers["x-llmgate-session-id"])
                    message = s.get_final_message()
            else:
                raw = client.messages.with_raw_response.create(
                    model="claude-x", max_tokens=50, system="Be brief.", messages=messages
                )
                seen.append(raw.headers["x-llmgate-session-id"])
                message = raw.parse()
            messages.append({"role": "assistant", "content": [b.model_dump() for b in message.content]})
            messages.append({"role": "user", "content": f"turn {turn}"})
        return seen

    first = yield deferToThread(run_openai)
    second = yield deferToThread(run_anthropic)
    return first, second


@pytest_twisted.inlineCallbacks
def test_sdk_clients_keep_one_session(upstream: Running, gateways: dict[str, Running]) -> Any:
    """
    Histories rebuilt by the official SDKs (a dumped message with its null
    fields, a streamed answer, Anthropic content blocks) continue their
    session.
    """
    counter = iter(range(1000))
    upstream.resource.reply = lambda body: f"answer {next(counter)} in a few words"
    urls = {name: running.url for name, running in gateways.items()}
    first, second = yield _sdk_conversation(urls).addTimeout(WAIT, reactor)
    assert len(set(first)) == 1 and len(set(second)) == 1
    assert first[0] != second[0]
    counts = decisions(gateways)
    assert counts.get("continued") == 4 and counts.get("fuzzy_matches", 0) == 0, counts
