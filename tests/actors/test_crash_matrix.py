"""Crash the executor after every event of a run, resume, and compare with an uninterrupted run.

With ``max_in_flight=1`` the event order is fixed, so seq k of a crashed run
is seq k of the reference run, and no task is in flight when the executor
exits right after committing a batch.
"""

from __future__ import annotations

import pytest

import ledgerflow as lf


def _check_resumed_run(helpers, home, run_id, drive, trace, reference_trace, expected_crashes, k):
    """Assert what every crashed-and-resumed run shares with the reference run."""
    state = home.state(run_id)
    assert drive.result.status == "completed", f"k={k}: {drive.result.message}"
    assert state.status == "completed", f"k={k}"
    assert drive.crashes == expected_crashes, f"k={k}"

    executions = helpers.read_trace(trace)
    assert executions == reference_trace, f"k={k}: executions differ from the uninterrupted run"
    for node, partition in sorted(drive.completed_at_crash):
        label = f"{node}[{partition}]"
        assert executions[label] == drive.trace_at_crash[label], (
            f"k={k}: {label} completed before the crash and ran again"
        )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_crash_matrix_etl_matches_uninterrupted(etl_reference, make_home, helpers, tmp_path):
    locator = helpers.pipeline_locator("etl.py")

    for logged in etl_reference.events:
        k = logged.seq
        home = make_home(f"home-{k}")
        run_id = f"etl-crash-{k}"
        trace = str(tmp_path / f"trace-{k}.txt")

        drive = helpers.drive_to_end(home, locator, run_id=run_id, params={"trace": trace},
                                     fault_exit_after_seq=k, trace=trace)

        _check_resumed_run(helpers, home, run_id, drive, trace, etl_reference.trace, 1, k)
        rows = home.rows("amounts", order_by="order_id")
        assert rows == etl_reference.rows, f"k={k}: warehouse differs from the uninterrupted run"
        assert len({row[0] for row in rows}) == len(rows), f"k={k}: a row was loaded twice"
        assert home.load_markers(run_id) == [("warehouse", month) for month in "1234"], f"k={k}"
        assert home.types(run_id).count("RunCompleted") == 1, f"k={k}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_crash_matrix_gated_matches_uninterrupted(make_home, helpers, tmp_path):
    locator = helpers.pipeline_locator("gated.py")
    reference_home = make_home("reference")
    reference_trace_file = str(tmp_path / "trace-reference.txt")
    reference = helpers.drive_to_end(reference_home, locator, run_id="gated-reference",
                                     params={"trace": reference_trace_file})
    reference_events = reference_home.events("gated-reference")
    reference_rows = reference_home.rows("orders", order_by="order_id")
    reference_trace = helpers.read_trace(reference_trace_file)
    granted_seq = next(logged.seq for logged in reference_events if logged.type == "ApprovalGranted")
    assert reference.result.status == "completed"
    assert reference.approvals == 1
    assert len(reference_rows) == 18
    assert [logged.type for logged in reference_events].count("RouteTaken") == 1

    for logged in reference_events:
        k = logged.seq
        home = make_home(f"home-{k}")
        run_id = f"gated-crash-{k}"
        trace = str(tmp_path / f"trace-{k}.txt")

        drive = helpers.drive_to_end(home, locator, run_id=run_id, params={"trace": trace},
                                     fault_exit_after_seq=k, trace=trace)

        # The reviewer appends ApprovalGranted, not an executor, so nothing exits there.
        expected_crashes = 0 if k == granted_seq else 1
        _check_resumed_run(helpers, home, run_id, drive, trace, reference_trace, expected_crashes, k)
        assert drive.approvals == 1, f"k={k}"
        rows = home.rows("orders", order_by="order_id")
        assert rows == reference_rows, f"k={k}: warehouse differs from the uninterrupted run"
        assert len({row[0] for row in rows}) == len(rows), f"k={k}: a row was loaded twice"
        assert home.rows("quarantine") == [], f"k={k}"
        types = home.types(run_id)
        assert types.count("RouteTaken") == 1, f"k={k}: the route was decided again"
        assert types.count("ApprovalRequested") == 1, f"k={k}"
        assert types.count("ApprovalGranted") == 1, f"k={k}"


def test_worker_killed_mid_partition_retried(home, helpers, tmp_path):
    marker = tmp_path / "crashed-once"
    trace = tmp_path / "trace.txt"

    result = lf.start_run(helpers.pipeline_locator("retries.py", "crashing"), run_id="crashing",
                          params={"marker": str(marker), "trace": str(trace)}, settings=home.settings,
                          max_in_flight=1)

    assert result.status == "completed", result.message
    failures = home.of_type("crashing", "NodeAttemptFailed")
    assert len(failures) == 1
    assert failures[0].node == "extract"
    assert failures[0].partition == "1"
    assert failures[0].attempt == 1
    assert failures[0].will_retry is True
    assert failures[0].timed_out is False
    assert failures[0].error_type == "WorkerCrashedError"
    completions = {(event.partition, event.attempt) for event in home.of_type("crashing", "PartitionCompleted")
                   if event.node == "extract"}
    assert completions == {("1", 2), ("2", 1)}
    assert helpers.read_trace(trace) == {"extract[1]": 2, "extract[2]": 1}
    assert len(home.rows("crashing")) == 4


def test_executor_restarted_by_ray_continues_run(etl_reference, home, helpers, tmp_path):
    """With max_restarts=1 (the default), Ray restarts a crashed executor of a new run, which resumes it."""
    trace = tmp_path / "trace.txt"
    crash_seq = next(logged.seq for logged in etl_reference.events if logged.type == "NodeCompleted")

    result = lf.start_run(helpers.pipeline_locator("etl.py"), run_id="restarted", params={"trace": str(trace)},
                          settings=home.settings, max_in_flight=1, fault_exit_after_seq=crash_seq)

    assert result.status == "completed", result.message
    resumed = home.of_type("restarted", "RunResumed")
    assert [event.reason for event in resumed] == ["executor restarted by Ray"]
    assert len(home.of_type("restarted", "ExecutorAttached")) == 2
    assert helpers.read_trace(trace) == etl_reference.trace
    assert home.rows("amounts", order_by="order_id") == etl_reference.rows


@pytest.mark.slow
def test_crash_parallel_run_loads_once(etl_reference, make_home, helpers, tmp_path):
    """Without max_in_flight the order varies and tasks are in flight at the crash, but no row loads twice."""
    locator = helpers.pipeline_locator("etl.py")

    for k in (5, 10, 15, 20):
        home = make_home(f"home-{k}")
        run_id = f"etl-parallel-{k}"
        trace = str(tmp_path / f"trace-{k}.txt")
        params = {"trace": trace}
        crashed = False
        try:
            lf.start_run(locator, params=params, run_id=run_id, settings=home.settings,
                         fault_exit_after_seq=k, max_restarts=0)
        except lf.actors.ExecutorDiedError:
            crashed = True
        assert crashed, f"k={k}"
        home.wait_lease_free(run_id)
        completed_at_crash = home.completed_partitions(run_id)
        trace_at_crash = helpers.read_trace(trace)

        result = lf.resume_run(run_id, settings=home.settings)

        assert result.status == "completed", f"k={k}: {result.message}"
        executions = helpers.read_trace(trace)
        for node, partition in sorted(completed_at_crash):
            label = f"{node}[{partition}]"
            assert executions[label] == trace_at_crash[label], f"k={k}: {label} ran again"
        rows = home.rows("amounts", order_by="order_id")
        assert rows == etl_reference.rows, f"k={k}: warehouse differs from the uninterrupted run"
        assert home.load_markers(run_id) == [("warehouse", month) for month in "1234"], f"k={k}"
