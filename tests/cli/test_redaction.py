"""Secrets planted in a run that fails, retries, crashes and resumes never appear in clear anywhere.

The scan covers the starting process's output and Ray's session logs, where
executors' and workers' log lines and errors go. It also reads the event log
and read models byte for byte, the approval sample, an export, and the output
of the commands a user runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import string
import subprocess
import sys

import pytest
import ray

import ledgerflow as lf
from ledgerflow.actors import lease_is_free

pytestmark = pytest.mark.slow


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _planted() -> dict[str, str]:
    alnum = string.ascii_letters + string.digits
    return {
        "password": "pw" + secrets.token_hex(10),
        "github": "ghp_" + _random(alnum, 36),
        "slack": f"xoxb-{_random(string.digits, 12)}-{_random(alnum, 24)}",
        "aws": "AKIA" + _random(string.ascii_uppercase + string.digits, 16),
        "jwt": "eyJ" + _random(alnum, 20) + ".eyJ" + _random(alnum, 30) + "." + _random(alnum + "-_", 43),
        "bearer": _random(alnum, 32),
        "mcp": "mcp" + secrets.token_hex(12),
    }


def _session_logs() -> pathlib.Path:
    node = ray._private.worker._global_node
    assert node is not None, "the test needs the session's Ray cluster in this process"
    return pathlib.Path(node.get_session_dir_path()) / "logs"


def _files_containing(paths: list[pathlib.Path], needle: bytes) -> list[str]:
    found = []
    for path in paths:
        try:
            if needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


#: Starts the run in a Python subprocess, so the scan covers everything the starting process prints.
#: The executor dies right after seq 4, the first failed attempt's NodeAttemptFailed.
CRASHING_START = """
import json, sys
import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError
home, locator, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    lf.start_run(locator, params=params, run_id="leaky", settings=lf.Settings.resolve(home=home),
                 max_in_flight=1, fault_exit_after_seq=4, max_restarts=0)
except ExecutorDiedError as err:
    print(f"executor died: {err}", file=sys.stderr)
    sys.exit(0)
sys.exit("the executor did not die")
"""


@pytest.fixture(scope="module")
def leaky_run(shared_cli, helpers, tmp_path_factory):
    """Run the leaky pipeline: crash after the first failed attempt, resume, approve, then query it."""
    cli = shared_cli("leaky")
    tmp_path = tmp_path_factory.mktemp("leaky-files")
    planted = _planted()
    token = "tok" + secrets.token_hex(16)
    (tmp_path / "token.txt").write_text(token)
    (tmp_path / "planted.json").write_text(json.dumps(planted))
    markers = tmp_path / "markers"
    markers.mkdir()
    run_id = "leaky"
    params = {"planted": str(tmp_path / "planted.json"), "markers": str(markers),
              "token": f"file:{tmp_path / 'token.txt'}"}
    settings = lf.Settings.resolve(home=str(cli.home), address=os.environ["RAY_ADDRESS"])

    started = subprocess.run(
        [sys.executable, "-c", CRASHING_START, str(cli.home), helpers.pipeline_path("leaky.py"), json.dumps(params)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "LEDGERFLOW_LOG_LEVEL": "debug"},
    )
    assert started.returncode == 0, started.stderr[-3000:]
    outputs = [started.stdout, started.stderr]
    helpers.wait_until(lambda: lease_is_free(settings.store_path, run_id),
                       description="the crashed executor's lease to be free")
    commands = [
        ("resume", run_id, "--json", "--log-level", "debug"),
        ("approve", run_id, "--reviewer", "bob", "--log-level", "debug"),
        ("show", run_id), ("show", run_id, "--json"), ("events", run_id), ("events", run_id, "--json"),
        ("audit", run_id), ("audit", run_id, "--json"), ("replay", run_id, "--json"),
        ("export", run_id, str(tmp_path / "export.jsonl")),
        ("run", f"postgresql://app:{planted['password']}@127.0.0.1/db:pipeline", "--json"),
    ]
    results = {" ".join(command[:1] + command[2:]): cli(*command) for command in commands}
    for result in results.values():
        outputs.extend([result.stdout, result.stderr])
    return {"planted": [*planted.values(), token], "results": results, "outputs": outputs, "run_id": run_id,
            "settings": settings, "export": tmp_path / "export.jsonl", "cli": cli,
            "started": started}


def test_leaky_run_completes_after_retry(leaky_run):
    cli = leaky_run["cli"]
    results = leaky_run["results"]
    assert results["resume --json --log-level debug"].returncode == 3, results["resume --json --log-level debug"]
    assert results["approve --reviewer bob --log-level debug"].returncode == 0
    state = lf.load_state(leaky_run["run_id"], settings=leaky_run["settings"])
    assert state.status == "completed"
    assert state.attempts_failed == 2
    assert len(cli.rows("records")) == 14


def test_leaky_run_failures_recorded_masked(leaky_run):
    cli = leaky_run["cli"]
    failures = [event for event in cli.events(leaky_run["run_id"]) if event["type"] == "NodeAttemptFailed"]

    assert len(failures) == 2
    for failure in failures:
        assert "[redacted]" in failure["payload"]["message"]
        assert "cannot reach postgresql://app:[redacted]@127.0.0.1:5432/ledger" in failure["payload"]["message"]


def test_secrets_absent_from_command_output(leaky_run):
    text = "\n".join(leaky_run["outputs"])

    assert "executor died" in leaky_run["started"].stderr
    assert "[redacted]" in text
    for value in leaky_run["planted"]:
        assert value not in text


def test_secrets_absent_from_home(leaky_run):
    cli = leaky_run["cli"]
    state = lf.load_state(leaky_run["run_id"], settings=leaky_run["settings"])
    sample = pathlib.Path(state.gates["review"].request.sample.uri.removeprefix("file://"))
    files = [path for path in cli.home.glob("*.db*") if not path.name.startswith("warehouse")]
    files += [sample, leaky_run["export"]]

    assert sample.exists()
    assert any(path.name.startswith("ledgerflow.db") for path in files)
    assert leaky_run["export"].exists()
    for value in leaky_run["planted"]:
        assert _files_containing(files, value.encode()) == [], value


def test_secrets_absent_from_ray_session_logs(leaky_run):
    logs = [path for path in _session_logs().rglob("*") if path.is_file()]

    # The scan reaches the workers' log lines: the node's own line is there, masked.
    assert _files_containing(logs, b"mcp server configured")
    for value in leaky_run["planted"]:
        assert _files_containing(logs, value.encode()) == [], value


def _json_lines_with(paths: list[pathlib.Path], text: str) -> list[dict]:
    found = []
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if text in line and line.startswith("{"):
                found.append(json.loads(line))
    return found


def test_worker_lines_bound_to_attempt(leaky_run):
    logs = [path for path in _session_logs().rglob("*.err") if path.is_file()]

    lines = [line for line in _json_lines_with(logs, '"library line"') if line.get("run_id") == "leaky"]
    attempts = sorted((line["node"], line["partition"], line["attempt"]) for line in lines)
    assert attempts == [("records", "a", 1), ("records", "a", 2), ("records", "b", 1), ("records", "b", 2)]
    assert all(line["level"] == "info" for line in lines)


def test_invalid_log_level_rejected(cli):
    result = cli("runs", "--log-level", "verbose")

    assert result.returncode == 2
    assert "verbose" in result.stderr


def test_invalid_log_level_variable_rejected(cli, monkeypatch):
    monkeypatch.setenv("LEDGERFLOW_LOG_LEVEL", "verbose")

    result = cli("runs")

    assert result.returncode == 2
    assert "invalid log level 'verbose'" in result.stderr
    assert "LEDGERFLOW_LOG_LEVEL" in result.stderr
