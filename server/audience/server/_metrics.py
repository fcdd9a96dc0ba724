"""Prometheus metrics (the official prometheus-client) on an HTTP port of their own.

Per gRPC method (labels as go-grpc-prometheus: grpc_service, grpc_method, grpc_code):

    audience_grpc_server_handled_total        calls finished, by status code
    audience_grpc_server_handling_seconds     latency histogram (a stream: until its end)
    audience_grpc_server_in_flight            calls running now

Read from the engine at each scrape (nothing is kept twice):

    audience_users, audience_indexed_vectors, audience_index_generation,
    audience_index_info{kind}, audience_segment_model_info{version},
    audience_segment_model_age_seconds, audience_job_running{kind},
    audience_job_stage_progress_ratio{kind,stage}, audience_encoder_texts_total,
    audience_encoder_seconds_total (texts/s = rate of one over the other),
    audience_start_recoveries (damaged files repaired when the data dir was opened)

Each server has its own registry: nothing is registered process-wide.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ._convert import JOB_KINDS

log = logging.getLogger("audience.server")

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300
)  # fmt: skip


def registry() -> CollectorRegistry:
    """A registry of one server's own (prometheus-client's default one is process-wide)."""
    return CollectorRegistry(auto_describe=True)


class RpcMetrics:
    """The per-method series, and the interceptor that feeds them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method"]
        self.handled = Counter(
            "audience_grpc_server_handled",
            "gRPC calls finished, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "audience_grpc_server_handling_seconds",
            "Time to answer a gRPC call (a streaming answer: until its last message).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "audience_grpc_server_in_flight", "gRPC calls running now.", labels, registry=registry
        )


class MetricsInterceptor(grpc.ServerInterceptor):
    """Times every call and counts it by status code (the outermost interceptor: calls
    refused by authentication are counted too). A method's wrapped handler is made once."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics
        self._wrapped: dict[str, Any] = {}

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    def _wrap(self, handler, method: str):
        service, _, name = method.lstrip("/").rpartition("/")
        m = self.metrics
        seconds, in_flight = m.seconds.labels(service, name), m.in_flight.labels(service, name)
        codes = {c: m.handled.labels(service, name, c.name) for c in grpc.StatusCode}

        def finish(context: grpc.ServicerContext, t0: float, failed: bool) -> None:
            seconds.observe(time.perf_counter() - t0)
            in_flight.dec()
            code = context.code()  # set by abort() or set_code(); None: OK
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            codes.get(code, codes[grpc.StatusCode.UNKNOWN]).inc()

        def unary(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                t0, failed = time.perf_counter(), True
                in_flight.inc()
                try:
                    response = fn(request, context)
                    failed = False
                    return response
                finally:
                    finish(context, t0, failed)

            return call

        def streaming(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                t0, failed = time.perf_counter(), True
                in_flight.inc()
                try:
                    yield from fn(request, context)
                    failed = False
                finally:
                    finish(context, t0, failed)

            return call

        if handler.unary_unary:
            return handler._replace(unary_unary=unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=unary(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=streaming(handler.unary_stream))
        return handler


class EngineCollector(Collector):
    """What the engine holds, read at each scrape; nothing while it loads."""

    def __init__(self, engine_of: Callable[[], Any]) -> None:
        self._engine_of = engine_of

    def collect(self):  # type: ignore[override]
        try:
            engine = self._engine_of()
        except Exception:  # noqa: BLE001 - loading or stopped: no engine series
            return
        s = engine.stats()
        yield _gauge("audience_users", "Stored users.", s.users)
        yield _gauge("audience_indexed_vectors", "User vectors in the served index.", s.indexed)
        yield _gauge("audience_index_generation", "Last saved index generation.", s.generation)
        info = GaugeMetricFamily("audience_index_info", "The served index.", labels=["kind"])
        info.add_metric([s.index_type], 1)
        yield info
        yield _gauge(
            "audience_start_recoveries",
            "Damaged files repaired or replaced when the data dir was opened.",
            len(engine.catalog.warnings),
        )
        model = engine.catalog.segments
        if model is not None:
            seg = GaugeMetricFamily(
                "audience_segment_model_info", "The served segment model.", labels=["version"]
            )
            seg.add_metric([model.version], 1)
            yield seg
            yield _gauge(
                "audience_segment_model_age_seconds",
                "Seconds since the served segment model was built.",
                max(0.0, time.time() - _built_at(model.version)),
            )
        running = GaugeMetricFamily(
            "audience_job_running", "Long jobs running now, by kind.", labels=["kind"]
        )
        ratio = GaugeMetricFamily(
            "audience_job_stage_progress_ratio",
            "How far a running job is into its current stage (0..1).",
            labels=["kind", "stage"],
        )
        kinds = dict.fromkeys(JOB_KINDS, 0)
        for job in engine.jobs.list():
            if job.finished:
                continue
            kinds[job.kind] = kinds.get(job.kind, 0) + 1
            ratio.add_metric([job.kind, job.stage], job.done / job.total if job.total else 0.0)
        for kind, count in kinds.items():
            running.add_metric([kind], count)
        yield running
        yield ratio
        counter = engine.encoder.counter
        texts = CounterMetricFamily(
            "audience_encoder_texts", "Texts embedded by the model since the start."
        )
        texts.add_metric([], counter.texts)
        yield texts
        spent = CounterMetricFamily(
            "audience_encoder_seconds", "Seconds spent embedding texts since the start."
        )
        spent.add_metric([], counter.seconds)
        yield spent


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _built_at(version: str) -> float:
    """The build time in a model version ("v000003-20261130T101500", local time)."""
    try:
        return time.mktime(time.strptime(version.split("-", 1)[1], "%Y%m%dT%H%M%S"))
    except (IndexError, ValueError):
        return time.time()


class MetricsEndpoint:
    """/metrics over HTTP on host:port (port 0: a free one, see `port`) until `stop()`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._httpd.server_port)
        log.info("Metrics - http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        stopper = threading.Thread(target=self._httpd.shutdown, daemon=True)
        stopper.start()
        stopper.join(5)
        self._httpd.server_close()
