"""Runs on a cluster of several Ray nodes: tasks spread out, and a lost worker node costs only retries."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytestmark = pytest.mark.slow


def _started(signals):  # type: ignore[no-untyped-def]
    """Return (partition, node id) of every partition attempt that has begun."""
    pairs = []
    for path in signals.glob("started-*"):
        _, partition, node_id = path.name.split("-", 2)
        pairs.append((int(partition), node_id))
    return pairs


def _loaded(command):  # type: ignore[no-untyped-def]
    with sqlite3.connect(command.home / "warehouse.db") as conn:
        return conn.execute("SELECT part, value, node_id FROM placed ORDER BY part, value").fetchall()


def _events(command, run_id):  # type: ignore[no-untyped-def]
    result = command("events", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_tasks_spread_over_nodes(command, local_cluster, poll, spread_pipeline, tmp_path):
    signals = tmp_path / "signals"
    signals.mkdir()
    run = command.start("run", spread_pipeline, "--run-id", "spread-1", "--param", f"signal_dir={signals}",
                        "--param", "block=true", "--json")

    nodes = poll(lambda: len({node for _, node in _started(signals)}) >= 3 and _started(signals),
                 description="partitions running on all three nodes")
    (signals / "release").touch()
    stdout, stderr = run.communicate(timeout=240)

    assert run.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "completed"
    assert len({node for _, node in nodes}) == 3
    rows = _loaded(command)
    assert len(rows) == 30
    assert len({node for _, _, node in rows}) >= 2


def test_worker_node_lost_mid_run(command, local_cluster, poll, spread_pipeline, tmp_path):
    local_cluster.add_worker()
    signals = tmp_path / "signals"
    signals.mkdir()
    run = command.start("run", spread_pipeline, "--run-id", "lost-1", "--param", f"signal_dir={signals}",
                        "--param", "block=true", "--json")
    worker_ids = {worker.node_id for worker in local_cluster.workers}

    victim_id = poll(lambda: next((node for _, node in _started(signals) if node in worker_ids), None),
                     description="a partition running on a worker node")
    lost = {partition for partition, node in _started(signals) if node == victim_id}
    local_cluster.kill(local_cluster.node_by_id(victim_id))
    poll(lambda: {int(event["payload"]["partition"]) for event in _events(command, "lost-1")
                  if event["type"] == "NodeAttemptFailed"} >= lost,
         description="failed attempts recorded for the partitions on the lost node")
    (signals / "release").touch()
    stdout, stderr = run.communicate(timeout=240)

    assert run.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "completed"
    rows = _loaded(command)
    assert len(rows) == 30
    assert len(set(rows)) == 30
    assert victim_id not in {node for _, _, node in rows}
    failed = [event for event in _events(command, "lost-1") if event["type"] == "NodeAttemptFailed"]
    assert {int(event["payload"]["partition"]) for event in failed} >= lost
    assert all(event["payload"]["will_retry"] for event in failed)
