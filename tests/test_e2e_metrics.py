"""
End-to-end tests of ``/metrics`` and ``/config`` over loopback: a known
sequence of calls through a real gateway in front of the fake upstream, then
every figure checked exactly, in JSON and in both Prometheus formats.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest_twisted
import treq
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from tests.fakeupstream import anthropic_events, openai_chunks, openai_like_chunks

REPLY = "Hello from the fake upstream"
MODEL = "gpt-metrics"
CANARY_KEY = "sk-canary-config-5e6f7a8b9c"
SCRAPER_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,"
    "application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
#: Every wait is bounded, so a broken gateway fails instead of hanging.
WAIT = 10.0


# -- helpers -------------------------------------------------------------------


def within(d: Deferred, seconds: float = WAIT) -> Deferred:
    return d.addTimeout(seconds, reactor)


@pytest_twisted.inlineCallbacks
def call(url: str, path: str, document: dict[str, Any] | None = None, **headers: str):
    """
    POST ``document`` (or GET without one) on a connection of its own;
    returns (status, headers, body bytes).
    """
    head = {k.replace("_", "-"): v for k, v in headers.items()}
    if document is None:
        response = yield within(treq.get(url + path, headers=head, persistent=False))
    else:
        head.setdefault("content-type", "application/json")
        response = yield within(
            treq.post(url + path, json.dumps(document).encode(), headers=head, persistent=False)
        )
    body = yield within(treq.content(response))
    return response.code, response.headers, body


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, **extra}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


ANSWER = {"role": "assistant", "content": REPLY}


def trace_of(parts: Any) -> Any:
    return next(m for m in parts.middlewares if m.name == "trace")


def session_header(headers: Any) -> str | None:
    values = headers.getRawHeaders(b"x-llmgate-session-id")
    return values[0].decode() if values else None


@pytest_twisted.inlineCallbacks
def metrics_json(url: str):
    status, headers, body = yield call(url, "/metrics")
    assert status == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    return json.loads(body)


@pytest_twisted.inlineCallbacks
def metrics_prometheus(url: str, query: bool = False, accept: str | None = None):
    """
    ``/metrics`` in Prometheus text, parsed into {(sample, labels): value}.
    """
    path = "/metrics?format=prometheus" if query else "/metrics"
    headers = {"accept": accept} if accept else {}
    status, response_headers, body = yield call(url, path, **headers)
    assert status == 200
    content_type = response_headers.getRawHeaders(b"content-type")[0].decode()
    text = body.decode("utf-8")
    if content_type.startswith("application/openmetrics-text"):
        assert text.endswith("# EOF\n")
        families = list(openmetrics_families(text))
    else:
        assert content_type.startswith("text/plain; version=0.0.4"), content_type
        families = list(text_string_to_metric_families(text))
    values = {}
    for family in families:
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return content_type, values


def total(values: dict, name: str, **match: str) -> float:
    """
    The sum of sample ``name`` over the series whose labels include ``match``.
    """
    return sum(
        value
        for (sample, labels), value in values.items()
        if sample == name and set(match.items()) <= labels
    )


@pytest_twisted.inlineCallbacks
def wait_for(predicate, seconds: float = WAIT):
    waited = 0.0
    while not predicate():
        assert waited < seconds, "condition never came true"
        yield deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


# -- a known sequence, then every figure ---------------------------------------


@pytest_twisted.inlineCallbacks
def test_metrics_after_a_known_sequence_are_exact_in_json_and_prometheus(
    make_gateway, upstream, tmp_path
):
    directory = str(tmp_path / "traces")
    gateway = make_gateway(
        document={
            "llm": {"timeout": 0.5},
            "middlewares": [{"type": "trace", "config": {"directory": directory}}],
        }
    )
    url = gateway.url

    # Session A: plain, plain continuation, streamed continuation with usage.
    status, headers, _ = yield call(url, "/v1/chat/completions", chat([user("A1")]))
    assert status == 200
    session_a = session_header(headers)
    status, headers, _ = yield call(
        url, "/v1/chat/completions", chat([user("A1"), ANSWER, user("A2")])
    )
    assert (status, session_header(headers)) == (200, session_a)
    status, headers, body = yield call(
        url,
        "/v1/chat/completions",
        chat(
            [user("A1"), ANSWER, user("A2"), ANSWER, user("A3")],
            stream=True,
            stream_options={"include_usage": True},
        ),
    )
    assert (status, session_header(headers)) == (200, session_a)
    assert b'"prompt_tokens": 11' in body  # the client asked for usage: it gets it

    # Session B: plain, then a streamed continuation without usage.
    status, headers, _ = yield call(url, "/v1/chat/completions", chat([user("B1")]))
    session_b = session_header(headers)
    assert status == 200 and session_b not in (None, session_a)
    status, headers, body = yield call(
        url, "/v1/chat/completions", chat([user("B1"), ANSWER, user("B2")], stream=True)
    )
    assert (status, session_header(headers)) == (200, session_b)
    assert b'"usage"' not in body

    # Failures, on bodies without a conversation (no session involved).
    status, _, _ = yield call(url, "/status-418", {"model": MODEL})
    assert status == 418
    status, _, body = yield call(url, "/die-mid-stream", {"model": MODEL, "stream": True})
    assert status == 200 and b"upstream connection lost mid-answer" in body

    stalled = call(url, "/stall", {"model": MODEL})
    yield wait_for(lambda: upstream.resource.open_streams == 1)
    during = yield metrics_json(url)
    assert during["requests_in_flight"] == 1
    assert during["streams_open"] == 0
    status, _, body = yield stalled
    assert status == 504 and b"upstream_timeout" in body

    yield within(trace_of(gateway.parts).flush())
    assert len(os.listdir(directory)) == 8

    view = yield metrics_json(url)
    assert view["requests"] == {
        "total": 8,
        "by_provider": {"openai": 8},
        "by_model": {MODEL: 8},
        # The mid-stream death answered 200 before it died; the timeout had
        # no upstream answer at all (the client got the gateway's 504).
        "by_status_class": {"2xx": 6, "4xx": 1, "5xx": 1},
        "by_upstream": {"default": 8},
        "by_api": {"openai-chat": 5, "opaque": 3},
    }
    assert view["upstream_errors"] == {"upstream_reset": 1, "upstream_timeout": 1}
    # Three plain answers and the stream that asked for usage: 4 x (11, 7).
    assert view["tokens"] == {MODEL: {"input": 44, "output": 28}}
    sessions = view["sessions"]
    assert sessions["active_sessions"] == 2
    assert sessions["sessions_created"] == 2
    assert sessions["cache_hits"] == 3
    assert sessions["cache_misses"] == 2
    assert sessions["fuzzy_matches"] == 0
    assert view["traces"] == {"written": 8, "failed": 0, "dropped": 0}
    assert view["requests_in_flight"] == 0
    assert view["streams_open"] == 0
    assert view["middleware_errors"] == {}
    assert sum(view["requests_refused"].values()) == 0
    latency = view["latency"]
    assert latency["duration"]["count"] == 8
    assert latency["ttfb"]["count"] == 7  # all but the stalled call
    assert latency["overhead"]["count"] == 8
    assert latency["duration"]["p99_ms"] >= 500.0  # the stall waited the whole timeout
    assert 0 < latency["overhead"]["avg_ms"] < latency["duration"]["avg_ms"]

    by_query = yield metrics_prometheus(url, query=True)
    by_accept = yield metrics_prometheus(url, accept=SCRAPER_ACCEPT)
    assert by_query[0].startswith("text/plain")
    assert by_accept[0].startswith("application/openmetrics-text")
    for content_type, values in (by_query, by_accept):
        series: dict[frozenset, float] = {}
        for (name, labels), value in values.items():
            if name == "llmgate_requests_total":
                assert dict(labels)["upstream"] == "default"
                key = frozenset(kv for kv in labels if kv[0] not in ("upstream", "api"))
                series[key] = series.get(key, 0.0) + value
        assert series == {
            frozenset({("provider", "openai"), ("model", MODEL), ("status_class", "2xx")}): 6.0,
            frozenset({("provider", "openai"), ("model", MODEL), ("status_class", "4xx")}): 1.0,
            frozenset({("provider", "openai"), ("model", MODEL), ("status_class", "5xx")}): 1.0,
        }, content_type
        errors = {
            dict(labels)["kind"]: value  # one upstream: one series per kind
            for (name, labels), value in values.items()
            if name == "llmgate_upstream_errors_total"
        }
        assert errors == view["upstream_errors"], content_type
        assert total(values, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 44
        assert total(values, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 28
        assert total(values, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 4
        assert total(values, "gen_ai_client_operation_duration_seconds_count") == 8
        assert total(values, "gen_ai_server_time_to_first_token_seconds_count") == 7
        assert total(values, "llmgate_overhead_seconds_count") == 8
        assert total(values, "llmgate_sessions_active") == sessions["active_sessions"]
        assert total(values, "llmgate_sessions_created_total") == sessions["sessions_created"]
        assert total(values, "llmgate_session_cache_hits_total") == sessions["cache_hits"]
        assert total(values, "llmgate_session_cache_misses_total") == sessions["cache_misses"]
        assert total(values, "llmgate_trace_written_total") == 8
        assert total(values, "llmgate_requests_in_flight") == 0
        assert total(values, "llmgate_streams_open") == 0
        # Summed over the histograms, the same figures as the JSON view.
        assert total(values, "gen_ai_client_operation_duration_seconds_sum") * 1000 == pytest_approx(
            latency["duration"]["avg_ms"] * 8
        )
    # Both Prometheus formats agree on every sample they share (the text
    # format has no # EOF and the same names for these families).
    assert by_query[1] == by_accept[1]


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, rel=1e-3, abs=0.01)


class FirstEvent(Protocol):
    """
    Read a streamed body until its first SSE event.
    """

    def __init__(self) -> None:
        self.data = b""
        self.first: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\n\n" in self.data and not self.first.called:
            self.first.callback(self.data)


@pytest_twisted.inlineCallbacks
def test_a_stream_in_progress_is_in_flight_and_open_until_its_client_leaves(
    make_gateway, upstream
):
    gateway = make_gateway()
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool)
    response = yield within(
        agent.request(b"POST", (gateway.url + "/slow-stream").encode())
    )
    reader = FirstEvent()
    response.deliverBody(reader)
    yield within(reader.first)

    during = yield metrics_json(gateway.url)
    assert during["requests_in_flight"] == 1
    assert during["streams_open"] == 1
    assert during["requests"]["total"] == 0  # counted when it ends
    _, values = yield metrics_prometheus(gateway.url, accept=SCRAPER_ACCEPT)
    assert total(values, "llmgate_requests_in_flight") == 1
    assert total(values, "llmgate_streams_open") == 1

    lost = upstream.resource.notify_stream_lost()
    reader.transport.stopProducing()
    yield within(lost)
    yield wait_for(lambda: not gateway.parts.forwarder.open_calls)
    yield pool.closeCachedConnections()
    after = yield metrics_json(gateway.url)
    assert after["requests_in_flight"] == 0
    assert after["streams_open"] == 0
    assert after["requests"]["total"] == 1
    # The head had been relayed: the call keeps the upstream's status class.
    assert after["requests"]["by_status_class"] == {"2xx": 1}


@pytest_twisted.inlineCallbacks
def test_anthropic_calls_are_counted_under_their_provider(make_gateway):
    gateway = make_gateway(document={"llm": {"type": "anthropic"}})
    document = {"model": "claude-metrics", "max_tokens": 10, "messages": [user("hi")]}
    status, _, _ = yield call(gateway.url, "/v1/messages", document)
    assert status == 200
    status, _, body = yield call(gateway.url, "/v1/messages", dict(document, stream=True))
    assert status == 200
    assert body == b"".join(anthropic_events(REPLY, "claude-metrics"))
    view = yield metrics_json(gateway.url)
    assert view["requests"]["by_provider"] == {"anthropic": 2}
    # 13 input and 9 output tokens each, plain or streamed.
    assert view["tokens"] == {"claude-metrics": {"input": 26, "output": 18}}
    _, values = yield metrics_prometheus(gateway.url, query=True)
    assert (
        total(values, "gen_ai_client_token_usage_sum", gen_ai_system="anthropic", gen_ai_token_type="output")
        == 18
    )
    assert total(values, "gen_ai_client_token_usage_count", gen_ai_system="openai") == 0


# -- usage.include_stream_usage --------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_stream_usage_is_counted_but_hidden_from_a_client_that_did_not_ask(
    make_gateway, upstream
):
    gateway = make_gateway(document={"usage": {"include_stream_usage": True}})
    status, _, body = yield call(
        gateway.url, "/v1/chat/completions", chat([user("count me")], stream=True)
    )
    assert status == 200
    sent = json.loads(upstream.resource.seen[-1].body)
    assert sent["stream_options"] == {"include_usage": True}
    # Exactly the stream the upstream sends when usage is not asked for.
    assert body == b"".join(openai_chunks(REPLY, MODEL, False))
    assert b'"usage"' not in body
    view = yield metrics_json(gateway.url)
    assert view["tokens"] == {MODEL: {"input": 11, "output": 7}}
    _, values = yield metrics_prometheus(gateway.url, query=True)
    assert total(values, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 11


@pytest_twisted.inlineCallbacks
def test_usage_null_in_every_chunk_is_hidden_too(make_gateway, upstream):
    """
    OpenAI adds ``"usage": null`` to every chunk once usage is asked for;
    with ``json.dumps``' separators that is ``, "usage": null``.
    """
    gateway = make_gateway(document={"usage": {"include_stream_usage": True}})
    status, _, body = yield call(
        gateway.url, "/openai-like/v1/chat/completions", chat([user("count me")], stream=True)
    )
    assert status == 200
    # What the upstream sent: the usage chunk and ``, "usage": null`` in the others.
    assert json.loads(upstream.resource.seen[-1].body)["stream_options"] == {"include_usage": True}
    assert b'}], "usage": null}' in b"".join(openai_like_chunks(REPLY, MODEL, True))
    assert b'"usage"' not in body
    assert body == b"".join(openai_chunks(REPLY, MODEL, False))
    view = yield metrics_json(gateway.url)
    assert view["tokens"] == {MODEL: {"input": 11, "output": 7}}


@pytest_twisted.inlineCallbacks
def test_a_client_that_asked_for_usage_still_gets_it(make_gateway):
    gateway = make_gateway(document={"usage": {"include_stream_usage": True}})
    status, _, body = yield call(
        gateway.url,
        "/openai-like/v1/chat/completions",
        chat([user("mine")], stream=True, stream_options={"include_usage": True}),
    )
    assert status == 200
    # Untouched: every ``"usage": null`` and the usage chunk are the client's.
    assert body == b"".join(openai_like_chunks(REPLY, MODEL, True))
    assert b'"prompt_tokens": 11' in body
    view = yield metrics_json(gateway.url)
    assert view["tokens"] == {MODEL: {"input": 11, "output": 7}}


# -- /config ------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_config_shows_a_key_as_configured_and_never_the_key(make_gateway):
    gateway = make_gateway(document={"llm": {"api_key": CANARY_KEY}})
    yield call(gateway.url, "/v1/chat/completions", chat([user("hi")]))
    status, headers, body = yield call(gateway.url, "/config")
    assert status == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert CANARY_KEY.encode() not in body
    assert CANARY_KEY[3:15].encode() not in body
    view = json.loads(body)
    assert view["llm"]["api_key"] == {"configured": True}
    assert view["llm"]["type"] == "openai"
    assert "version" in view
    # Nor does /metrics show it, in either format.
    for path in ("/metrics", "/metrics?format=prometheus"):
        _, _, body = yield call(gateway.url, path)
        assert CANARY_KEY.encode() not in body


@pytest_twisted.inlineCallbacks
def test_config_without_a_key_says_not_configured(make_gateway):
    gateway = make_gateway()
    status, _, body = yield call(gateway.url, "/config")
    assert status == 200
    assert json.loads(body)["llm"]["api_key"] == {"configured": False}


@pytest_twisted.inlineCallbacks
def test_config_and_metrics_answer_without_a_session_section(make_gateway):
    # make_gateway's document has only llm.base_url: no session: section.
    gateway = make_gateway()
    status, _, body = yield call(gateway.url, "/config")
    assert status == 200
    view = json.loads(body)
    assert view["session"]["enabled"] is True
    assert view["middlewares"] == []
    metrics = yield metrics_json(gateway.url)
    assert metrics["sessions"]["active_sessions"] == 0


@pytest_twisted.inlineCallbacks
def test_config_and_metrics_answer_with_sessions_disabled(make_gateway):
    gateway = make_gateway(document={"session": {"enabled": False}})
    yield call(gateway.url, "/v1/chat/completions", chat([user("hi")]))
    status, _, body = yield call(gateway.url, "/config")
    assert status == 200
    assert json.loads(body)["session"]["enabled"] is False
    metrics = yield metrics_json(gateway.url)
    assert metrics["sessions"] is None
    assert metrics["requests"]["total"] == 1
    _, values = yield metrics_prometheus(gateway.url, query=True)
    assert not any(name.startswith("llmgate_session") for name, _ in values)


@pytest_twisted.inlineCallbacks
def test_config_lists_each_middleware_with_its_live_state(make_gateway, tmp_path):
    directory = str(tmp_path / "traces")
    gateway = make_gateway(
        document={
            "middlewares": [
                {"type": "trace", "config": {"directory": directory}},
                {"type": "printer", "enabled": False},
                {"type": "printer", "config": {"log_body": False}},
            ]
        }
    )
    status, _, _ = yield call(gateway.url, "/v1/chat/completions", chat([user("hi")]))
    assert status == 200
    yield within(trace_of(gateway.parts).flush())
    status, _, body = yield call(gateway.url, "/config")
    assert status == 200
    middlewares = json.loads(body)["middlewares"]
    # Every configured middleware is listed once; the enabled ones in
    # configuration order (today the disabled ones come after them).
    assert sorted((m["type"], m["enabled"]) for m in middlewares) == [
        ("printer", False),
        ("printer", True),
        ("trace", True),
    ]
    enabled = [m for m in middlewares if m["enabled"]]
    assert [m["type"] for m in enabled] == ["trace", "printer"]
    trace, printer = enabled
    (disabled,) = [m for m in middlewares if not m["enabled"]]
    assert trace["state"]["directory"] == os.path.abspath(directory)
    assert trace["state"]["files_written"] == 1
    assert trace["state"]["write_failures"] == 0
    assert printer["state"]["log_body"] is False
    assert printer["state"]["lines_logged"] >= 1
    assert disabled["state"] == {}


# -- metrics disabled -----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_metrics_disabled_answers_404_in_the_providers_shape(make_gateway):
    """
    With ``metrics.enabled: false`` nothing is counted, and ``/metrics``
    says so (404) rather than showing zeros an idle gateway would show.
    """
    gateway = make_gateway(document={"metrics": {"enabled": False}})
    status, _, _ = yield call(gateway.url, "/v1/chat/completions", chat([user("hi")]))
    assert status == 200
    status, _, body = yield call(gateway.url, "/metrics")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "metrics_disabled"
    status, _, body = yield call(gateway.url, "/config")
    assert status == 200 and json.loads(body)["metrics"] == {"enabled": False}


# -- content negotiation ----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_metrics_negotiation_over_http(make_gateway):
    gateway = make_gateway()
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    for accept, expected in (
        (None, "application/json"),
        ("*/*", "application/json"),
        (browser, "application/json"),
        ("text/plain", "text/plain; version=0.0.4"),
        (SCRAPER_ACCEPT, "application/openmetrics-text"),
    ):
        headers = {"accept": accept} if accept else {}
        status, response_headers, body = yield call(gateway.url, "/metrics", **headers)
        assert status == 200
        content_type = response_headers.getRawHeaders(b"content-type")[0].decode()
        assert content_type.startswith(expected), (accept, content_type)
        assert response_headers.getRawHeaders(b"cache-control") == [b"no-store"]
        if expected == "application/json":
            assert json.loads(body)["requests"]["total"] == 0
    status, response_headers, _ = yield call(gateway.url, "/metrics?format=json", accept=SCRAPER_ACCEPT)
    assert response_headers.getRawHeaders(b"content-type") == [b"application/json"]
