"""
End-to-end tests of routing and failover over real loopback sockets: one
gateway in front of several fake upstreams (and of addresses that refuse,
reset or never answer), with treq and the official SDKs as clients.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Callable

import anthropic
import openai
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.server import Site

from tests.fakeupstream import FakeUpstream
from tests.test_e2e_metrics import call
from tests.test_e2e_sdk import TIMEOUT, in_thread
from tests.test_failover import Status

CHAT = {"model": "gpt-e2e", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-e2e", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}


class Counting(Protocol):
    """
    Reads a request, then resets the connection or says nothing at all.
    """

    def dataReceived(self, data: bytes) -> None:
        if self.factory.received.get(id(self)) is None:
            self.factory.received[id(self)] = True
            self.factory.requests += 1
        if self.factory.reset:
            self.transport.abortConnection()


class CountingFactory(Factory):
    protocol = Counting

    def __init__(self, reset: bool) -> None:
        self.reset = reset
        self.requests = 0
        self.received: dict[int, bool] = {}


@pytest.fixture
def serve() -> Any:
    """
    Listen on loopback port 0 with a resource (an HTTP server) or a factory;
    returns the base URL.  ``serve.refused()`` is an address that refuses.
    """
    ports: list[Any] = []
    sockets: list[socket.socket] = []

    def start(thing: Any) -> str:
        factory = thing if isinstance(thing, Factory) else Site(thing)
        factory.noisy = False
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        start.last_address = f"127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
        return f"http://{start.last_address}"  # type: ignore[attr-defined]

    def refused() -> str:
        # Bound but not listening: the port is ours, and every connect refused.
        bound = socket.socket()
        bound.bind(("127.0.0.1", 0))
        sockets.append(bound)
        return f"http://127.0.0.1:{bound.getsockname()[1]}"

    start.refused = refused  # type: ignore[attr-defined]
    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())
    for bound in sockets:
        bound.close()


def upstream_of(headers: Any) -> str | None:
    values = headers.getRawHeaders(b"x-llmgate-upstream")
    return values[0].decode() if values else None


def routed(make_gateway: Callable[..., Any], upstreams: dict, routes: list, **extra: Any) -> Any:
    return make_gateway(
        document={"upstreams": upstreams, "routes": routes, "session": {"enabled": False}, **extra}
    )


@pytest_twisted.inlineCallbacks
def test_calls_are_routed_by_path_model_and_header(make_gateway, serve):
    a, b = FakeUpstream(reactor), FakeUpstream(reactor)
    gateway = routed(
        make_gateway,
        {"a": {"base_url": serve(a)}, "b": {"type": "anthropic", "base_url": serve(b)}},
        [
            {"path": "/v1/messages", "upstream": "b"},
            {"model": "claude-*", "upstream": "b"},
            {"header": {"x-tenant": "beta"}, "upstream": "b"},
            {"upstream": "a"},
        ],
    )
    status, headers, _ = yield call(gateway.url, "/v1/messages", MESSAGES)
    assert (status, upstream_of(headers)) == (200, "b")
    status, headers, _ = yield call(gateway.url, "/v1/chat/completions", {**CHAT, "model": "claude-x"})
    assert (status, upstream_of(headers)) == (200, "b")
    status, headers, _ = yield call(gateway.url, "/v1/chat/completions", CHAT, x_tenant="beta")
    assert (status, upstream_of(headers)) == (200, "b")
    status, headers, _ = yield call(gateway.url, "/v1/chat/completions", CHAT)
    assert (status, upstream_of(headers)) == (200, "a")
    assert (len(a.seen), len(b.seen)) == (1, 3)


@pytest_twisted.inlineCallbacks
def test_each_upstream_gets_its_own_key_and_never_the_clients(make_gateway, serve):
    a, b = FakeUpstream(reactor), FakeUpstream(reactor)
    gateway = routed(
        make_gateway,
        {
            "a": {"base_url": serve(a), "api_key": "sk-upstream-a"},
            "b": {"type": "anthropic", "base_url": serve(b), "api_key": "sk-upstream-b"},
        },
        [{"path": "/v1/messages", "upstream": "b"}, {"upstream": "a"}],
    )
    client = {"authorization": "Bearer sk-client-1", "x_api_key": "sk-client-2"}
    yield call(gateway.url, "/v1/chat/completions", CHAT, **client)
    yield call(gateway.url, "/v1/messages", MESSAGES, **client)
    sent = json.dumps([{k.decode(): [x.decode() for x in v] for k, v in s.headers.items()} for s in a.seen + b.seen])
    assert "sk-client" not in sent
    assert a.seen[0].headers[b"authorization"] == [b"Bearer sk-upstream-a"]
    assert b.seen[0].headers[b"x-api-key"] == [b"sk-upstream-b"]


@pytest.mark.parametrize("failure", ["refused", "reset", "head_timeout", "503", "429"])
@pytest_twisted.inlineCallbacks
def test_a_failing_first_upstream_fails_over_and_the_live_one_gets_one_request(
    make_gateway, serve, failure
):
    live = FakeUpstream(reactor)
    counting = None
    settings: dict[str, Any] = {}
    if failure == "refused":
        first = serve.refused()
    elif failure in ("reset", "head_timeout"):
        counting = CountingFactory(reset=failure == "reset")
        first = serve(counting)
        settings = {"timeout": 0.3} if failure == "head_timeout" else {}
    else:
        status = Status(int(failure))
        first = serve(status)
    gateway = routed(
        make_gateway,
        {"first": {"base_url": first, **settings}, "live": {"base_url": serve(live)}},
        [{"upstream": ["first", "live"]}],
    )
    status_code, headers, body = yield call(gateway.url, "/v1/chat/completions", CHAT)
    assert (status_code, upstream_of(headers)) == (200, "live"), body
    assert len(live.seen) == 1
    assert json.loads(live.seen[0].body) == CHAT
    if counting is not None:
        assert counting.requests == 1
    elif failure in ("503", "429"):
        assert status.seen == 1


@pytest_twisted.inlineCallbacks
def test_no_failover_once_the_answer_has_started(make_gateway, serve):
    dying, live = FakeUpstream(reactor), FakeUpstream(reactor)
    gateway = routed(
        make_gateway,
        {"dying": {"base_url": serve(dying)}, "live": {"base_url": serve(live)}},
        [{"upstream": ["dying", "live"]}],
    )
    status, headers, body = yield call(gateway.url, "/die-mid-stream", {"model": "m", "stream": True})
    assert (status, upstream_of(headers)) == (200, "dying")
    assert b"upstream connection lost mid-answer; upstream dying at 127.0.0.1:" in body
    assert len(live.seen) == 0


@pytest_twisted.inlineCallbacks
def test_an_unreachable_last_upstream_is_named_in_the_error_never_its_key(make_gateway, serve):
    address = serve.refused()
    gateway = routed(
        make_gateway,
        {"primary": {"base_url": address, "api_key": "sk-never-shown"}},
        [{"upstream": "primary"}],
    )
    status, headers, body = yield call(gateway.url, "/v1/messages", MESSAGES)
    assert (status, upstream_of(headers)) == (502, "primary")
    error = json.loads(body)
    assert error["type"] == "error"  # the call's own (Anthropic) shape
    port = address.rsplit(":", 1)[1]
    assert error["error"]["message"] == (
        f"upstream unreachable (upstream refused); upstream primary at 127.0.0.1:{port}"
    )
    assert b"sk-never" not in body


@pytest_twisted.inlineCallbacks
def test_an_ejected_upstream_is_skipped_then_tried_again_after_its_cooldown(make_gateway, serve):
    resetting = CountingFactory(reset=True)
    live = FakeUpstream(reactor)
    gateway = routed(
        make_gateway,
        {
            "flaky": {"base_url": serve(resetting), "eject_after": 2, "cooldown": 0.3},
            "live": {"base_url": serve(live)},
        },
        [{"upstream": ["flaky", "live"]}],
    )
    for _ in range(4):
        status, headers, _ = yield call(gateway.url, "/v1/chat/completions", CHAT)
        assert (status, upstream_of(headers)) == (200, "live")
    assert resetting.requests == 2  # ejected after two: the next two skipped it
    _, _, body = yield call(gateway.url, "/config")
    state = json.loads(body)["upstreams"]["flaky"]["state"]
    assert state["healthy"] is False and state["ejections"] == 1
    yield deferLater(reactor, 0.35, lambda: None)
    yield call(gateway.url, "/v1/chat/completions", CHAT)
    assert resetting.requests == 3  # back after the cool-down
    _, _, body = yield call(gateway.url, "/metrics")
    view = json.loads(body)
    assert view["upstreams"]["flaky"]["attempts"] == {"upstream_reset": 3}
    assert view["requests"]["by_upstream"] == {"live": 5}


@pytest_twisted.inlineCallbacks
def test_config_shows_upstreams_routes_and_no_key(make_gateway, serve):
    gateway = routed(
        make_gateway,
        {"a": {"base_url": serve(FakeUpstream(reactor)), "api_key": "sk-hidden-key"}},
        [{"model": "gpt-*", "upstream": "a"}],
    )
    _, _, body = yield call(gateway.url, "/config")
    assert b"sk-hidden" not in body
    view = json.loads(body)
    assert view["upstreams"]["a"]["api_key"] == {"configured": True}
    assert view["routes"][0]["describe"] == "model gpt-* -> a"
    assert "anthropic-messages" in view["api_shapes"]


@pytest_twisted.inlineCallbacks
def test_the_official_sdks_against_a_routed_gateway(make_gateway, serve):
    a, b = FakeUpstream(reactor), FakeUpstream(reactor)
    a.reply = lambda body: "from a"
    b.reply = lambda body: "from b"
    gateway = make_gateway(
        document={
            "upstreams": {
                "a": {"base_url": serve(a), "api_key": "sk-a"},
                "b": {"type": "anthropic", "base_url": serve(b), "api_key": "sk-b"},
                "down": {"base_url": serve.refused()},
            },
            "routes": [
                {"path": "/v1/messages", "upstream": ["down", "b"]},
                {"upstream": ["down", "a"]},
            ],
        }
    )

    def calls() -> Any:
        with openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0, timeout=TIMEOUT
        ) as client:
            plain = client.chat.completions.create(model="gpt-x", messages=CHAT["messages"])
            stream = client.chat.completions.create(
                model="gpt-x", messages=CHAT["messages"], stream=True
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        with anthropic.Anthropic(
            base_url=gateway.url, api_key="sk-client", max_retries=0, timeout=TIMEOUT
        ) as client:
            message = client.messages.create(
                model="claude-x", max_tokens=9, messages=MESSAGES["messages"]
            )
            with client.messages.stream(
                model="claude-x", max_tokens=9, messages=MESSAGES["messages"]
            ) as stream:
                text = "".join(stream.text_stream)
        return plain.choices[0].message.content, streamed, message.content[0].text, text

    results = yield in_thread(calls)
    assert results == ("from a", "from a", "from b", "from b")
    assert [s.headers[b"authorization"] for s in a.seen] == [[b"Bearer sk-a"]] * 2
    assert [s.headers[b"x-api-key"] for s in b.seen] == [[b"sk-b"]] * 2
    _, _, body = yield call(gateway.url, "/metrics")
    attempts = json.loads(body)["upstreams"]["down"]["attempts"]
    assert attempts == {"upstream_refused": 4}


@pytest_twisted.inlineCallbacks
def test_a_trace_records_the_api_the_upstream_and_every_attempt(make_gateway, serve, tmp_path):
    import os

    from tests.test_e2e_metrics import trace_of, within

    live = FakeUpstream(reactor)
    directory = str(tmp_path / "traces")
    down = serve.refused()
    gateway = routed(
        make_gateway,
        {"down": {"base_url": down}, "live": {"type": "anthropic", "base_url": serve(live)}},
        [{"upstream": ["down", "live"]}],
        middlewares=[{"type": "trace", "config": {"directory": directory}}],
    )
    status, _, _ = yield call(gateway.url, "/v1/messages", MESSAGES)
    assert status == 200
    yield within(trace_of(gateway.parts).flush())
    (name,) = os.listdir(directory)
    with open(os.path.join(directory, name), encoding="utf-8") as handle:
        document = json.load(handle)
    assert (document["provider"], document["api"], document["upstream"]) == (
        "anthropic",
        "anthropic-messages",
        "live",
    )
    attempts = [(a["upstream"], a["address"], a["outcome"], a["status"]) for a in document["attempts"]]
    assert attempts == [
        ("down", down.split("//")[1], "upstream_refused", None),
        ("live", serve.last_address, "answered", 200),
    ]
    assert all(a["duration"] >= 0 for a in document["attempts"])
    assert document["response"]["message"]["content"][0]["type"] == "text"
