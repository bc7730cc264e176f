"""Retention: `gc` removes checkpoints of finished runs only and records it; `verify` reports removed files apart from lost ones."""

from __future__ import annotations

import datetime as dt

import pytest

import ledgerflow as lf
import ledgerflow.actors


@pytest.fixture
def two_runs(cli, helpers):  # type: ignore[no-untyped-def]
    """A completed run and a run waiting at its gate, in one home."""
    started = cli("run", helpers.pipeline_path("gated.py"), "--run-id", "done-1", "--json")
    assert started.returncode == 3, str(started)
    approved = cli("approve", "done-1", "--reviewer", "alice", "--json")
    assert approved.returncode == 0, str(approved)
    waiting = cli("run", helpers.pipeline_path("gated.py"), "--run-id", "open-1", "--json")
    assert waiting.returncode == 3, str(waiting)
    return cli


def _files(cli, run_id):  # type: ignore[no-untyped-def]
    directory = cli.home / "checkpoints" / run_id
    return sorted(path for path in directory.rglob("*") if path.is_file()) if directory.exists() else []


def test_gc_removes_finished_run_only(two_runs):
    cli = two_runs
    events_before = len(cli.logged("done-1"))
    open_files = _files(cli, "open-1")

    result = cli("gc", "--older-than", "0", "--json")

    assert result.returncode == 0, str(result)
    runs = {item["run_id"]: item for item in result.json()["runs"]}
    assert runs["done-1"]["action"] == "removed"
    assert runs["done-1"]["files"] > 0
    assert runs["open-1"]["action"] == "kept"
    assert _files(cli, "done-1") == []
    assert _files(cli, "open-1") == open_files
    logged = cli.logged("done-1")
    assert len(logged) == events_before + 1
    seq, event_type, payload = logged[-1]
    assert event_type == "CheckpointsRemoved"
    assert payload["uris"]
    assert runs["done-1"]["seq"] == seq

    # A second pass finds nothing left and records nothing.
    second = cli("gc", "--older-than", "0", "--json")

    assert second.returncode == 0, str(second)
    again = {item["run_id"]: item for item in second.json()["runs"]}
    assert again["done-1"]["reason"] == "no checkpoints left"
    assert len(cli.logged("done-1")) == events_before + 1

    # verify and resume report the files as removed on purpose.
    removed = cli("verify", "done-1", "--json")
    resumed = cli("resume", "done-1")

    assert removed.returncode == 0, str(removed)
    assert {item["status"] for item in removed.json()["checkpoints"]} == {"removed"}
    assert resumed.returncode == 0, str(resumed)
    assert "retention removed its checkpoints" in resumed.stdout + resumed.stderr


def test_gc_policy_and_dry_run_keep_files(two_runs):
    cli = two_runs
    files = _files(cli, "done-1")
    events_before = len(cli.logged("done-1"))

    within = cli("gc", "--json")
    dry = cli("gc", "--older-than", "0", "--dry-run")

    assert within.returncode == 0, str(within)
    runs = {item["run_id"]: item for item in within.json()["runs"]}
    assert runs["done-1"]["action"] == "kept"
    assert "within 30 days" in runs["done-1"]["reason"]
    assert dry.returncode == 0, str(dry)
    assert "would free" in dry.stdout
    assert _files(cli, "done-1") == files
    assert len(cli.logged("done-1")) == events_before

    # Files lost or changed without a recorded removal fail verification.
    arrows = [path for path in _files(cli, "open-1") if path.suffix == ".arrow"]
    changed, lost = arrows[0], arrows[1]
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    lost.unlink()

    result = cli("verify", "open-1", "--json")

    assert result.returncode == 1, str(result)
    report = result.json()
    assert report["status"] == "ok"
    by_uri = {item["uri"]: item for item in report["checkpoints"]}
    assert by_uri[str(changed)]["status"] == "corrupt"
    assert by_uri[str(lost)]["status"] == "missing"


def test_gc_rejects_negative_policy(cli):
    result = cli("gc", "--older-than", "-1")

    assert result.returncode == 2, str(result)
    assert "-1" in result.stderr


def test_gc_keeps_recent_export(two_runs, tmp_path):
    cli = two_runs
    exported = cli("export", "done-1", str(tmp_path / "done-1.jsonl"))
    marker_written = (cli.home / "checkpoints" / "done-1" / "_exported.json").exists()
    settings = lf.Settings.resolve(home=str(cli.home))
    now = dt.datetime.now(dt.timezone.utc)
    # As if the run were exported again a day and a half from now.
    lf.actors.record_export(lf.load_state("done-1", settings=settings), now + dt.timedelta(days=1.5))

    kept = {item.run_id: item for item in lf.actors.collect_garbage(
        older_than_days=1, now=now + dt.timedelta(days=2), settings=settings)}
    removed = {item.run_id: item for item in lf.actors.collect_garbage(
        older_than_days=1, now=now + dt.timedelta(days=3), settings=settings)}

    assert exported.returncode == 0, str(exported)
    assert marker_written
    assert kept["done-1"].action == "kept"
    assert kept["done-1"].reason.startswith("exported ")
    assert removed["done-1"].action == "removed"
