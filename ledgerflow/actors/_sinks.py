"""Idempotent loads into SQLite: rows and a load marker commit in one transaction."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from ledgerflow.actors._errors import ConfigurationError, SchemaMismatchError
from ledgerflow.events import enable_wal

MARKER_TABLE = "_ledgerflow_loads"
_BATCH_ROWS = 50_000


def sqlite_type(arrow_type: pa.DataType) -> str:
    """Map an Arrow type to the SQLite column type it is stored as."""
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "INTEGER"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "REAL"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "BLOB"
    return "TEXT"


def sqlite_affinity(declared: str) -> str:
    """Return the column affinity SQLite derives from a declared type, by its substring rules."""
    text = declared.upper()
    if "INT" in text:
        return "INTEGER"
    if "CHAR" in text or "CLOB" in text or "TEXT" in text:
        return "TEXT"
    if "BLOB" in text or not text:
        return "BLOB"
    if "REAL" in text or "FLOA" in text or "DOUB" in text:
        return "REAL"
    return "NUMERIC"


def check_sqlite_schema(conn: sqlite3.Connection, target: str, table_name: str, schema: pa.Schema) -> None:
    """Raise SchemaMismatchError if an existing table lacks a column of ``schema`` or stores it otherwise.

    Types compare by affinity, so a ``VARCHAR(20)`` column takes text. A
    NUMERIC column takes integers and reals, and a column of nulls fits any
    type. Columns only the table has are left alone.
    """
    found = {row[1]: row[2] or "" for row in conn.execute(f"PRAGMA table_info({_quote(table_name)})")}
    if not found:
        return
    for field in schema:
        expected = sqlite_type(field.type)
        declared = found.get(field.name)
        if declared is None:
            raise SchemaMismatchError(target=target, column=field.name, expected=expected, found=None)
        if pa.types.is_null(field.type):
            continue
        affinity = sqlite_affinity(declared)
        if affinity != expected and not (affinity == "NUMERIC" and expected in ("INTEGER", "REAL")):
            raise SchemaMismatchError(target=target, column=field.name, expected=expected,
                                      found=declared or "no declared type")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_ready(table: pa.Table) -> pa.Table:
    """Cast columns SQLite cannot bind (timestamps, dates, decimals) to text or floats."""
    columns = []
    for column in table.columns:
        kind = column.type
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind):
            column = pc.cast(column, pa.string())
        elif pa.types.is_decimal(kind):
            column = pc.cast(column, pa.float64())
        elif pa.types.is_dictionary(kind):
            column = pc.cast(column, kind.value_type)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _rows(table: pa.Table) -> Iterator[tuple[object, ...]]:
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        yield from zip(*(column.to_pylist() for column in batch.columns))


def load_into_sqlite(database: str, table_name: str, data: pa.Table, *, run_id: str, node: str,
                     partition: str, key: tuple[str, ...] | None = None) -> tuple[int, bool]:
    """Insert ``data`` into ``table_name`` once for this run, node and partition.

    Returns:
        The rows the partition loaded and whether an earlier attempt already had.
    """
    os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
    try:
        conn = sqlite3.connect(database, timeout=60, isolation_level=None)
    except sqlite3.Error as err:
        raise ConfigurationError(f"cannot open warehouse {database}: {err}") from err
    try:
        enable_wal(conn, timeout_s=60)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (run_id TEXT NOT NULL, node TEXT NOT NULL, "
            "partition TEXT NOT NULL, target TEXT NOT NULL, rows INTEGER NOT NULL, loaded_at TEXT NOT NULL, "
            "PRIMARY KEY (run_id, node, partition))"
        )
        marker = conn.execute(
            f"SELECT rows FROM {MARKER_TABLE} WHERE run_id = ? AND node = ? AND partition = ?",
            (run_id, node, partition),
        ).fetchone()
        if marker is not None:
            conn.execute("ROLLBACK")
            return int(marker[0]), True

        ready = _sqlite_ready(data)
        check_sqlite_schema(conn, f"SQLite table {table_name!r} in {database}", table_name, ready.schema)
        columns = ", ".join(f"{_quote(field.name)} {sqlite_type(field.type)}" for field in ready.schema)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_quote(table_name)} ({columns})")
        verb = "INSERT"
        if key:
            index = _quote(f"{table_name}_key")
            conn.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {_quote(table_name)} "
                f"({', '.join(_quote(name) for name in key)})"
            )
            verb = "INSERT OR REPLACE"
        names = ", ".join(_quote(name) for name in ready.column_names)
        marks = ", ".join("?" * ready.num_columns)
        if ready.num_rows:
            conn.executemany(f"{verb} INTO {_quote(table_name)} ({names}) VALUES ({marks})", _rows(ready))
        conn.execute(
            f"INSERT INTO {MARKER_TABLE} (run_id, node, partition, target, rows, loaded_at) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, node, partition, table_name, data.num_rows,
             dt.datetime.now(dt.timezone.utc).isoformat()),
        )
        conn.execute("COMMIT")
        return data.num_rows, False
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
