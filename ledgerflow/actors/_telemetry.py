"""OpenTelemetry spans and counters for runs, nodes and partition attempts (the optional ``otel`` extra).

Nothing is exported unless the user configures an exporter with the
standard variables. ``OTEL_TRACES_EXPORTER`` takes ``otlp`` or ``console``,
and ``none`` turns tracing off. An OTLP endpoint alone turns tracing on:
``OTEL_EXPORTER_OTLP_ENDPOINT`` as a base URL, or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` used as is. OTLP is sent over
HTTP/protobuf. Counters are exported when ``OTEL_METRICS_EXPORTER`` is
``otlp`` or ``console``.

The process that starts a run reads these variables and hands them to the
executor, which hands them to each task with the trace context, so the
attempt spans that workers create are children of the executor's node
spans. Variables whose names look like credentials (such as
``OTEL_EXPORTER_OTLP_HEADERS``) are not handed on: set them in the
environment of the process that starts Ray.

Span tree: ``ledgerflow.run`` (one per executor, so a resumed run has one per
executor that worked on it) > ``ledgerflow.node`` > ``ledgerflow.attempt``,
each with the attributes ``ledgerflow.run_id``, ``ledgerflow.node``,
``ledgerflow.partition`` and ``ledgerflow.attempt`` that apply.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from ledgerflow.actors._context import Attempt, AttemptStopped
from ledgerflow.events import is_secret_key, redact_text

logger = structlog.get_logger("ledgerflow.telemetry")

_FORWARDED = (
    "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)
TRACEPARENT_KEY = "trace_context"
SETTINGS_KEY = "telemetry"


def telemetry_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the OpenTelemetry variables to hand to executors and workers; empty when nothing is configured."""
    environ = os.environ if environ is None else environ
    settings = {name: environ[name] for name in _FORWARDED if environ.get(name) and not is_secret_key(name)}
    traces = settings.get("OTEL_TRACES_EXPORTER", "").lower()
    metrics = settings.get("OTEL_METRICS_EXPORTER", "").lower()
    has_endpoint = any(name.endswith("ENDPOINT") for name in settings)
    traces_on = traces in ("otlp", "console") or (not traces and has_endpoint)
    metrics_on = metrics in ("otlp", "console")
    if not traces_on and not metrics_on:
        return {}
    if not traces_on:
        settings["OTEL_TRACES_EXPORTER"] = "none"
    elif not traces:
        settings["OTEL_TRACES_EXPORTER"] = "otlp"
    return settings


class Telemetry:
    """The tracer and counters of one process for one set of settings (no-ops when disabled)."""

    _lock = threading.Lock()
    _cache: dict[tuple[tuple[str, str], ...], Telemetry] = {}

    def __init__(self, settings: Mapping[str, str]) -> None:
        self.settings = dict(settings)
        self.tracer: Any = None
        self._providers: list[Any] = []
        self._counters: dict[str, Any] = {}
        if settings:
            try:
                self._set_up()
            except ImportError as err:
                logger.warning("telemetry configured but OpenTelemetry is not installed: "
                               "install ledgerflow[otel]", error=str(err))
                self.tracer = None

    @classmethod
    def for_settings(cls, settings: Mapping[str, str]) -> Telemetry:
        """Return this process's telemetry for ``settings``, set up on first use."""
        key = tuple(sorted(settings.items()))
        with cls._lock:
            found = cls._cache.get(key)
            if found is None:
                found = cls._cache[key] = cls(settings)
            return found

    @property
    def enabled(self) -> bool:
        return self.tracer is not None or bool(self._counters)

    def _set_up(self) -> None:
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create({"service.name": self.settings.get("OTEL_SERVICE_NAME", "ledgerflow")})
        if self.settings.get("OTEL_TRACES_EXPORTER", "none") != "none":
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(self._span_exporter()))
            self._providers.append(provider)
            self.tracer = provider.get_tracer("ledgerflow")
        metrics = self.settings.get("OTEL_METRICS_EXPORTER", "").lower()
        if metrics in ("otlp", "console"):
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

            if metrics == "otlp":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

                exporter: Any = OTLPMetricExporter(endpoint=self._endpoint("METRICS", "v1/metrics"))
            else:
                exporter = ConsoleMetricExporter()
            meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(exporter)])
            self._providers.append(meter_provider)
            meter = meter_provider.get_meter("ledgerflow")
            self._counters = {
                "attempts": meter.create_counter("ledgerflow.attempts", unit="1",
                                                 description="Node attempts, by node and outcome"),
                "rows": meter.create_counter("ledgerflow.rows", unit="1",
                                             description="Rows that node attempts handed on"),
                "duration": meter.create_histogram("ledgerflow.attempt.duration", unit="s",
                                                   description="Duration of node attempts"),
            }

    def _span_exporter(self) -> Any:
        if self.settings.get("OTEL_TRACES_EXPORTER") == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=self._endpoint("TRACES", "v1/traces"))

    def _endpoint(self, signal: str, path: str) -> str | None:
        specific = self.settings.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        if specific:
            return specific
        base = self.settings.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return f"{base.rstrip('/')}/{path}" if base else None

    def start_span(self, name: str, *, parent: Any = None, carrier: Mapping[str, str] | None = None,
                   attributes: Mapping[str, Any] | None = None) -> Any:
        """Start a span under ``parent`` (a span) or the context in ``carrier``; None when tracing is off."""
        if self.tracer is None:
            return None
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if parent is not None:
            context = trace.set_span_in_context(parent)
        elif carrier:
            context = TraceContextTextMapPropagator().extract(dict(carrier))
        else:
            context = None
        clean = {key: value for key, value in (attributes or {}).items() if value is not None}
        return self.tracer.start_span(name, context=context, attributes=clean)

    @staticmethod
    def carrier(span: Any) -> dict[str, str]:
        """Return the W3C trace context of ``span`` for a task's request (empty without a span)."""
        if span is None:
            return {}
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    @staticmethod
    def end_span(span: Any, *, error: str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
        """End ``span``, marking it failed with the (redacted) ``error`` when given."""
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        for key, value in (attributes or {}).items():
            if value is not None:
                span.set_attribute(key, value)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, redact_text(error)))
        span.end()

    def count_attempt(self, node: str, outcome: str, rows: int | None, duration_s: float) -> None:
        if not self._counters:
            return
        labels = {"ledgerflow.node": node, "outcome": outcome}
        self._counters["attempts"].add(1, labels)
        self._counters["duration"].record(duration_s, labels)
        if rows:
            self._counters["rows"].add(rows, {"ledgerflow.node": node})

    def flush(self, timeout_ms: int = 5000) -> None:
        """Export what is buffered; a worker calls this before its task returns."""
        for provider in self._providers:
            try:
                provider.force_flush(timeout_ms)
            except Exception as err:  # noqa: BLE001 - telemetry never fails a run
                logger.warning("telemetry export failed", error=redact_text(str(err)))


def attempt_attributes(run_id: str, node: str, partition: str | None, attempt: int | None) -> dict[str, Any]:
    return {"ledgerflow.run_id": run_id, "ledgerflow.node": node, "ledgerflow.partition": partition or None,
            "ledgerflow.attempt": attempt}


class TelemetryMiddleware:
    """Wraps each attempt in a ``ledgerflow.attempt`` span under its node's span, and counts it."""

    def before(self, attempt: Attempt) -> None:
        telemetry = Telemetry.for_settings(attempt.telemetry.get(SETTINGS_KEY) or {})
        attempt.facts["_telemetry"] = telemetry
        attempt.facts["_span"] = telemetry.start_span(
            "ledgerflow.attempt", carrier=attempt.telemetry.get(TRACEPARENT_KEY),
            attributes={**attempt_attributes(attempt.run_id, attempt.node, attempt.partition, attempt.attempt),
                        "ledgerflow.kind": attempt.kind},
        )

    def after(self, attempt: Attempt, result: Any) -> Any:
        rows = getattr(getattr(result, "valid", result), "num_rows", None)
        self._finish(attempt, "completed", rows=rows)
        return result

    def on_error(self, attempt: Attempt, error: BaseException) -> None:
        outcome = "stopped" if isinstance(error, AttemptStopped) else "failed"
        self._finish(attempt, outcome, error=f"{type(error).__name__}: {error}")

    @staticmethod
    def _finish(attempt: Attempt, outcome: str, *, rows: int | None = None, error: str | None = None) -> None:
        telemetry: Telemetry | None = attempt.facts.pop("_telemetry", None)
        span = attempt.facts.pop("_span", None)
        if telemetry is None:
            return
        duration = time.perf_counter() - attempt.started
        Telemetry.end_span(span, error=error, attributes={"ledgerflow.rows": rows, "ledgerflow.outcome": outcome})
        telemetry.count_attempt(attempt.node, outcome, rows, duration)
        if telemetry.enabled:
            telemetry.flush()
