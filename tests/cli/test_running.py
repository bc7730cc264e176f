"""Commands against a run that another process is executing: lease, Ctrl-C, cancel and --follow.

The runs use ``pipelines/blocking.py``, whose first node waits for a release
file, so the run is reliably in flight while the test acts on it.
"""

from __future__ import annotations

import json
import signal
import subprocess


def test_resume_while_held_exits_7(cli, helpers, blocking):
    running = cli.start("run", helpers.pipeline_path("blocking.py"), *blocking.params(), "--run-id", "held",
                        "--json")
    blocking.wait_started(running)

    result = cli("resume", "held", "--json")

    assert result.returncode == 7, str(result)
    payload = result.json()
    assert payload["run_id"] == "held"
    assert "held by another executor" in payload["error"]
    attached = [event for _, kind, event in cli.logged("held") if kind == "ExecutorAttached"]
    assert len(attached) == 1
    assert f"pid {attached[0]['pid']}" in payload["error"]

    blocking.release_node()
    finished = running.wait()

    assert finished.returncode == 0, str(finished)
    assert finished.json()["status"] == "completed"
    assert cli.rows("released") == [(1,), (2,), (3,)]


def test_ctrl_c_interrupts_run(cli, helpers, blocking):
    running = cli.start("run", helpers.pipeline_path("blocking.py"), *blocking.params(), "--run-id", "stopped")
    blocking.wait_started(running)

    running.send_signal(signal.SIGINT)
    interrupted = running.wait()

    assert interrupted.returncode == 130, str(interrupted)
    assert "ledgerflow resume stopped" in interrupted.stdout + interrupted.stderr
    kinds = [kind for _, kind, _ in cli.logged("stopped")]
    assert kinds[-1] == "RunInterrupted"
    assert cli("show", "stopped", "--json").json()["status"] == "interrupted"

    blocking.release_node()
    resumed = cli("resume", "stopped", "--json")

    assert resumed.returncode == 0, str(resumed)
    assert resumed.json()["status"] == "completed"
    assert cli.rows("released") == [(1,), (2,), (3,)]
    kinds = [kind for _, kind, _ in cli.logged("stopped")]
    assert kinds.count("RunResumed") == 1
    assert kinds[-1] == "RunCompleted"


def test_cancel_running_run(cli, helpers, blocking):
    running = cli.start("run", helpers.pipeline_path("blocking.py"), *blocking.params(), "--run-id", "doomed",
                        "--json")
    blocking.wait_started(running)

    result = cli("cancel", "doomed", "--reason", "not needed", "--json")

    assert result.returncode == 6, str(result)
    assert result.json()["status"] == "cancelled"
    finished = running.wait()
    assert finished.returncode == 6, str(finished)
    assert finished.json()["status"] == "cancelled"
    kinds = [kind for _, kind, _ in cli.logged("doomed")]
    assert kinds[-2:] == ["CancelRequested", "RunCancelled"]
    assert cli.rows("released") == []


def test_events_follow_tails_run(cli, helpers, blocking):
    running = cli.start("run", helpers.pipeline_path("blocking.py", "gated"), *blocking.params(),
                        "--run-id", "tailed", "--json")
    blocking.wait_started(running)
    follow = subprocess.Popen(cli.command("events", "tailed", "--follow", "--json"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = helpers.LineReader(follow.stdout.fileno())
        seen = []
        while True:
            line = reader.readline(timeout_s=60)
            if line is None:
                break
            event = json.loads(line)
            seen.append(event)
            # The node is still blocked, so every event after this one reaches --follow live.
            if event["type"] == "NodeStarted":
                blocking.release_node()
        follow.wait(timeout=30)
        follow_errors = follow.stderr.read().decode("utf-8", errors="replace")
    finally:
        if follow.poll() is None:
            follow.kill()
        follow.wait(timeout=30)
        follow.stdout.close()
        follow.stderr.close()

    assert follow.returncode == 0, follow_errors
    assert [event["seq"] for event in seen] == list(range(1, len(seen) + 1))
    assert [event["type"] for event in seen][-3:] == ["PartitionCompleted", "NodeCompleted", "ApprovalRequested"]
    assert seen[-1]["status"] == "waiting_for_approval"
    assert all(event["run_id"] == "tailed" for event in seen)
    finished = running.wait()
    assert finished.returncode == 3, str(finished)
    assert len(cli.logged("tailed")) == len(seen)
