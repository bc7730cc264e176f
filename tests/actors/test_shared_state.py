"""Threaded state: facts one node records are events that later nodes and resumes see unchanged."""

from __future__ import annotations

import pytest

import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError

SHARED_STATE = "shared_state.py"


def test_shared_state_seen_by_later_node(home, helpers, tmp_path):
    result = lf.start_run(helpers.pipeline_locator(SHARED_STATE), run_id="stateful", settings=home.settings,
                          params={"trace": str(tmp_path / "trace.txt")})

    assert result.status == "completed", result.message
    recorded = home.of_type("stateful", "StateRecorded")
    assert [(event.node, event.key) for event in recorded] == [("batch", "watermark"), ("batch", "batch_rows")]
    watermark = recorded[0].value
    assert home.state("stateful").shared == {"watermark": watermark, "batch_rows": 3}
    assert home.rows("stamped") == [("a", watermark), ("b", watermark), ("c", watermark)]


def test_shared_state_unchanged_by_resume(home, make_home, helpers, tmp_path):
    trace = tmp_path / "trace.txt"
    reference_home = make_home("reference")
    reference = lf.start_run(helpers.pipeline_locator(SHARED_STATE), run_id="reference",
                             settings=reference_home.settings, params={"trace": str(tmp_path / "reference.txt")})
    assert reference.status == "completed"
    crash_seq = next(logged.seq for logged in reference_home.events("reference")
                     if logged.type == "PartitionCompleted" and logged.event.node == "batch")

    with pytest.raises(ExecutorDiedError):
        lf.start_run(helpers.pipeline_locator(SHARED_STATE), run_id="resumed", settings=home.settings,
                     params={"trace": str(trace)}, fault_exit_after_seq=crash_seq, max_restarts=0)
    home.wait_lease_free("resumed")
    before = dict(home.state("resumed").shared)
    result = lf.resume_run("resumed", settings=home.settings)

    assert result.status == "completed", result.message
    assert before["batch_rows"] == 3
    assert home.state("resumed").shared == before
    assert len(home.of_type("resumed", "StateRecorded")) == 2
    assert helpers.read_trace(trace) == {"batch[]": 1, "stamped[]": 1}
    watermark = before["watermark"]
    assert home.rows("stamped") == [("a", watermark), ("b", watermark), ("c", watermark)]
