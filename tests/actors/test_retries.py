"""Retries owned by the executor: failed attempts, exhausted attempts and timeouts."""

from __future__ import annotations

import os
import threading

import pytest

import ledgerflow as lf


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_retry_flaky_node_succeeds_third_attempt(home, helpers, tmp_path):
    trace = tmp_path / "trace.txt"

    result = lf.start_run(helpers.pipeline_locator("retries.py", "flaky"), run_id="flaky",
                          params={"trace": str(trace)}, settings=home.settings)

    assert result.status == "completed", result.message
    node_events = [logged for logged in home.events("flaky")
                   if logged.type in ("NodeAttemptFailed", "PartitionCompleted")]
    assert [logged.type for logged in node_events] == [
        "NodeAttemptFailed", "NodeAttemptFailed", "PartitionCompleted",
    ]
    first, second, completed = (logged.event for logged in node_events)
    assert (first.attempt, second.attempt, completed.attempt) == (1, 2, 3)
    assert first.error_type == "ConnectionError"
    assert first.message == "source unavailable on attempt 1"
    assert first.will_retry is True
    assert second.will_retry is True
    assert first.retry_in_s is not None
    assert second.retry_in_s > first.retry_in_s
    assert helpers.read_trace(trace) == {"unreliable[]": 3}


def test_retry_exhausted_fails_run_naming_node(home, helpers, tmp_path):
    trace = tmp_path / "trace.txt"

    result = lf.start_run(helpers.pipeline_locator("retries.py", "broken"), run_id="broken",
                          params={"trace": str(trace)}, settings=home.settings, max_in_flight=1)

    assert result.status == "failed"
    assert result.exit_code == 1
    failures = home.of_type("broken", "NodeAttemptFailed")
    assert [(event.partition, event.attempt, event.will_retry) for event in failures] == [
        ("2", 1, True), ("2", 2, False),
    ]
    run_failed = home.of_type("broken", "RunFailed")
    assert len(run_failed) == 1
    assert run_failed[0].node == "parsed"
    assert run_failed[0].partition == "2"
    assert run_failed[0].error_type == "ValueError"
    assert "order 207 has no month" in run_failed[0].message
    assert "'parsed'" in run_failed[0].message
    assert "'2'" in run_failed[0].message
    assert home.types("broken")[-1] == "RunFailed"
    assert "order 207 has no month" in result.message
    assert home.state("broken").status == "failed"


def test_retry_failed_run_resume_changes_nothing(home, helpers, tmp_path):
    trace = tmp_path / "trace.txt"
    lf.start_run(helpers.pipeline_locator("retries.py", "broken"), run_id="broken",
                 params={"trace": str(trace)}, settings=home.settings, max_in_flight=1)
    seq = home.state("broken").seq

    result = lf.resume_run("broken", settings=home.settings)

    assert result.status == "failed"
    assert result.changed is False
    assert home.state("broken").seq == seq


def test_retry_timeout_cancels_attempt(home, helpers, tmp_path):
    trace = tmp_path / "trace.txt"
    pid_file = tmp_path / "attempt.pid"

    result = lf.start_run(helpers.pipeline_locator("retries.py", "slow"), run_id="slow",
                          params={"trace": str(trace), "pid_file": str(pid_file)}, settings=home.settings)

    assert result.status == "failed", result.message
    failures = home.of_type("slow", "NodeAttemptFailed")
    assert len(failures) == 1
    assert failures[0].attempt == 1
    assert failures[0].timed_out is True
    assert failures[0].will_retry is False
    assert failures[0].error_type == "TimeoutError"
    assert "timed out after 4" in failures[0].message
    run_failed = home.of_type("slow", "RunFailed")
    assert len(run_failed) == 1
    assert run_failed[0].node == "stalled"
    assert run_failed[0].error_type == "TimeoutError"
    assert "PartitionCompleted" not in home.types("slow")
    assert pid_file.exists(), "the attempt never started, so its cancellation cannot be checked"
    # The executor cancels a timed-out task with force, which ends its worker process.
    pid = int(pid_file.read_text())
    helpers.wait_until(lambda: not _pid_alive(pid), timeout_s=30,
                       description=f"worker {pid} of the timed-out attempt to exit")


def test_retry_due_while_slots_full_runs(home, helpers, tmp_path):
    trace = tmp_path / "trace.txt"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = lf.start_run(helpers.pipeline_locator("retries.py", "queued"), run_id="queued",
                                             params={"trace": str(trace)}, settings=home.settings)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        lf.cancel_run("queued", reason="the run did not finish within 60 s", settings=home.settings)
        thread.join(timeout=60)
        pytest.fail("the run did not finish within 60 s after its retry came due")

    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].status == "completed", outcome["result"].message
    completions = [(event.partition, event.attempt) for event in home.of_type("queued", "PartitionCompleted")]
    assert completions == [("2", 1), ("1", 2)]
    assert helpers.read_trace(trace) == {"batches[1]": 2, "batches[2]": 1}
