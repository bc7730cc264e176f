"""A clean run of a three-stage, four-partition pipeline with a SQLite load."""

from __future__ import annotations

import collections
import sqlite3

import pyarrow as pa

import ledgerflow as lf
from ledgerflow.actors._checkpoints import read_checkpoint


def test_clean_run_completes_and_loads(etl_reference):
    state = etl_reference.home.state(etl_reference.run_id)
    types = [logged.type for logged in etl_reference.events]

    assert state.status == "completed"
    assert types[:2] == ["RunStarted", "ExecutorAttached"]
    assert types[-1] == "RunCompleted"
    assert types.count("PartitionCompleted") == 4 + 1 + 4 + 4
    assert types.count("NodeCompleted") == 4
    assert "NodeAttemptFailed" not in types
    assert etl_reference.events[-1].event.rows_loaded == 20
    for name in ("orders", "prices", "priced", "warehouse"):
        assert state.nodes[name].status == "completed", name


def test_clean_run_executes_each_partition_once(etl_reference):
    expected = collections.Counter(
        [f"orders[{month}]" for month in "1234"] + ["prices[]"]
        + [f"priced[{month}]" for month in "1234"] + [f"warehouse[{month}]" for month in "1234"]
    )
    assert etl_reference.trace == expected


def test_clean_run_warehouse_rows(etl_reference):
    rows = etl_reference.rows
    prices = {1: 1.5, 2: 2.0, 3: 2.5, 4: 3.0}
    expected = [(month * 100 + index, month, (index + 1) * prices[month])
                for month in (1, 2, 3, 4) for index in range(5)]

    assert rows == expected
    assert etl_reference.home.load_markers(etl_reference.run_id) == [
        ("warehouse", month) for month in "1234"
    ]


def test_clean_run_warehouse_column_types(etl_reference):
    with sqlite3.connect(etl_reference.home.settings.warehouse) as conn:
        columns = {row[1]: row[2] for row in conn.execute('PRAGMA table_info("amounts")')}
    assert columns == {"order_id": "INTEGER", "month": "INTEGER", "amount": "REAL"}


def test_clean_run_pandas_output_converted(etl_reference):
    state = etl_reference.home.state(etl_reference.run_id)
    part = state.nodes["orders"].partitions["2"]

    table = read_checkpoint(part.manifest, node="orders", partition="2")
    assert part.manifest.rows == 5
    assert table.schema.names == ["order_id", "month", "quantity"]
    assert table.schema.field("order_id").type == pa.int64()
    assert table.column("order_id").to_pylist() == [200, 201, 202, 203, 204]


def test_clean_run_resume_changes_nothing(etl_reference):
    result = lf.resume_run(etl_reference.run_id, settings=etl_reference.home.settings)

    assert result.status == "completed"
    assert result.changed is False
    assert etl_reference.home.state(etl_reference.run_id).seq == etl_reference.events[-1].seq
