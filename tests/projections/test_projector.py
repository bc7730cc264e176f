"""Read models: incremental catch-up equals a rebuild; the audit account; state at any seq."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3

import pytest

import ledgerflow as lf
from ledgerflow.events import open_store, snapshot
from ledgerflow.projections import LINEAGE_QUERY, Projector, audit_run, caught_up_projector, history, projections_path

PIPELINE = str(pathlib.Path(__file__).parent / "pipelines" / "audited.py")


def _catch_up(settings: lf.Settings) -> Projector:
    async def work() -> Projector:
        store = await open_store(settings.store_url)
        try:
            return await caught_up_projector(store)
        finally:
            await store.close()

    return asyncio.run(work())


@pytest.fixture
def approved_run(settings, tmp_path):  # type: ignore[no-untyped-def]
    """A completed run with a retried partition, a route and an approval, caught up after each step."""
    params = {"marker_dir": str(tmp_path)}
    states = tmp_path / "states.jsonl"
    waiting = lf.run(PIPELINE, params=params, run_id="audited-1", settings=settings, capture_states=str(states))
    assert waiting.status == "waiting_for_approval"
    _catch_up(settings)
    lf.decide("audited-1", reviewer="alice", approve=True, comment="looks right", settings=settings)
    _catch_up(settings)
    done = lf.resume("audited-1", settings=settings)
    assert done.status == "completed"
    return settings, states


def test_projector_rebuild_equals_incremental(approved_run):
    settings, _ = approved_run
    incremental = _catch_up(settings).dump()
    rebuilt = Projector(projections_path(settings.store_url))
    rebuilt.drop()
    assert rebuilt.position() == 0
    fresh = _catch_up(settings).dump()
    assert fresh == incremental
    assert len(incremental["runs"]) == 1
    assert incremental["attempts"]


def test_projector_tables_record_run_facts(approved_run):
    settings, _ = approved_run
    projector = _catch_up(settings)
    run = projector.query("SELECT status, failed_attempts, rows_loaded FROM runs WHERE run_id = ?", ("audited-1",))[0]
    assert run["status"] == "completed"
    assert run["failed_attempts"] == 1
    assert run["rows_loaded"] == 21
    approval = projector.query("SELECT decision, reviewer, comment FROM approvals WHERE run_id = ?", ("audited-1",))[0]
    assert (approval["decision"], approval["reviewer"], approval["comment"]) == ("approved", "alice", "looks right")
    quarantined = projector.query("SELECT SUM(rows) AS rows FROM quarantine WHERE run_id = ?", ("audited-1",))[0]
    assert quarantined["rows"] == 9
    lineage = [row for row in projector.query(LINEAGE_QUERY, ("audited-1",))
               if row["node"] == "checked" and row["partition"] == "2"]
    assert [(row["input_node"], row["input_partition"]) for row in lineage] == [("numbers", "2")]


def test_audit_lists_decision_retry_and_route(approved_run):
    settings, _ = approved_run

    async def work():  # type: ignore[no-untyped-def]
        store = await open_store(settings.store_url)
        try:
            return await audit_run(store, "audited-1")
        finally:
            await store.close()

    account = asyncio.run(work())
    assert account["verification"]["ok"]
    assert account["decisions"][0]["reviewer"] == "alice"
    assert account["decisions"][0]["summary"]["inputs"]["checked"]["rows"] == 21
    assert [attempt["error_type"] for attempt in account["attempts_failed"]] == ["RuntimeError"]
    assert account["routes"][0]["condition_met"] == 0


def test_state_at_equals_executor_state_for_every_seq(approved_run):
    settings, states = approved_run
    captured = [json.loads(line) for line in states.read_text().splitlines()]
    assert captured, "the executor captured no states"
    view = history("audited-1", home=settings.home)
    for entry in captured:
        assert snapshot(view.state_at(entry["seq"])) == entry["state"], f"state differs at seq {entry['seq']}"


def test_history_frames_for_notebooks(approved_run):
    settings, _ = approved_run
    view = history("audited-1", home=settings.home)
    events = view.events()
    assert list(events["seq"]) == list(range(1, len(events) + 1))
    assert "node" in events.columns
    nodes = view.nodes()
    assert set(nodes["node"]) == {"numbers", "checked", "hold", "review", "warehouse"}
    assert "run audited-1" in view._repr_html_()


def test_projector_rebuilds_older_layout(approved_run):
    settings, _ = approved_run
    expected = _catch_up(settings).dump()
    path = projections_path(settings.store_url)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE projection_meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("DELETE FROM runs")

    rebuilt = _catch_up(settings).dump()

    assert rebuilt == expected
