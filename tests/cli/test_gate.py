"""The approval gate from the command line: waiting without a terminal, deciding from another process."""

from __future__ import annotations


def _run_to_gate(cli, helpers, run_id):
    result = cli("run", helpers.pipeline_path("gated.py"), "--run-id", run_id, "--json")
    assert result.returncode == 3, str(result)
    return result


def test_gate_then_approve_from_second_process(cli, helpers):
    result = cli("run", helpers.pipeline_path("gated.py"), "--run-id", "numbers-1")

    assert result.returncode == 3, str(result)
    assert "ledgerflow approve numbers-1 --reviewer NAME" in result.stdout
    assert "decision" not in result.stdout
    summary = cli("show", "numbers-1", "--json").json()
    assert summary["status"] == "waiting_for_approval"
    assert summary["gates"]["review"]["decision"] is None

    at_gate = len(cli.logged("numbers-1"))
    resumed_at_gate = cli("resume", "numbers-1", "--json")

    assert resumed_at_gate.returncode == 3, str(resumed_at_gate)
    assert resumed_at_gate.json()["status"] == "waiting_for_approval"
    assert "ledgerflow approve numbers-1" in resumed_at_gate.json()["message"]
    assert len(cli.logged("numbers-1")) == at_gate

    approved = cli("approve", "numbers-1", "--reviewer", "bob", "--comment", "checked the sample", "--json")

    assert approved.returncode == 0, str(approved)
    payload = approved.json()
    assert payload["run_id"] == "numbers-1"
    assert payload["status"] == "completed"
    assert payload["decision"] == "approved"
    assert payload["reviewer"] == "bob"
    assert len(cli.rows("numbers")) == 35
    granted = [payload for _, kind, payload in cli.logged("numbers-1") if kind == "ApprovalGranted"]
    assert [(event["reviewer"], event["comment"]) for event in granted] == [("bob", "checked the sample")]

    again = cli("approve", "numbers-1", "--reviewer", "carol", "--json")

    assert again.returncode == 4, str(again)
    assert again.json()["run_id"] == "numbers-1"
    assert "already approved by bob" in again.json()["error"]

    completed = len(cli.logged("numbers-1"))
    resumed = cli("resume", "numbers-1")

    assert resumed.returncode == 0, str(resumed)
    assert "run numbers-1 already ended as completed" in resumed.stdout
    assert len(cli.logged("numbers-1")) == completed
    assert len(cli.rows("numbers")) == 35


def test_approve_no_wait_only_records(cli, helpers):
    _run_to_gate(cli, helpers, "numbers-1")

    recorded = cli("approve", "numbers-1", "--reviewer", "bob", "--no-wait", "--json")

    assert recorded.returncode == 0, str(recorded)
    assert recorded.json()["decision"] == "approved"
    assert cli.logged("numbers-1")[-1][1] == "ApprovalGranted"
    assert cli.rows("numbers") == []
    assert cli("show", "numbers-1", "--json").json()["status"] == "interrupted"

    resumed = cli("resume", "numbers-1", "--json")

    assert resumed.returncode == 0, str(resumed)
    assert resumed.json()["status"] == "completed"
    assert len(cli.rows("numbers")) == 35


def test_reject_ends_without_loading(cli, helpers):
    _run_to_gate(cli, helpers, "numbers-1")

    result = cli("reject", "numbers-1", "--reviewer", "bob", "--comment", "wrong factor", "--json")

    assert result.returncode == 6, str(result)
    assert result.json()["status"] == "rejected"
    assert cli("show", "numbers-1", "--json").json()["status"] == "rejected"
    assert cli.rows("numbers") == []

    rejected = len(cli.logged("numbers-1"))
    refused = cli("approve", "numbers-1", "--reviewer", "carol", "--json")
    resumed = cli("resume", "numbers-1", "--json")

    assert refused.returncode == 4, str(refused)
    assert resumed.returncode == 6, str(resumed)
    assert resumed.json()["status"] == "rejected"
    assert len(cli.logged("numbers-1")) == rejected


def test_cancel_at_gate(cli, helpers):
    _run_to_gate(cli, helpers, "numbers-1")

    result = cli("cancel", "numbers-1", "--reason", "wrong month", "--json")

    # cancel exits with the run's new status, and a cancelled run is one that ended without loading (6).
    assert result.returncode == 6, str(result)
    assert result.json()["run_id"] == "numbers-1"
    assert result.json()["status"] == "cancelled"
    assert [kind for _, kind, _ in cli.logged("numbers-1")][-2:] == ["CancelRequested", "RunCancelled"]
    assert cli("show", "numbers-1", "--json").json()["status"] == "cancelled"
    assert cli.rows("numbers") == []

    cancelled = len(cli.logged("numbers-1"))
    again = cli("cancel", "numbers-1", "--json")
    resumed = cli("resume", "numbers-1", "--json")

    assert again.returncode == 4, str(again)
    assert again.json()["status"] == "cancelled"
    assert resumed.returncode == 6, str(resumed)
    assert resumed.json()["status"] == "cancelled"
    assert len(cli.logged("numbers-1")) == cancelled
