"""The command line on a PostgreSQL log: a gated run to the end, the queries on it, and store errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

pytestmark = pytest.mark.postgres


@pytest.mark.slow
def test_gated_run_completes_on_postgres(cli, helpers, postgres_store_url):
    store = postgres_store_url()
    run_id = "numbers-pg"

    started = cli("run", helpers.pipeline_path("gated.py"), "--run-id", run_id, "--store", store, "--json")
    approved = cli("approve", run_id, "--reviewer", "alice", "--comment", "counts match", "--store", store, "--json")
    verified = cli("verify", "--store", store, "--json")
    listed = cli("runs", "--store", store, "--json")
    shown = cli("show", run_id, "--store", store, "--json")
    events = cli("events", run_id, "--store", store, "--json")

    assert started.returncode == 3, str(started)
    assert started.json()["status"] == "waiting_for_approval"
    assert approved.returncode == 0, str(approved)
    assert approved.json()["status"] == "completed"
    assert verified.returncode == 0, str(verified)
    assert verified.json()["ok"] is True
    assert verified.json()["log"] == store
    assert [(stream["run_id"], stream["status"]) for stream in verified.json()["streams"]] == [(run_id, "ok")]
    assert listed.returncode == 0, str(listed)
    assert [(run["run_id"], run["status"]) for run in listed.json()["runs"]] == [(run_id, "completed")]
    assert shown.returncode == 0, str(shown)
    assert shown.json()["status"] == "completed"
    assert shown.json()["gates"]["review"]["reviewer"] == "alice"
    assert events.returncode == 0, str(events)
    lines = events.json_lines()
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["type"] == "RunCompleted"
    assert len(cli.rows("numbers")) == 35
    assert not cli.log_path.exists()
    assert len(os.listdir(cli.home / "projections")) == 1


def test_store_environment_variable(cli, postgres_store_url):
    store = postgres_store_url()
    environment = {**os.environ, "LEDGERFLOW_STORE": store}

    completed = subprocess.run(cli.command("runs", "--json"), capture_output=True, text=True, env=environment,
                               timeout=120)

    assert completed.returncode == 0, completed.stderr
    assert '"runs": []' in completed.stdout


def test_unreachable_server_named(cli):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = cli("show", "run-1", "--store", f"postgresql://postgres@127.0.0.1:{port}/test")

    assert result.returncode == 1, str(result)
    assert f"127.0.0.1:{port}" in result.stderr
    assert "start the server" in result.stderr


def test_invalid_schema_exits_2(cli):
    result = cli("runs", "--store", "postgresql://postgres:s3cret@127.0.0.1/test?schema=Bad-Name")

    assert result.returncode == 2, str(result)
    assert "invalid schema 'Bad-Name'" in result.stderr
    assert "s3cret" not in result.stderr


def test_not_a_log_exits_2(cli, postgres_server):
    # information_schema exists in every database and contains views, but no meta table.
    result = cli("verify", "--store", f"{postgres_server}?schema=information_schema")

    assert result.returncode == 2, str(result)
    assert "not a ledgerflow log" in result.stderr


@pytest.mark.slow
def test_follow_interrupt_resume_on_postgres(cli, helpers, blocking, postgres_store_url):
    store = postgres_store_url()
    running = cli.start("run", helpers.pipeline_path("blocking.py"), *blocking.params(), "--run-id", "paused",
                        "--store", store)
    blocking.wait_started(running)
    held = cli("resume", "paused", "--store", store, "--json")
    follow = subprocess.Popen(cli.command("events", "paused", "--follow", "--json", "--store", store),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = helpers.LineReader(follow.stdout.fileno())
        seen = []
        while True:
            line = reader.readline(timeout_s=60)
            if line is None:
                break
            seen.append(json.loads(line))
            # The node is still blocked, so RunInterrupted reaches --follow live.
            if seen[-1]["type"] == "NodeStarted":
                running.send_signal(signal.SIGINT)
        follow.wait(timeout=30)
        follow_errors = follow.stderr.read().decode("utf-8", errors="replace")
    finally:
        if follow.poll() is None:
            follow.kill()
        follow.wait(timeout=30)
        follow.stdout.close()
        follow.stderr.close()
    interrupted = running.wait()
    shown = cli("show", "paused", "--store", store, "--json")
    blocking.release_node()
    resumed = cli("resume", "paused", "--store", store, "--json")

    assert held.returncode == 7, str(held)
    assert "held by another executor" in held.json()["error"]
    assert follow.returncode == 0, follow_errors
    assert [event["seq"] for event in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["type"] == "RunInterrupted"
    assert interrupted.returncode == 130, str(interrupted)
    assert shown.json()["status"] == "interrupted"
    assert resumed.returncode == 0, str(resumed)
    assert resumed.json()["status"] == "completed"
    assert cli.rows("released") == [(1,), (2,), (3,)]
