"""Checkpoints are trusted only when their SHA-256 matches, and a bad one is recomputed and recorded."""

from __future__ import annotations

import os
import threading

import pytest

import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError


def _seq_of(events, event_type: str, node: str) -> int:
    return next(logged.seq for logged in events
                if logged.type == event_type and getattr(logged.event, "node", None) == node)


@pytest.mark.parametrize(("damage", "reason"), [("flip", "hash mismatch"), ("delete", "missing")])
def test_checkpoint_damaged_recomputed_on_resume(etl_reference, home, helpers, tmp_path, damage, reason):
    trace = tmp_path / "trace.txt"
    # Every orders partition and prices are checkpointed by then, and priced has not read them yet.
    crash_seq = _seq_of(etl_reference.events, "PartitionCompleted", "prices")
    with pytest.raises(ExecutorDiedError):
        lf.start_run(helpers.pipeline_locator("etl.py"), run_id="damaged", params={"trace": str(trace)},
                     settings=home.settings, max_in_flight=1, fault_exit_after_seq=crash_seq, max_restarts=0)
    home.wait_lease_free("damaged")
    manifest = home.state("damaged").nodes["orders"].partitions["2"].manifest
    if damage == "flip":
        helpers.flip_byte(manifest.uri)
    else:
        os.remove(manifest.uri)

    result = lf.resume_run("damaged", settings=home.settings, max_in_flight=1)

    assert result.status == "completed", result.message
    invalidated = home.of_type("damaged", "CheckpointInvalidated")
    assert len(invalidated) == 1
    assert invalidated[0].node == "orders"
    assert invalidated[0].partition == "2"
    assert invalidated[0].uri == manifest.uri
    assert invalidated[0].reason == reason
    assert invalidated[0].expected_sha256 == manifest.sha256
    if damage == "flip":
        assert invalidated[0].actual_sha256 not in (None, manifest.sha256)
    else:
        assert invalidated[0].actual_sha256 is None
    executions = helpers.read_trace(trace)
    assert executions["orders[2]"] == 2
    assert executions["orders[1]"] == 1
    assert executions["prices[]"] == 1
    recomputed = home.state("damaged").nodes["orders"].partitions["2"]
    assert recomputed.manifest.uri != manifest.uri
    assert recomputed.attempts == 2
    assert home.rows("amounts", order_by="order_id") == etl_reference.rows


def test_checkpoint_missing_mid_run_recomputed(home, helpers, tmp_path):
    """A checkpoint that disappears after the resume's check is found by the task that reads it."""
    started = tmp_path / "started"
    release = tmp_path / "release"
    trace = tmp_path / "trace.txt"
    params = {"trace": str(trace), "started_file": str(started), "release_file": str(release)}
    locator = helpers.pipeline_locator("midrun.py")
    # Seq 6 is NodeCompleted(source): RunStarted, ExecutorAttached, NodeStarted and two completions come first.
    crash_seq = 6
    with pytest.raises(ExecutorDiedError):
        lf.start_run(locator, run_id="midrun", params=params, settings=home.settings, max_in_flight=1,
                     fault_exit_after_seq=crash_seq, max_restarts=0)
    home.wait_lease_free("midrun")
    assert home.events("midrun")[-1].type == "NodeCompleted"
    manifest = home.state("midrun").nodes["source"].partitions["2"].manifest
    outcome: dict[str, object] = {}

    def resume() -> None:
        try:
            outcome["result"] = lf.resume_run("midrun", settings=home.settings)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    try:
        # held[2] has read its input by then. Summary reads every source partition after held[1] returns.
        helpers.wait_until(
            lambda: ("held", "2") in home.completed_partitions("midrun") and started.exists(),
            description="held[2] to complete while held[1] waits",
        )
        os.remove(manifest.uri)
    finally:
        release.touch()
        thread.join(timeout=120)

    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].status == "completed", outcome["result"].message
    invalidated = home.of_type("midrun", "CheckpointInvalidated")
    assert [(event.node, event.partition, event.reason) for event in invalidated] == [("source", "2", "missing")]
    assert "NodeAttemptFailed" not in home.types("midrun")
    assert helpers.read_trace(trace)["source[2]"] == 2
    assert home.rows("summary") == [(6, 10 + 11 + 12 + 20 + 21 + 22)]
