"""SQL sources: type mapping, key ranges, masked passwords and bounded-memory reads on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import decimal
import sqlite3
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest
import structlog

import ledgerflow as lf
from ledgerflow.actors import SqlSourceError
from ledgerflow.actors._sql import mask_url, parse_range, split_range


def _make_sqlite(path, rows: int = 100) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(20), price REAL, day DATE, "
                     "seen TIMESTAMP, active BOOLEAN, payload BLOB, amount DECIMAL(10, 2), loose)")
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(i, f"item {i}", i * 1.5, f"2024-01-{i % 28 + 1:02d}", f"2024-01-01 10:00:{i % 60:02d}", i % 2,
              bytes([i % 256]), i / 4, i) for i in range(1, rows + 1)],
        )
    conn.close()
    return f"sqlite:///{path}"


def _ids(table: pa.Table) -> list[int]:
    return sorted(table["id"].to_pylist())


def test_sqlite_types_mapped(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=3)

    table = lf.SqlSource(url, table="items").read()

    assert table.schema.names == ["id", "name", "price", "day", "seen", "active", "payload", "amount", "loose"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("name").type == pa.string()
    assert table.schema.field("price").type == pa.float64()
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("seen").type == pa.timestamp("us")
    assert table.schema.field("active").type == pa.bool_()
    assert table.schema.field("payload").type == pa.binary()
    assert table.schema.field("amount").type == pa.float64()
    assert table.schema.field("loose").type == pa.int64()
    first = table.slice(0, 1).to_pylist()[0]
    assert first["day"] == dt.date(2024, 1, 2)
    assert first["seen"] == dt.datetime(2024, 1, 1, 10, 0, 1)
    assert first["active"] is True


def test_sqlite_query_columns_typed(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=10)

    table = lf.SqlSource(url, query="SELECT day, COUNT(*) AS n FROM items GROUP BY day", name="per_day").read()

    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("n").type == pa.int64()
    assert sum(table["n"].to_pylist()) == 10


def test_sqlite_schema_override(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=3)

    table = lf.SqlSource(url, table="items", schema={"amount": pa.decimal128(10, 2)}).read()

    assert table.schema.field("amount").type == pa.decimal128(10, 2)
    assert table["amount"][0].as_py() == decimal.Decimal("0.25")


def test_empty_result_keeps_columns(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=3)

    table = lf.SqlSource(url, query="SELECT * FROM items WHERE id < 0", name="none").read()

    assert table.num_rows == 0
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("seen").type == pa.timestamp("us")


@pytest.mark.parametrize("count", [1, 3, 4, 7])
def test_sqlite_key_ranges_equal_direct_read(tmp_path, count):
    url = _make_sqlite(tmp_path / "items.db", rows=100)
    source = lf.SqlSource(url, table="items", key="id", partitions=count, batch_rows=8)

    keys = source.partitions()
    parts = [source.read(key) for key in keys]

    assert len(keys) == count
    assert keys[0].startswith("min..")
    assert keys[-1].endswith("..max")
    assert sorted(id_ for part in parts for id_ in part["id"].to_pylist()) == _ids(source.read())
    assert sum(part.num_rows for part in parts) == 100


def test_date_key_ranges(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=56)
    source = lf.SqlSource(url, table="items", key="day", partitions=4)

    keys = source.partitions()
    parts = [source.read(key) for key in keys]

    assert keys == ["min..2024-01-08", "2024-01-08..2024-01-15", "2024-01-15..2024-01-22", "2024-01-22..max"]
    assert [part.num_rows for part in parts] == [14, 14, 14, 14]
    assert all(day < dt.date(2024, 1, 8) for day in parts[0]["day"].to_pylist())


def test_explicit_boundaries(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=20)
    source = lf.SqlSource(url, table="items", key="id", boundaries=[5, 15])

    keys = source.partitions()

    assert keys == ["min..5", "5..15", "15..max"]
    assert _ids(source.read("min..5")) == [1, 2, 3, 4]
    assert _ids(source.read("5..15")) == list(range(5, 15))
    assert _ids(source.read("15..max")) == list(range(15, 21))


def test_range_helpers():
    assert split_range(1, 10, 3) == [4, 7]
    assert split_range(1, 2, 5) == [2]
    assert split_range(dt.date(2024, 1, 1), dt.date(2024, 1, 4), 2) == [dt.date(2024, 1, 3)]
    assert parse_range("min..max") == (None, None)
    assert parse_range("5..2024-01-03") == (5, dt.date(2024, 1, 3))


def test_rows_added_after_bounds_still_read(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=10)
    source = lf.SqlSource(url, table="items", key="id", partitions=2)
    keys = source.partitions()
    with sqlite3.connect(tmp_path / "items.db") as conn:
        conn.execute("INSERT INTO items (id, name) VALUES (500, 'late')")
    conn.close()

    last = source.read(keys[-1])

    assert 500 in last["id"].to_pylist()


@pytest.mark.parametrize(("options", "message"), [
    ({"table": "items", "query": "SELECT 1"}, "exactly one of table= or query="),
    ({"query": "SELECT 1"}, "needs name="),
    ({"table": "items", "partitions": 2}, "need key="),
    ({"table": "items", "key": "id", "partitions": 0}, "invalid partitions=0"),
    ({"table": "items", "key": "id", "boundaries": [5, 3]}, "increasing order"),
    ({"table": "items", "batch_rows": 0}, "invalid batch_rows=0"),
])
def test_invalid_options_rejected(tmp_path, options, message):
    with pytest.raises(SqlSourceError, match=message):
        lf.SqlSource(f"sqlite:///{tmp_path / 'x.db'}", **options)


def test_unsupported_url_rejected():
    with pytest.raises(SqlSourceError, match=r"unsupported database URL 'mysql://app:\*\*\*@db/shop'"):
        lf.SqlSource("mysql://app:secret@db/shop", table="items")


def test_missing_sqlite_file_error(tmp_path):
    with pytest.raises(SqlSourceError, match="not found"):
        lf.SqlSource(f"sqlite:///{tmp_path / 'absent.db'}", table="items").read()


def test_watermark_needs_context(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=3)
    source = lf.SqlSource(url, table="items", watermark="seen")

    with pytest.raises(SqlSourceError, match="needs the node's context"):
        source.read()


def test_watermark_filters_and_records(tmp_path):
    url = _make_sqlite(tmp_path / "items.db", rows=30)
    source = lf.SqlSource(url, table="items", key="id", partitions=2, watermark="id")
    context = lf.Context(run_id="r", node="items", partition="min..16", attempt=1, params=None,
                         state={"watermark:items": 10}, logger=structlog.get_logger())

    table = source.read("min..16", context=context)

    assert _ids(table) == [11, 12, 13, 14, 15]
    assert context.recorded == {"watermark-pending:items:min..16": 15}


def test_mask_url():
    assert mask_url("postgresql://etl:s3cret@db:5432/shop") == "postgresql://etl:***@db:5432/shop"
    assert mask_url("postgresql://etl@db/shop") == "postgresql://etl@db/shop"


def test_sqlite_bounded_memory_read(tmp_path):
    """Stream a table about 40 times the batch size and compare Arrow's peak allocation with the table."""
    path = tmp_path / "big.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE big (id INTEGER, body TEXT)")
        conn.executemany("INSERT INTO big VALUES (?, ?)", ((i, f"{i:08d}" * 25) for i in range(200_000)))
    conn.close()
    script = textwrap.dedent(f"""
        import pyarrow as pa
        import ledgerflow as lf
        source = lf.SqlSource({f"sqlite:///{path}"!r}, table="big", batch_rows=5_000)
        rows = 0
        for batch in source.iter_batches():
            rows += batch.num_rows
        peak = pa.default_memory_pool().max_memory()
        print(rows, peak, source.read().nbytes)
    """)
    # A child process, so that the peak belongs to this read alone.
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    rows, peak, table_bytes = (int(value) for value in output.stdout.splitlines()[-1].split())

    print(f"streamed {rows} rows: Arrow peak {peak} bytes, whole table {table_bytes} bytes")
    assert rows == 200_000
    assert table_bytes > 40_000_000
    assert peak < table_bytes / 10


# PostgreSQL


@pytest.fixture
def postgres_items(postgres_url, postgres_schema, helpers) -> str:
    helpers.postgres_fetch(postgres_url, f"""
        CREATE TABLE {postgres_schema}.items (
            id bigint, small smallint, medium integer, price numeric(10, 2), ratio real, score double precision,
            active boolean, name text, code varchar(8), day date, seen timestamp, seen_utc timestamptz,
            payload bytea, token uuid, doc jsonb, span interval)
    """)
    helpers.postgres_fetch(postgres_url, f"""
        INSERT INTO {postgres_schema}.items
        SELECT g, g, g, g * 1.25, g, g, g % 2 = 0, 'item ' || g, 'c' || g, date '2024-01-01' + g,
               timestamp '2024-01-01' + g * interval '1 hour', timestamptz '2024-01-01 00:00+00' + g * interval '1 hour',
               '\\x00'::bytea, '00000000-0000-0000-0000-000000000001'::uuid, '{{"n": 1}}'::jsonb, interval '1 day'
        FROM generate_series(1, 50) AS g
    """)
    return f"{postgres_schema}.items"


@pytest.mark.postgres
def test_postgres_types_mapped(postgres_url, postgres_items):
    table = lf.SqlSource(postgres_url, table=postgres_items).read()

    expected = {
        "id": pa.int64(), "small": pa.int16(), "medium": pa.int32(), "price": pa.decimal128(38, 9),
        "ratio": pa.float32(), "score": pa.float64(), "active": pa.bool_(), "name": pa.string(),
        "code": pa.string(), "day": pa.date32(), "seen": pa.timestamp("us"),
        "seen_utc": pa.timestamp("us", tz="UTC"), "payload": pa.binary(), "token": pa.string(),
        "doc": pa.string(), "span": pa.duration("us"),
    }
    assert dict(zip(table.schema.names, table.schema.types)) == expected
    first = table.sort_by("id").slice(0, 1).to_pylist()[0]
    assert first["price"] == decimal.Decimal("1.25")
    assert first["token"] == "00000000-0000-0000-0000-000000000001"
    assert first["seen_utc"] == dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone.utc)
    assert first["span"] == dt.timedelta(days=1)


@pytest.mark.postgres
@pytest.mark.parametrize("key", ["id", "day"])
def test_postgres_key_ranges_equal_direct_read(postgres_url, postgres_items, key):
    source = lf.SqlSource(postgres_url, table=postgres_items, key=key, partitions=3, batch_rows=7)

    keys = source.partitions()
    parts = [source.read(partition) for partition in keys]

    assert len(keys) == 3
    assert sorted(id_ for part in parts for id_ in part["id"].to_pylist()) == list(range(1, 51))
    assert _ids(source.read()) == list(range(1, 51))


@pytest.mark.postgres
def test_postgres_query_source(postgres_url, postgres_items):
    source = lf.SqlSource(postgres_url, query=f"SELECT id, day FROM {postgres_items} WHERE active", name="active")

    table = source.read()

    assert table.schema.names == ["id", "day"]
    assert _ids(table) == list(range(2, 51, 2))


@pytest.mark.postgres
def test_postgres_watermark_timestamp_round_trip(postgres_url, postgres_items):
    source = lf.SqlSource(postgres_url, table=postgres_items, name="items", watermark="seen_utc")
    context = lf.Context(run_id="r", node="n", partition="", attempt=1, params=None,
                         state={"watermark:items": "2024-01-02T23:00:00.000000+00:00"},
                         logger=structlog.get_logger())

    table = source.read(context=context)

    assert _ids(table) == list(range(48, 51))
    assert context.recorded == {"watermark-pending:items:": "2024-01-03T02:00:00.000000+00:00"}


@pytest.mark.postgres
def test_postgres_password_never_logged(postgres_url, postgres_items, monkeypatch):
    user_part, host_part = postgres_url.split("@", 1)
    monkeypatch.setenv("LF_TEST_DB_PASSWORD", "not-the-password-42")
    source = lf.SqlSource(postgres_url, table=postgres_items, password=lf.Secret(env="LF_TEST_DB_PASSWORD"))
    bad = lf.SqlSource(f"{user_part}:not-the-password-42@{host_part}_absent", table="items")

    with structlog.testing.capture_logs() as logs:
        table = source.read()
        with pytest.raises(SqlSourceError) as caught:
            bad.read()

    assert table.num_rows == 50
    assert "not-the-password-42" not in repr(logs)
    assert "not-the-password-42" not in str(caught.value)
    assert "***" in str(caught.value)
    assert "not-the-password-42" not in repr(source) + repr(bad)


@pytest.mark.postgres
def test_postgres_url_from_secret(postgres_url, postgres_items, monkeypatch):
    monkeypatch.setenv("LF_TEST_DB_URL", postgres_url)
    source = lf.SqlSource(lf.Secret(env="LF_TEST_DB_URL"), table=postgres_items)

    assert source.read().num_rows == 50
    assert postgres_url not in repr(source)
