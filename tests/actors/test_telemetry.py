"""OpenTelemetry spans and counters, received by a real OTLP/HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import collections
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import ledgerflow as lf
from ledgerflow.actors._telemetry import telemetry_settings

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2",
                                    reason="the otel extra is not installed")
metrics_service = pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
                                      reason="the otel extra is not installed")


class Receiver:
    """An OTLP/HTTP receiver (protobuf bodies) that keeps every span and metric name it receives."""

    def __init__(self) -> None:
        self.spans: list = []
        self.metric_names: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = trace_service.ExportTraceServiceRequest.FromString(body)
                    spans = [span for resource in request.resource_spans for scope in resource.scope_spans
                             for span in scope.spans]
                    with receiver.lock:
                        receiver.spans.extend(spans)
                    reply = trace_service.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    request = metrics_service.ExportMetricsServiceRequest.FromString(body)
                    names = {metric.name for resource in request.resource_metrics
                             for scope in resource.scope_metrics for metric in scope.metrics}
                    with receiver.lock:
                        receiver.metric_names.update(names)
                    reply = metrics_service.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def named(self, name: str) -> list:
        with self.lock:
            return [span for span in self.spans if span.name == name]


def _attributes(span) -> dict:
    values = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = value.string_value if value.HasField("string_value") else value.int_value
    return values


@pytest.fixture
def receiver(monkeypatch):
    receiver = Receiver()
    receiver.thread.start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _recorded_attempts(home, run_id) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for logged in home.events(run_id):
        if logged.type in ("PartitionCompleted", "NodeAttemptFailed"):
            counts[(logged.event.node, logged.event.partition or "", logged.event.attempt)] += 1
    return counts


def _run_and_collect(home, helpers, tmp_path, receiver, locator, run_id):
    result = lf.start_run(locator, params={"trace": str(tmp_path / "trace.txt")}, run_id=run_id,
                          settings=home.settings)
    expected = sum(_recorded_attempts(home, run_id).values())
    helpers.wait_until(lambda: len([span for span in receiver.named("ledgerflow.attempt")
                                    if _attributes(span)["ledgerflow.run_id"] == run_id]) >= expected
                       and any(_attributes(span)["ledgerflow.run_id"] == run_id
                               for span in receiver.named("ledgerflow.run")),
                       timeout_s=30, description="the run's spans to reach the receiver")
    spans = [span for span in receiver.spans if _attributes(span).get("ledgerflow.run_id") == run_id]
    return result, spans


def test_span_tree_matches_events(home, helpers, tmp_path, receiver):
    result, spans = _run_and_collect(home, helpers, tmp_path, receiver, helpers.pipeline_locator("etl.py"),
                                     "traced")

    assert result.status == "completed"
    runs = [span for span in spans if span.name == "ledgerflow.run"]
    nodes = [span for span in spans if span.name == "ledgerflow.node"]
    attempts = [span for span in spans if span.name == "ledgerflow.attempt"]
    assert len(runs) == 1
    run = runs[0]
    assert {_attributes(span)["ledgerflow.node"] for span in nodes} == {"orders", "prices", "priced", "warehouse"}
    assert len(nodes) == 4
    for span in [*nodes, *attempts]:
        assert span.trace_id == run.trace_id
    node_ids = {_attributes(span)["ledgerflow.node"]: span.span_id for span in nodes}
    for span in nodes:
        assert span.parent_span_id == run.span_id
    for span in attempts:
        assert span.parent_span_id == node_ids[_attributes(span)["ledgerflow.node"]]
    seen = collections.Counter((_attributes(span)["ledgerflow.node"], _attributes(span).get("ledgerflow.partition", ""),
                                _attributes(span)["ledgerflow.attempt"]) for span in attempts)
    assert seen == _recorded_attempts(home, "traced")


def test_failed_attempts_have_error_spans(home, helpers, tmp_path, receiver):
    result, spans = _run_and_collect(home, helpers, tmp_path, receiver,
                                     helpers.pipeline_locator("retries.py", "flaky"), "flaky-traced")

    assert result.status == "completed"
    attempts = sorted((span for span in spans if span.name == "ledgerflow.attempt"),
                      key=lambda span: _attributes(span)["ledgerflow.attempt"])
    assert [_attributes(span)["ledgerflow.attempt"] for span in attempts] == [1, 2, 3]
    # Status code 2 is STATUS_CODE_ERROR in the OTLP protocol.
    assert [span.status.code for span in attempts] == [2, 2, 0]
    assert "source unavailable on attempt 1" in attempts[0].status.message


def test_counters_exported(home, helpers, tmp_path, receiver):
    _run_and_collect(home, helpers, tmp_path, receiver, helpers.pipeline_locator("etl.py"), "counted")

    helpers.wait_until(lambda: {"ledgerflow.attempts", "ledgerflow.rows"} <= receiver.metric_names,
                       timeout_s=30, description="the counters to reach the receiver")
    assert "ledgerflow.attempt.duration" in receiver.metric_names


@pytest.mark.parametrize(("environ", "enabled"), [
    ({}, False),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_SERVICE_NAME": "etl"}, False),
])
def test_telemetry_needs_configured_exporter(environ, enabled):
    assert bool(telemetry_settings(environ)) is enabled


def test_telemetry_settings_skip_headers():
    settings = telemetry_settings({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc"})

    assert "OTEL_EXPORTER_OTLP_HEADERS" not in settings
