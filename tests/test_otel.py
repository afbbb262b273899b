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

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from llmgate.config import ConfigError, OTLPConfig, load, parse
from llmgate.exchange import Exchange, RequestRecord, ResponseRecord
from llmgate.interfaces import IMiddleware
from llmgate.middleware import genai
from llmgate.middleware.otel import OtelMiddleware
from llmgate.middleware.otelexport import SpanQueue
from llmgate.middleware.registry import build_middlewares
from llmgate.sse import ServerSentEvent
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
        built[-1].queue.processor.shutdown()
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


class _Failing(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.FAILURE


class OtelMiddlewareTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(100.0)
        self.exporter = InMemorySpanExporter()

    def middleware(self, exporter: Any = None, **settings: Any) -> OtelMiddleware:
        middleware = OtelMiddleware(
            self.clock,
            OTLPConfig(**settings),
            exporter or self.exporter,
            "https://api.example.com/",
        )
        self.addCleanup(middleware.queue.processor.shutdown)
        self.addCleanup(middleware.bridge.remove)
        return middleware

    def run_call(self, middleware: OtelMiddleware, call: Exchange, document: Any = None) -> list[Any]:
        middleware.request_received(call)
        answered(call, document or {"id": "r1", "model": "gpt-x", "choices": []})
        self.clock.advance(0.5)
        middleware.exchange_finished(call)
        middleware.queue.processor.force_flush()
        return list(self.exporter.get_finished_spans())

    def test_a_call_gives_a_server_span_and_a_client_span_named_in_the_upstream_header(self) -> None:
        middleware = self.middleware()
        call = exchange()
        spans = self.run_call(middleware, call)
        client, server = spans
        self.assertEqual((server.kind, client.kind), (SpanKind.SERVER, SpanKind.CLIENT))
        self.assertEqual(client.parent.span_id, server.context.span_id)
        self.assertIsNone(server.parent)
        sent = call.request.headers.getRawHeaders(b"traceparent")
        self.assertEqual(
            sent,
            [f"00-{server.context.trace_id:032x}-{client.context.span_id:016x}-01".encode()],
        )
        self.assertEqual(client.attributes["server.address"], "api.example.com")
        self.assertEqual(client.attributes["server.port"], 443)
        self.assertEqual(server.end_time - server.start_time, 500_000_000)
        self.assertEqual(server.resource.attributes["service.name"], "llmgate")

    def test_the_client_traceparent_is_the_parent_and_is_replaced_upstream(self) -> None:
        middleware = self.middleware()
        call = exchange(headers={b"traceparent": [PARENT.encode()], b"tracestate": [b"a=1"]})
        client, server = self.run_call(middleware, call)
        self.assertEqual(f"{server.context.trace_id:032x}", PARENT.split("-")[1])
        self.assertEqual(f"{server.parent.span_id:016x}", PARENT.split("-")[2])
        self.assertTrue(server.parent.is_remote)
        self.assertEqual(server.context.trace_state.to_header(), "a=1")
        sent = call.request.headers.getRawHeaders(b"traceparent")[0].decode()
        self.assertEqual(sent.split("-")[2], f"{client.context.span_id:016x}")

    def test_an_invalid_or_doubled_traceparent_starts_a_new_trace(self) -> None:
        for values in ([b"00-zz-yy-01"], [PARENT.encode(), PARENT.encode()]):
            self.exporter.clear()
            middleware = self.middleware()
            call = exchange(headers={b"traceparent": values, b"tracestate": [b"a=1"]})
            _, server = self.run_call(middleware, call)
            self.assertIsNone(server.parent)
            self.assertNotEqual(f"{server.context.trace_id:032x}", PARENT.split("-")[1])
            self.assertEqual(len(call.request.headers.getRawHeaders(b"traceparent")), 1)
            self.assertFalse(call.request.headers.hasHeader(b"tracestate"))

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
        middleware.queue.processor.force_flush()
        (server,) = self.exporter.get_finished_spans()
        self.assertEqual(server.attributes["error.type"], "unauthorized")
        self.assertEqual(server.attributes["http.response.status_code"], 401)
        self.assertEqual(server.status.status_code, StatusCode.ERROR)

    def test_an_upstream_error_status_is_an_error_on_both_spans(self) -> None:
        middleware = self.middleware()
        call = exchange()
        middleware.request_received(call)
        answered(call, {"error": {}}, status=503)
        middleware.exchange_finished(call)
        middleware.queue.processor.force_flush()
        for span in self.exporter.get_finished_spans():
            self.assertEqual(span.attributes["error.type"], "503")
            self.assertEqual(span.status.status_code, StatusCode.ERROR)

    def test_content_is_captured_only_when_asked_and_scrubbed(self) -> None:
        body = {"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "k=sk-secret-99"}]}
        plain = self.middleware()
        _, server = self.run_call(plain, exchange(body))
        self.assertEqual(server.events, ())
        self.exporter.clear()
        capturing = self.middleware(capture_content=True)
        capturing.scrub.add("sk-secret-99")
        _, server = self.run_call(capturing, exchange(body))
        (event,) = server.events
        messages = json.loads(event.attributes["gen_ai.input.messages"])
        self.assertEqual(messages[0], {"role": "system", "content": "be brief"})
        self.assertEqual(messages[1]["content"], "k=[redacted]")

    def test_spans_beyond_the_queue_are_dropped_and_failed_exports_counted(self) -> None:
        queue = SpanQueue(_Failing(), max_queue=3, schedule_delay_millis=60_000)
        self.addCleanup(queue.processor.shutdown)
        span = ReadableSpan(
            "s", context=SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
        )
        queue.submit([span, span])
        queue.submit([span, span])
        self.assertEqual((queue.queued, queue.dropped, queue.waiting), (2, 2, 2))
        queue.processor.force_flush()
        self.assertEqual(queue.state()["spans_export_failed"], 2)
        self.assertEqual(queue.waiting, 0)


class WireEncoderTests(SynchronousTestCase):
    def test_the_wire_encoding_decodes_to_what_the_exporter_package_encodes(self) -> None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        from llmgate.middleware.otlpwire import WireEncoder

        clock = MemoryReactorClock()
        clock.advance(100.0)
        exporter = InMemorySpanExporter()
        middleware = OtelMiddleware(
            clock, OTLPConfig(capture_content=True), exporter, "http://127.0.0.1:8080"
        )
        self.addCleanup(middleware.queue.processor.shutdown)
        self.addCleanup(middleware.bridge.remove)
        for headers, status in (({}, 200), ({b"traceparent": [PARENT.encode()], b"tracestate": [b"k=v,x=y"]}, 503)):
            call = exchange(
                {"model": "m", "temperature": 0.5, "stop": ["a", ""], "max_tokens": 0,
                 "messages": [{"role": "user", "content": "h\u00e9llo"}]},
                headers=headers,
            )
            middleware.request_received(call)
            answered(call, {"id": "r", "model": "m", "choices": [{"finish_reason": "stop"}]}, status)
            call.usage = {"input_tokens": 2**40, "output_tokens": 0}
            call.session_id = "sess_x"
            middleware.exchange_finished(call)
        middleware.queue.processor.force_flush()
        spans = list(exporter.get_finished_spans())
        self.assertEqual(len(spans), 4)
        encoder = WireEncoder()
        for _ in range(2):  # the second time from the caches
            ours = ExportTraceServiceRequest()
            ours.ParseFromString(encoder.encode(spans))
            stock = ExportTraceServiceRequest()
            stock.ParseFromString(encode_spans(spans).SerializeToString())
            self.assertEqual(ours, stock)

    def test_equal_values_of_other_types_are_not_confused_by_the_cache(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        from llmgate.middleware.otlpwire import WireEncoder

        encoder = WireEncoder()
        context = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
        values = []
        for value in (1, True, 1.0, "1", -1):
            request = ExportTraceServiceRequest()
            request.ParseFromString(
                encoder.encode([ReadableSpan("s", context=context, attributes={"k": value})])
            )
            (pair,) = request.resource_spans[0].scope_spans[0].spans[0].attributes
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
        middleware = OtelMiddleware(clock, OTLPConfig(), InMemorySpanExporter(), "http://h")
        self.addCleanup(middleware.queue.processor.shutdown)
        self.addCleanup(middleware.bridge.remove)
        call = CallContext(trace_id=1, span_id=2, sampled=True, client_span_ids=[7])
        self.assertEqual(middleware._client_ids(call, 0), [])
        self.assertEqual(middleware._client_ids(call, 1), [7])
        first, last = middleware._client_ids(call, 2)
        self.assertEqual(last, 7)
        self.assertNotIn(first, (0, 7))
