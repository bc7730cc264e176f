"""Cancelling runs: a held run stops at a boundary, an unheld one is cancelled by the caller."""

from __future__ import annotations

import os
import threading

import pytest

import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_running_run_stops_at_boundary(home, helpers, tmp_path):
    started = tmp_path / "started"
    release = tmp_path / "release"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = lf.start_run(
                helpers.pipeline_locator("blocking.py"), run_id="cancelled", settings=home.settings,
                params={"started_file": str(started), "release_file": str(release)},
            )
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        helpers.wait_until(lambda: started.exists() or not thread.is_alive(),
                           description="the blocking extract to start")
        assert "error" not in outcome, outcome.get("error")

        result = lf.cancel_run("cancelled", requested_by="ops", reason="wrong month", settings=home.settings)

        assert result.status == "cancelled", result.message
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        release.touch()
        thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].status == "cancelled"
    types = home.types("cancelled")
    assert types[-2:] == ["CancelRequested", "RunCancelled"]
    assert "PartitionCompleted" not in types
    cancelled = home.of_type("cancelled", "RunCancelled")[0]
    assert cancelled.requested_by == "ops"
    assert cancelled.reason == "wrong month"
    assert home.rows("released") == []
    # The executor cancels its task in flight with force, which ends the worker process.
    pid = int(started.read_text())
    helpers.wait_until(lambda: not _pid_alive(pid), timeout_s=30, description=f"worker {pid} to exit")


def test_cancel_without_executor_records_cancelled(etl_reference, home, helpers, tmp_path):
    crash_seq = next(logged.seq for logged in etl_reference.events if logged.type == "PartitionCompleted")
    with pytest.raises(ExecutorDiedError):
        lf.start_run(helpers.pipeline_locator("etl.py"), run_id="orphan", params={"trace": str(tmp_path / "t")},
                     settings=home.settings, max_in_flight=1, fault_exit_after_seq=crash_seq, max_restarts=0)
    home.wait_lease_free("orphan")
    assert lf.actors.status_of(home.state("orphan"), home.settings.store_path) == "interrupted"

    result = lf.cancel_run("orphan", requested_by="ops", settings=home.settings)

    assert result.status == "cancelled"
    events = home.events("orphan")
    assert [logged.type for logged in events[-2:]] == ["CancelRequested", "RunCancelled"]
    assert events[-1].seq == crash_seq + 2
    assert home.state("orphan").status == "cancelled"
    resumed = lf.resume_run("orphan", settings=home.settings)
    assert resumed.status == "cancelled"
    assert resumed.changed is False
    assert home.rows("amounts") == []


def test_cancel_finished_run_refused(etl_reference):
    seq = etl_reference.home.state(etl_reference.run_id).seq

    with pytest.raises(lf.DecisionRefusedError) as caught:
        lf.cancel_run(etl_reference.run_id, settings=etl_reference.home.settings)

    assert caught.value.status == "completed"
    assert "already ended as completed" in str(caught.value)
    assert etl_reference.home.state(etl_reference.run_id).seq == seq
