"""
The wire end to end: a gateway on loopback in front of an upstream that
writes exact bytes (:mod:`tests.quirkyupstream`), and clients that each put
their own marker in every call.

What must hold: kept connections stay clean (stray bytes on an idle
connection, or after an answer in the same read, never become another
call's answer), a POST is never run twice, every framing error is an answer
(502 in the call's shape, no unhandled error in the log), and the relay is
exact (HEAD keeps its Content-Length, Connection-listed names are dropped,
CR/NUL from the upstream never reach a client).
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, DeferredSemaphore, inlineCallbacks
from twisted.logger import globalLogPublisher

from llmgate import config as configuration
from llmgate.service import GatewayParts
from tests.quirkyupstream import POISON, QuirkyUpstream

#: Bound on every wait.
WAIT = 10.0


@attrs.define
class Wire:
    url: str
    upstream: QuirkyUpstream
    parts: GatewayParts
    failures: list[dict[str, Any]]


@pytest.fixture
def wire() -> Iterator[Wire]:
    upstream = QuirkyUpstream(reactor)
    upstream_port = reactor.listenTCP(0, upstream, interface="127.0.0.1")
    config = configuration.parse(
        {
            "llm": {"base_url": f"http://127.0.0.1:{upstream_port.getHost().port}", "timeout": 5},
            # Longer than any wait here: a connection closed in these tests
            # was closed for its bytes, not for its idle age.
            "pool": {"max_idle": 60},
        }
    )
    parts = GatewayParts(config, reactor)
    port = reactor.listenTCP(0, parts.site, interface="127.0.0.1")
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield Wire(f"http://127.0.0.1:{port.getHost().port}", upstream, parts, failures)
    globalLogPublisher.removeObserver(observe)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(parts.pipeline.close())
    pytest_twisted.blockon(parts.pool.closeCachedConnections())
    pytest_twisted.blockon(upstream_port.stopListening())
    for connection in upstream.connections:
        if connection.transport is not None:
            connection.transport.loseConnection()


@inlineCallbacks
def call(wire: Wire, mode: str, marker: str, method: str = "POST") -> Any:
    """
    One call; fires with ``(status, headers, body)``.
    """
    body = json.dumps({"marker": marker}).encode() if method == "POST" else None
    response = yield treq.request(
        method,
        f"{wire.url}/v1/quirk/{mode}",
        data=body,
        headers={"content-type": ["application/json"]},
        persistent=False,
    ).addTimeout(WAIT, reactor)
    content = yield treq.content(response).addTimeout(WAIT, reactor)
    return response.code, response.headers, content


def marker_of(content: bytes) -> str | None:
    try:
        return json.loads(content).get("marker")
    except (ValueError, AttributeError):
        return None


@pytest_twisted.inlineCallbacks
def test_stray_bytes_on_an_idle_connection_drop_it(wire: Wire) -> Any:
    status, _, content = yield call(wire, "stray", "a-1")
    assert (status, marker_of(content)) == (200, "a-1")
    # The upstream writes stray bytes while the kept connection is idle;
    # the gateway must close it rather than keep the bytes for the next call.
    first = wire.upstream.connections[0]
    yield first.closed.addTimeout(WAIT, reactor)
    assert wire.upstream.strays == 1
    status, _, content = yield call(wire, "ok", "b-1")
    assert (status, marker_of(content)) == (200, "b-1")
    assert wire.upstream.seen[-1].connection == 1
    assert wire.failures == []


@pytest_twisted.inlineCallbacks
def test_bytes_after_an_answer_in_the_same_read_are_never_an_answer(wire: Wire) -> Any:
    status, _, content = yield call(wire, "trailing", "a-1")
    assert (status, marker_of(content)) == (200, "a-1")
    yield wire.upstream.connections[0].closed.addTimeout(WAIT, reactor)
    status, _, content = yield call(wire, "ok", "b-1")
    assert (status, marker_of(content)) == (200, "b-1")


@pytest_twisted.inlineCallbacks
def test_a_post_the_upstream_closed_on_is_answered_502_and_sent_once(wire: Wire) -> Any:
    status, _, content = yield call(wire, "ok", "warm")
    assert status == 200
    status, _, content = yield call(wire, "close", "once")
    assert status == 502, content
    assert [s.marker for s in wire.upstream.seen].count("once") == 1
    assert wire.parts.pool.retries == 0


@pytest_twisted.inlineCallbacks
def test_framing_errors_are_502s_in_the_calls_shape(wire: Wire) -> Any:
    for mode in ("huge_length", "bad_chunk", "huge_chunk", "nul_reason", "cr_value"):
        status, headers, content = yield call(wire, mode, mode)
        assert status == 502, (mode, content)
        assert headers.getRawHeaders(b"content-type") == [b"application/json"], mode
        assert "error" in json.loads(content), mode
        assert b"\x00" not in content and b"Injected" not in content
    assert wire.failures == []


@pytest_twisted.inlineCallbacks
def test_a_head_answer_keeps_its_content_length(wire: Wire) -> Any:
    status, headers, content = yield call(wire, "head", "h", method="HEAD")
    assert status == 200
    assert headers.getRawHeaders(b"content-length") == [b"1234"]
    assert content == b""


@pytest_twisted.inlineCallbacks
def test_names_listed_in_connection_are_dropped(wire: Wire) -> Any:
    status, headers, content = yield call(wire, "connection_listed", "c")
    assert (status, marker_of(content)) == (200, "c")
    assert headers.getRawHeaders(b"x-hop") is None
    assert headers.getRawHeaders(b"x-kept") == [b"yes"]


def history(wire: Wire, marker: str | None) -> list[Any]:
    """
    What the upstream saw on the connection a poison marker names.
    """
    if not marker or not marker.startswith(POISON.decode()):
        return []
    number = int(marker.rsplit("-", 1)[1])
    return [event for event in wire.upstream.events if event[1] == number]


#: Modes of the mixed run, weighted: mostly normal answers.
MIXED = ["ok"] * 6 + ["stray"] * 3 + ["trailing", "close", "bad_chunk", "huge_length", "cr_value"]


@pytest_twisted.inlineCallbacks
def test_many_clients_each_get_only_their_own_answers(wire: Wire) -> Any:
    rng = random.Random(15)
    clients, calls = 12, 25
    limit = DeferredSemaphore(8)
    results: list[tuple[str, str, int, str | None]] = []

    @inlineCallbacks
    def client(number: int) -> Any:
        for index in range(calls):
            mode = rng.choice(MIXED)
            marker = f"client{number}-call{index}"
            status, _, content = yield limit.run(call, wire, mode, marker)
            results.append((marker, mode, status, marker_of(content)))

    outcomes = yield DeferredList([client(n) for n in range(clients)], consumeErrors=True)
    assert all(ok for ok, _ in outcomes), [r for ok, r in outcomes if not ok]
    # Every client answered, every call once.
    assert len(results) == clients * calls
    seen = {s.marker: s for s in wire.upstream.seen}
    raced = 0
    for marker, mode, status, got in results:
        if marker not in seen:
            # Written on a connection the gateway then dropped before the
            # upstream read it: an error answer, or the race below.
            assert status == 502 or (got or "").startswith(POISON.decode()), (marker, got)
            raced += status != 502
            continue
        if seen[marker].after_stray:
            # Sent on a connection after stray bytes were written to it, and
            # before the gateway could see them (still on their way, even on
            # a loaded loopback): the race HTTP/1.1 cannot close, bounded
            # by pool.max_requests and pool.max_idle.  Not judged.
            raced += 1
            continue
        if mode in ("ok", "stray", "trailing"):
            # Its own answer: never another client's, nor stray bytes.
            assert got == marker, (marker, mode, got, history(wire, got))
        else:
            assert status == 502, (marker, mode, status, got, history(wire, got))
    # Stray bytes were written while connections were idle, and the gateway
    # dropped those connections (a gateway that kept them would carry a
    # request on every one).
    strayed = {c.number for c in wire.upstream.connections if c.stray_written}
    reused = {s.connection for s in wire.upstream.seen if s.after_stray}
    assert strayed and strayed - reused, (len(strayed), len(reused))
    # And every connection that got stray bytes is closed by the gateway,
    # at the latest when it reads them while idle.
    yield DeferredList(
        [wire.upstream.connections[n].closed for n in strayed], fireOnOneErrback=True
    ).addTimeout(WAIT, reactor)
    assert raced < len(results) // 4, raced
    # No POST ran twice.
    markers = [s.marker for s in wire.upstream.seen]
    assert len(markers) == len(set(markers))
    assert wire.failures == []
