"""
End-to-end tests of the middleware system over loopback sockets: trace and
printer on real calls, a third-party plugin found on the path, failures that
must not harm a call.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import gatherResults
from twisted.logger import globalLogPublisher, formatEvent

from llmgate.config import ConfigError, parse
from llmgate.service import GatewayParts

CANARY_KEY = "sk-canary-upstream-1b2c3d4e"
CANARY_CLIENT = "client-canary-9z8y7x"


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def middleware_config(directory: str, **printer) -> list[dict]:
    return [
        {"type": "trace", "config": {"directory": directory}},
        {"type": "printer", "config": {"log_body": True, **printer}},
    ]


def trace_files(directory: str) -> list[dict]:
    documents = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            documents.append(json.load(handle))
    return documents


def trace_of(parts: GatewayParts):
    return next(m for m in parts.middlewares if m.name == "trace")


@pytest_twisted.inlineCallbacks
def test_trace_and_printer_record_a_plain_and_a_streamed_call_without_secrets(
    make_gateway, tmp_path, logged
):
    directory = str(tmp_path / "traces")
    gateway = make_gateway(
        document={"middlewares": middleware_config(directory), "llm": {"api_key": CANARY_KEY}}
    )
    headers = {"authorization": f"Bearer {CANARY_CLIENT}", "content-type": "application/json"}
    plain = yield treq.post(
        gateway.url + "/v1/chat/completions",
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers=headers,
    )
    yield plain.content()
    streamed = yield treq.post(
        gateway.url + "/v1/chat/completions",
        json.dumps(
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "again"}]}
        ).encode(),
        headers=headers,
    )
    body = yield streamed.content()
    yield trace_of(gateway.parts).flush()

    documents = trace_files(directory)
    assert len(documents) == 2
    by_stream = {bool(d["request"]["body"].get("stream")): d for d in documents}
    assert by_stream[False]["response"]["message"]["content"] == "Hello from the fake upstream"
    assert by_stream[False]["usage"]["input_tokens"] == 11
    stream_doc = by_stream[True]
    assert len(stream_doc["response"]["events"]) == body.count(b"data: ")
    assert stream_doc["response"]["message"]["content"] == "Hello from the fake upstream"
    for document in documents:
        assert document["session_id"] and document["session_id"].startswith("sess_")
        assert document["ttfb_ms"] is not None and document["duration_ms"] >= document["ttfb_ms"]

    raw = b"".join(open(os.path.join(directory, n), "rb").read() for n in os.listdir(directory))
    lines = "\n".join(formatEvent(event) for event in logged)
    for canary in (CANARY_KEY, CANARY_CLIENT):
        assert canary.encode() not in raw
        assert canary not in lines
    assert "-> POST /v1/chat/completions model=m stream=True" in lines
    assert "<- 200 POST /v1/chat/completions" in lines
    printed = [e for e in logged if "printer" in e.get("log_namespace", "")]
    assert {"method", "path", "status", "duration_ms", "session_id"} <= set(printed[-1])


@pytest_twisted.inlineCallbacks
def test_two_identical_concurrent_calls_give_two_trace_files(make_gateway, tmp_path):
    directory = str(tmp_path / "traces")
    gateway = make_gateway(document={"middlewares": middleware_config(directory)})
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "same"}]}).encode()
    answers = yield gatherResults(
        [treq.post(gateway.url + "/v1/chat/completions", body) for _ in range(2)]
    )
    yield gatherResults([answer.content() for answer in answers])
    yield trace_of(gateway.parts).flush()
    assert len(os.listdir(directory)) == 2
    assert len({d["id"] for d in trace_files(directory)}) == 2


@pytest_twisted.inlineCallbacks
def test_a_failing_disk_is_counted_and_the_call_is_unharmed(make_gateway, tmp_path, logged):
    directory = str(tmp_path / "traces")
    gateway = make_gateway(document={"middlewares": middleware_config(directory)})
    shutil.rmtree(directory)
    answer = yield treq.post(gateway.url + "/v1/chat/completions", b'{"model": "m"}')
    assert answer.code == 200
    assert b"Hello" in (yield answer.content())
    trace = trace_of(gateway.parts)
    yield trace.flush()
    assert trace.failed == 1
    assert trace.state()["write_failures"] == 1
    assert any("trace write failed" in formatEvent(e) for e in logged)


def test_an_unknown_middleware_type_lists_the_known_ones():
    from twisted.internet import reactor

    config = parse({"middlewares": [{"type": "nosuch"}]})
    with pytest.raises(ConfigError) as caught:
        GatewayParts(config, reactor)
    assert "nosuch" in str(caught.value)
    assert "printer" in str(caught.value) and "trace" in str(caught.value)


THIRD_PARTY = '''
from twisted.plugin import IPlugin
from zope.interface import implementer
from llmgate.exchange import LocalAnswer
from llmgate.interfaces import IMiddlewareFactory
from llmgate.middleware import Middleware


class Stamp(Middleware):
    name = "stamp"

    def __init__(self, value):
        self.value = value

    def request_received(self, exchange):
        if exchange.request.path == b"/blocked":
            return LocalAnswer(status=403, body=b'{"error": "blocked"}')
        exchange.request.headers.setRawHeaders(b"x-stamp", [self.value.encode()])

    def response_started(self, exchange):
        exchange.response.headers.append((b"x-stamped", [b"yes"]))


@implementer(IPlugin, IMiddlewareFactory)
class StampFactory:
    name = "stamp"

    def build(self, config, context):
        return Stamp(config.get("value", "none"))


stamp = StampFactory()
'''


@pytest.fixture
def third_party_plugin(tmp_path):
    """
    A package installed beside llmgate: a module in its own
    ``twisted/plugins`` directory, on the path at test time.
    """
    import twisted.plugins

    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "llmgate_test_stamp.py").write_text(THIRD_PARTY)
    sys.path.insert(0, str(tmp_path / "site"))
    twisted.plugins.__path__.append(str(plugins))
    yield
    twisted.plugins.__path__.remove(str(plugins))
    sys.path.remove(str(tmp_path / "site"))
    sys.modules.pop("twisted.plugins.llmgate_test_stamp", None)


@pytest_twisted.inlineCallbacks
def test_a_third_party_middleware_is_found_as_a_plugin_and_runs(
    make_gateway, upstream, third_party_plugin
):
    gateway = make_gateway(
        document={"middlewares": [{"type": "stamp", "config": {"value": "v1"}}]}
    )
    answer = yield treq.post(gateway.url + "/echo", b"{}")
    echoed = json.loads((yield answer.content()))
    assert echoed["headers"]["x-stamp"] == ["v1"]
    assert answer.headers.getRawHeaders(b"x-stamped") == [b"yes"]
    refused = yield treq.get(gateway.url + "/blocked")
    assert refused.code == 403
    assert all(seen.uri != b"/blocked" for seen in upstream.resource.seen)
