"""
End-to-end tests of the live view over loopback sockets: the API and its
admin protection, the event feed following a real stream, and two gateways
(as two workers) writing one trace directory.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest_twisted
import treq
from twisted.internet.defer import Deferred, succeed

from tests.conftest import Running

ADMIN = "admin-token-for-the-live-view-0123"


def trace_config(directory: str, **ui: Any) -> dict[str, Any]:
    return {
        "middlewares": [{"type": "trace", "config": {"directory": directory}}],
        "ui": {"watch": "auto", **ui},
    }


def until(gateway: Running, predicate: Callable[[], bool]) -> Deferred[None]:
    """
    Fires once ``predicate`` holds, checked whenever the view's hub speaks
    (a call started, ended, indexed; the index ready).
    """
    assert gateway.parts is not None
    hub = gateway.parts.ui.hub
    if predicate():
        return succeed(None)
    done: Deferred[None] = Deferred()

    def check(kind: str, data: dict[str, Any]) -> None:
        if not done.called and predicate():
            unsubscribe()
            done.callback(None)

    unsubscribe = hub.subscribe(check)
    return done


def indexed(gateway: Running, count: int) -> Deferred[None]:
    """
    Fires once ``count`` calls are in the index with their trace files.
    """
    assert gateway.parts is not None
    index = gateway.parts.ui.index
    return until(gateway, lambda: index.ready and len(index.by_file) >= count)


def chat(gateway: Running, text: str, session: str | None = None, stream: bool = False) -> Deferred[Any]:
    headers = {"content-type": ["application/json"]}
    if session:
        headers["x-llmgate-session-id"] = [session]
    body = {"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": text}]}
    d = treq.post(gateway.url + "/v1/chat/completions", json.dumps(body).encode(), headers=headers)
    return d.addCallback(treq.content)


def get_json(url: str, token: str | None = None) -> Deferred[tuple[int, Any]]:
    headers = {"authorization": [f"Bearer {token}"]} if token else {}

    def read(response: Any) -> Deferred[tuple[int, Any]]:
        return treq.json_content(response).addCallback(lambda body: (response.code, body))

    return treq.get(url, headers=headers).addCallback(read)


@pytest_twisted.inlineCallbacks
def test_calls_show_in_the_api_with_their_messages(make_gateway, tmp_path):
    gateway = make_gateway(document=trace_config(str(tmp_path)))
    yield chat(gateway, "first words", session="sess-api")
    yield chat(gateway, "a streamed one", session="sess-api", stream=True)
    yield indexed(gateway, 2)
    code, listing = yield get_json(gateway.url + "/api/sessions")
    assert code == 200
    assert [s["id"] for s in listing["sessions"]] == ["sess-api"]
    assert listing["sessions"][0]["calls"] == 2
    code, session = yield get_json(gateway.url + "/api/sessions/sess-api")
    users = [m["text"] for c in session["calls"] for m in c["messages"] if m["role"] == "user"]
    assert users == ["first words", "a streamed one"]
    assert session["calls"][1]["streaming"] is True
    code, call = yield get_json(gateway.url + "/api/calls/" + session["calls"][0]["id"])
    assert (code, call["trace"]["request"]["body"]["messages"][0]["content"]) == (200, "first words")
    code, stats = yield get_json(gateway.url + "/api/stats")
    assert sum(stats["calls"]) == 2


@pytest_twisted.inlineCallbacks
def test_with_admin_tokens_the_api_and_the_feed_need_one_but_the_page_is_open(make_gateway, tmp_path):
    document = trace_config(str(tmp_path))
    document["auth"] = {"admin_tokens": [ADMIN]}
    gateway = make_gateway(document=document)
    for path in ("/api/sessions", "/api/sessions/x", "/api/calls/x", "/api/events", "/api/stats"):
        code, body = yield get_json(gateway.url + path, token="wrong-token-wrong-token")
        assert code == 401, path
    code, _ = yield get_json(gateway.url + "/api/sessions", token=ADMIN)
    assert code == 200
    page = yield treq.get(gateway.url + "/ui/")
    body = yield page.content()
    assert page.code == 200 and b"<title>llmgate" in body


@pytest_twisted.inlineCallbacks
def test_the_feed_tells_of_a_stream_as_it_grows(make_gateway, upstream, tmp_path):
    gateway = make_gateway(document=trace_config(str(tmp_path)))
    upstream.resource.reply = lambda body: "one two three four five six seven eight"
    upstream.resource.gap = 0.15  # longer than the feed's flush interval
    response = yield treq.get(gateway.url + "/api/events?session=sess-feed")
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream; charset=utf-8"]
    heard: list[tuple[str, dict[str, Any]]] = []
    buffer = [b""]
    indexed_seen: Deferred[None] = Deferred()

    def collect(data: bytes) -> None:
        buffer[0] += data
        while b"\n\n" in buffer[0]:
            block, buffer[0] = buffer[0].split(b"\n\n", 1)
            fields = dict(
                line.split(b": ", 1) for line in block.split(b"\n") if line[:1] != b":" and b": " in line
            )
            if b"event" in fields:
                heard.append((fields[b"event"].decode(), json.loads(fields[b"data"])))
                if heard[-1][0] == "call_indexed" and not indexed_seen.called:
                    indexed_seen.callback(None)

    reading = treq.collect(response, collect)
    yield chat(gateway, "stream please", session="sess-feed", stream=True)
    yield indexed_seen
    kinds = [kind for kind, _ in heard]
    assert kinds[0] == "call_started" and kinds[-2:] == ["call_ended", "call_indexed"]
    deltas = [data["text"] for kind, data in heard if kind == "delta"]
    assert len(deltas) >= 3, deltas  # sent as it grew, not once at the end
    assert "".join(deltas) == "one two three four five six seven eight"
    offsets = [data["offset"] for kind, data in heard if kind == "delta"]
    assert offsets == [sum(map(len, deltas[:n])) for n in range(len(deltas))]
    yield gateway.parts.pipeline.close()  # the gateway stops: the feed ends
    yield reading


@pytest_twisted.inlineCallbacks
def test_two_workers_writing_one_trace_directory_both_list_every_call(make_gateway, tmp_path):
    first = make_gateway(document=trace_config(str(tmp_path)))
    second = make_gateway(document=trace_config(str(tmp_path)))
    yield chat(first, "to the first worker", session="sess-one")
    yield chat(second, "to the second worker", session="sess-two")
    yield indexed(first, 2)
    yield indexed(second, 2)
    for gateway in (first, second):
        code, listing = yield get_json(gateway.url + "/api/sessions")
        assert sorted(s["id"] for s in listing["sessions"]) == ["sess-one", "sess-two"]


@pytest_twisted.inlineCallbacks
def test_without_trace_the_page_says_so_in_one_line_and_api_paths_go_upstream(
    make_gateway, upstream
):
    gateway = make_gateway()
    page = yield treq.get(gateway.url + "/ui/")
    body = yield page.content()
    assert page.code == 404
    assert body.count(b"\n") == 1 and b"trace middleware" in body
    relayed = yield treq.get(gateway.url + "/api/sessions")
    yield relayed.content()
    assert relayed.code == 404  # the fake upstream's own answer
    assert [seen.uri for seen in upstream.resource.seen] == [b"/api/sessions"]
