"""OpenLineage events with the file transport: one START and one terminal event per run, resumes included."""

from __future__ import annotations

import json

import pytest
import structlog

import ledgerflow as lf
from ledgerflow.actors._lineage import LineageEmitter, lineage_run_id, lineage_settings

pytest.importorskip("openlineage.client", reason="the lineage extra is not installed")


@pytest.fixture
def lineage_file(tmp_path, monkeypatch):
    path = tmp_path / "lineage.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    return path


def _events(path, run_id):
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [event for event in events if event["run"]["runId"] == lineage_run_id(run_id)]


def test_gated_run_emits_start_and_complete(home, helpers, tmp_path, lineage_file):
    locator = helpers.pipeline_locator("gated.py")
    first = lf.start_run(locator, params={"trace": str(tmp_path / "trace.txt")}, run_id="lineage-gated",
                         settings=home.settings)
    lf.decide("lineage-gated", reviewer="bob", approve=True, settings=home.settings)
    second = lf.resume_run("lineage-gated", settings=home.settings)

    assert first.status == "waiting_for_approval"
    assert second.status == "completed"
    events = _events(lineage_file, "lineage-gated")
    assert [event["eventType"] for event in events] == ["START", "COMPLETE"]
    assert {event["job"]["name"] for event in events} == {"gated"}


def test_complete_event_lists_datasets_with_schemas(home, helpers, tmp_path, lineage_file):
    lf.start_run(helpers.pipeline_locator("etl.py"), params={"trace": str(tmp_path / "trace.txt")},
                 run_id="lineage-etl", settings=home.settings)

    complete = _events(lineage_file, "lineage-etl")[-1]
    inputs = {dataset["name"]: dataset for dataset in complete["inputs"]}
    outputs = {dataset["name"]: dataset for dataset in complete["outputs"]}
    assert sorted(inputs) == ["etl.orders", "etl.prices"]
    assert list(outputs) == ["amounts"]
    assert outputs["amounts"]["namespace"] == f"sqlite://{home.settings.warehouse}"
    fields = [field["name"] for field in outputs["amounts"]["facets"]["schema"]["fields"]]
    assert "order_id" in fields
    order_fields = [field["name"] for field in inputs["etl.orders"]["facets"]["schema"]["fields"]]
    assert "order_id" in order_fields


def test_failed_run_emits_fail(home, helpers, tmp_path, lineage_file):
    result = lf.start_run(helpers.pipeline_locator("retries.py", "broken"), params={"trace": str(tmp_path / "t")},
                          run_id="lineage-broken", settings=home.settings)

    assert result.status == "failed"
    assert [event["eventType"] for event in _events(lineage_file, "lineage-broken")] == ["START", "FAIL"]


@pytest.mark.slow
def test_crashed_run_emits_one_start_and_one_end(home, helpers, tmp_path, lineage_file):
    drive = helpers.drive_to_end(home, helpers.pipeline_locator("etl.py"), run_id="lineage-crash",
                                 params={"trace": str(tmp_path / "trace.txt")}, fault_exit_after_seq=6)

    assert drive.crashes == 1
    assert drive.result.status == "completed"
    assert [event["eventType"] for event in _events(lineage_file, "lineage-crash")] == ["START", "COMPLETE"]


def _refused_transport(monkeypatch):
    """Send lineage over HTTP to a loopback port where nothing listens, without retries."""
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "http")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__RETRY__TOTAL", "0")


def test_failing_emitter_does_not_fail_run(home, helpers, tmp_path, monkeypatch):
    _refused_transport(monkeypatch)

    result = lf.start_run(helpers.pipeline_locator("etl.py"), params={"trace": str(tmp_path / "trace.txt")},
                          run_id="lineage-failing", settings=home.settings)

    assert result.status == "completed", result.message


def test_lineage_settings_skip_credentials():
    settings = lineage_settings({"OPENLINEAGE_URL": "http://127.0.0.1:5000",
                                 "OPENLINEAGE__TRANSPORT__AUTH__API_KEY": "secret-key", "HOME": "/root"})

    assert settings == {"OPENLINEAGE_URL": "http://127.0.0.1:5000"}


def test_failing_emitter_logged(home, helpers, tmp_path, monkeypatch):
    lf.start_run(helpers.pipeline_locator("etl.py"), params={"trace": str(tmp_path / "trace.txt")},
                 run_id="lineage-logged", settings=home.settings)
    _refused_transport(monkeypatch)
    emitter = LineageEmitter({})

    with structlog.testing.capture_logs() as logs:
        emitter.emit_end(home.state("lineage-logged"))

    failures = [entry for entry in logs if entry["event"] == "lineage event not emitted"]
    assert len(failures) == 1
    assert failures[0]["event_type"] == "COMPLETE"


def test_rejected_run_emits_abort(home, helpers, tmp_path, lineage_file):
    lf.start_run(helpers.pipeline_locator("gated.py"), params={"trace": str(tmp_path / "trace.txt")},
                 run_id="lineage-rejected", settings=home.settings)

    lf.decide("lineage-rejected", reviewer="bob", approve=False, comment="wrong month", settings=home.settings)

    assert [event["eventType"] for event in _events(lineage_file, "lineage-rejected")] == ["START", "ABORT"]


def test_cancelled_run_emits_abort(home, helpers, tmp_path, lineage_file):
    lf.start_run(helpers.pipeline_locator("gated.py"), params={"trace": str(tmp_path / "trace.txt")},
                 run_id="lineage-cancelled", settings=home.settings)

    result = lf.cancel_run("lineage-cancelled", settings=home.settings)

    assert result.status == "cancelled"
    assert [event["eventType"] for event in _events(lineage_file, "lineage-cancelled")] == ["START", "ABORT"]
