"""
The Redis session store against a real, private ``redis-server``
(tests/redisserver.py): the in-memory store's semantics, operation by
operation and through the detector; expiry, eviction and key bounds in
Redis itself; two gateways sharing one Redis; and what happens when Redis
goes away and comes back.
"""

from __future__ import annotations

import random
import time
from typing import Any, Awaitable, Callable, Iterator

import pytest
import pytest_twisted
import txredisapi
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from llmgate.config import SessionConfig
from llmgate.interfaces import ISessionStore
from llmgate.sessions.canonical import history_of
from llmgate.sessions.detect import CONTINUED, NEW, Decision, SessionDetector
from llmgate.sessions.memory import KEYS_PER_SESSION, MemorySessionStore
from llmgate.sessions.redis import RedisSessionStore, parse_redis_url
from tests.redisserver import RedisServer, redis_server  # noqa: F401 (fixture)

PREFIX = "test:"
NAMESPACE = "llmgate.sessions.redis.RedisSessionStore"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def maybe(value: Any) -> Any:
    """
    A store result, whether the store answered at once or with a Deferred.
    """
    if isinstance(value, Deferred):
        return await value
    return value


async def sleep(seconds: float) -> None:
    await deferLater(_reactor(), seconds, lambda: None)


#: Bound on every wait for something to happen: a hang guard, not a measure.
WAIT = 10.0


async def until(condition: Callable[[], Any], nudge: Callable[[], Any] | None = None) -> None:
    """
    Poll ``condition`` (calling ``nudge`` before each look, for state that
    changes only when the store is used) until it holds; fail after WAIT.
    """
    deadline = _reactor().seconds() + WAIT
    while True:
        if nudge is not None:
            await maybe(nudge())
        if await maybe(condition()):
            return
        assert _reactor().seconds() < deadline, "condition never held"
        await sleep(0.01)


def at_once(operation: Callable[[], Any]) -> Any:
    """
    The result of a store call that must wait on nothing: it is there when
    the call returns (a plain value, or a Deferred already fired).
    """
    result = operation()
    if isinstance(result, Deferred):
        assert result.called, "the call waited on something"
        outcome: list[Any] = []
        result.addBoth(outcome.append)
        return outcome[0]
    return result


def key(n: int) -> bytes:
    return n.to_bytes(16, "big")


def chat(*messages: Any) -> Any:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, *messages]}
    return history_of("openai", b"/v1/chat/completions", body)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


async def call(detector: SessionDetector, history: Any, answer: Any) -> Decision:
    pending, decided = detector.begin(history)
    decision = await maybe(decided)
    await maybe(detector.complete(pending, answer))
    return decision


@pytest.fixture
def stores(redis_server: RedisServer) -> Iterator[Callable[..., RedisSessionStore]]:  # noqa: F811
    """
    Make Redis session stores on the test's server; closed afterwards.
    """
    made: list[RedisSessionStore] = []

    def make(**options: Any) -> RedisSessionStore:
        options.setdefault("key_prefix", PREFIX)
        url = options.pop("url", redis_server.url)
        store = RedisSessionStore(_reactor(), url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        pytest_twisted.blockon(store.close())


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[Callable[[], Awaitable[Any]]]:  # noqa: F811
    """
    A plain Redis client on the test's server, to look at what the store wrote.
    """
    made: list[Any] = []

    async def connect() -> Any:
        args = parse_redis_url(redis_server.url)
        client = await txredisapi.Connection(
            args["host"], args["port"], reconnect=False, convertNumbers=False
        )
        made.append(client)
        return client

    yield connect
    for client in made:
        pytest_twisted.blockon(client.disconnect())


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """
    The store's log events during the test.
    """
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == NAMESPACE:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


# -- the interface and the memory store's semantics ------------------------------------


@pytest_twisted.ensureDeferred
async def test_provides_the_interface(stores: Any) -> None:
    store = stores()
    assert verifyObject(ISessionStore, store)
    assert await store.connect() is True


def test_url_parsing() -> None:
    assert parse_redis_url("redis://127.0.0.1:7000/3") == {
        "host": "127.0.0.1", "port": 7000, "dbid": 3, "username": None, "password": None,
    }
    assert parse_redis_url("redis://:s%40cret@127.0.0.1")["password"] == "s@cret"
    with pytest.raises(ValueError):
        parse_redis_url("http://127.0.0.1:6379")
    with pytest.raises(ValueError):
        parse_redis_url("redis://127.0.0.1/zero")


@pytest_twisted.ensureDeferred
async def test_find_remember_latest_and_first_claim(stores: Any) -> None:
    store = stores()
    assert await store.find([key(1)]) is None
    a = await store.new_session()
    b = await store.new_session()
    assert a.startswith("sess_") and len(a) == 5 + 24 and a != b
    await store.remember(a, [key(1), key(2)])
    # the first known key in order decides
    assert await store.find([key(9), key(2), key(1)]) == (1, a, True)
    await store.remember(a, [key(3)])
    assert await store.find([key(1)]) == (0, a, False)
    assert await store.find([key(3)]) == (0, a, True)
    # a key held by a live session keeps its first owner
    await store.remember(b, [key(3), key(4)])
    assert await store.find([key(3)]) == (0, a, True)
    assert await store.find([key(4)]) == (0, b, True)
    # not latest: the session's latest state stays what it was
    await store.remember(a, [key(5)], latest=False)
    assert await store.find([key(5)]) == (0, a, False)
    assert await store.find([key(3)]) == (0, a, True)
    # touch creates a session the client named, and keeps it
    await store.touch("client-named:1")
    await store.remember("client-named:1", [key(6)])
    assert await store.find([key(6)]) == (0, "client-named:1", True)
    figures = await store.fetch_stats()
    assert figures["active_sessions"] == 3
    assert figures["sessions_created"] == 3
    assert figures["session_creation_rate_per_minute"] == 3
    assert figures["store"] == "redis"
    assert figures["fallback_active"] is False and figures["fallbacks"] == 0


@pytest_twisted.ensureDeferred
async def test_same_semantics_as_the_memory_store(stores: Any) -> None:
    """
    A seeded random run of every operation on both stores, one Clock:
    every answer and figure agrees (session ids mapped one to one).  The
    memory store is made to expire before each operation, as the scripts do.
    """
    clock = Clock()
    clock.advance(10_000)
    memory = MemorySessionStore(clock, max_sessions=6, ttl=60.0)
    shared = stores(clock=clock, max_sessions=6, ttl=60.0)
    rng = random.Random(20240611)
    pool = [key(n) for n in range(220)]
    pairs: list[tuple[str, str]] = []
    to_memory: dict[str, str] = {}
    seen = {"hit_latest": 0, "hit_earlier": 0, "miss": 0, "full": 0}
    for step in range(900):
        clock.advance(rng.choice([0.5, 1.0, 1.5, 3.0, 11.0]))
        memory.find([])
        roll = rng.random()
        if roll < 0.08 or not pairs:
            m = memory.new_session()
            r = await shared.new_session()
            pairs.append((m, r))
            to_memory[r] = m
        elif roll < 0.16:
            if rng.random() < 0.3:
                name = f"named-{rng.randrange(4)}"
                memory.touch(name)
                await shared.touch(name)
                if (name, name) not in pairs:
                    pairs.append((name, name))
                    to_memory[name] = name
            else:
                m, r = rng.choice(pairs)
                memory.touch(m)
                await shared.touch(r)
        elif roll < 0.6:
            # one busy session lives long enough to fill up its keys
            which = rng.random()
            m, r = ("busy", "busy") if which < 0.4 else pairs[-1] if which < 0.7 else rng.choice(pairs)
            to_memory["busy"] = "busy"
            keys = rng.sample(pool, rng.randint(1, 4))
            latest = rng.random() < 0.75
            memory.remember(m, keys, latest)
            await shared.remember(r, keys, latest)
        else:
            keys = rng.sample(pool, rng.randint(1, 8))
            expected = memory.find(keys)
            found = await shared.find(keys)
            if found is not None:
                found = (found[0], to_memory[found[1]], found[2])
                seen["hit_latest" if found[2] else "hit_earlier"] += 1
            else:
                seen["miss"] += 1
            assert found == expected, f"step {step}: find({len(keys)} keys)"
        if any(len(s.keys) >= KEYS_PER_SESSION for s in memory._sessions.values()):
            seen["full"] += 1
    figures = await shared.fetch_stats()
    mine = memory.stats()
    for name in ("active_sessions", "sessions_created", "sessions_expired", "sessions_evicted"):
        assert figures[name] == mine[name], name
    # the run did exercise what it is meant to compare
    assert mine["sessions_expired"] > 5 and mine["sessions_evicted"] > 5
    assert all(seen.values()), seen


def _scenario() -> list[tuple[Any, Any]]:
    """
    Calls (history, answer) covering every detector rule that reads the
    store: continue, regenerate, edit, retry, truncate, identical openings.
    """
    hello = [user("Write a poem")]
    one = assistant("Roses")
    calls: list[tuple[Any, Any]] = [
        (chat(*hello), one),
        (chat(*hello, one, user("Rhyme")), assistant("Roses rhyme")),
        (chat(*hello, one, user("Rhyme")), assistant("Roses, in rhyme")),  # regenerated
        (chat(*hello, one, user("Longer")), assistant("Long roses")),  # edited
        (chat(user("Other")), None),  # failed first call ...
        (chat(user("Other")), assistant("Other answer")),  # ... retried
        (chat(*hello), one),  # an identical opening: a new session
        (chat(*hello, one, user("Rhyme"), assistant("Roses rhyme"), user("More")), assistant("m")),
        (chat(user("Rhyme"), assistant("Roses rhyme"), user("More"), assistant("m"), user("x")), assistant("y")),
    ]
    return calls


@pytest_twisted.ensureDeferred
async def test_detector_decides_alike_over_both_stores(stores: Any) -> None:
    config = SessionConfig()
    results = []
    for store in (MemorySessionStore(Clock()), stores()):
        detector = SessionDetector(store, config)
        decisions = [await call(detector, h, a) for h, a in _scenario()]
        names: dict[str, int] = {}
        results.append([(d.how, names.setdefault(d.session_id, len(names))) for d in decisions])
    assert results[0] == results[1]
    hows = [how for how, _ in results[1]]
    assert hows == ["new", "continued", "branched", "branched", "new", "retry", "new", "branched", "truncated"]


# -- time, bounds, Redis's own state ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sessions_expire_after_ttl_from_last_use(stores: Any, raw: Any) -> None:
    clock = Clock()
    clock.advance(1000)
    store = stores(clock=clock, ttl=2.0)
    client = await raw()
    a = await store.new_session()
    await store.remember(a, [key(1)])
    # every key carries a Redis TTL: twice the session TTL (2 s -> 4000 ms)
    for name in (f"{PREFIX}k:{key(1).hex()}", f"{PREFIX}s:{a}:keys", f"{PREFIX}s:{a}:latest"):
        left = int(await client.execute_command("PTTL", name))
        assert 3000 < left <= 4000, name
    clock.advance(1.9)
    assert await store.find([key(1)]) == (0, a, True)
    await store.touch(a)
    clock.advance(1.9)  # 3.8 s after creation, 1.9 s after the last use
    assert await store.find([key(1)]) == (0, a, True)
    clock.advance(0.1)
    assert await store.find([key(1)]) is None
    figures = await store.fetch_stats()
    assert (figures["active_sessions"], figures["sessions_expired"]) == (0, 1)
    # the expired session's keys are gone, and a key may be claimed again
    assert int(await client.execute_command("EXISTS", f"{PREFIX}k:{key(1).hex()}", f"{PREFIX}s:{a}:keys")) == 0
    b = await store.new_session()
    await store.remember(b, [key(1)])
    assert await store.find([key(1)]) == (0, b, True)


@pytest_twisted.ensureDeferred
async def test_redis_ttls_remove_what_is_left(stores: Any, raw: Any) -> None:
    """
    Keys of a session nobody cleans up (a gateway that died) vanish by
    their own Redis TTL.
    """
    store = stores(ttl=0.2)
    client = await raw()
    a = await store.new_session()
    await store.remember(a, [key(7)])
    name = f"{PREFIX}k:{key(7).hex()}"
    assert int(await client.execute_command("EXISTS", name)) == 1
    names = (name, f"{PREFIX}s:{a}:keys", f"{PREFIX}s:{a}:latest")
    await until(lambda: client.execute_command("EXISTS", *names).addCallback(lambda n: int(n) == 0))


@pytest_twisted.ensureDeferred
async def test_least_recently_used_session_is_evicted_with_its_keys(stores: Any, raw: Any) -> None:
    clock = Clock()
    store = stores(clock=clock, max_sessions=3)
    client = await raw()
    sessions = []
    for n in range(3):
        clock.advance(1)
        s = await store.new_session()
        await store.remember(s, [key(n)])
        sessions.append(s)
    a, b, c = sessions
    clock.advance(1)
    await store.touch(a)  # b is now the least recently used
    clock.advance(1)
    d = await store.new_session()
    figures = await store.fetch_stats()
    assert (figures["active_sessions"], figures["sessions_evicted"]) == (3, 1)
    assert await store.find([key(1)]) is None
    assert await store.find([key(0)]) == (0, a, True)
    assert await store.find([key(2)]) == (0, c, True)
    members = await client.execute_command("ZRANGE", f"{PREFIX}sessions", 0, -1)
    assert sorted(members) == sorted([a, c, d])
    gone = [f"{PREFIX}k:{key(1).hex()}", f"{PREFIX}s:{b}:keys", f"{PREFIX}s:{b}:latest"]
    assert int(await client.execute_command("EXISTS", *gone)) == 0


@pytest_twisted.ensureDeferred
async def test_keys_per_session_are_bounded(stores: Any, raw: Any) -> None:
    store = stores()
    client = await raw()
    s = await store.new_session()
    for n in range(KEYS_PER_SESSION + 6):
        await store.remember(s, [key(n)])
    assert int(await client.execute_command("LLEN", f"{PREFIX}s:{s}:keys")) == KEYS_PER_SESSION
    assert await store.find([key(5)]) is None
    assert await store.find([key(6)]) == (0, s, False)
    assert int(await client.execute_command("EXISTS", f"{PREFIX}k:{key(5).hex()}")) == 0


@pytest_twisted.ensureDeferred
async def test_script_flushed_from_redis_is_sent_again(stores: Any, raw: Any) -> None:
    store = stores()
    client = await raw()
    s = await store.new_session()
    await client.execute_command("SCRIPT", "FLUSH")
    await store.remember(s, [key(1)])
    assert await store.find([key(1)]) == (0, s, True)
    assert store.fallbacks == 0


@pytest_twisted.ensureDeferred
async def test_stats_are_synchronous_for_metrics(stores: Any) -> None:
    store = stores()
    await store.new_session()
    figures = store.stats()  # no Deferred: /metrics reads it synchronously
    assert isinstance(figures, dict) and figures["store"] == "redis"
    # The background refresh it started brings the figure.
    await until(lambda: store.stats()["active_sessions"] == 1)


# -- two gateways, one Redis ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_gateways_share_sessions(stores: Any) -> None:
    config = SessionConfig()
    one = SessionDetector(stores(), config)
    two = SessionDetector(stores(), config)
    opening = chat(user("Hello"))
    # identical first calls at the same moment, one on each gateway
    (p1, d1), (p2, d2) = one.begin(opening), two.begin(opening)
    first, second = await gatherResults([d1, d2])
    assert (first.how, second.how) == (NEW, NEW)
    assert first.session_id != second.session_id
    # each answered differently; both remembered at the same moment
    await gatherResults([one.complete(p1, assistant("Hi one")), two.complete(p2, assistant("Hi two"))])
    # a continuation lands on either gateway and finds its own session
    across = await call(two, chat(user("Hello"), assistant("Hi one"), user("Next")), assistant("ok"))
    assert (across.session_id, across.how) == (first.session_id, CONTINUED)
    back = await call(one, chat(user("Hello"), assistant("Hi two"), user("Next")), assistant("ok"))
    assert (back.session_id, back.how) == (second.session_id, CONTINUED)


@pytest_twisted.ensureDeferred
async def test_concurrent_identical_claims_have_one_owner(stores: Any) -> None:
    one, two = stores(), stores()
    a, b = await gatherResults([one.new_session(), two.new_session()])
    keys = [key(n) for n in range(10, 14)]
    await gatherResults([one.remember(a, keys), two.remember(b, keys)])
    owners = {(await store.find([k]))[1] for store in (one, two) for k in keys}
    assert len(owners) == 1 and owners <= {a, b}


# -- Redis away and back ------------------------------------------------------------------------


async def timed(operation: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = await maybe(operation())
    return result, time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_redis_stopped_mid_traffic_then_back(
    stores: Any, redis_server: RedisServer, logged: Any  # noqa: F811
) -> None:
    store = stores(timeout=0.3, probe_interval=0.3)
    detector = SessionDetector(store, SessionConfig())
    history = [user("Start")]

    async def turn(n: int) -> Decision:
        nonlocal history
        answer = assistant(f"answer {n}")
        # Never a hang: each store call has its timeout.
        decision = await Deferred.fromCoroutine(
            call(detector, chat(*history), answer)
        ).addTimeout(WAIT, _reactor())
        history = [*history, answer, user(f"question {n}")]
        return decision

    first = await turn(0)
    assert (await turn(1)).session_id == first.session_id
    redis_server.stop()
    # Redis gone: calls go on in this process's memory, none fails
    outage = [await turn(n) for n in range(2, 6)]
    assert outage[0].how == NEW  # the fallback never heard of the session
    assert {d.session_id for d in outage} == {outage[0].session_id}
    assert store.fallback_active is True and store.fallbacks == 1
    assert store.stats()["fallback_active"] is True
    warnings = [e for e in logged if e["log_level"].name == "warn"]
    assert len(warnings) == 1 and warnings[0]["address"] == f"127.0.0.1:{redis_server.port}"
    # each call on the fallback is immediate
    at_once(lambda: store.find([key(1)]))
    # Redis back on the same port (empty: it persists nothing)
    redis_server.start()
    await turn(6)  # may start the probe; answered by the fallback meanwhile
    # Calls start a probe once per probe interval; polled until one succeeds.
    await until(lambda: not store.fallback_active, nudge=lambda: store.find([key(99)]))
    calls = store.fallback_calls
    back = await turn(7)
    assert store.fallback_calls == calls  # answered by Redis
    assert back.how == NEW  # that session lived in the fallback only
    assert (await turn(8)).session_id == back.session_id
    assert (await store.fetch_stats())["active_sessions"] >= 1
    assert store.fallbacks == 1
    assert len([e for e in logged if e["log_level"].name == "info"]) == 1
    assert len([e for e in logged if e["log_level"].name == "warn"]) == 1


@pytest_twisted.ensureDeferred
async def test_redis_restarted_while_idle(
    stores: Any, redis_server: RedisServer, logged: Any  # noqa: F811
) -> None:
    """
    A connection lost between calls is made again by the next call, which
    Redis answers: no fallback for an outage nobody saw.
    """
    store = stores(timeout=0.3)
    await store.new_session()
    redis_server.stop()
    redis_server.start()
    # The store's end of the old connection closes.
    await until(lambda: store._factory is None or not store._factory.size)
    s = await maybe(store.new_session())
    await maybe(store.remember(s, [key(1)]))
    assert await maybe(store.find([key(1)])) == (0, s, True)
    assert (store.fallbacks, store.fallback_calls, logged) == (0, 0, [])


@pytest_twisted.ensureDeferred
async def test_connection_lost_mid_command(
    stores: Any, redis_server: RedisServer  # noqa: F811
) -> None:
    # A timeout far longer than the hang guard: only the dropped connection
    # can end these calls in time.
    store = stores(timeout=60.0)
    s = await store.new_session()
    redis_server.pause()
    pending = [store.find([key(n)]) for n in range(20)] + [store.remember(s, [key(1)])]
    await sleep(0)  # two turns of the loop: the commands are written
    await sleep(0)
    redis_server.kill()
    results = await gatherResults(
        [d if isinstance(d, Deferred) else maybe(d) for d in pending]
    ).addTimeout(WAIT, _reactor())
    assert results[:20] == [None] * 20
    assert store.fallback_active is True and store.fallbacks == 1
    assert await maybe(store.find([key(1)])) == (0, s, True)  # the fallback took the remember


@pytest_twisted.ensureDeferred
async def test_a_hung_redis_times_out(stores: Any, redis_server: RedisServer) -> None:  # noqa: F811
    store = stores(timeout=0.2, probe_interval=0.1)
    s = await store.new_session()
    redis_server.pause()
    try:
        found, elapsed = await timed(lambda: store.find([key(1)]))
        # It waited its timeout (never less, whatever the machine's load).
        assert found is None and elapsed >= 0.2 * 0.9
        assert store.fallback_active is True
        # probes do not delay calls while Redis still hangs
        await sleep(0.15)
        at_once(lambda: store.touch(s))
    finally:
        redis_server.resume()
    # The hung probe times out, the next is started by a call: polled.
    await until(lambda: not store.fallback_active, nudge=lambda: store.touch(s))
    assert store.fallbacks == 1


@pytest_twisted.ensureDeferred
async def test_unreachable_from_the_start(stores: Any, logged: Any) -> None:
    closed = RedisServer()  # only for a port where nothing listens
    closed.start()
    port = closed.port
    closed.close()
    store = stores(url=f"redis://127.0.0.1:{port}/0", timeout=0.3, probe_interval=60.0)
    assert await store.connect() is False
    s = at_once(store.new_session)
    assert s.startswith("sess_")
    await maybe(store.remember(s, [key(1)]))
    assert await maybe(store.find([key(1)])) == (0, s, True)
    figures = store.stats()
    assert figures["fallback_active"] is True and figures["fallbacks"] == 1
    assert figures["fallback_sessions"] == 1
    assert len(logged) == 1
