"""Runs on a cluster of several Ray nodes: tasks spread out, and a lost worker node costs only retries."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

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
    """Return the run's events as ``events --json`` prints them; none before the run is recorded."""
    result = command("events", run_id, "--json")
    if result.returncode == 2 and ("not found" in result.stderr or "no event log" in result.stderr):
        return []
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


#: A custom resource that only some worker nodes have. Executors require it, so a test can tell where they run.
EXECUTOR_RESOURCE = "ledgerflow-test-executor"


def test_executor_node_lost_run_continues(command, local_cluster, poll, spread_pipeline, postgres_store_url,
                                          tmp_path):
    command.store = postgres_store_url("cluster")
    command.extra_env["LEDGERFLOW_EXECUTOR_RESOURCES"] = json.dumps({EXECUTOR_RESOURCE: 0.01})
    host = local_cluster.add_worker(**{EXECUTOR_RESOURCE: 1})
    signals = tmp_path / "signals"
    signals.mkdir()
    run = command.start("run", spread_pipeline, "--run-id", "moved-1", "--param", f"signal_dir={signals}",
                        "--param", "block=true", "--json")

    attached = poll(lambda: [event for event in _events(command, "moved-1") if event["type"] == "ExecutorAttached"],
                    description="the executor attached")
    poll(lambda: _started(signals), description="a partition running")
    assert attached[0]["payload"]["ray_node_id"] == host.node_id
    local_cluster.kill(host)
    replacement = local_cluster.add_worker(**{EXECUTOR_RESOURCE: 1})
    poll(lambda: len([event for event in _events(command, "moved-1") if event["type"] == "ExecutorAttached"]) >= 2,
         description="the executor restarting on the new node")
    (signals / "release").touch()
    stdout, stderr = run.communicate(timeout=240)

    assert run.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "completed"
    nodes = [event["payload"]["ray_node_id"] for event in _events(command, "moved-1")
             if event["type"] == "ExecutorAttached"]
    assert nodes[-1] == replacement.node_id
    rows = _loaded(command)
    assert len(rows) == 30
    assert len(set(rows)) == 30
    verified = command("verify", "moved-1", "--json")
    assert verified.returncode == 0, verified.stderr


def test_concurrent_runs_do_not_interfere(command, local_cluster, many_driver, postgres_store_url):
    command.store = postgres_store_url("many")
    runs = 20

    driver = subprocess.run(
        [sys.executable, many_driver, "--store", command.store, "--home", str(command.home),
         "--checkpoints", command.checkpoints, "--runs", str(runs)],
        env=command.env(), capture_output=True, text=True, timeout=600,
    )

    assert driver.returncode == 0, driver.stdout + driver.stderr[-3000:]
    results = [json.loads(line) for line in driver.stdout.splitlines() if line.startswith("{")]
    assert sorted(item["run_id"] for item in results) == sorted(f"many-{number}" for number in range(runs))
    verified = command("verify", "--json")
    assert verified.returncode == 0, verified.stderr
    streams = {item["run_id"]: item for item in json.loads(verified.stdout)["streams"]}
    for item in results:
        assert streams[item["run_id"]]["status"] == "ok"
        assert streams[item["run_id"]]["head_seq"] == item["seq"]
        types = [event["type"] for event in _events(command, item["run_id"])]
        assert types.count("PartitionCompleted") == 4
        assert types.count("RunCompleted") == 1
    with sqlite3.connect(command.home / "warehouse.db") as conn:
        rows = conn.execute("SELECT number, part, value FROM rows").fetchall()
    assert len(rows) == runs * 12
    assert len(set(rows)) == runs * 12


def test_local_checkpoints_refused_on_cluster(command, spread_pipeline, tmp_path):
    command.checkpoints = ""

    result = command("run", spread_pipeline, "--param", f"signal_dir={tmp_path}", "--json")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "nodes but checkpoints are in the local directory" in result.stdout + result.stderr
    assert "pass --checkpoints with a URI every node can reach" in result.stdout + result.stderr


def test_checkpoints_on_filesystem_uri(command, spread_pipeline, tmp_path):
    shared = tmp_path / "shared"
    command.checkpoints = f"file://{shared}"

    result = command("run", spread_pipeline, "--run-id", "uri-1", "--param", f"signal_dir={tmp_path}", "--json")
    verified = command("verify", "uri-1", "--json")

    assert result.returncode == 0, result.stderr
    assert list((shared / "uri-1").rglob("*.arrow"))
    assert verified.returncode == 0, verified.stderr
    statuses = {item["status"] for item in json.loads(verified.stdout)["checkpoints"]}
    assert statuses == {"ok"}
