"""The MCP connector driving a third-party server from PyPI: ``mcp-server-time``.

The server is installed into its own virtual environment under pytest's
cache directory, once, by a session fixture.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import sqlite3
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest

import ledgerflow as lf

PACKAGE = "mcp-server-time"


def skip_or_fail(reason: str) -> None:
    """Skip the test with ``reason``, except under CI=true, where a missing dependency is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def time_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return the path of the ``mcp-server-time`` executable, installed in its own venv.

    The venv is kept in pytest's cache directory between sessions, or in a
    temporary directory when the cache plugin is off (``-p no:cacheprovider``).
    """
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        venv = pathlib.Path(cache.mkdir("mcp-server-time-venv"))
    else:
        venv = tmp_path_factory.mktemp("mcp-server-time-venv")
    executable = venv / "bin" / "mcp-server-time"
    if executable.exists():
        return str(executable)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", PACKAGE]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            skip_or_fail(f"cannot install {PACKAGE} into {venv}: {err}")
        if done.returncode != 0:
            skip_or_fail(f"cannot install {PACKAGE} into {venv}: {' '.join(step)} exited with "
                         f"{done.returncode}: {done.stderr.strip()[-500:]}")
    if not executable.exists():
        skip_or_fail(f"{PACKAGE} installed no executable at {executable}")
    return str(executable)


@pytest.mark.slow
def test_third_party_time_server_converts(home, helpers, time_server):
    times = ["09:15", "16:30"]

    result = lf.start_run(helpers.pipeline_locator("mcp_time.py"), run_id="time",
                          params={"executable": time_server, "times": times}, settings=home.settings)

    assert result.status == "completed", result.message
    source_zone, target_zone = ZoneInfo("America/New_York"), ZoneInfo("Europe/London")
    today = dt.datetime.now(source_zone).date()
    expected = []
    for text in times:
        hour, minute = (int(part) for part in text.split(":"))
        source = dt.datetime(today.year, today.month, today.day, hour, minute, tzinfo=source_zone)
        expected.append((source.isoformat(timespec="seconds"),
                         source.astimezone(target_zone).isoformat(timespec="seconds")))
    with sqlite3.connect(home.settings.warehouse) as connection:
        loaded = connection.execute("SELECT source, target FROM converted_times ORDER BY source").fetchall()
    assert loaded == sorted(expected)
    calls = home.of_type("time", "McpToolCalled")
    assert sorted((call.server, call.tool, call.outcome) for call in calls) == [
        ("time", "convert_time", "ok"), ("time", "convert_time", "ok"),
    ]
