"""PostgreSQL and Parquet load targets: once per run, node and partition, with schema checks before writing."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
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


# Through a run


@pytest.fixture
def targets_schema(postgres_url, helpers):
    schema = os.environ["LEDGERFLOW_TEST_POSTGRES_SCHEMA"]
    helpers.postgres_fetch(postgres_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    helpers.postgres_fetch(postgres_url, f'CREATE SCHEMA "{schema}"')
    helpers.postgres_fetch(postgres_url, f'CREATE TABLE "{schema}".items (id bigint, name text)')
    helpers.postgres_fetch(postgres_url, f"""INSERT INTO "{schema}".items SELECT g, 'item ' || g """
                                         "FROM generate_series(1, 30) AS g")
    shutil.rmtree(os.environ["LEDGERFLOW_TEST_DATASET"], ignore_errors=True)
    yield schema
    helpers.postgres_fetch(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')
    shutil.rmtree(os.environ["LEDGERFLOW_TEST_DATASET"], ignore_errors=True)


@pytest.mark.postgres
def test_run_loads_postgres_and_parquet_once(home, helpers, postgres_url, targets_schema):
    locator = helpers.pipeline_locator("sql_targets.py")
    reference = lf.start_run(locator, run_id="probe", settings=home.settings, max_in_flight=1)
    first_load = next(logged.seq for logged in home.events("probe")
                      if logged.type == "PartitionCompleted" and logged.event.node == "copy_to_postgres")

    drive = helpers.drive_to_end(home, locator, run_id="crashed", params={}, fault_exit_after_seq=first_load)

    assert reference.status == "completed", reference.message
    assert drive.result.status == "completed", drive.result.message
    assert drive.crashes == 1
    counts = helpers.postgres_fetch(postgres_url, f'SELECT count(*), count(DISTINCT id) FROM "{targets_schema}".items_copy')
    assert counts == [(60, 30)]
    markers = helpers.postgres_fetch(postgres_url, f'SELECT run_id, count(*) FROM "{targets_schema}"._ledgerflow_loads '
                                                   "GROUP BY run_id ORDER BY run_id")
    assert markers == [("crashed", 3), ("probe", 3)]
    dataset = pads.dataset(os.environ["LEDGERFLOW_TEST_DATASET"], partitioning="hive").to_table()
    assert dataset.num_rows == 60
    assert sorted(dataset.filter(pc.equal(dataset["run"], "crashed"))["id"].to_pylist()) == list(range(1, 31))
    reports = json.dumps([event.report for event in home.of_type("crashed", "PartitionCompleted")])
    assert "Secret(env:LEDGERFLOW_TEST_POSTGRES_URL)" in reports
    assert postgres_url not in reports
