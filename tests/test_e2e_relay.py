"""
End-to-end tests of the gateway's relay contract: a real gateway on a
loopback socket in front of the fake upstream, driven by real HTTP clients
(treq, a bare ``Agent``, or a raw TCP connection when the exact bytes on the
wire matter).

One test per behaviour; each reads as the sentence it checks.
"""

from __future__ import annotations

import gzip
import json
from io import BytesIO
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.server import Site
from zope.interface import implementer

import llmgate
from tests.fakeupstream import FakeUpstream, anthropic_events, openai_chunks

REPLY = "Hello from the fake upstream"

#: Every wait in these tests is bounded, so a broken gateway fails a test
#: instead of hanging the run.
WAIT = 10.0


# -- helpers -------------------------------------------------------------------


def within(d: Deferred, seconds: float = WAIT) -> Deferred:
    """
    ``d``, failing with ``TimeoutError`` after ``seconds``.
    """
    return d.addTimeout(seconds, reactor)


def request(method: str, url: str, **kwargs: Any) -> Deferred:
    """
    A treq request on a connection of its own (no pooled connection outlives
    the test), answered unbuffered and without following redirects.
    """
    kwargs.setdefault("persistent", False)
    kwargs.setdefault("allow_redirects", False)
    kwargs.setdefault("unbuffered", True)
    return within(treq.request(method, url, **kwargs))


def chat_body(**extra: Any) -> bytes:
    document = {"model": "gpt-e2e", "messages": [{"role": "user", "content": "hi"}]}
    document.update(extra)
    return json.dumps(document).encode()


def messages_body(**extra: Any) -> bytes:
    document = {
        "model": "claude-e2e",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    document.update(extra)
    return json.dumps(document).encode()


JSON = {"content-type": ["application/json"]}


@inlineCallbacks
def assert_gateway_still_works(gateway: Any) -> Any:
    """
    A good call through ``gateway`` succeeds with the upstream's answer.
    """
    response = yield request("POST", gateway.url + "/v1/chat/completions", data=chat_body(), headers=JSON)
    assert response.code == 200
    document = json.loads((yield within(treq.content(response))))
    assert document["choices"][0]["message"]["content"] == REPLY


def raw_agent() -> tuple[Agent, HTTPConnectionPool]:
    """
    A bare ``Agent``: no cookie jar, no content decoding, no redirects.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    return Agent(reactor, pool=pool), pool


class BodyReader(Protocol):
    """
    Collect a response body, and say how it ended.

    :ivar first_event: fires with the bytes received up to and including the
        first complete SSE event.
    :ivar ended: fires (with None) when the body has ended.
    :ivar reason: the ``Failure`` that ended the body.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.first_event: Deferred[bytes] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if not self.first_event.called:
            sofar = b"".join(self.chunks)
            if b"\n\n" in sofar:
                self.first_event.callback(sofar)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        if not self.ended.called:
            self.ended.callback(None)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class CountingReader(BodyReader):
    """
    A ``BodyReader`` that counts bytes without keeping them.
    """

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


class RawClient(Protocol):
    """
    One raw HTTP/1.1 exchange: every byte the gateway sends until it closes.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(b"".join(self.data))


@inlineCallbacks
def raw_exchange(url: str, message: bytes) -> Any:
    """
    Send ``message`` as is to the server at ``url`` and return the status
    line, the headers as ``[(lower-case name, value)]`` and the body bytes.
    """
    port = urlsplit(url).port
    client = RawClient()
    yield within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client))
    client.transport.write(message)
    data = yield within(client.closed)
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    if (b"transfer-encoding", b"chunked") in headers:
        body = dechunk(body)
    return status, headers, body


def dechunk(data: bytes) -> bytes:
    """
    The payload of a complete chunked body (trailers ignored).
    """
    payload = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(payload)
        payload.append(data[:size])
        assert data[size : size + 2] == b"\r\n", "bad chunk framing"
        data = data[size + 2 :]


@inlineCallbacks
def wait_until(condition: Callable[[], bool], seconds: float = WAIT) -> Any:
    """
    Poll ``condition`` every few milliseconds until it holds, for state that
    offers nothing to wait on; fail after ``seconds``.
    """
    deadline = reactor.seconds() + seconds
    while not condition():
        assert reactor.seconds() < deadline, "condition never held"
        yield deferLater(reactor, 0.005, lambda: None)


@inlineCallbacks
def closed_port() -> Any:
    """
    A loopback port nothing listens on (bound, then released).
    """
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = port.getHost().port
    yield port.stopListening()
    return number


@implementer(IBodyProducer)
class ChunkedBody:
    """
    A request body of unknown length, so the client sends it chunked.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, body: bytes, size: int = 256) -> None:
        self.parts = [body[i : i + size] for i in range(0, len(body), size)]

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for part in self.parts:
            consumer.write(part)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


# -- the gateway's own endpoint ---------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_health_answers_healthy_with_service_and_version(make_gateway, upstream):
    gateway = make_gateway()
    response = yield request("GET", gateway.url + "/health")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    document = json.loads((yield within(treq.content(response))))
    assert document == {"status": "healthy", "service": "llmgate", "version": llmgate.__version__}
    assert upstream.resource.seen == []


# -- what reaches the upstream --------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_path_and_query_are_forwarded_exactly(make_gateway, upstream):
    gateway = make_gateway()
    target = "/v1/some/path%2Fencoded//double?b=2&a=1&a=%20x&empty=&q=a+b&u=%C3%A9"
    response = yield request("GET", gateway.url + target)
    yield within(treq.content(response))
    assert [seen.uri for seen in upstream.resource.seen] == [target.encode()]


@pytest_twisted.inlineCallbacks
def test_every_proxied_method_reaches_the_upstream(make_gateway, upstream):
    gateway = make_gateway()
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    for method in methods:
        data = b'{"x": 1}' if method in ("POST", "PUT", "PATCH") else None
        response = yield request(method, gateway.url + "/echo?m=" + method, data=data)
        body = yield within(treq.content(response))
        assert response.code == 200, (method, body)
        if method != "HEAD":
            assert json.loads(body)["method"] == method
    seen = upstream.resource.seen
    assert [(s.method.decode(), s.uri.decode()) for s in seen] == [
        (m, "/echo?m=" + m) for m in methods
    ]
    assert [s.body for s in seen if s.method in (b"POST", b"PUT", b"PATCH")] == [b'{"x": 1}'] * 3


@pytest_twisted.inlineCallbacks
def test_a_chunked_request_body_reaches_the_upstream_whole(make_gateway, upstream):
    gateway = make_gateway(server__max_request_body=100_000)
    body = chat_body(padding="z" * 5000)
    agent, pool = raw_agent()
    response = yield within(
        agent.request(
            b"POST",
            (gateway.url + "/v1/chat/completions").encode(),
            Headers({b"content-type": [b"application/json"]}),
            ChunkedBody(body),
        )
    )
    reader = BodyReader()
    response.deliverBody(reader)
    yield within(reader.ended)
    yield pool.closeCachedConnections()
    assert response.code == 200
    seen = upstream.resource.seen[-1]
    assert seen.body == body
    assert seen.headers[b"content-length"] == [b"%d" % len(body)]
    assert b"transfer-encoding" not in seen.headers


# -- what comes back ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_upstream_status_headers_and_body_come_back_unchanged(make_gateway):
    gateway = make_gateway()
    response = yield request("POST", gateway.url + "/status-418", data=b"{}")
    body = yield within(treq.content(response))
    assert response.code == 418
    assert response.headers.getRawHeaders(b"retry-after") == [b"7"]
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert body == b'{"error": {"message": "teapot", "type": "teapot"}}'


@pytest_twisted.inlineCallbacks
def test_hop_by_hop_and_gateway_control_headers_never_reach_the_upstream(make_gateway, upstream):
    gateway = make_gateway()
    status, headers, body = yield raw_exchange(
        gateway.url,
        b"GET /echo HTTP/1.1\r\n"
        b"Host: gateway.test\r\n"
        b"Connection: x-secret-hop, close\r\n"
        b"x-secret-hop: 1\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
        b"x-llmgate-session-id: session-from-client\r\n"
        b"x-end-to-end: kept\r\n"
        b"\r\n",
    )
    assert status.startswith(b"HTTP/1.1 200"), (status, body)
    seen = upstream.resource.seen[-1].headers
    for name in (b"x-secret-hop", b"keep-alive", b"te", b"proxy-authorization", b"x-llmgate-session-id"):
        assert name not in seen, name
    assert b"x-secret-hop" not in b"".join(seen.get(b"connection", []))
    assert seen[b"x-end-to-end"] == [b"kept"]
    assert json.loads(body)["headers"]["x-end-to-end"] == ["kept"]


@pytest_twisted.inlineCallbacks
def test_upstream_keep_alive_and_transfer_encoding_are_not_echoed_to_the_client(make_gateway):
    gateway = make_gateway()
    status, headers, body = yield raw_exchange(
        gateway.url,
        b"GET /echo HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    )
    names = [name for name, _ in headers]
    assert status.startswith(b"HTTP/1.1 200")
    assert (b"x-upstream-header", b"kept") in headers
    assert b"keep-alive" not in names
    # At most the gateway's own framing of the body, never a copy of the
    # upstream's on top of it.
    assert [v for n, v in headers if n == b"transfer-encoding"] in ([], [b"chunked"])
    assert json.loads(body)["uri"] == "/echo"
    # A streamed answer is framed once, by the gateway itself.
    status, headers, body = yield raw_exchange(
        gateway.url,
        b"POST /v1/messages HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(messages_body(stream=True)), messages_body(stream=True)),
    )
    assert status.startswith(b"HTTP/1.1 200")
    assert [v for n, v in headers if n == b"transfer-encoding"] == [b"chunked"]
    assert b"keep-alive" not in [name for name, _ in headers]


# -- credentials ------------------------------------------------------------------------


CLIENT_CREDENTIALS = {
    "Authorization": ["Bearer client-secret"],
    "x-api-key": ["client-secret"],
    "api-key": ["client-secret"],
}


@pytest_twisted.inlineCallbacks
def test_openai_key_replaces_every_client_credential_with_one_bearer(make_gateway, upstream):
    gateway = make_gateway(llm__api_key="KEY")
    response = yield request("GET", gateway.url + "/echo", headers=CLIENT_CREDENTIALS)
    yield within(treq.content(response))
    seen = upstream.resource.seen[-1].headers
    assert seen[b"authorization"] == [b"Bearer KEY"]
    assert b"x-api-key" not in seen
    assert b"api-key" not in seen
    assert b"anthropic-version" not in seen
    assert not any(b"client-secret" in v for values in seen.values() for v in values)


@pytest_twisted.inlineCallbacks
def test_anthropic_key_goes_in_x_api_key_with_a_default_anthropic_version(make_gateway, upstream):
    gateway = make_gateway(llm__api_key="KEY", llm__type="anthropic")
    response = yield request("GET", gateway.url + "/echo", headers=CLIENT_CREDENTIALS)
    yield within(treq.content(response))
    seen = upstream.resource.seen[-1].headers
    assert seen[b"x-api-key"] == [b"KEY"]
    assert b"authorization" not in seen
    assert b"api-key" not in seen
    assert seen[b"anthropic-version"] == [b"2023-06-01"]


@pytest_twisted.inlineCallbacks
def test_anthropic_version_sent_by_the_client_is_kept(make_gateway, upstream):
    gateway = make_gateway(llm__api_key="KEY", llm__type="anthropic")
    response = yield request(
        "GET", gateway.url + "/echo", headers={"anthropic-version": ["2024-10-22"]}
    )
    yield within(treq.content(response))
    seen = upstream.resource.seen[-1].headers
    assert seen[b"anthropic-version"] == [b"2024-10-22"]
    assert seen[b"x-api-key"] == [b"KEY"]


@pytest_twisted.inlineCallbacks
def test_without_a_configured_key_the_clients_own_credential_passes_through(make_gateway, upstream):
    openai_gateway = make_gateway()
    response = yield request(
        "GET", openai_gateway.url + "/echo", headers={"Authorization": ["Bearer client-secret"]}
    )
    yield within(treq.content(response))
    assert upstream.resource.seen[-1].headers[b"authorization"] == [b"Bearer client-secret"]
    anthropic_gateway = make_gateway(llm__type="anthropic")
    response = yield request(
        "GET", anthropic_gateway.url + "/echo", headers={"x-api-key": ["client-secret"]}
    )
    yield within(treq.content(response))
    seen = upstream.resource.seen[-1].headers
    assert seen[b"x-api-key"] == [b"client-secret"]
    assert b"authorization" not in seen


@pytest_twisted.inlineCallbacks
def test_auth_header_setting_puts_the_key_in_that_header(make_gateway, upstream):
    gateway = make_gateway(llm__api_key="KEY", llm__auth_header="api-key")
    response = yield request("GET", gateway.url + "/echo", headers=CLIENT_CREDENTIALS)
    yield within(treq.content(response))
    seen = upstream.resource.seen[-1].headers
    assert seen[b"api-key"] == [b"KEY"]
    assert b"authorization" not in seen
    assert b"x-api-key" not in seen


# -- what a proxy must not do on the client's behalf -----------------------------------------


@pytest_twisted.inlineCallbacks
def test_redirects_are_passed_to_the_client_not_followed(make_gateway, upstream):
    gateway = make_gateway()
    response = yield request("GET", gateway.url + "/redirect")
    yield within(treq.content(response))
    assert response.code == 302
    assert response.headers.getRawHeaders(b"location") == [b"/v1/models"]
    assert [seen.uri for seen in upstream.resource.seen] == [b"/redirect"]


@pytest_twisted.inlineCallbacks
def test_upstream_cookies_reach_the_client_but_are_never_replayed_upstream(make_gateway, upstream):
    gateway = make_gateway()
    first = yield request("GET", gateway.url + "/cookie")
    yield within(treq.content(first))
    assert first.headers.getRawHeaders(b"set-cookie") == [b"upstream=secret-session; Path=/"]
    # Another client (a fresh treq client, so no jar of its own).
    second = yield request("GET", gateway.url + "/echo")
    yield within(treq.content(second))
    assert upstream.resource.seen[-1].uri == b"/echo"
    assert b"cookie" not in upstream.resource.seen[-1].headers


@pytest_twisted.inlineCallbacks
def test_gzip_bodies_pass_through_byte_identical_and_still_encoded(make_gateway):
    from tests.fakeupstream import openai_completion

    gateway = make_gateway()
    agent, pool = raw_agent()
    try:
        response = yield within(agent.request(b"GET", (gateway.url + "/gzip").encode()))
        reader = BodyReader()
        response.deliverBody(reader)
        yield within(reader.ended)
    finally:
        yield pool.closeCachedConnections()
    assert reader.reason.check(ResponseDone)
    body = reader.body
    payload = json.dumps(openai_completion("compressed answer", "gpt-fake")).encode()
    assert response.headers.getRawHeaders(b"content-encoding") == [b"gzip"]
    # Identical to what the upstream compressed, except the gzip header's
    # timestamp (bytes 4..8), which changes every second.
    expected = gzip.compress(payload)
    assert body[:4] + body[8:] == expected[:4] + expected[8:]
    assert gzip.decompress(body) == payload


@pytest_twisted.inlineCallbacks
def test_upstream_content_length_of_a_plain_body_is_kept(make_gateway):
    gateway = make_gateway()
    status, headers, body = yield raw_exchange(
        gateway.url, b"GET /gzip HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"
    )
    assert status.startswith(b"HTTP/1.1 200")
    assert gzip.decompress(body)
    assert [v for n, v in headers if n == b"content-length"] == [b"%d" % len(body)]
    assert b"transfer-encoding" not in [n for n, _ in headers]


# -- streaming ----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_sse_stream_arrives_byte_identical_with_comments_and_event_lines(make_gateway, upstream):
    gateway = make_gateway(llm__type="anthropic")
    response = yield request(
        "POST", gateway.url + "/v1/messages", data=messages_body(stream=True), headers=JSON
    )
    chunks: list[bytes] = []
    yield within(treq.collect(response, chunks.append))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    expected = b"".join(anthropic_events(REPLY, "claude-e2e"))
    body = b"".join(chunks)
    assert body == expected
    assert b": keep-alive comment\n\n" in body
    assert b"event: message_stop\n" in body


@pytest_twisted.inlineCallbacks
def test_sse_events_reach_the_client_one_by_one_as_the_upstream_writes_them(make_gateway, upstream):
    gateway = make_gateway()
    agent, pool = raw_agent()
    response = yield within(agent.request(b"POST", (gateway.url + "/slow-stream").encode()))
    reader = BodyReader()
    response.deliverBody(reader)
    first = yield within(reader.first_event)
    # The upstream never ends this stream: whatever arrived, arrived while it
    # was still writing, and it came at once, not held back in a block.
    assert first.startswith(b'data: {"n": 1}\n\n')
    assert len(first) < 1024
    assert upstream.resource.open_streams == 1
    lost = upstream.resource.notify_stream_lost()
    reader.transport.stopProducing()
    yield within(lost)
    yield pool.closeCachedConnections()


# -- client disconnects -------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_client_disconnect_mid_stream_aborts_the_upstream_request(make_gateway, upstream):
    gateway = make_gateway()
    agent, pool = raw_agent()
    response = yield within(agent.request(b"POST", (gateway.url + "/slow-stream").encode()))
    reader = BodyReader()
    response.deliverBody(reader)
    yield within(reader.first_event)
    assert len(gateway.parts.forwarder.open_calls) == 1
    lost = upstream.resource.notify_stream_lost()
    reader.transport.stopProducing()
    yield within(lost, 5)
    assert upstream.resource.open_streams == 0
    assert gateway.parts.forwarder.open_calls == {}
    yield pool.closeCachedConnections()
    yield assert_gateway_still_works(gateway)


@pytest_twisted.inlineCallbacks
def test_client_disconnect_while_waiting_for_headers_drops_the_upstream_connection(make_gateway, upstream):
    gateway = make_gateway()
    pending = treq.request("POST", gateway.url + "/stall", data=b"{}", persistent=False)
    cancelled: list[Failure] = []
    pending.addErrback(cancelled.append)
    yield wait_until(lambda: upstream.resource.open_streams == 1)
    assert len(gateway.parts.forwarder.open_calls) == 1
    lost = upstream.resource.notify_stream_lost()
    pending.cancel()
    yield within(lost, 5)
    # The client's own agent reports its cancel as ResponseNeverReceived.
    assert len(cancelled) == 1
    assert cancelled[0].check(CancelledError, ResponseNeverReceived)
    assert upstream.resource.open_streams == 0
    yield wait_until(lambda: gateway.parts.forwarder.open_calls == {}, 2)
    yield assert_gateway_still_works(gateway)


# -- errors, in the provider's shape -------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_refused_upstream_answers_502_in_openai_shape(make_gateway):
    port = yield closed_port()
    gateway = make_gateway(llm__base_url=f"http://127.0.0.1:{port}")
    response = yield request("POST", gateway.url + "/v1/chat/completions", data=chat_body())
    body = yield within(treq.content(response))
    assert response.code == 502
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    document = json.loads(body)
    assert set(document) == {"error"}
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    assert "type" in document["error"]
    # The upstream comes up on that port: the next call goes through.
    resource = FakeUpstream(reactor)
    site = Site(resource)
    site.noisy = False
    listening = reactor.listenTCP(port, site, interface="127.0.0.1")
    try:
        yield assert_gateway_still_works(gateway)
    finally:
        yield listening.stopListening()
    assert [seen.uri for seen in resource.seen] == [b"/v1/chat/completions"]


@pytest_twisted.inlineCallbacks
def test_refused_upstream_answers_502_in_anthropic_shape(make_gateway):
    port = yield closed_port()
    gateway = make_gateway(llm__type="anthropic", llm__base_url=f"http://127.0.0.1:{port}")
    response = yield request("POST", gateway.url + "/v1/messages", data=messages_body())
    body = yield within(treq.content(response))
    assert response.code == 502
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    document = json.loads(body)
    assert document["type"] == "error"
    assert set(document["error"]) >= {"type", "message"}
    assert document["error"]["message"]


@pytest_twisted.inlineCallbacks
def test_upstream_hanging_up_before_answering_gets_502_and_the_post_is_not_sent_twice(
    make_gateway, upstream
):
    gateway = make_gateway()
    response = yield request("POST", gateway.url + "/hang-up", data=chat_body(), headers=JSON)
    body = yield within(treq.content(response))
    assert response.code == 502
    assert json.loads(body)["error"]["message"]
    assert [(s.method, s.uri) for s in upstream.resource.seen] == [(b"POST", b"/hang-up")]


@pytest_twisted.inlineCallbacks
def test_upstream_silent_past_the_timeout_answers_504_and_drops_the_upstream(make_gateway, upstream):
    gateway = make_gateway(llm__timeout=0.3)
    lost = upstream.resource.notify_stream_lost()
    started = reactor.seconds()
    response = yield request("POST", gateway.url + "/stall", data=b"{}")
    body = yield within(treq.content(response))
    assert response.code == 504
    assert 0.25 <= reactor.seconds() - started < 5
    document = json.loads(body)
    assert document["error"]["message"]
    yield within(lost, 5)
    assert gateway.parts.forwarder.open_calls == {}
    yield assert_gateway_still_works(gateway)


@pytest_twisted.inlineCallbacks
def test_body_over_the_limit_with_content_length_answers_413(make_gateway, upstream):
    gateway = make_gateway(server__max_request_body=1000)
    response = yield request(
        "POST", gateway.url + "/v1/chat/completions", data=b"x" * 5000, headers=JSON
    )
    body = yield within(treq.content(response))
    assert response.code == 413
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(body)["error"]["message"]
    assert upstream.resource.seen == []
    yield assert_gateway_still_works(gateway)


@pytest_twisted.inlineCallbacks
def test_chunked_body_over_the_limit_answers_413(make_gateway, upstream):
    gateway = make_gateway(server__max_request_body=1000, llm__type="anthropic")
    agent, pool = raw_agent()
    response = yield within(
        agent.request(
            b"POST",
            (gateway.url + "/v1/messages").encode(),
            Headers({b"content-type": [b"application/json"]}),
            ChunkedBody(b"y" * 5000),
        )
    )
    reader = BodyReader()
    response.deliverBody(reader)
    yield within(reader.ended)
    assert response.code == 413
    document = json.loads(reader.body)
    assert document["type"] == "error" and document["error"]["message"]
    assert upstream.resource.seen == []
    yield pool.closeCachedConnections()
    yield assert_gateway_still_works(gateway)


@pytest_twisted.inlineCallbacks
def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(make_gateway, upstream):
    gateway = make_gateway()
    response = yield request(
        "POST", gateway.url + "/die-mid-stream", data=chat_body(stream=True), headers=JSON
    )
    chunks: list[bytes] = []
    yield within(treq.collect(response, chunks.append))
    body = b"".join(chunks)
    assert response.code == 200
    sent = b"".join(openai_chunks("this answer will be cut", "gpt-fake", False)[:3])
    assert body.startswith(sent)
    tail = body[len(sent) :]
    assert tail.startswith(b'data: {"error"'), tail
    assert tail.endswith(b"\n\n")
    assert json.loads(tail[len(b"data: ") :])["error"]["message"]
    assert b"<html" not in body.lower()
    assert gateway.parts.forwarder.open_calls == {}
    yield assert_gateway_still_works(gateway)


@pytest_twisted.inlineCallbacks
def test_upstream_dying_mid_body_truncates_the_clients_body(make_gateway, upstream):
    gateway = make_gateway()
    agent, pool = raw_agent()
    response = yield within(agent.request(b"POST", (gateway.url + "/die-mid-body").encode()))
    reader = BodyReader()
    response.deliverBody(reader)
    yield within(reader.ended)
    yield pool.closeCachedConnections()
    assert response.code == 200
    assert not reader.reason.check(ResponseDone), "a cut body was delivered as complete"
    assert reader.reason.check(ResponseFailed, PotentialDataLoss)
    assert reader.body == b'{"partial": '
    yield assert_gateway_still_works(gateway)


@pytest_twisted.inlineCallbacks
def test_upstream_idle_mid_stream_ends_the_stream_with_an_idle_error_event(make_gateway, upstream):
    gateway = make_gateway(llm__idle_timeout=0.3)
    lost = upstream.resource.notify_stream_lost()
    response = yield request(
        "POST", gateway.url + "/stall-mid-stream", data=chat_body(stream=True), headers=JSON
    )
    chunks: list[bytes] = []
    yield within(treq.collect(response, chunks.append))
    body = b"".join(chunks)
    assert response.code == 200
    sent = b"".join(openai_chunks("this answer will stall", "gpt-fake", False)[:2])
    assert body.startswith(sent)
    tail = body[len(sent) :]
    assert tail.startswith(b'data: {"error"'), tail
    assert b"idle" in tail
    yield within(lost, 5)
    assert gateway.parts.forwarder.open_calls == {}
    yield assert_gateway_still_works(gateway)


# -- backpressure --------------------------------------------------------------------------------


@inlineCallbacks
def paused_big_stream(gateway: Any, upstream: Any, megabytes: int) -> Any:
    """
    Start a ``/big-stream-counted`` of ``megabytes`` MiB through ``gateway``
    and pause the client's own TCP transport (after ``deliverBody``, which
    resumes it): from then on the gateway's writes to this client back up.
    Returns the response, its ``CountingReader``, the upstream's stream and
    the client's pool.
    """
    agent, pool = raw_agent()
    response = yield within(
        agent.request(
            b"POST",
            (gateway.url + "/big-stream-counted").encode(),
            Headers({b"content-type": [b"application/json"]}),
            FileBodyProducer(BytesIO(json.dumps({"megabytes": megabytes}).encode())),
        )
    )
    reader = CountingReader()
    response.deliverBody(reader)
    reader.transport.pauseProducing()
    return response, reader, upstream.resource.big_streams[-1], pool


@pytest_twisted.inlineCallbacks
def test_a_paused_client_pauses_the_upstream_and_then_gets_every_byte(make_gateway, upstream):
    megabytes = 64
    total = megabytes * 1024 * 1024
    gateway = make_gateway()
    response, reader, stream, pool = yield paused_big_stream(gateway, upstream, megabytes)
    assert response.code == 200
    # The pause reaches the upstream: its producer is paused, with a bounded
    # part of the stream sent (every buffer on the way holds a little).
    yield wait_until(lambda: stream.paused)
    assert stream.sent < total // 4, f"upstream sent {stream.sent} of {total} bytes to a paused client"
    reader.transport.resumeProducing()
    yield within(reader.ended, 30)
    assert reader.reason.check(ResponseDone)
    assert reader.received == total
    assert stream.sent == total
    yield pool.closeCachedConnections()


@pytest_twisted.inlineCallbacks
def test_a_paused_client_that_disconnects_still_aborts_the_upstream(make_gateway, upstream):
    gateway = make_gateway()
    response, reader, stream, pool = yield paused_big_stream(gateway, upstream, 64)
    yield wait_until(lambda: stream.paused)
    assert len(gateway.parts.forwarder.open_calls) == 1
    lost = upstream.resource.notify_stream_lost()
    reader.transport.stopProducing()
    yield within(lost, 5)
    assert stream.sent < 64 * 1024 * 1024
    assert gateway.parts.forwarder.open_calls == {}
    yield pool.closeCachedConnections()


@pytest_twisted.inlineCallbacks
def test_a_client_reading_nothing_for_the_idle_timeout_is_cut_and_the_upstream_dropped(
    make_gateway, upstream
):
    gateway = make_gateway(llm__idle_timeout=0.5)
    response, reader, stream, pool = yield paused_big_stream(gateway, upstream, 64)
    lost = upstream.resource.notify_stream_lost()
    yield wait_until(lambda: stream.paused)
    # The client holds its connection open and reads nothing: after the idle
    # timeout the gateway lets go of the upstream, though nobody hung up.
    yield within(lost, 5)
    assert gateway.parts.forwarder.open_calls == {}
    # The client's connection was cut, so what it had is not a whole answer.
    reader.transport.resumeProducing()
    yield within(reader.ended, 10)
    assert not reader.reason.check(ResponseDone)
    assert reader.received < 64 * 1024 * 1024
    metrics = gateway.parts.metrics
    assert metrics is not None and metrics.client_disconnects == 1
    yield pool.closeCachedConnections()
    yield assert_gateway_still_works(gateway)


# -- what a call leaves behind ------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_calls_leave_no_reference_cycles_behind(make_gateway, upstream):
    """
    Plain answers and streams are freed by reference counting alone: the
    cyclic collector would otherwise run every few calls (about 250 us each
    here) and stall every call in flight while it does.
    """
    import gc

    gateway = make_gateway(document={"session": {"enabled": True}})
    yield assert_gateway_still_works(gateway)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # Several of each: the last call's objects may still be referenced
        # by its pooled connection until the next call.
        for body in [chat_body(), chat_body(stream=True)] * 4:
            response = yield request(
                "POST", gateway.url + "/v1/chat/completions", data=body, headers=JSON
            )
            yield within(treq.content(response))
        gc.collect()
        kinds = {type(thing).__module__ for thing in gc.garbage}
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
    assert not {kind for kind in kinds if kind.startswith("llmgate")}, kinds
