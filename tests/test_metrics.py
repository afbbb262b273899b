"""
Unit tests of the ``Metrics`` middleware, its JSON and Prometheus views and
``/metrics`` content negotiation, fed hand-built exchanges (no reactor).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llmgate.exchange import Exchange, RequestRecord, ResponseRecord
from llmgate.metrics import (
    DURATION_BUCKETS,
    MAX_MODELS,
    OTHER_MODEL,
    RESERVOIR,
    TOKEN_BUCKETS,
    Buckets,
    Metrics,
    Summary,
    status_class,
    wants_prometheus,
)

#: What Prometheus (2.x/3.x) sends when it scrapes.
SCRAPER_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,"
    "application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
CURL_ACCEPT = "*/*"
BROWSER_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)

_serial = iter(range(1, 1 << 30))


def make_exchange(
    model: str | None = "gpt-a",
    provider: str = "openai",
    status: int | None = 200,
    received: float = 100.0,
    sent: float | None = 0.001,
    upstream_headers: float | None = 0.1,
    relayed: float | None = 0.1005,
    first_byte: float | None = 0.2,
    ended: float | None = 0.5,
    usage: dict[str, int] | None = None,
    error_kind: str | None = None,
    client_gone: bool = False,
) -> Exchange:
    """
    A finished exchange; every time is an offset in seconds from ``received``
    (None: that moment never came).
    """
    document: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        document["model"] = model
    exchange = Exchange(
        id=f"{next(_serial):032x}",
        provider=provider,
        request=RequestRecord(
            method=b"POST",
            uri=b"/v1/chat/completions",
            headers=Headers({b"content-type": [b"application/json"]}),
            body=json.dumps(document).encode(),
        ),
        received=received,
    )
    if status is not None:
        exchange.response = ResponseRecord(
            status=status, headers=[(b"content-type", [b"application/json"])]
        )

    def at(offset: float | None) -> float | None:
        return None if offset is None else received + offset

    exchange.sent_at = at(sent)
    exchange.upstream_headers_at = at(upstream_headers)
    exchange.headers_relayed_at = at(relayed)
    exchange.first_byte_at = at(first_byte)
    exchange.ended_at = at(ended)
    exchange.usage = usage
    if error_kind is not None:
        exchange.error, exchange.error_kind = "it failed", error_kind
    exchange.client_gone = client_gone
    return exchange


def feed(metrics: Metrics, exchanges: Iterable[Exchange]) -> None:
    for exchange in exchanges:
        metrics.exchange_finished(exchange)


def samples(families: Iterable[Any]) -> dict[tuple[str, frozenset], float]:
    """
    Every sample of a parsed exposition by (sample name, labels).
    """
    result = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in result, f"duplicate sample {key}"
            result[key] = sample.value
    return result


def labels(**pairs: str) -> frozenset:
    return frozenset(pairs.items())


class StatusClassTests(SynchronousTestCase):
    def test_a_response_is_classed_by_its_hundreds(self) -> None:
        for status, expected in ((200, "2xx"), (204, "2xx"), (302, "3xx"), (418, "4xx"), (503, "5xx")):
            self.assertEqual(status_class(make_exchange(status=status)), expected)

    def test_no_response_is_an_error_or_a_client_gone(self) -> None:
        self.assertEqual(status_class(make_exchange(status=None)), "error")
        self.assertEqual(status_class(make_exchange(status=None, client_gone=True)), "client_gone")
        # A client that left after the response head keeps the upstream's class.
        self.assertEqual(status_class(make_exchange(status=200, client_gone=True)), "2xx")


class CountingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(worker="7")

    def test_requests_are_counted_by_provider_model_and_status_class(self) -> None:
        feed(
            self.metrics,
            [
                make_exchange("gpt-a", "openai", 200),
                make_exchange("gpt-a", "openai", 200),
                make_exchange("gpt-b", "openai", 429),
                make_exchange("claude", "anthropic", 200),
                make_exchange("claude", "anthropic", 529),
                make_exchange("claude", "anthropic", None, error_kind="upstream_timeout"),
                make_exchange(None, "openai", 200),
            ],
        )
        self.assertEqual(
            {key[:3]: count for key, count in self.metrics.requests.items()},
            {
                ("openai", "gpt-a", "2xx"): 2,
                ("openai", "gpt-b", "4xx"): 1,
                ("anthropic", "claude", "2xx"): 1,
                ("anthropic", "claude", "5xx"): 1,
                ("anthropic", "claude", "error"): 1,
                ("openai", "none", "2xx"): 1,
            },
        )
        view = self.metrics.json_view()
        self.assertEqual(view["worker"], "7")
        self.assertEqual(
            view["requests"],
            {
                "total": 7,
                "by_provider": {"openai": 4, "anthropic": 3},
                "by_model": {"gpt-a": 2, "gpt-b": 1, "claude": 3, "none": 1},
                "by_status_class": {"2xx": 4, "4xx": 1, "5xx": 1, "error": 1},
                "by_upstream": {"none": 7},
                "by_api": {"openai": 4, "anthropic": 3},
            },
        )

    def test_error_kinds_are_counted_and_successes_are_not(self) -> None:
        feed(
            self.metrics,
            [
                make_exchange(status=None, error_kind="upstream_timeout", first_byte=None),
                make_exchange(status=None, error_kind="upstream_timeout", first_byte=None),
                make_exchange(status=None, error_kind="upstream_refused", first_byte=None),
                make_exchange(status=200, error_kind="upstream_reset"),
                make_exchange(status=200),
                make_exchange(status=418),
            ],
        )
        self.assertEqual(
            self.metrics.json_view()["upstream_errors"],
            {"upstream_timeout": 2, "upstream_refused": 1, "upstream_reset": 1},
        )

    def test_tokens_are_summed_by_model_and_type(self) -> None:
        feed(
            self.metrics,
            [
                make_exchange("gpt-a", usage={"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}),
                make_exchange("gpt-a", usage={"input_tokens": 100, "output_tokens": 1, "total_tokens": 101}),
                make_exchange("claude", "anthropic", usage={"input_tokens": 13, "output_tokens": 9}),
                make_exchange("gpt-b", usage=None),
                make_exchange("gpt-c", usage={"input_tokens": 5}),
            ],
        )
        self.assertEqual(
            self.metrics.json_view()["tokens"],
            {
                "gpt-a": {"input": 111, "output": 8},
                "claude": {"input": 13, "output": 9},
                "gpt-c": {"input": 5, "output": 0},
            },
        )

    def test_overhead_is_the_gateways_time_only(self) -> None:
        # 2 ms before the request went upstream, 0.5 ms passing the head on;
        # the upstream's 98 ms and the body's time are not the gateway's.
        feed(self.metrics, [make_exchange(sent=0.002, upstream_headers=0.1, relayed=0.1005)])
        overhead = self.metrics.json_view()["latency"]["overhead"]
        self.assertEqual(overhead["count"], 1)
        self.assertAlmostEqual(overhead["avg_ms"], 2.5, places=3)
        # A call that never reached the upstream has no overhead to count.
        feed(self.metrics, [make_exchange(sent=None, upstream_headers=None, relayed=None)])
        self.assertEqual(self.metrics.json_view()["latency"]["overhead"]["count"], 1)

    def test_duration_and_ttfb_are_observed_when_known(self) -> None:
        feed(
            self.metrics,
            [
                make_exchange(first_byte=0.2, ended=0.5),
                make_exchange(status=None, error_kind="upstream_timeout", first_byte=None, ended=1.0),
            ],
        )
        latency = self.metrics.json_view()["latency"]
        self.assertEqual(latency["duration"]["count"], 2)
        self.assertAlmostEqual(latency["duration"]["avg_ms"], 750.0, places=3)
        self.assertEqual(latency["ttfb"]["count"], 1)
        self.assertAlmostEqual(latency["ttfb"]["p50_ms"], 200.0, places=3)

    def test_an_empty_gateway_has_an_empty_view(self) -> None:
        view = self.metrics.json_view()
        self.assertEqual(view["requests"]["total"], 0)
        self.assertEqual(view["tokens"], {})
        self.assertEqual(view["upstream_errors"], {})
        self.assertEqual(view["requests_in_flight"], 0)
        self.assertEqual(view["streams_open"], 0)
        self.assertIsNone(view["sessions"])
        self.assertEqual(view["traces"], {"written": 0, "failed": 0, "dropped": 0})
        self.assertEqual(
            view["latency"]["duration"],
            {"count": 0, "avg_ms": None, "p50_ms": None, "p90_ms": None, "p99_ms": None},
        )
        json.dumps(view)  # serialisable as is

    def test_live_sources_are_read_at_view_time(self) -> None:
        figures = {"in_flight": 3}
        metrics = Metrics(
            sources={
                "in_flight": lambda: figures["in_flight"],
                "streams_open": lambda: 1,
                "refused": lambda: {"body_too_large": 2},
                "middleware_errors": lambda: Counter({"trace": 4}),
                "sessions": lambda: {"active_sessions": 5, "cache_hits": 6},
                "traces": lambda: [
                    {"files_written": 7, "write_failures": 1, "dropped": 0},
                    {"files_written": 3, "write_failures": 0, "dropped": 2},
                ],
            }
        )
        view = metrics.json_view()
        self.assertEqual(view["requests_in_flight"], 3)
        self.assertEqual(view["streams_open"], 1)
        self.assertEqual(view["requests_refused"], {"body_too_large": 2})
        self.assertEqual(view["middleware_errors"], {"trace": 4})
        self.assertEqual(view["sessions"], {"active_sessions": 5, "cache_hits": 6})
        self.assertEqual(view["traces"], {"written": 10, "failed": 1, "dropped": 2})
        figures["in_flight"] = 0
        self.assertEqual(metrics.json_view()["requests_in_flight"], 0)
        json.dumps(view)


class SummaryTests(SynchronousTestCase):
    def test_percentiles_count_and_average(self) -> None:
        summary = Summary()
        # 89 calls of 10 ms, 9 of 100 ms, 2 of 1 s, in a shuffled order.
        values = [0.01] * 89 + [0.1] * 9 + [1.0] * 2
        order = sorted(range(100), key=lambda i: (i * 37) % 100)
        for index in order:
            summary.observe(values[index])
        view = summary.view()
        self.assertEqual(view["count"], 100)
        self.assertAlmostEqual(view["avg_ms"], 37.9, places=3)
        self.assertEqual(view["p50_ms"], 10.0)
        self.assertEqual(view["p90_ms"], 100.0)
        self.assertEqual(view["p99_ms"], 1000.0)

    def test_one_sample_is_every_percentile(self) -> None:
        summary = Summary()
        summary.observe(0.25)
        self.assertEqual(
            summary.view(),
            {"count": 1, "avg_ms": 250.0, "p50_ms": 250.0, "p90_ms": 250.0, "p99_ms": 250.0},
        )

    def test_percentiles_follow_recent_calls_while_count_and_average_cover_all(self) -> None:
        summary = Summary()
        for _ in range(RESERVOIR):
            summary.observe(1.0)
        for _ in range(RESERVOIR):
            summary.observe(0.001)
        view = summary.view()
        self.assertEqual(view["count"], 2 * RESERVOIR)
        self.assertAlmostEqual(view["avg_ms"], 500.5, places=3)
        self.assertEqual((view["p50_ms"], view["p90_ms"], view["p99_ms"]), (1.0, 1.0, 1.0))


class BucketsTests(SynchronousTestCase):
    """
    ``Buckets`` stands in for ``prometheus_client.Histogram``: the same
    observations must give the same exposed samples.
    """

    def exposed_by_prometheus_client(self, bounds, values) -> dict[str, float]:
        from prometheus_client import CollectorRegistry, Histogram

        registry = CollectorRegistry()
        histogram = Histogram("h", "h", buckets=bounds, registry=registry)
        for value in values:
            histogram.observe(value)
        return {
            sample.labels["le"]: sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "h_bucket"
        } | {"sum": registry.get_sample_value("h_sum"), "count": registry.get_sample_value("h_count")}

    def exposed_by_buckets(self, bounds, values) -> dict[str, float]:
        buckets = Buckets(bounds)
        for value in values:
            buckets.observe(value)
        cumulative = buckets.cumulative()
        return dict(cumulative) | {"sum": buckets.total, "count": cumulative[-1][1]}

    def test_values_on_between_and_beyond_the_bounds_agree_with_prometheus_client(self) -> None:
        import random

        rng = random.Random(7)
        for bounds in (DURATION_BUCKETS, TOKEN_BUCKETS):
            values = [0, bounds[0], bounds[-1], bounds[-1] * 2, *bounds]
            values += [rng.uniform(0, bounds[-1] * 1.5) for _ in range(500)]
            values += [rng.randrange(0, int(bounds[-1])) for _ in range(200)]
            ours = self.exposed_by_buckets(bounds, values)
            theirs = self.exposed_by_prometheus_client(bounds, values)
            self.assertEqual(ours.keys(), theirs.keys())
            for key in theirs:
                self.assertAlmostEqual(ours[key], theirs[key], places=6, msg=key)

    def test_a_value_on_a_bound_is_in_that_bucket(self) -> None:
        buckets = Buckets((1.0, 2.0))
        buckets.observe(1.0)
        buckets.observe(2.5)
        self.assertEqual(buckets.cumulative(), [("1.0", 1), ("2.0", 1), ("+Inf", 2)])
        self.assertEqual(buckets.total, 3.5)


class ModelCapTests(SynchronousTestCase):
    def test_models_beyond_the_cap_are_counted_as_other(self) -> None:
        metrics = Metrics()
        extra = 5
        models = [f"model-{i:03d}" for i in range(MAX_MODELS + extra)]
        feed(
            metrics,
            [make_exchange(m, usage={"input_tokens": 1, "output_tokens": 2}) for m in models],
        )
        # A model seen before the cap keeps its own label afterwards.
        feed(metrics, [make_exchange(models[0], usage={"input_tokens": 1, "output_tokens": 2})])
        view = metrics.json_view()
        by_model = view["requests"]["by_model"]
        self.assertEqual(len(by_model), MAX_MODELS + 1)
        self.assertEqual(by_model[OTHER_MODEL], extra)
        self.assertEqual(by_model[models[0]], 2)
        self.assertNotIn(models[MAX_MODELS], by_model)
        self.assertEqual(view["requests"]["total"], MAX_MODELS + extra + 1)
        self.assertEqual(view["tokens"][OTHER_MODEL], {"input": extra, "output": 2 * extra})
        self.assertEqual(len(view["tokens"]), MAX_MODELS + 1)

        families = {
            f.name: f for f in text_string_to_metric_families(metrics.prometheus(None)[0].decode())
        }
        request_models = {s.labels["model"] for s in families["llmgate_requests"].samples}
        self.assertEqual(len(request_models), MAX_MODELS + 1)
        self.assertIn(OTHER_MODEL, request_models)
        for name in (
            "gen_ai_client_operation_duration_seconds",
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai_client_token_usage",
        ):
            seen = {s.labels["gen_ai_request_model"] for s in families[name].samples}
            self.assertEqual(len(seen), MAX_MODELS + 1, name)
            self.assertIn(OTHER_MODEL, seen)


class WantsPrometheusTests(SynchronousTestCase):
    def test_a_prometheus_scraper_gets_prometheus(self) -> None:
        self.assertTrue(wants_prometheus(None, SCRAPER_ACCEPT.encode()))
        self.assertTrue(wants_prometheus(None, b"text/plain;version=0.0.4"))
        self.assertTrue(wants_prometheus(None, b"application/openmetrics-text"))

    def test_curl_a_browser_and_json_clients_get_json(self) -> None:
        self.assertFalse(wants_prometheus(None, CURL_ACCEPT.encode()))
        self.assertFalse(wants_prometheus(None, BROWSER_ACCEPT.encode()))
        self.assertFalse(wants_prometheus(None, b"application/json"))
        self.assertFalse(wants_prometheus(None, None))
        self.assertFalse(wants_prometheus(None, b""))

    def test_the_query_decides_over_the_accept_header(self) -> None:
        self.assertTrue(wants_prometheus(b"prometheus", None))
        self.assertTrue(wants_prometheus(b"Prometheus", BROWSER_ACCEPT.encode()))
        self.assertTrue(wants_prometheus(b"openmetrics", CURL_ACCEPT.encode()))
        self.assertFalse(wants_prometheus(b"json", SCRAPER_ACCEPT.encode()))


class PrometheusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(
            sources={
                "in_flight": lambda: 2,
                "streams_open": lambda: 1,
                "traces": lambda: [{"files_written": 4, "write_failures": 1, "dropped": 0}],
                "sessions": lambda: {
                    "active_sessions": 3,
                    "sessions_created": 5,
                    "cache_hits": 6,
                    "cache_misses": 5,
                },
            }
        )
        feed(
            self.metrics,
            [
                # ttfb 0.2 s, duration 0.5 s, overhead 1 ms + 0.5 ms.
                make_exchange("gpt-a", usage={"input_tokens": 11, "output_tokens": 7}),
                make_exchange("gpt-a", first_byte=0.03, ended=3.0, usage={"input_tokens": 1000, "output_tokens": 70}),
                make_exchange("claude", "anthropic", 529, first_byte=0.3, ended=0.3),
                make_exchange("gpt-a", status=None, error_kind="upstream_timeout", sent=0.0, upstream_headers=None,
                              relayed=None, first_byte=None, ended=60.0),
            ],
        )

    def expose(self, accept: str | None) -> tuple[dict[str, Any], dict, str]:
        body, content_type = self.metrics.prometheus(accept)
        text = body.decode("utf-8")
        if "openmetrics" in content_type:
            families = list(openmetrics_families(text))
        else:
            families = list(text_string_to_metric_families(text))
        return {f.name: f for f in families}, samples(families), content_type

    def check(self, families: dict[str, Any], values: dict) -> None:
        for name, kind in (
            ("llmgate_requests", "counter"),
            ("llmgate_upstream_errors", "counter"),
            ("gen_ai_client_operation_duration_seconds", "histogram"),
            ("gen_ai_server_time_to_first_token_seconds", "histogram"),
            ("llmgate_overhead_seconds", "histogram"),
            ("gen_ai_client_token_usage", "histogram"),
            ("llmgate_requests_in_flight", "gauge"),
            ("llmgate_streams_open", "gauge"),
            ("llmgate_trace_written", "counter"),
            ("llmgate_sessions_active", "gauge"),
            ("llmgate_session_cache_hits", "counter"),
        ):
            self.assertIn(name, families)
            self.assertEqual(families[name].type, kind, name)
        self.assertFalse(any(name.endswith("_created") for name, _ in values))

        requests = {
            (dict(key)["provider"], dict(key)["model"], dict(key)["status_class"]): value
            for (name, key), value in values.items()
            if name == "llmgate_requests_total"
        }
        self.assertEqual(
            requests,
            {
                ("openai", "gpt-a", "2xx"): 2.0,
                ("anthropic", "claude", "5xx"): 1.0,
                ("openai", "gpt-a", "error"): 1.0,
            },
        )
        self.assertEqual(
            values[("llmgate_upstream_errors_total", labels(kind="upstream_timeout", upstream="none"))],
            1.0,
        )

        gpt = dict(gen_ai_system="openai", gen_ai_request_model="gpt-a")
        input_tokens = labels(gen_ai_token_type="input", **gpt)
        output_tokens = labels(gen_ai_token_type="output", **gpt)
        self.assertEqual(values[("gen_ai_client_token_usage_count", input_tokens)], 2.0)
        self.assertEqual(values[("gen_ai_client_token_usage_sum", input_tokens)], 1011.0)
        self.assertEqual(values[("gen_ai_client_token_usage_sum", output_tokens)], 77.0)
        # Buckets are cumulative: 11 input tokens fall under 16, 1000 under 1024.
        self.assertEqual(values[("gen_ai_client_token_usage_bucket", input_tokens | {("le", "16.0")})], 1.0)
        self.assertEqual(values[("gen_ai_client_token_usage_bucket", input_tokens | {("le", "1024.0")})], 2.0)
        self.assertEqual(values[("gen_ai_client_token_usage_bucket", input_tokens | {("le", "+Inf")})], 2.0)
        self.assertNotIn(
            ("gen_ai_client_token_usage_count", labels(gen_ai_token_type="input", gen_ai_system="anthropic", gen_ai_request_model="claude")),
            values,
        )

        duration = labels(**gpt)
        self.assertEqual(values[("gen_ai_client_operation_duration_seconds_count", duration)], 3.0)
        self.assertAlmostEqual(values[("gen_ai_client_operation_duration_seconds_sum", duration)], 63.5, places=6)
        self.assertEqual(values[("gen_ai_client_operation_duration_seconds_bucket", duration | {("le", "0.5")})], 1.0)
        self.assertEqual(values[("gen_ai_client_operation_duration_seconds_bucket", duration | {("le", "5.0")})], 2.0)
        self.assertEqual(values[("gen_ai_client_operation_duration_seconds_bucket", duration | {("le", "40.0")})], 2.0)
        self.assertEqual(values[("gen_ai_client_operation_duration_seconds_bucket", duration | {("le", "80.0")})], 3.0)

        ttft = labels(**gpt)
        self.assertEqual(values[("gen_ai_server_time_to_first_token_seconds_count", ttft)], 2.0)
        self.assertAlmostEqual(values[("gen_ai_server_time_to_first_token_seconds_sum", ttft)], 0.23, places=6)
        self.assertEqual(values[("gen_ai_server_time_to_first_token_seconds_bucket", ttft | {("le", "0.04")})], 1.0)
        self.assertEqual(values[("gen_ai_server_time_to_first_token_seconds_bucket", ttft | {("le", "0.25")})], 2.0)
        claude_ttft = labels(gen_ai_system="anthropic", gen_ai_request_model="claude")
        self.assertEqual(values[("gen_ai_server_time_to_first_token_seconds_count", claude_ttft)], 1.0)

        # Overhead: 1.5 ms for each of the three answered calls, 0 for the
        # timed-out one (sent at once, no head ever relayed).
        self.assertEqual(values[("llmgate_overhead_seconds_count", labels())], 4.0)
        self.assertAlmostEqual(values[("llmgate_overhead_seconds_sum", labels())], 0.0045, places=9)
        self.assertEqual(values[("llmgate_overhead_seconds_bucket", labels(le="0.001"))], 1.0)
        self.assertEqual(values[("llmgate_overhead_seconds_bucket", labels(le="0.0025"))], 4.0)

        self.assertEqual(values[("llmgate_requests_in_flight", labels())], 2.0)
        self.assertEqual(values[("llmgate_streams_open", labels())], 1.0)
        self.assertEqual(values[("llmgate_trace_written_total", labels())], 4.0)
        self.assertEqual(values[("llmgate_trace_failed_total", labels())], 1.0)
        self.assertEqual(values[("llmgate_sessions_active", labels())], 3.0)
        self.assertEqual(values[("llmgate_sessions_created_total", labels())], 5.0)
        self.assertEqual(values[("llmgate_session_cache_hits_total", labels())], 6.0)
        self.assertEqual(values[("llmgate_session_cache_misses_total", labels())], 5.0)
        self.assertEqual(values[("llmgate_worker_info", labels(worker="0"))], 1.0)

    def test_the_text_format_by_default(self) -> None:
        families, values, content_type = self.expose(None)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        self.check(families, values)

    def test_openmetrics_for_a_prometheus_scraper(self) -> None:
        body, content_type = self.metrics.prometheus(SCRAPER_ACCEPT)
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))
        families, values, _ = self.expose(SCRAPER_ACCEPT)
        self.check(families, values)

    def test_both_formats_agree_with_the_json_view(self) -> None:
        _, text_values, _ = self.expose(None)
        _, open_values, _ = self.expose(SCRAPER_ACCEPT)
        self.assertEqual(text_values, open_values)
        view = self.metrics.json_view()
        self.assertEqual(
            sum(v for (name, _), v in text_values.items() if name == "llmgate_requests_total"),
            view["requests"]["total"],
        )
        self.assertEqual(
            text_values[("gen_ai_client_operation_duration_seconds_count", labels(gen_ai_system="openai", gen_ai_request_model="gpt-a"))]
            + text_values[("gen_ai_client_operation_duration_seconds_count", labels(gen_ai_system="anthropic", gen_ai_request_model="claude"))],
            view["latency"]["duration"]["count"],
        )
        self.assertEqual(text_values[("llmgate_overhead_seconds_count", labels())], view["latency"]["overhead"]["count"])
        self.assertEqual(view["tokens"], {"gpt-a": {"input": 1011, "output": 77}})

    def test_no_session_figures_without_sessions(self) -> None:
        metrics = Metrics()
        families = {f.name for f in text_string_to_metric_families(metrics.prometheus(None)[0].decode())}
        self.assertNotIn("llmgate_sessions_active", families)
        self.assertIn("llmgate_requests_in_flight", families)
