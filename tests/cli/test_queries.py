"""Queries and no-op commands on a finished run: JSON output, exit status 0, and an unchanged log."""

from __future__ import annotations

import json
import os
import re
import subprocess


def test_show_json(finished_run):
    result = finished_run.cli("show", finished_run.run_id, "--json")

    assert result.returncode == 0, str(result)
    summary = result.json()
    assert summary["run_id"] == finished_run.run_id
    assert summary["status"] == "completed"
    assert summary["events"] == finished_run.event_count
    nodes = {node["node"]: node for node in summary["nodes"]}
    assert nodes["numbers"]["partitions_done"] == 4
    assert nodes["numbers"]["rows"] == 40
    assert nodes["checked"]["rows"] == 35
    assert nodes["warehouse"]["status"] == "completed"
    gate = summary["gates"]["review"]
    assert gate["decision"] == "approved"
    assert gate["reviewer"] == "alice"
    assert gate["comment"] == "counts match"


def test_show_text(finished_run):
    result = finished_run.cli("show", finished_run.run_id)

    assert result.returncode == 0, str(result)
    assert f"run {finished_run.run_id} (numbers): completed" in result.stdout
    assert "gate review: approved by alice (counts match)" in result.stdout


def test_runs_json(finished_run):
    result = finished_run.cli("runs", "--json")

    assert result.returncode == 0, str(result)
    listing = result.json()
    assert listing["status"] == "ok"
    rows = {row["run_id"]: row for row in listing["runs"]}
    assert rows[finished_run.run_id]["status"] == "completed"
    assert rows[finished_run.run_id]["events"] == finished_run.event_count


def test_events_json_lines(finished_run):
    events = finished_run.cli.events(finished_run.run_id)

    assert [event["seq"] for event in events] == list(range(1, finished_run.event_count + 1))
    assert all(event["run_id"] == finished_run.run_id for event in events)
    assert events[0]["type"] == "RunStarted"
    assert events[0]["status"] == "running"
    assert events[-1]["type"] == "RunCompleted"
    assert events[-1]["status"] == "completed"
    gate = next(event for event in events if event["type"] == "ApprovalRequested")
    assert gate["status"] == "waiting_for_approval"
    granted = next(event for event in events if event["type"] == "ApprovalGranted")
    assert granted["payload"]["reviewer"] == "alice"
    assert all(re.fullmatch("[0-9a-f]{64}", event["hash"]) for event in events)


def test_events_from_seq(finished_run):
    result = finished_run.cli("events", finished_run.run_id, "--from", "5", "--json")

    assert result.returncode == 0, str(result)
    seqs = [event["seq"] for event in result.json_lines()]
    assert seqs == list(range(5, finished_run.event_count + 1))


def test_events_follow_of_ended_run_exits(finished_run):
    result = finished_run.cli("events", finished_run.run_id, "--follow", "--json", timeout_s=60)

    assert result.returncode == 0, str(result)
    assert len(result.json_lines()) == finished_run.event_count


def test_replay_until(finished_run):
    early = finished_run.cli("replay", finished_run.run_id, "--until", "3", "--json")
    full = finished_run.cli("replay", finished_run.run_id, "--json")

    assert early.returncode == 0, str(early)
    assert early.json()["run_id"] == finished_run.run_id
    assert early.json()["seq"] == 3
    assert early.json()["status"] == "running"
    assert full.returncode == 0, str(full)
    assert full.json()["seq"] == finished_run.event_count
    assert full.json()["status"] == "completed"


def test_verify_json(finished_run):
    everything = finished_run.cli("verify", "--json")
    one_run = finished_run.cli("verify", finished_run.run_id, "--json")

    assert everything.returncode == 0, str(everything)
    assert everything.json()["ok"] is True
    assert everything.json()["status"] == "ok"
    assert one_run.returncode == 0, str(one_run)
    report = one_run.json()
    assert report["run_id"] == finished_run.run_id
    assert report["status"] == "ok"
    [stream] = report["streams"]
    assert stream["head_seq"] == finished_run.event_count
    assert stream["status"] == "ok"
    assert re.fullmatch("[0-9a-f]{64}", stream["head_hash"])


def test_verify_text_prints_head_hash(finished_run):
    head_hash = finished_run.cli("verify", finished_run.run_id, "--json").json()["streams"][0]["head_hash"]

    result = finished_run.cli("verify", finished_run.run_id)

    assert result.returncode == 0, str(result)
    line = next(line for line in result.stdout.splitlines() if finished_run.run_id in line)
    assert line.split() == ["ok", finished_run.run_id, str(finished_run.event_count), "events", "head", head_hash]


def test_resume_finished_changes_nothing(finished_run):
    result = finished_run.cli("resume", finished_run.run_id, "--json")

    assert result.returncode == 0, str(result)
    payload = result.json()
    assert payload["run_id"] == finished_run.run_id
    assert payload["status"] == "completed"
    assert "already ended as completed" in payload["message"]
    assert len(finished_run.cli.logged(finished_run.run_id)) == finished_run.event_count


def test_approve_finished_refused(finished_run):
    result = finished_run.cli("approve", finished_run.run_id, "--reviewer", "bob", "--json")

    assert result.returncode == 4, str(result)
    payload = result.json()
    assert payload["run_id"] == finished_run.run_id
    assert payload["status"] == "completed"
    assert "already approved by alice" in payload["error"]
    assert len(finished_run.cli.logged(finished_run.run_id)) == finished_run.event_count


def test_reject_finished_refused(finished_run):
    result = finished_run.cli("reject", finished_run.run_id, "--reviewer", "bob", "--comment", "late", "--json")

    assert result.returncode == 4, str(result)
    assert result.json()["status"] == "completed"
    assert len(finished_run.cli.logged(finished_run.run_id)) == finished_run.event_count


def test_cancel_finished_refused(finished_run):
    result = finished_run.cli("cancel", finished_run.run_id, "--json")

    assert result.returncode == 4, str(result)
    payload = result.json()
    assert payload["status"] == "completed"
    assert "nothing to cancel" in payload["error"]
    assert len(finished_run.cli.logged(finished_run.run_id)) == finished_run.event_count


def test_store_option_selects_log(finished_run, cli):
    result = cli("verify", finished_run.run_id, "--store", str(finished_run.cli.log_path), "--json")

    assert result.returncode == 0, str(result)
    assert result.json()["streams"][0]["head_seq"] == finished_run.event_count
    assert not cli.log_path.exists()


def test_home_from_environment(finished_run, helpers, tmp_path):
    environment = dict(os.environ, LEDGERFLOW_HOME=str(finished_run.cli.home))

    completed = subprocess.run([helpers.LEDGERFLOW, "show", finished_run.run_id, "--json"], cwd=tmp_path,
                               env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["status"] == "completed"
    assert not (tmp_path / ".ledgerflow").exists()
