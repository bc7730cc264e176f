"""The PostgreSQL fixture's rule: skip without a server, but fail under CI=true."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A test that needs the server and nothing else.
TARGET = "tests/events/test_postgres.py::test_open_missing_without_create"


def _run_without_server(ci: str | None) -> subprocess.CompletedProcess[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "LEDGERFLOW_TEST_POSTGRES": f"postgresql://postgres@127.0.0.1:{port}/test"}
    environment.pop("CI", None)
    if ci is not None:
        environment["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", TARGET],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)


def test_no_server_skips_with_reason():
    completed = _run_without_server(None)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 skipped" in completed.stdout
    assert "no PostgreSQL server at postgresql://postgres@127.0.0.1:" in completed.stdout


def test_no_server_under_ci_fails():
    completed = _run_without_server("true")

    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "1 error" in completed.stdout
    assert "CI=true requires one" in completed.stdout
