"""Idempotent SQLite loads: rows and a load marker commit together, once per run, node and partition."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pyarrow as pa
import pytest

from ledgerflow.actors import SchemaMismatchError
from ledgerflow.actors._sinks import load_into_sqlite


def _rows(database, table: str) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()


def test_sink_second_load_same_partition_skipped(tmp_path):
    database = tmp_path / "warehouse.db"
    data = pa.table({"order_id": [1, 2], "amount": [1.5, 2.5]})

    first = load_into_sqlite(str(database), "amounts", data, run_id="run-1", node="stored", partition="1")
    again = load_into_sqlite(str(database), "amounts", data, run_id="run-1", node="stored", partition="1")

    assert first == (2, False)
    assert again == (2, True)
    assert _rows(database, "amounts") == [(1, 1.5), (2, 2.5)]


def test_sink_other_partition_and_run_load(tmp_path):
    database = tmp_path / "warehouse.db"
    data = pa.table({"order_id": [1], "amount": [1.5]})

    load_into_sqlite(str(database), "amounts", data, run_id="run-1", node="stored", partition="1")
    other_partition = load_into_sqlite(str(database), "amounts", data, run_id="run-1", node="stored",
                                       partition="2")
    other_run = load_into_sqlite(str(database), "amounts", data, run_id="run-2", node="stored", partition="1")

    assert other_partition == (1, False)
    assert other_run == (1, False)
    assert len(_rows(database, "amounts")) == 3


def test_sink_key_replaces_rows_of_other_runs(tmp_path):
    database = tmp_path / "warehouse.db"
    before = pa.table({"order_id": [1, 2], "amount": [1.0, 2.0]})
    after = pa.table({"order_id": [2, 3], "amount": [20.0, 30.0]})

    load_into_sqlite(str(database), "amounts", before, run_id="run-1", node="stored", partition="",
                     key=("order_id",))
    load_into_sqlite(str(database), "amounts", after, run_id="run-2", node="stored", partition="",
                     key=("order_id",))

    assert _rows(database, "amounts") == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_sink_timestamps_stored_as_text(tmp_path):
    database = tmp_path / "warehouse.db"
    moment = dt.datetime(2013, 1, 1, 5, 15, tzinfo=dt.timezone.utc)
    data = pa.table({"id": [1], "departed": pa.array([moment], pa.timestamp("us", tz="UTC")),
                     "day": pa.array([moment.date()], pa.date32())})

    load_into_sqlite(str(database), "flights", data, run_id="run-1", node="stored", partition="")

    (row,) = _rows(database, "flights")
    assert row[0] == 1
    assert row[1].startswith("2013-01-01 05:15:00")
    assert row[2] == "2013-01-01"


def test_sink_type_mismatch_names_column(tmp_path):
    database = tmp_path / "warehouse.db"
    load_into_sqlite(str(database), "amounts", pa.table({"order_id": [1], "amount": [1.5]}),
                     run_id="run-1", node="stored", partition="1")

    with pytest.raises(SchemaMismatchError) as caught:
        load_into_sqlite(str(database), "amounts", pa.table({"order_id": [2], "amount": ["high"]}),
                         run_id="run-2", node="stored", partition="1")

    assert caught.value.column == "amount"
    assert caught.value.expected == "TEXT"
    assert caught.value.found == "REAL"
    assert "cast 'amount' to REAL" in str(caught.value)
    assert _rows(database, "amounts") == [(1, 1.5)]
    assert _markers(database) == [("run-1",)]


def test_sink_missing_column_named(tmp_path):
    database = tmp_path / "warehouse.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE amounts (order_id INTEGER, amount NUMERIC)")
    conn.close()

    load_into_sqlite(str(database), "amounts", pa.table({"order_id": [1], "amount": [2]}),
                     run_id="run-1", node="stored", partition="1")
    with pytest.raises(SchemaMismatchError, match="has no column 'note'"):
        load_into_sqlite(str(database), "amounts", pa.table({"order_id": [2], "note": ["x"]}),
                         run_id="run-2", node="stored", partition="1")

    assert _rows(database, "amounts") == [(1, 2)]


def test_sink_declared_varchar_takes_text(tmp_path):
    database = tmp_path / "warehouse.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE names (id BIGINT, name VARCHAR(20))")
    conn.close()

    loaded = load_into_sqlite(str(database), "names", pa.table({"id": [1], "name": ["a"]}),
                              run_id="run-1", node="stored", partition="")

    assert loaded == (1, False)


def _markers(database) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT run_id FROM _ledgerflow_loads ORDER BY 1").fetchall()
