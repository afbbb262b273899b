"""
Unit tests of OpenTelemetry support: the ``telemetry`` config, the GenAI
attributes of an exchange, and the otel middleware on a memory clock with
the SDK's in-memory exporter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import attrs
from unittest import mock

from hypothesis import given, settings, strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from llmgate.config import ConfigError, OTLPConfig, load, parse
from llmgate.exchange import Exchange, RequestRecord, ResponseRecord
from llmgate.interfaces import IMiddleware
from llmgate.middleware import genai
from llmgate.middleware.otel import OtelMiddleware
from llmgate.middleware import otlpwire
from llmgate.middleware.otelexport import SpanQueue
from llmgate.middleware.registry import build_middlewares
from llmgate.sse import ServerSentEvent
from tests.otlpcollector import ReceivedSpan, decode
from tests.test_config import ConfigFileMixin

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def exchange(
    body: dict[str, Any] | None = None,
    path: bytes = b"/v1/chat/completions",
    headers: dict[bytes, list[bytes]] | None = None,
    provider: str = "openai",
) -> Exchange:
    return Exchange(
        id="cd" * 16,
        provider=provider,
        request=RequestRecord(
            method=b"POST",
            uri=path,
            headers=Headers(headers or {}),
            body=json.dumps(body if body is not None else {"model": "gpt-x", "messages": []}).encode(),
        ),
        received=100.0,
    )


def answered(call: Exchange, document: dict[str, Any] | None = None, status: int = 200) -> Exchange:
    call.sent_at = 100.01
    record = ResponseRecord(status=status, headers=[])
    if document is not None:
        record.body += json.dumps(document).encode()
        record.body_size = len(record.body)
    call.response = record
    call.ended_at = 100.5
    return call


# -- config -----------------------------------------------------------------------


class TelemetryConfigTests(ConfigFileMixin, SynchronousTestCase):
    def test_telemetry_is_off_without_its_section(self) -> None:
        self.assertIsNone(parse({}).telemetry.otlp)
        self.assertIsNone(parse({"telemetry": {}}).telemetry.otlp)

    def test_an_empty_otlp_section_gives_the_documented_defaults(self) -> None:
        self.assertEqual(parse({"telemetry": {"otlp": None}}).telemetry.otlp, OTLPConfig())

    def test_the_file_beats_the_opentelemetry_environment(self) -> None:
        path = self.write("telemetry:\n  otlp:\n    service_name: from-file\n")
        config = load(
            path,
            environ={
                "OTEL_SERVICE_NAME": "from-env",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%2Cb, x-team = t1",
            },
        )
        otlp = config.telemetry.otlp
        self.assertEqual(otlp.service_name, "from-file")
        self.assertEqual(otlp.endpoint, "http://collector:4318")
        self.assertEqual(dict(otlp.headers), {"api-key": "a,b", "x-team": "t1"})

    def test_the_environment_alone_does_not_turn_telemetry_on(self) -> None:
        config = load(None, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
        self.assertIsNone(config.telemetry.otlp)

    def test_bad_headers_in_the_environment_name_the_variable_not_the_value(self) -> None:
        path = self.write("telemetry:\n  otlp: {}\n")
        with self.assertRaises(ConfigError) as caught:
            load(path, environ={"OTEL_EXPORTER_OTLP_HEADERS": "secret-without-equals"})
        self.assertIn("OTEL_EXPORTER_OTLP_HEADERS", str(caught.exception))
        self.assertNotIn("secret-without-equals", str(caught.exception))

    def test_bad_values_name_the_field(self) -> None:
        for otlp, field in (
            ({"endpoint": "collector:4318"}, "telemetry.otlp.endpoint"),
            ({"sample_ratio": 1.5}, "telemetry.otlp.sample_ratio"),
            ({"capture_content": "yes"}, "telemetry.otlp.capture_content"),
            ({"headers": {"k": 1}}, "telemetry.otlp.headers"),
            ({"colour": "red"}, "telemetry.otlp.colour"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse({"telemetry": {"otlp": otlp}})
            self.assertIn(field, str(caught.exception))

    def test_config_view_hides_header_values_and_endpoint_credentials(self) -> None:
        config = parse(
            {
                "telemetry": {
                    "otlp": {
                        "endpoint": "https://user:pw-canary@collector:4318",
                        "headers": {"x-api-key": "hdr-canary-123"},
                    }
                }
            }
        )
        view = json.dumps(config.redacted())
        self.assertNotIn("hdr-canary-123", view)
        self.assertNotIn("pw-canary", view)
        self.assertNotIn("hdr-canary-123", repr(config))
        self.assertIn("x-api-key", view)


class RegistryTests(SynchronousTestCase):
    def test_telemetry_adds_the_otel_middleware_last(self) -> None:
        config = parse(
            {
                "telemetry": {"otlp": {"endpoint": "http://127.0.0.1:9"}},
                "middlewares": [{"type": "printer"}],
            }
        )
        built = build_middlewares(config, MemoryReactorClock())
        self.assertEqual([m.name for m in built], ["printer", "otel"])
        verifyObject(IMiddleware, built[-1])
        built[-1].queue.shutdown()
        built[-1].bridge.remove()

    def test_otel_listed_as_a_middleware_is_refused(self) -> None:
        config = parse({"middlewares": [{"type": "otel"}]})
        with self.assertRaises(ConfigError) as caught:
            build_middlewares(config, MemoryReactorClock())
        self.assertIn("middlewares[0].type", str(caught.exception))
        self.assertIn("telemetry.otlp", str(caught.exception))

    def test_missing_packages_are_a_config_error_naming_the_section(self) -> None:
        config = parse({"telemetry": {"otlp": {}}})
        with mock.patch("llmgate.middleware.otel._INSTALLED", False):
            with self.assertRaises(ConfigError) as caught:
                build_middlewares(config, MemoryReactorClock())
        self.assertIn("telemetry.otlp", str(caught.exception))
        self.assertIn("llmgate[otel]", str(caught.exception))

    def test_the_otel_module_imports_without_the_packages(self) -> None:
        script = (
            "import sys\n"
            "sys.modules['opentelemetry'] = None\n"
            "import llmgate.middleware.otel as otel\n"
            "print(otel._INSTALLED)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.strip(), "False")

    def test_a_gateway_without_telemetry_builds_without_the_packages(self) -> None:
        script = (
            "import sys\n"
            "import importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('opentelemetry', 'google'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from twisted.internet.testing import MemoryReactorClock\n"
            "from llmgate.config import parse\n"
            "from llmgate.service import GatewayParts\n"
            "GatewayParts(parse({'middlewares': [{'type': 'printer'}]}), MemoryReactorClock())\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.strip(), "[]")


# -- GenAI attributes ----------------------------------------------------------------


class GenAITests(SynchronousTestCase):
    def test_operation_and_span_name_follow_the_path(self) -> None:
        self.assertEqual(genai.operation_of(b"/v1/chat/completions"), "chat")
        self.assertEqual(genai.operation_of(b"/v1/messages"), "chat")
        self.assertEqual(genai.operation_of(b"/v1/embeddings"), "embeddings")
        self.assertIsNone(genai.operation_of(b"/v1/models"))
        self.assertEqual(genai.span_name("chat", "gpt-x", b"POST"), "chat gpt-x")
        self.assertEqual(genai.span_name(None, None, b"GET"), "GET")

    def test_request_parameters_present_become_attributes(self) -> None:
        call = exchange(
            {"model": "m", "max_completion_tokens": 9, "temperature": 0, "top_p": 0.5,
             "stop": "END", "stream": True, "n": 2, "seed": True}
        )
        attributes = genai.request_attributes(call, "chat")
        self.assertEqual(attributes["gen_ai.request.max_tokens"], 9)
        self.assertEqual(attributes["gen_ai.request.temperature"], 0)
        self.assertEqual(attributes["gen_ai.request.top_p"], 0.5)
        self.assertEqual(attributes["gen_ai.request.stop_sequences"], ("END",))
        self.assertEqual(attributes["gen_ai.request.choice.count"], 2)
        self.assertNotIn("gen_ai.request.seed", attributes)

    def test_a_stream_is_summed_up_from_its_first_and_last_events(self) -> None:
        call = answered(exchange())
        call.response.streaming = True
        first = {"id": "chatcmpl-1", "model": "gpt-x-2024", "choices": [{"delta": {}}]}
        middle = [{"choices": [{"delta": {"content": "w"}, "finish_reason": None}]}] * 50
        last = {"choices": [{"delta": {}, "finish_reason": "length"}]}
        call.response.events = [
            ServerSentEvent("message", json.dumps(d)) for d in [first, *middle, last]
        ] + [ServerSentEvent("message", "[DONE]")]
        call.usage = {"input_tokens": 4, "output_tokens": 5}
        attributes = genai.response_attributes(call)
        self.assertEqual(attributes["gen_ai.response.id"], "chatcmpl-1")
        self.assertEqual(attributes["gen_ai.response.model"], "gpt-x-2024")
        self.assertEqual(attributes["gen_ai.response.finish_reasons"], ("length",))
        self.assertEqual(attributes["gen_ai.usage.input_tokens"], 4)
        self.assertEqual(attributes["gen_ai.usage.output_tokens"], 5)

    def test_a_failed_answer_has_no_response_attributes(self) -> None:
        call = answered(exchange(), {"error": {"message": "no"}}, status=429)
        self.assertEqual(genai.response_attributes(call), {})


# -- the middleware -----------------------------------------------------------------


class MemorySender:
    """
    Keeps every request the queue sends, decoded as a collector would; or
    fails them all.
    """

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.requests: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.requests.append(data)
        return self.ok

    def spans(self) -> list[ReceivedSpan]:
        return [span for data in self.requests for span in decode(data)]

    def clear(self) -> None:
        self.requests.clear()


class OtelMiddlewareTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(100.0)
        self.exporter = MemorySender()

    def middleware(self, exporter: Any = None, **settings: Any) -> OtelMiddleware:
        middleware = OtelMiddleware(
            self.clock,
            OTLPConfig(**settings),
            exporter or self.exporter,
            "https://api.example.com/",
        )
        self.addCleanup(middleware.queue.shutdown)
        self.addCleanup(middleware.bridge.remove)
        return middleware

    def run_call(self, middleware: OtelMiddleware, call: Exchange, document: Any = None) -> list[ReceivedSpan]:
        middleware.request_received(call)
        answered(call, document or {"id": "r1", "model": "gpt-x", "choices": []})
        self.clock.advance(0.5)
        middleware.exchange_finished(call)
        middleware.queue.force_flush()
        return self.exporter.spans()

    def test_a_call_gives_a_server_span_and_a_client_span_named_in_the_upstream_header(self) -> None:
        middleware = self.middleware()
        call = exchange()
        spans = self.run_call(middleware, call)
        client, server = spans
        self.assertEqual((server.kind, client.kind), ("SERVER", "CLIENT"))
        self.assertEqual(client.parent_span_id, server.span_id)
        self.assertEqual(server.parent_span_id, "")
        sent = call.request.headers.getRawHeaders(b"traceparent")
        self.assertEqual(sent, [f"00-{server.trace_id}-{client.span_id}-01".encode()])
        self.assertEqual(client.attributes["server.address"], "api.example.com")
        self.assertEqual(client.attributes["server.port"], 443)
        self.assertEqual(server.end - server.start, 500_000_000)
        self.assertEqual(server.resource["service.name"], "llmgate")
        self.assertEqual(server.name, "chat gpt-x")
        self.assertEqual(server.attributes["llmgate.exchange.id"], "cd" * 16)
        self.assertEqual(server.attributes["gen_ai.response.id"], "r1")
        self.assertEqual(server.scope[0], "llmgate")

    def test_the_same_route_twice_gives_the_same_attributes_from_the_caches(self) -> None:
        middleware = self.middleware()
        first = exchange({"model": "m", "temperature": 1})
        first.usage, first.session_id = {"input_tokens": 3, "output_tokens": 4}, "s1"
        self.run_call(middleware, first)
        second = exchange({"model": "m", "temperature": 1.0})
        second.id, second.usage = "ef" * 16, {"input_tokens": 5, "output_tokens": 4}
        self.run_call(middleware, second)
        _, one, _, two = self.exporter.spans()
        self.assertEqual(one.attributes["gen_ai.request.temperature"], 1)
        self.assertIsInstance(one.attributes["gen_ai.request.temperature"], int)
        self.assertIsInstance(two.attributes["gen_ai.request.temperature"], float)
        self.assertEqual(
            (two.attributes["gen_ai.usage.input_tokens"], two.attributes["llmgate.exchange.id"]),
            (5, "ef" * 16),
        )
        self.assertNotIn("gen_ai.conversation.id", two.attributes)
        self.assertEqual(one.attributes["gen_ai.conversation.id"], "s1")

    def test_a_long_or_odd_id_takes_the_slow_way_to_the_same_attribute(self) -> None:
        middleware = self.middleware()
        call = exchange()
        call.session_id = "s" * 300 + "\u00e9"
        spans = self.run_call(middleware, call)
        self.assertEqual(spans[-1].attributes["gen_ai.conversation.id"], "s" * 300 + "\u00e9")

    def test_the_client_traceparent_is_the_parent_and_is_replaced_upstream(self) -> None:
        middleware = self.middleware()
        call = exchange(headers={b"traceparent": [PARENT.encode()], b"tracestate": [b"a=1"]})
        client, server = self.run_call(middleware, call)
        self.assertEqual(server.trace_id, PARENT.split("-")[1])
        self.assertEqual(server.parent_span_id, PARENT.split("-")[2])
        self.assertEqual(server.flags, 0x300)  # the parent is remote
        self.assertEqual(client.flags, 0x100)
        self.assertEqual(server.trace_state, "a=1")
        sent = call.request.headers.getRawHeaders(b"traceparent")[0].decode()
        self.assertEqual(sent.split("-")[2], client.span_id)
        self.assertEqual(call.request.headers.getRawHeaders(b"tracestate"), [b"a=1"])

    def test_an_invalid_or_doubled_traceparent_starts_a_new_trace(self) -> None:
        for values in ([b"00-zz-yy-01"], [PARENT.encode(), PARENT.encode()]):
            self.exporter.clear()
            middleware = self.middleware()
            call = exchange(headers={b"traceparent": values, b"tracestate": [b"a=1"]})
            _, server = self.run_call(middleware, call)
            self.assertEqual(server.parent_span_id, "")
            self.assertNotEqual(server.trace_id, PARENT.split("-")[1])
            self.assertEqual(len(call.request.headers.getRawHeaders(b"traceparent")), 1)
            self.assertFalse(call.request.headers.hasHeader(b"tracestate"))

    def test_twisted_headers_keep_the_names_the_fast_header_path_writes(self) -> None:
        from llmgate.middleware import otel

        self.assertTrue(otel._RAW_HEADERS)

    def test_sample_ratio_zero_records_nothing_but_still_propagates(self) -> None:
        middleware = self.middleware(sample_ratio=0.0)
        call = exchange()
        self.assertEqual(self.run_call(middleware, call), [])
        self.assertTrue(call.request.headers.getRawHeaders(b"traceparent")[0].endswith(b"-00"))

    def test_a_local_answer_has_no_client_span(self) -> None:
        middleware = self.middleware()
        call = exchange()
        call.sent_status, call.error_kind, call.ended_at = 401, "unauthorized", 100.1
        middleware.exchange_finished(call)
        middleware.queue.force_flush()
        (server,) = self.exporter.spans()
        self.assertEqual(server.attributes["error.type"], "unauthorized")
        self.assertEqual(server.attributes["http.response.status_code"], 401)
        self.assertEqual(server.status_code, 2)

    def test_an_upstream_error_status_is_an_error_on_both_spans(self) -> None:
        middleware = self.middleware()
        call = exchange()
        middleware.request_received(call)
        answered(call, {"error": {}}, status=503)
        middleware.exchange_finished(call)
        middleware.queue.force_flush()
        spans = self.exporter.spans()
        self.assertEqual(len(spans), 2)
        for span in spans:
            self.assertEqual(span.attributes["error.type"], "503")
            self.assertEqual(span.status_code, 2)

    def test_content_is_captured_only_when_asked_and_scrubbed(self) -> None:
        body = {"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "k=sk-secret-99"}]}
        plain = self.middleware()
        _, server = self.run_call(plain, exchange(body))
        self.assertEqual(server.events, [])
        self.exporter.clear()
        capturing = self.middleware(capture_content=True)
        capturing.scrub.add("sk-secret-99")
        _, server = self.run_call(capturing, exchange(body))
        ((name, attributes),) = server.events
        self.assertEqual(name, "gen_ai.client.inference.operation.details")
        messages = json.loads(attributes["gen_ai.input.messages"])
        self.assertEqual(messages[0], {"role": "system", "content": "be brief"})
        self.assertEqual(messages[1]["content"], "k=[redacted]")
        self.assertNotIn(b"sk-secret-99", b"".join(self.exporter.requests))

    def test_spans_beyond_the_queue_are_dropped_and_failed_exports_counted(self) -> None:
        sender = MemorySender(ok=False)
        queue = SpanQueue(sender.send, otlpwire.RequestHead({}, "t", "1"), max_queue=3, schedule_delay_millis=60_000)
        self.addCleanup(queue.shutdown)
        queue.submit(b"", 2)
        queue.submit(b"", 2)
        self.assertEqual((queue.queued, queue.dropped, queue.waiting), (2, 2, 2))
        queue.force_flush()
        self.assertEqual(queue.state()["spans_export_failed"], 2)
        self.assertEqual(queue.waiting, 0)

    def test_a_full_batch_wakes_the_worker_and_leaves_in_batches(self) -> None:
        sent = []
        import threading

        done = threading.Event()

        def send(data: bytes) -> bool:
            sent.append(data)
            done.set()
            return True

        queue = SpanQueue(send, otlpwire.RequestHead({}, "t", "1"), max_queue=100,
                          schedule_delay_millis=60_000, max_export_batch_size=4)
        self.addCleanup(queue.shutdown)
        for _ in range(3):
            queue.submit(b"", 2)  # the second call fills a batch of 4
        self.assertTrue(done.wait(10))
        queue.force_flush()
        self.assertEqual(len(sent), 2)
        self.assertEqual(queue.state()["spans_exported"], 6)

    def test_a_sender_that_raises_counts_as_failed(self) -> None:
        def send(data: bytes) -> bool:
            raise RuntimeError("boom")

        queue = SpanQueue(send, otlpwire.RequestHead({}, "t", "1"), schedule_delay_millis=60_000)
        self.addCleanup(queue.shutdown)
        queue.submit(b"", 1)
        queue.force_flush()
        self.assertEqual((queue.failed, queue.exported), (1, 0))


# -- the wire encoding ------------------------------------------------------------

_TEXT = st.text(max_size=300)
_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    _TEXT,
    st.lists(_TEXT, max_size=4).map(tuple),
)
_ATTRIBUTES = st.dictionaries(st.text(min_size=1, max_size=40), _VALUES, max_size=8)


def _any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))


def _key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any_value(v)) for k, v in attributes.items()]


class WireEncoderTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(
        ids=st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8)),
        parent=st.one_of(st.none(), st.binary(min_size=8, max_size=8)),
        remote=st.booleans(),
        state=st.sampled_from(["", "a=1", "k=v,x=y"]),
        name=st.text(max_size=80),
        kind=st.sampled_from([otlpwire.SERVER, otlpwire.CLIENT]),
        times=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
        attributes=_ATTRIBUTES,
        unique=st.dictionaries(
            st.sampled_from(["gen_ai.response.id", "gen_ai.conversation.id"]), _TEXT
        ),
        event=st.one_of(st.none(), _ATTRIBUTES),
        error=st.booleans(),
    )
    def test_spans_decode_to_what_opentelemetry_proto_builds(
        self, ids, parent, remote, state, name, kind, times, attributes, unique, event, error
    ) -> None:
        pairs = otlpwire.Pairs()
        encoded_attributes = pairs.encode(attributes.items())
        # The second time from the caches.
        self.assertEqual(pairs.encode(attributes.items()), encoded_attributes)
        for key, value in unique.items():
            heads = otlpwire.string_heads(key)
            data = value.encode()
            encoded_attributes += (
                heads[len(data)] + data if len(data) < len(heads) else pairs.one(key, value)
            )
        events = b"" if event is None else otlpwire.event("e", 7, event)
        head = otlpwire.RequestHead({"service.name": "llmgate"}, "llmgate", "1.0", "https://s")
        data = head.request(
            [
                otlpwire.span(
                    ids[0], ids[1], parent, remote and parent is not None,
                    otlpwire.trace_state_field(state), otlpwire.name_field(name), kind,
                    times[0], times[1], encoded_attributes, events, error,
                )
            ]
        )
        expected = Span(
            trace_id=ids[0], span_id=ids[1], trace_state=state,
            parent_span_id=parent or b"", name=name, kind=kind,
            start_time_unix_nano=times[0], end_time_unix_nano=times[1],
            attributes=_key_values(attributes) + _key_values(unique),
            status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
            flags=0x100 | (0x200 if remote and parent is not None else 0),
        )
        if event is not None:
            expected.events.add(time_unix_nano=7, name="e", attributes=_key_values(event))
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource={"attributes": _key_values({"service.name": "llmgate"})},
                    schema_url="https://s",
                    scope_spans=[ScopeSpans(scope={"name": "llmgate", "version": "1.0"}, spans=[expected])],
                )
            ]
        )
        ours = ExportTraceServiceRequest()
        ours.ParseFromString(data)
        self.assertEqual(ours, request)

    def test_equal_values_of_other_types_are_not_confused_by_the_cache(self) -> None:
        pairs = otlpwire.Pairs()
        values = []
        for value in (1, True, 1.0, "1", -1):
            pair = KeyValue()
            encoded = pairs.encode([("k", value)])
            # The field's tag and length, then the KeyValue.
            pair.ParseFromString(encoded[2:])
            values.append((pair.value.WhichOneof("value"), getattr(pair.value, pair.value.WhichOneof("value"))))
        self.assertEqual(
            values,
            [("int_value", 1), ("bool_value", True), ("double_value", 1.0), ("string_value", "1"), ("int_value", -1)],
        )


class AttemptsTests(SynchronousTestCase):
    def test_one_attempt_from_the_exchange_times_without_failover(self) -> None:
        from llmgate.middleware.attempts import attempts_of

        call = answered(exchange())
        (attempt,) = attempts_of(call, "api.example.com", 443)
        self.assertEqual(
            (attempt.started, attempt.ended, attempt.status, attempt.address, attempt.port),
            (100.01, 100.5, 200, "api.example.com", 443),
        )
        self.assertEqual(attempts_of(exchange(), "h", 1), [])

    def test_recorded_attempts_become_one_each_the_answering_one_to_the_end(self) -> None:
        from llmgate.middleware.attempts import attempts_of

        @attrs.define
        class Recorded:
            upstream: str
            address: str
            started: float
            ended: float | None
            outcome: str
            status: int | None

        from types import SimpleNamespace

        # An exchange as failover (issue 14) fills it: the attempts recorded.
        call = SimpleNamespace(
            ended_at=100.5,
            error_kind=None,
            attempts=[
                Recorded("a", "10.0.0.1:8000", 100.0, 100.1, "upstream_refused", None),
                Recorded("b", "[::1]:9000", 100.1, 100.2, "failover", 503),
                Recorded("c", "api.example.com:443", 100.2, 100.3, "answered", 200),
            ],
        )
        first, second, third = attempts_of(call, "ignored", 1)  # type: ignore[arg-type]
        self.assertEqual((first.address, first.port, first.error_kind), ("10.0.0.1", 8000, "upstream_refused"))
        self.assertEqual((second.address, second.port, second.error_kind, second.status), ("::1", 9000, None, 503))
        self.assertEqual((third.upstream, third.ended), ("c", 100.5))


class ClientIdsTests(SynchronousTestCase):
    def test_the_id_sent_upstream_goes_to_the_last_attempt(self) -> None:
        from llmgate.middleware.otel import CallContext

        clock = MemoryReactorClock()
        middleware = OtelMiddleware(clock, OTLPConfig(), MemorySender(), "http://h")
        self.addCleanup(middleware.queue.shutdown)
        self.addCleanup(middleware.bridge.remove)
        seven = (7).to_bytes(8, "big")
        call = CallContext(trace_id=bytes(15) + b"\x01", span_id=b"\x02" * 8, sampled=True, client_span_ids=[seven])
        self.assertEqual(middleware._client_ids(call, 0), [])
        self.assertEqual(middleware._client_ids(call, 1), [seven])
        first, last = middleware._client_ids(call, 2)
        self.assertEqual(last, seven)
        self.assertNotIn(first, (bytes(8), seven))
