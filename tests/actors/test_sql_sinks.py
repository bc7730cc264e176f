"""PostgreSQL and Parquet load targets: once per run, node and partition, with schema checks before writing."""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

import ledgerflow as lf
from ledgerflow.actors import SchemaMismatchError, SqlSourceError
from ledgerflow.actors._parquet_sink import load_into_parquet, partition_path
from ledgerflow.actors._postgres_sink import load_into_postgres

ROWS = pa.table({
    "order_id": pa.array([1, 2], pa.int64()),
    "amount": pa.array([1.5, 2.5], pa.float64()),
    "note": pa.array(["a", None], pa.string()),
    "placed": pa.array([dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)] * 2, pa.timestamp("us", tz="UTC")),
    "day": pa.array([dt.date(2024, 1, 1)] * 2, pa.date32()),
    "price": pa.array([decimal.Decimal("1.10"), decimal.Decimal("2.20")], pa.decimal128(10, 2)),
})


def _where(run_id="run-1", partition="1"):
    return {"run_id": run_id, "node": "load", "partition": partition}


# PostgreSQL


@pytest.mark.postgres
def test_postgres_sink_loads_once(postgres_url, postgres_schema, helpers):
    target = lf.PostgresTable("orders", url=postgres_url, schema=postgres_schema)

    first = load_into_postgres(target, ROWS, **_where())
    again = load_into_postgres(target, ROWS, **_where())

    assert first == (2, False)
    assert again == (2, True)
    rows = helpers.postgres_fetch(postgres_url, f"SELECT order_id, amount, note, placed, day, price "
                                                f"FROM {postgres_schema}.orders ORDER BY order_id")
    assert rows == [
        (1, 1.5, "a", dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc), dt.date(2024, 1, 1),
         decimal.Decimal("1.10")),
        (2, 2.5, None, dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc), dt.date(2024, 1, 1),
         decimal.Decimal("2.20")),
    ]
    markers = helpers.postgres_fetch(postgres_url, f"SELECT run_id, node, partition, rows "
                                                   f"FROM {postgres_schema}._ledgerflow_loads")
    assert markers == [("run-1", "load", "1", 2)]


@pytest.mark.postgres
def test_postgres_sink_created_types(postgres_url, postgres_schema, helpers):
    load_into_postgres(lf.PostgresTable("orders", url=postgres_url, schema=postgres_schema), ROWS, **_where())

    columns = helpers.postgres_fetch(
        postgres_url, "SELECT column_name, data_type FROM information_schema.columns "
                      "WHERE table_schema = $1 AND table_name = 'orders' ORDER BY ordinal_position", postgres_schema)

    assert columns == [("order_id", "bigint"), ("amount", "double precision"), ("note", "text"),
                       ("placed", "timestamp with time zone"), ("day", "date"), ("price", "numeric")]


@pytest.mark.postgres
def test_postgres_sink_other_run_appends(postgres_url, postgres_schema, helpers):
    target = lf.PostgresTable("orders", url=postgres_url, schema=postgres_schema)

    load_into_postgres(target, ROWS, **_where("run-1"))
    load_into_postgres(target, ROWS, **_where("run-2"))

    assert helpers.postgres_fetch(postgres_url, f"SELECT count(*) FROM {postgres_schema}.orders") == [(4,)]


@pytest.mark.postgres
def test_postgres_sink_replaces_partition(postgres_url, postgres_schema, helpers):
    target = lf.PostgresTable("monthly", url=postgres_url, schema=postgres_schema, mode="replace",
                              partition_column="month")
    january = pa.table({"month": [1, 1], "total": [10, 20]})
    february = pa.table({"month": [2], "total": [5]})
    january_again = pa.table({"month": [1], "total": [99]})

    load_into_postgres(target, january, **_where("run-1", "1"))
    load_into_postgres(target, february, **_where("run-1", "2"))
    load_into_postgres(target, january_again, **_where("run-2", "1"))

    rows = helpers.postgres_fetch(postgres_url, f"SELECT month, total FROM {postgres_schema}.monthly "
                                                "ORDER BY month, total")
    assert rows == [(1, 99), (2, 5)]


@pytest.mark.postgres
def test_postgres_sink_type_mismatch_writes_nothing(postgres_url, postgres_schema, helpers):
    helpers.postgres_fetch(postgres_url, f"CREATE TABLE {postgres_schema}.orders (order_id integer, amount text)")
    target = lf.PostgresTable("orders", url=postgres_url, schema=postgres_schema)

    with pytest.raises(SchemaMismatchError) as caught:
        load_into_postgres(target, pa.table({"order_id": pa.array([1], pa.int32()), "amount": [1.5]}), **_where())

    assert caught.value.column == "amount"
    assert caught.value.expected == "double precision"
    assert caught.value.found == "text"
    assert "drop or alter the target" in str(caught.value)
    assert helpers.postgres_fetch(postgres_url, f"SELECT count(*) FROM {postgres_schema}.orders") == [(0,)]
    # The check runs in the transaction that creates the marker table, so the failure rolls that back too.
    markers = helpers.postgres_fetch(postgres_url, f"SELECT to_regclass('{postgres_schema}._ledgerflow_loads')")
    assert markers == [(None,)]


@pytest.mark.postgres
def test_postgres_sink_missing_column(postgres_url, postgres_schema, helpers):
    helpers.postgres_fetch(postgres_url, f"CREATE TABLE {postgres_schema}.orders (order_id bigint)")
    target = lf.PostgresTable("orders", url=postgres_url, schema=postgres_schema)

    with pytest.raises(SchemaMismatchError, match="has no column 'amount'"):
        load_into_postgres(target, pa.table({"order_id": [1], "amount": [1.5]}), **_where())


def test_postgres_table_invalid_options():
    with pytest.raises(SqlSourceError, match="invalid mode='upsert'"):
        lf.PostgresTable("t", url="postgresql://u@h/d", mode="upsert")
    with pytest.raises(SqlSourceError, match="needs partition_column="):
        lf.PostgresTable("t", url="postgresql://u@h/d", mode="replace")
    with pytest.raises(SqlSourceError, match="needs a postgresql:// URL"):
        lf.PostgresTable("t", url="sqlite:///x.db")


# Parquet


def test_parquet_sink_writes_once(tmp_path):
    target = lf.ParquetDataset(str(tmp_path / "dataset"))

    first = load_into_parquet(target, ROWS, **_where())
    again = load_into_parquet(target, ROWS.slice(0, 1), **_where())

    assert first == (2, False)
    assert again == (2, True)
    path = partition_path(str(tmp_path / "dataset"), "run-1", "load", "1")
    assert pads.dataset(path).to_table().equals(ROWS)
    files = sorted(p.name for p in (tmp_path / "dataset").rglob("*") if p.is_file())
    assert files == ["part-1.parquet"]


def test_parquet_sink_dataset_readable(tmp_path):
    target = lf.ParquetDataset(str(tmp_path / "dataset"))

    load_into_parquet(target, ROWS, **_where("run-1", "1"))
    load_into_parquet(target, ROWS, **_where("run-1", "2"))

    table = pads.dataset(str(tmp_path / "dataset"), partitioning="hive").to_table()
    assert table.num_rows == 4
    assert set(table["run"].to_pylist()) == {"run-1"}


def test_parquet_sink_type_mismatch(tmp_path):
    target = lf.ParquetDataset(str(tmp_path / "dataset"))
    load_into_parquet(target, ROWS, **_where("run-1"))
    changed = ROWS.set_column(1, "amount", pa.array(["1.5", "2.5"]))

    with pytest.raises(SchemaMismatchError) as caught:
        load_into_parquet(target, changed, **_where("run-2"))

    assert caught.value.column == "amount"
    assert caught.value.expected == "string"
    assert caught.value.found == "double"
    assert not (tmp_path / "dataset" / "run=run-2").exists()


def test_parquet_sink_any_filesystem_uri(tmp_path):
    target = lf.ParquetDataset(f"file://{tmp_path / 'dataset'}")

    assert load_into_parquet(target, ROWS, **_where()) == (2, False)
    assert load_into_parquet(target, ROWS, **_where()) == (2, True)
