"""Conditional routes and the approval gate of ``pipelines/gated.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import ray

import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError

GATED = "gated.py"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _actors_of(run_id: str) -> list[str]:
    return [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(f"{run_id}@")]


@dataclass
class Quarantined:
    home: Any
    run_id: str
    trace: str
    result: lf.RunResult


@pytest.fixture(scope="module")
def quarantined_run(make_shared_home, helpers, tmp_path_factory) -> Quarantined:
    """A run of the gated pipeline whose validation rejects half of every month."""
    home = make_shared_home("quarantined")
    trace = str(tmp_path_factory.mktemp("quarantined-trace") / "trace.txt")
    result = lf.start_run(helpers.pipeline_locator(GATED), run_id="quarantined", settings=home.settings,
                          params={"trace": trace, "reject_every": 2}, max_in_flight=1)
    return Quarantined(home, "quarantined", trace, result)


def test_route_quarantine_ends_run_quarantined(quarantined_run):
    home, run_id = quarantined_run.home, quarantined_run.run_id

    assert quarantined_run.result.status == "quarantined"
    assert quarantined_run.result.exit_code == 6
    route = home.of_type(run_id, "RouteTaken")
    assert len(route) == 1
    assert route[0].source == "checked"
    assert route[0].condition_met is True
    assert route[0].taken == ("quarantined",)
    assert set(route[0].skipped) == {"review", "warehouse"}
    assert "50.0%" in route[0].reason
    final = home.of_type(run_id, "RunQuarantined")
    assert len(final) == 1
    assert final[0].source == "checked"
    assert home.types(run_id)[-1] == "RunQuarantined"


def test_route_quarantine_never_runs_load(quarantined_run, helpers):
    home, run_id = quarantined_run.home, quarantined_run.run_id
    executions = helpers.read_trace(quarantined_run.trace)
    state = home.state(run_id)

    assert "warehouse[]" not in executions
    assert executions["quarantined[]"] == 1
    assert state.nodes["warehouse"].status == "skipped"
    assert state.nodes["review"].status == "skipped"
    assert "ApprovalRequested" not in home.types(run_id)
    assert home.rows("orders") == []
    assert [row[0] for row in home.rows("quarantine")] == [100, 102, 104, 106, 108, 200, 202, 204, 206, 208]


def test_route_not_decided_again_on_resume(quarantined_run, home, helpers, tmp_path):
    route_seq = next(logged.seq for logged in quarantined_run.home.events(quarantined_run.run_id)
                     if logged.type == "RouteTaken")
    trace = str(tmp_path / "trace.txt")

    drive = helpers.drive_to_end(home, helpers.pipeline_locator(GATED), run_id="requarantined",
                                 params={"trace": trace, "reject_every": 2}, fault_exit_after_seq=route_seq,
                                 trace=trace)

    assert drive.crashes == 1
    assert drive.result.status == "quarantined"
    types = home.types("requarantined")
    assert types.count("RouteTaken") == 1
    assert types.index("RunResumed") > types.index("RouteTaken")
    assert helpers.read_trace(trace) == helpers.read_trace(quarantined_run.trace)


@pytest.fixture
def waiting_run(home, helpers, tmp_path):
    """Start the gated pipeline, submitted by alice, and return its id once it waits at the gate."""
    trace = str(tmp_path / "trace.txt")
    result = lf.start_run(helpers.pipeline_locator(GATED), run_id="gated", settings=home.settings,
                          params={"trace": trace}, submitter="alice")
    assert result.status == "waiting_for_approval", result.message
    return "gated"


def test_gate_waits_without_executor(home, helpers, waiting_run):
    request = home.of_type(waiting_run, "ApprovalRequested")[0]
    executor = home.of_type(waiting_run, "ExecutorAttached")[0]

    assert home.state(waiting_run).status == "waiting_for_approval"
    assert lf.actors.lease_is_free(home.settings.store_path, waiting_run)
    helpers.wait_until(lambda: not _actors_of(waiting_run), timeout_s=30, description="the run actor to be gone")
    helpers.wait_until(lambda: not _pid_alive(executor.pid), timeout_s=30,
                       description=f"executor process {executor.pid} to exit")
    assert request.gate == "review"
    assert request.reviewers == ("alice", "bob")
    assert request.four_eyes is True
    assert request.submitter == "alice"
    assert sorted(request.checkpoints) == ["checked[1]", "checked[1].rejected", "checked[2]",
                                           "checked[2].rejected"]
    assert request.summary["inputs"]["checked"]["rows"] == 18
    assert request.summary["inputs"]["checked"]["validation"]["rejected"] == 2
    assert request.sample is not None
    assert os.path.exists(request.sample.uri)
    assert home.rows("orders") == []


def test_gate_decision_refusals_leave_gate_open(home, waiting_run):
    with pytest.raises(lf.DecisionRefusedError) as not_allowed:
        lf.decide(waiting_run, reviewer="carol", approve=True, settings=home.settings)
    with pytest.raises(lf.DecisionRefusedError) as submitter:
        lf.decide(waiting_run, reviewer="alice", approve=True, settings=home.settings)

    assert "'carol'" in str(not_allowed.value)
    assert "alice, bob" in str(not_allowed.value)
    assert "four eyes" in str(submitter.value)
    assert "'alice'" in str(submitter.value)
    types = home.types(waiting_run)
    assert "ApprovalGranted" not in types
    assert "ApprovalRejected" not in types
    assert home.state(waiting_run).status == "waiting_for_approval"


def test_gate_decision_from_other_process_continues(home, waiting_run):
    script = textwrap.dedent(f"""
        import ledgerflow as lf
        result = lf.decide({waiting_run!r}, reviewer="bob", approve=True, comment="totals match",
                           settings=lf.Settings.resolve(home={home.settings.home!r}))
        print(result.status)
    """)
    decided = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert decided.returncode == 0, decided.stderr
    assert decided.stdout.strip() == "running"

    with pytest.raises(lf.DecisionRefusedError) as duplicate:
        lf.decide(waiting_run, reviewer="alice", approve=False, comment="too late", settings=home.settings)
    result = lf.resume_run(waiting_run, settings=home.settings)

    assert "already approved by bob" in str(duplicate.value)
    assert result.status == "completed", result.message
    granted = home.of_type(waiting_run, "ApprovalGranted")
    assert len(granted) == 1
    assert granted[0].reviewer == "bob"
    assert granted[0].comment == "totals match"
    assert "ApprovalRejected" not in home.types(waiting_run)
    assert len(home.rows("orders")) == 18
    with pytest.raises(lf.DecisionRefusedError):
        lf.decide(waiting_run, reviewer="bob", approve=True, settings=home.settings)


def test_gate_reject_loads_nothing(home, helpers, waiting_run, tmp_path):
    result = lf.decide(waiting_run, reviewer="bob", approve=False, comment="totals are off",
                       settings=home.settings)
    resumed = lf.resume_run(waiting_run, settings=home.settings)

    assert result.status == "rejected"
    assert resumed.status == "rejected"
    assert resumed.changed is False
    assert home.state(waiting_run).status == "rejected"
    rejected = home.of_type(waiting_run, "ApprovalRejected")
    assert len(rejected) == 1
    assert rejected[0].reviewer == "bob"
    assert rejected[0].comment == "totals are off"
    assert home.types(waiting_run)[-1] == "ApprovalRejected"
    assert home.rows("orders") == []
    assert "warehouse[]" not in helpers.read_trace(tmp_path / "trace.txt")


def test_gate_reopens_when_input_hash_changes(home, helpers, tmp_path):
    trace = str(tmp_path / "trace.txt")
    waiting = lf.start_run(helpers.pipeline_locator(GATED), run_id="noisy", settings=home.settings,
                           params={"trace": trace, "noisy": True}, submitter="alice")
    assert waiting.status == "waiting_for_approval"
    granted = lf.decide("noisy", reviewer="bob", approve=True, settings=home.settings)
    # The resumed executor exits right after recording that it attached, before the load runs.
    with pytest.raises(ExecutorDiedError):
        lf.resume_run("noisy", settings=home.settings, fault_exit_after_seq=granted.seq + 1, max_restarts=0)
    home.wait_lease_free("noisy")
    bound = home.state("noisy").nodes["checked"].partitions["1"].manifest
    helpers.flip_byte(bound.uri)

    reopened = lf.resume_run("noisy", settings=home.settings)

    assert reopened.status == "waiting_for_approval", reopened.message
    invalidated = home.of_type("noisy", "CheckpointInvalidated")
    assert [(event.node, event.partition) for event in invalidated] == [("checked", "1")]
    first, second = home.of_type("noisy", "ApprovalRequested")
    recomputed = home.state("noisy").nodes["checked"].partitions["1"].manifest
    assert sorted(second.checkpoints) == sorted(first.checkpoints)
    assert second.checkpoints["checked[1]"] == recomputed.sha256
    assert second.checkpoints["checked[1]"] != first.checkpoints["checked[1]"]
    assert second.checkpoints["checked[2]"] == first.checkpoints["checked[2]"]
    assert home.rows("orders") == []
    assert helpers.read_trace(trace)["checked[1]"] == 2

    lf.decide("noisy", reviewer="bob", approve=True, settings=home.settings)
    result = lf.resume_run("noisy", settings=home.settings)

    assert result.status == "completed", result.message
    assert len(home.of_type("noisy", "ApprovalGranted")) == 2
    assert home.types("noisy").count("RouteTaken") == 1
    assert len(home.rows("orders")) == 18


def test_gate_concurrent_decisions_one_recorded(home, helpers, tmp_path):
    waiting = lf.start_run(helpers.pipeline_locator(GATED), run_id="contested", settings=home.settings,
                           params={"trace": str(tmp_path / "trace.txt")}, submitter="dave")
    assert waiting.status == "waiting_for_approval"
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def decide(reviewer: str, approve: bool) -> None:
        barrier.wait(timeout=30)
        try:
            outcomes[reviewer] = lf.decide("contested", reviewer=reviewer, approve=approve, settings=home.settings)
        except lf.DecisionRefusedError as err:
            outcomes[reviewer] = err

    threads = [threading.Thread(target=decide, args=("alice", True)),
               threading.Thread(target=decide, args=("bob", False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    refused = [reviewer for reviewer, outcome in outcomes.items() if isinstance(outcome, lf.DecisionRefusedError)]
    assert len(outcomes) == 2
    assert len(refused) == 1
    types = home.types("contested")
    assert types.count("ApprovalGranted") + types.count("ApprovalRejected") == 1
    winner = "bob" if refused == ["alice"] else "alice"
    assert home.state("contested").gates["review"].reviewer == winner


def test_gate_cancel_while_waiting_closes_gate(home, waiting_run):
    result = lf.cancel_run(waiting_run, requested_by="ops", settings=home.settings)

    assert result.status == "cancelled"
    assert home.types(waiting_run)[-2:] == ["CancelRequested", "RunCancelled"]
    with pytest.raises(lf.DecisionRefusedError):
        lf.decide(waiting_run, reviewer="bob", approve=True, settings=home.settings)
    resumed = lf.resume_run(waiting_run, settings=home.settings)
    assert resumed.status == "cancelled"
    assert resumed.changed is False
    assert home.rows("orders") == []
