"""
What the gateway has done, for ``/metrics``: JSON for people and the
predecessor's users, Prometheus text (through ``prometheus_client``) for
scrapers.

Counting happens once per exchange, when it ends, in plain counters on the
reactor thread; nothing is counted per SSE event.  ``prometheus_client``
only formats them, at scrape time (its own metric objects lock per update).
Metric names follow Prometheus conventions and, where they exist, the
OpenTelemetry GenAI semantic conventions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from llmgate.exchange import Exchange
from llmgate.middleware import Middleware

#: Distinct model labels kept; more would let clients blow up cardinality.
MAX_MODELS = 100
OTHER_MODEL = "other"

#: Error kinds that are the gateway's own decisions, not upstream failures.
LOCAL_KINDS = frozenset(
    {"client_gone", "client_stalled", "unauthorized", "shutdown", "no_route", "forbidden_path"}
)

#: Latency samples kept per summary, for the JSON view's percentiles.
RESERVOIR = 2048

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class Summary:
    """
    Count, sum and recent percentiles of one latency, for the JSON view.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self._recent: deque[float] = deque(maxlen=RESERVOIR)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self._recent.append(value)

    def view(self) -> dict[str, Any]:
        recent = sorted(self._recent)

        def pick(q: float) -> float | None:
            if not recent:
                return None
            return round(recent[min(len(recent) - 1, int(q * len(recent)))] * 1000, 3)

        return {
            "count": self.count,
            "avg_ms": round(self.total / self.count * 1000, 3) if self.count else None,
            "p50_ms": pick(0.5),
            "p90_ms": pick(0.9),
            "p99_ms": pick(0.99),
        }


class Buckets:
    """
    One histogram's counts per bucket and sum, for the Prometheus view.

    ``prometheus_client``'s own histogram takes a lock for every bucket it
    touches (about 5 us per observation here, five per call); every
    observation here is made on the reactor thread, so plain integers do,
    and the cumulative counts are made at scrape time.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets are "le".
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        running = 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class ModelFigures:
    """
    The histograms of one (provider, model): found with one lookup per call.
    Token histograms appear once a call reports that kind of token.
    """

    __slots__ = ("duration", "ttft", "tokens")

    def __init__(self) -> None:
        self.duration = Buckets(DURATION_BUCKETS)
        self.ttft = Buckets(TTFT_BUCKETS)
        self.tokens: dict[str, Buckets] = {}

    def observe_tokens(self, kind: str, count: int) -> None:
        counts = self.tokens.get(kind)
        if counts is None:
            counts = self.tokens[kind] = Buckets(TOKEN_BUCKETS)
        counts.observe(count)


def status_class(exchange: Exchange) -> str:
    response = exchange.response
    if response is not None and response.status is not None:
        return f"{response.status // 100}xx"
    if exchange.sent_status is not None:
        return f"{exchange.sent_status // 100}xx"
    if exchange.client_gone:
        return "client_gone"
    return "error"


class Metrics(Middleware):
    """
    The gateway's counters, fed by the pipeline at the end of each exchange.

    :param sources: live figures read at scrape time: ``in_flight`` and
        ``streams_open`` (callables), ``middleware_errors`` (a Counter),
        ``refused`` (callable returning a mapping of reason to count),
        ``sessions`` (callable returning the session figures or None),
        ``traces`` (callable returning the trace middleware states),
        ``stalls`` (callable returning a :class:`llmgate.stalls.StallWatch`).
    """

    name = "metrics"

    def __init__(self, worker: str = "0", sources: Mapping[str, Callable[[], Any]] | None = None) -> None:
        self.worker = worker
        self.sources = dict(sources or {})
        #: By (GenAI system, model, status class, upstream, API shape).
        self.requests: Counter[tuple[str, str, str, str, str]] = Counter()
        #: By (kind, upstream).
        self.errors: Counter[tuple[str, str]] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.client_disconnects = 0
        self.duration = Summary()
        self.ttfb = Summary()
        self.overhead = Summary()
        self._models: set[str] = set()
        # Prometheus histograms, by (provider, model) but the overhead's.
        self.by_model: dict[tuple[str, str], ModelFigures] = {}
        self.overhead_buckets = Buckets(OVERHEAD_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    # -- the middleware ------------------------------------------------------

    def exchange_finished(self, exchange: Exchange) -> None:
        model = self._model(exchange.model)
        provider = exchange.system
        upstream = exchange.upstream or "none"
        self.requests[
            (provider, model, status_class(exchange), upstream, exchange.provider)
        ] += 1
        if exchange.client_gone:
            self.client_disconnects += 1
        elif exchange.error_kind is not None and exchange.error_kind not in LOCAL_KINDS:
            self.errors[(exchange.error_kind, upstream)] += 1
        figures = self.by_model.get((provider, model))
        if figures is None:
            figures = self.by_model[(provider, model)] = ModelFigures()
        duration = exchange.duration
        if duration is not None:
            self.duration.observe(duration)
            figures.duration.observe(duration)
        ttfb = exchange.ttfb
        if ttfb is not None:
            self.ttfb.observe(ttfb)
            figures.ttft.observe(ttfb)
        overhead = exchange.overhead
        if overhead is not None:
            self.overhead.observe(overhead)
            self.overhead_buckets.observe(overhead)
        usage = exchange.usage
        if usage:
            count = usage.get("input_tokens")
            if count is not None:
                self.tokens[(model, "input")] += count
                figures.observe_tokens("input", count)
            count = usage.get("output_tokens")
            if count is not None:
                self.tokens[(model, "output")] += count
                figures.observe_tokens("output", count)

    def _model(self, model: str | None) -> str:
        if model is None:
            return "none"
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return OTHER_MODEL
        self._models.add(model)
        return model

    def state(self) -> Mapping[str, Any]:
        return {"worker": self.worker}

    # -- views ---------------------------------------------------------------------

    def _live(self, name: str, default: Any) -> Any:
        source = self.sources.get(name)
        return source() if source is not None else default

    def json_view(self) -> dict[str, Any]:
        by_provider: Counter[str] = Counter()
        by_model: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        by_upstream: Counter[str] = Counter()
        by_api: Counter[str] = Counter()
        for (provider, model, klass, upstream, api), count in self.requests.items():
            by_provider[provider] += count
            by_model[model] += count
            by_status[klass] += count
            by_upstream[upstream] += count
            by_api[api] += count
        errors: Counter[str] = Counter()
        for (kind, _), count in self.errors.items():
            errors[kind] += count
        tokens: dict[str, dict[str, int]] = {}
        for (model, kind), count in self.tokens.items():
            tokens.setdefault(model, {"input": 0, "output": 0})[kind] = count
        traces = self._live("traces", [])
        return {
            "worker": self.worker,
            "requests": {
                "total": sum(self.requests.values()),
                "by_provider": dict(by_provider),
                "by_model": dict(by_model),
                "by_status_class": dict(by_status),
                "by_upstream": dict(by_upstream),
                "by_api": dict(by_api),
            },
            "upstreams": self._live("upstreams", {}),
            "requests_in_flight": self._live("in_flight", 0),
            "streams_open": self._live("streams_open", 0),
            "latency": {
                "duration": self.duration.view(),
                "ttfb": self.ttfb.view(),
                "overhead": self.overhead.view(),
            },
            "tokens": tokens,
            "upstream_errors": dict(errors),
            "client_disconnects": self.client_disconnects,
            "requests_refused": dict(self._live("refused", {})),
            "traces": {
                "written": sum(t.get("files_written", 0) for t in traces),
                "failed": sum(t.get("write_failures", 0) for t in traces),
                "dropped": sum(t.get("dropped", 0) for t in traces),
            },
            "middleware_errors": dict(self._live("middleware_errors", {})),
            "sessions": self._live("sessions", None),
            "telemetry": self._live("telemetry", None),
            "stalls": stalls.view() if (stalls := self._live("stalls", None)) else None,
        }

    def prometheus(self, accept: str | None) -> tuple[bytes, str]:
        """
        The Prometheus (or OpenMetrics, by ``accept``) exposition.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def wants_prometheus(query_format: bytes | None, accept: bytes | None) -> bool:
    """
    Whether ``/metrics`` should answer in Prometheus text: asked by
    ``?format=prometheus`` or by a scraper's ``Accept`` header.
    """
    if query_format:
        return query_format.lower() in (b"prometheus", b"openmetrics")
    if not accept:
        return False
    prometheus = json_q = 0.0
    for item in accept.lower().split(b","):
        kind, *params = [p.strip() for p in item.split(b";")]
        q = 1.0
        for param in params:
            if param.startswith(b"q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if kind in (b"application/openmetrics-text", b"text/plain"):
            prometheus = max(prometheus, q)
        elif kind == b"application/json":
            json_q = max(json_q, q)
    return prometheus > 0 and prometheus > json_q


class _Collector:
    """
    Everything ``/metrics`` exposes in Prometheus text, built at scrape time.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        yield from _counted(self.metrics)
        yield from _live(self.metrics)


def _counted(metrics: Metrics) -> Iterable[Any]:
    """
    What :meth:`Metrics.exchange_finished` counted.
    """
    requests = CounterMetricFamily(
        "llmgate_requests",
        "Calls relayed, by provider, model, status class, upstream and API shape.",
        labels=["provider", "model", "status_class", "upstream", "api"],
    )
    for labels, count in metrics.requests.items():
        requests.add_metric(list(labels), count)
    yield requests
    errors = CounterMetricFamily(
        "llmgate_upstream_errors", "Failed calls by kind and upstream.", labels=["kind", "upstream"]
    )
    for labels, count in metrics.errors.items():
        errors.add_metric(list(labels), count)
    yield errors
    yield _counter(
        "llmgate_client_disconnects",
        "Calls the client left, or stopped reading, before the answer ended.",
        metrics.client_disconnects,
    )
    model_labels = ["gen_ai_system", "gen_ai_request_model"]
    duration = HistogramMetricFamily(
        "gen_ai_client_operation_duration_seconds",
        "Call duration, from request received to the answer's end.",
        labels=model_labels,
    )
    ttft = HistogramMetricFamily(
        "gen_ai_server_time_to_first_token_seconds",
        "Time from request received to the answer's first byte.",
        labels=model_labels,
    )
    for labels, figures in metrics.by_model.items():
        duration.add_metric(list(labels), figures.duration.cumulative(), figures.duration.total)
        ttft.add_metric(list(labels), figures.ttft.cumulative(), figures.ttft.total)
    yield duration
    yield ttft
    overhead = HistogramMetricFamily(
        "llmgate_overhead_seconds",
        "Time spent in the gateway itself, the upstream's time excluded.",
    )
    buckets = metrics.overhead_buckets
    overhead.add_metric([], buckets.cumulative(), buckets.total)
    yield overhead
    tokens = HistogramMetricFamily(
        "gen_ai_client_token_usage", "Tokens per call, by type (input, output).",
        labels=[*model_labels, "gen_ai_token_type"],
    )
    for (provider, model), figures in metrics.by_model.items():
        for kind, counts in figures.tokens.items():
            tokens.add_metric([provider, model, kind], counts.cumulative(), counts.total)
    yield tokens


def _live(metrics: Metrics) -> Iterable[Any]:
    """
    Figures read at scrape time rather than counted: gauges, and counters
    kept by other parts (traces, sessions, middleware errors).
    """
    view = metrics.json_view()
    yield _gauge("llmgate_requests_in_flight", "Calls in progress.", view["requests_in_flight"])
    yield _gauge("llmgate_streams_open", "Streamed answers in progress.", view["streams_open"])
    yield _gauge("llmgate_worker_info", "Which worker process answered.", 1, {"worker": metrics.worker})
    yield _counters(
        "llmgate_requests_refused", "Requests refused by the gateway, by reason.", "reason",
        view["requests_refused"],
    )
    for key, help_text in (
        ("written", "Trace files written."),
        ("failed", "Trace writes that failed."),
        ("dropped", "Traces dropped because the write queue was full."),
    ):
        yield _counter(f"llmgate_trace_{key}", help_text, view["traces"][key])
    yield _counters(
        "llmgate_middleware_errors", "Middleware hooks that raised.", "middleware",
        view["middleware_errors"],
    )
    telemetry = view["telemetry"]
    if telemetry:
        yield _counter(
            "llmgate_telemetry_spans_exported", "Spans the OTLP collector accepted.",
            telemetry.get("spans_exported", 0),
        )
        yield _counters(
            "llmgate_telemetry_spans_dropped",
            "Spans that never reached the collector: the export queue was full, or the export failed.",
            "reason",
            {
                "queue_full": telemetry.get("spans_dropped", 0),
                "export_failed": telemetry.get("spans_export_failed", 0),
            },
        )
    upstreams = view["upstreams"]
    if upstreams:
        attempts = CounterMetricFamily(
            "llmgate_upstream_attempts", "Tries at each upstream, by outcome.",
            labels=["upstream", "outcome"],
        )
        healthy = GaugeMetricFamily(
            "llmgate_upstream_healthy", "1 unless ejected for failing.", labels=["upstream"]
        )
        ejections = CounterMetricFamily(
            "llmgate_upstream_ejections", "Times each upstream was ejected.", labels=["upstream"]
        )
        for name, state in upstreams.items():
            for outcome, count in state["attempts"].items():
                attempts.add_metric([name, outcome], count)
            healthy.add_metric([name], 1 if state["healthy"] else 0)
            ejections.add_metric([name], state["ejections"])
        yield from (attempts, healthy, ejections)
    stalls = metrics._live("stalls", None)
    if stalls is not None:
        pauses = HistogramMetricFamily(
            "llmgate_gc_pause_seconds",
            "Garbage collections by generation, by how long they stopped the process.",
            labels=["generation"],
        )
        for generation, counts in stalls.gc_pauses.items():
            pauses.add_metric([str(generation)], counts.cumulative(), counts.total)
        yield pauses
        lag = HistogramMetricFamily(
            "llmgate_loop_lag_seconds",
            "How late a timer on the reactor thread fired: what any stall cost a call.",
        )
        lag.add_metric([], stalls.loop_lag.cumulative(), stalls.loop_lag.total)
        yield lag
    sessions = view["sessions"]
    if sessions:
        yield _gauge("llmgate_sessions_active", "Sessions alive.", sessions.get("active_sessions", 0))
        for key, name in (
            ("sessions_created", "llmgate_sessions_created"),
            ("sessions_expired", "llmgate_sessions_expired"),
            ("sessions_evicted", "llmgate_sessions_evicted"),
            ("cache_hits", "llmgate_session_cache_hits"),
            ("cache_misses", "llmgate_session_cache_misses"),
            ("fuzzy_matches", "llmgate_session_fuzzy_matches"),
        ):
            yield _counter(name, f"Session figure {key}.", sessions.get(key, 0))


def _gauge(name: str, help_text: str, value: float, labels: Mapping[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counters(name: str, help_text: str, label: str, counts: Mapping[str, float]) -> CounterMetricFamily:
    """
    One counter family with a series per value of ``label``.
    """
    family = CounterMetricFamily(name, help_text, labels=[label])
    for value, count in counts.items():
        family.add_metric([value], count)
    return family


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text)
    family.add_metric([], value)
    return family
