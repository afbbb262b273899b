"""
End-to-end tests of OpenTelemetry export: a gateway on loopback in front of
the fake upstream, the official SDKs as clients, and a real OTLP/HTTP
receiver (``tests/otlpcollector.py``) decoding what the exporter sends.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import anthropic
import openai
import pytest
import pytest_twisted
import treq
from twisted.internet.task import deferLater
from twisted.web.server import Site

from tests.conftest import Running, _listen
from tests.otlpcollector import Collector, ReceivedSpan
from tests.test_e2e_sdk import TIMEOUT, ask, in_thread

CANARY_KEY = "sk-canary-otel-upstream-4f5e6d"
CANARY_CLIENT = "client-canary-otel-7a8b9c"
CANARY_COLLECTOR = "collector-canary-otel-1d2e3f"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def collector() -> Iterator[Running]:
    resource = Collector()
    site = Site(resource)
    site.noisy = False
    port = _listen(site)
    yield Running(url=f"http://127.0.0.1:{port.getHost().port}", port=port, resource=resource)
    resource.release()
    pytest_twisted.blockon(port.stopListening())


def telemetry(collector: Running, **otlp: Any) -> dict[str, Any]:
    return {"otlp": {"endpoint": collector.url, "timeout": 5, **otlp}}


def otel_of(gateway: Running) -> Any:
    assert gateway.parts is not None
    return next(m for m in gateway.parts.middlewares if m.name == "otel")


def spans_by_kind(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.kind == kind]


@pytest_twisted.inlineCallbacks
def exported(gateway: Running, collector: Running, count: int) -> Any:
    """
    The first ``count`` spans the collector decoded, once they are there.
    """
    yield otel_of(gateway).flush()
    spans = yield collector.resource.wait_for(count).addTimeout(TIMEOUT, _reactor())
    return spans


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def check_call_pair(spans: list[ReceivedSpan], upstream_seen: Any) -> tuple[ReceivedSpan, ReceivedSpan]:
    """
    One SERVER span with one CLIENT span under it, in the same trace as the
    ``traceparent`` the upstream received, which names the CLIENT span.
    """
    (server,) = spans_by_kind(spans, "SERVER")
    (client,) = spans_by_kind(spans, "CLIENT")
    assert client.trace_id == server.trace_id
    assert client.parent_span_id == server.span_id
    assert server.start <= client.start <= client.end <= server.end
    traceparent = upstream_seen.header(b"traceparent").decode()
    assert traceparent == f"00-{server.trace_id}-{client.span_id}-01"
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["http.response.status_code"] == 200
    return server, client


@pytest_twisted.inlineCallbacks
def test_openai_plain_and_streamed_calls_export_genai_spans(make_gateway, upstream, collector):
    gateway = make_gateway(
        document={"telemetry": telemetry(collector, service_name="gateway-under-test")}
    )

    def calls() -> Any:
        with openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0, timeout=TIMEOUT
        ) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=ask("plain"), max_tokens=50, temperature=0.25
            )
            plain = raw.parse()
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=ask("streamed"), stream=True,
                    stream_options={"include_usage": True},
                )
            )
            return raw.headers.get("x-llmgate-session-id"), plain, chunks

    session, plain, chunks = yield in_thread(calls)
    spans = yield exported(gateway, collector, 4)
    servers = spans_by_kind(spans, "SERVER")
    assert len(servers) == 2
    plain_span, stream_span = sorted(servers, key=lambda s: s.start)
    for server, seen in ((plain_span, upstream.resource.seen[0]), (stream_span, upstream.resource.seen[1])):
        pair = [s for s in spans if s.trace_id == server.trace_id]
        check_call_pair(pair, seen)
        assert server.name == "chat gpt-4o-mini"
        assert server.resource["service.name"] == "gateway-under-test"
        attributes = server.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
        assert attributes["gen_ai.response.id"] == "chatcmpl-fake"
        assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert attributes["http.request.method"] == "POST"
        assert attributes["http.response.status_code"] == 200
        assert attributes["gen_ai.conversation.id"].startswith("sess_")
        assert not server.parent_span_id
    assert plain_span.attributes["gen_ai.conversation.id"] == session
    # The SDK closes a stream at [DONE], which may be before its end: the
    # gateway says so (client_gone), so only the plain call is error-free.
    assert "error.type" not in plain_span.attributes and plain_span.status_code == 0
    assert plain_span.attributes["gen_ai.usage.input_tokens"] == plain.usage.prompt_tokens
    assert plain_span.attributes["gen_ai.usage.output_tokens"] == plain.usage.completion_tokens
    assert plain_span.attributes["gen_ai.request.max_tokens"] == 50
    assert plain_span.attributes["gen_ai.request.temperature"] == 0.25
    usage = chunks[-1].usage
    assert stream_span.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert stream_span.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert 0 < stream_span.attributes["llmgate.time_to_first_token"]
    assert "llmgate.time_to_first_token" not in plain_span.attributes


@pytest_twisted.inlineCallbacks
def test_anthropic_plain_and_streamed_calls_export_genai_spans(make_gateway, upstream, collector):
    gateway = make_gateway(document={"llm": {"type": "anthropic"}, "telemetry": telemetry(collector)})

    def calls() -> Any:
        with anthropic.Anthropic(
            base_url=gateway.url, api_key="sk-ant-client", max_retries=0, timeout=TIMEOUT
        ) as client:
            raw = client.messages.with_raw_response.create(
                model="claude-test", max_tokens=64, messages=ask("plain")
            )
            plain = raw.parse()
            with client.messages.stream(
                model="claude-test", max_tokens=64, messages=ask("streamed")
            ) as stream:
                final = stream.get_final_message()
            return raw.headers.get("x-llmgate-session-id"), plain, final

    session, plain, final = yield in_thread(calls)
    spans = yield exported(gateway, collector, 4)
    plain_span, stream_span = sorted(spans_by_kind(spans, "SERVER"), key=lambda s: s.start)
    for server, seen, message in (
        (plain_span, upstream.resource.seen[0], plain),
        (stream_span, upstream.resource.seen[1], final),
    ):
        check_call_pair([s for s in spans if s.trace_id == server.trace_id], seen)
        attributes = server.attributes
        assert server.name == "chat claude-test"
        assert attributes["gen_ai.provider.name"] == "anthropic"
        assert attributes["gen_ai.request.max_tokens"] == 64
        assert attributes["gen_ai.response.id"] == message.id
        assert attributes["gen_ai.response.model"] == message.model
        assert attributes["gen_ai.response.finish_reasons"] == (message.stop_reason,)
        assert attributes["gen_ai.usage.input_tokens"] == message.usage.input_tokens
        assert attributes["gen_ai.usage.output_tokens"] == message.usage.output_tokens
        assert attributes["llmgate.session.decision"]
    assert plain_span.attributes["gen_ai.conversation.id"] == session


@pytest_twisted.inlineCallbacks
def test_a_client_traceparent_is_the_parent_and_the_upstream_joins_the_trace(
    make_gateway, upstream, collector
):
    gateway = make_gateway(document={"telemetry": telemetry(collector)})
    answer = yield treq.post(
        gateway.url + "/v1/chat/completions",
        json.dumps({"model": "m", "messages": ask("traced")}).encode(),
        headers={
            "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
            "tracestate": "vendor=opaque",
            "content-type": "application/json",
        },
    )
    yield answer.content()
    spans = yield exported(gateway, collector, 2)
    server, client = check_call_pair(spans, upstream.resource.seen[-1])
    assert server.trace_id == CLIENT_TRACE
    assert server.parent_span_id == CLIENT_SPAN
    assert server.trace_state == "vendor=opaque"
    seen = upstream.resource.seen[-1]
    assert seen.header(b"traceparent").decode().split("-")[1] == CLIENT_TRACE
    assert seen.header(b"traceparent").decode().split("-")[2] != CLIENT_SPAN
    assert seen.header(b"tracestate") == b"vendor=opaque"


@pytest_twisted.inlineCallbacks
def test_an_unsampled_client_trace_is_not_exported_but_still_propagated(
    make_gateway, upstream, collector
):
    gateway = make_gateway(document={"telemetry": telemetry(collector)})
    answer = yield treq.post(
        gateway.url + "/v1/chat/completions",
        json.dumps({"model": "m", "messages": ask("quiet")}).encode(),
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"},
    )
    yield answer.content()
    yield otel_of(gateway).flush()
    assert collector.resource.spans == []
    traceparent = upstream.resource.seen[-1].header(b"traceparent").decode()
    assert traceparent.startswith(f"00-{CLIENT_TRACE}-") and traceparent.endswith("-00")


@pytest_twisted.inlineCallbacks
def test_no_secret_reaches_the_collector_and_config_hides_its_headers(
    make_gateway, upstream, collector
):
    gateway = make_gateway(
        document={
            "llm": {"api_key": CANARY_KEY},
            "telemetry": telemetry(
                collector, capture_content=True, headers={"x-api-key": CANARY_COLLECTOR}
            ),
        }
    )
    answer = yield treq.post(
        gateway.url + "/v1/chat/completions?key=" + CANARY_CLIENT,
        json.dumps(
            {"model": "m", "messages": ask(f"my key is {CANARY_KEY}"), "stream": True}
        ).encode(),
        headers={"authorization": f"Bearer {CANARY_CLIENT}", "x-api-key": CANARY_CLIENT},
    )
    yield answer.content()
    spans = yield exported(gateway, collector, 2)
    assert upstream.resource.seen[-1].header(b"authorization") == f"Bearer {CANARY_KEY}".encode()
    (server,) = spans_by_kind(spans, "SERVER")
    ((name, details),) = server.events
    assert name == "gen_ai.client.inference.operation.details"
    assert "my key is [redacted]" in details["gen_ai.input.messages"]
    assert json.loads(details["gen_ai.output.messages"])[0]["content"] == "Hello from the fake upstream"
    assert collector.resource.headers[-1][b"x-api-key"] == [CANARY_COLLECTOR.encode()]
    raw = b"".join(collector.resource.raw)
    for canary in (CANARY_KEY, CANARY_CLIENT, CANARY_COLLECTOR):
        assert canary.encode() not in raw
    view = yield treq.get(gateway.url + "/config")
    text = (yield view.text())
    assert CANARY_COLLECTOR not in text and CANARY_KEY not in text
    assert json.loads(text)["telemetry"]["otlp"]["headers"] == {"x-api-key": "(redacted)"}


@pytest_twisted.inlineCallbacks
def test_a_dead_collector_leaves_calls_alone_and_counts_the_lost_spans(make_gateway, upstream):
    from twisted.logger import globalLogPublisher

    from tests.test_e2e_relay import closed_port

    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)

    port = yield closed_port()
    gateway = make_gateway(
        document={"telemetry": {"otlp": {"endpoint": f"http://127.0.0.1:{port}", "timeout": 0.2}}}
    )
    for _ in range(3):
        answer = yield treq.post(
            gateway.url + "/v1/chat/completions",
            json.dumps({"model": "m", "messages": ask("x")}).encode(),
        )
        assert answer.code == 200
        assert json.loads((yield answer.content()))["choices"][0]["message"]["content"]
    yield otel_of(gateway).flush()
    metrics = yield treq.get(gateway.url + "/metrics?format=prometheus")
    text = yield metrics.text()
    assert 'llmgate_telemetry_spans_dropped_total{reason="export_failed"} 6.0' in text
    assert "llmgate_telemetry_spans_exported_total 0.0" in text
    # The exporter's own complaint reaches the gateway's log, from the reactor.
    yield deferLater(_reactor(), 0, lambda: None)
    globalLogPublisher.removeObserver(logged.append)
    complaints = [e for e in logged if "otel_logger" in e]
    assert complaints and "export" in complaints[-1]["message"].lower()


@pytest_twisted.inlineCallbacks
def test_a_hanging_collector_leaves_calls_alone_and_full_queue_drops_are_counted(
    make_gateway, upstream, collector
):
    collector.resource.hang = True
    gateway = make_gateway(document={"telemetry": telemetry(collector, max_queue=2, timeout=3)})
    took = []
    for index in range(4):
        started = time.monotonic()
        answer = yield treq.post(
            gateway.url + "/v1/chat/completions",
            json.dumps({"model": "m", "messages": ask(f"call {index}")}).encode(),
        )
        assert answer.code == 200
        yield answer.content()
        took.append(time.monotonic() - started)
        if index == 0:
            # The first call's two spans fill the queue; the processor sends
            # them at once (a full batch) and the collector holds them.
            yield collector.resource.requested().addTimeout(TIMEOUT, _reactor())
    assert max(took) < 2.0
    view = yield treq.get(gateway.url + "/metrics")
    figures = json.loads((yield view.content()))["telemetry"]
    # Still held: the first export neither succeeded nor timed out yet.
    assert len(collector.resource.held) == 1 and figures["spans_export_failed"] == 0
    assert figures["spans_dropped"] == 6
    assert figures["spans_exported"] == 0
    prometheus = yield treq.get(gateway.url + "/metrics?format=prometheus")
    assert 'llmgate_telemetry_spans_dropped_total{reason="queue_full"} 6.0' in (
        yield prometheus.text()
    )
    # The collector comes back: the held spans go through on the retry.
    collector.resource.release()
    spans = yield exported(gateway, collector, 2)
    assert len(spans) == 2



@pytest_twisted.inlineCallbacks
def test_a_failover_shows_two_client_spans_under_the_call(make_gateway, upstream, collector):
    import socket

    # Bound but not listening: every connect is refused.
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    try:
        first = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        gateway = make_gateway(
            document={
                "upstreams": {"first": {"base_url": first}, "live": {"base_url": upstream.url}},
                "routes": [{"upstream": ["first", "live"]}],
                "telemetry": telemetry(collector),
            }
        )
        answer = yield treq.post(
            gateway.url + "/v1/chat/completions",
            json.dumps({"model": "m", "messages": ask("fail over")}).encode(),
            headers={"content-type": "application/json"},
        )
        assert answer.code == 200
        yield answer.content()
    finally:
        refusing.close()
    spans = yield exported(gateway, collector, 3)
    (server,) = spans_by_kind(spans, "SERVER")
    refused, live = sorted(spans_by_kind(spans, "CLIENT"), key=lambda s: s.start)
    for client in (refused, live):
        assert (client.trace_id, client.parent_span_id) == (server.trace_id, server.span_id)
    assert refused.attributes["llmgate.upstream"] == "first"
    assert refused.attributes["error.type"] == "upstream_refused"
    assert refused.status_code == 2
    assert live.attributes["llmgate.upstream"] == "live"
    assert live.attributes["http.response.status_code"] == 200
    assert live.attributes["server.port"] == int(upstream.url.rsplit(":", 1)[1])
    assert server.attributes["llmgate.upstream"] == "live"
    assert server.attributes["server.port"] == live.attributes["server.port"]
    assert refused.end <= live.start <= live.end <= server.end
    # The upstream that answered saw the traceparent naming its CLIENT span.
    seen = upstream.resource.seen[-1].header(b"traceparent").decode()
    assert seen == f"00-{server.trace_id}-{live.span_id}-01"
