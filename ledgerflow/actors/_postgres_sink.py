"""Idempotent loads into PostgreSQL: rows (by COPY) and a load marker commit in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import structlog

from ledgerflow.actors._context import Secret
from ledgerflow.actors._errors import SchemaMismatchError
from ledgerflow.actors._sinks import MARKER_TABLE
from ledgerflow.actors._sql import (
    EventLoopThread,
    SqlSourceError,
    dialect_of,
    display_url,
    mask_url,
    postgres_connect,
    resolve_url,
)

logger = structlog.get_logger("ledgerflow.sinks")

MODES = ("append", "replace")
_BATCH_ROWS = 50_000

#: Synonyms in ``information_schema.columns.data_type``, mapped to the name that schema checks compare.
_SAME_TYPES = {"character varying": "text", "character": "text"}


@dataclass(frozen=True)
class PostgresTable:
    """A load target: a PostgreSQL table, loaded at most once per run, node and partition.

    Args:
        table: The table name; created from the rows' schema if missing.
        url: A ``postgresql://`` URL, or an :class:`~ledgerflow.Secret` that contains one.
        schema: The database schema of the table and of its ``_ledgerflow_loads`` markers.
        mode: ``append`` adds the rows. ``replace`` first deletes the rows whose
            ``partition_column`` equals the partition key (compared as text), so
            a partition loaded by an earlier run is replaced, not duplicated.
        partition_column: The column that ``replace`` matches partition keys against.
        password: A secret that replaces the URL's password.
    """

    table: str
    url: str | Secret
    schema: str = "public"
    mode: str = "append"
    partition_column: str | None = None
    password: Secret | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SqlSourceError(f"invalid mode={self.mode!r} for PostgresTable {self.table!r}: use "
                                 + " or ".join(MODES))
        if self.mode == "replace" and not self.partition_column:
            raise SqlSourceError(f"PostgresTable {self.table!r} with mode='replace' needs partition_column=, "
                                 "the column whose value is the partition key")
        if isinstance(self.url, str) and dialect_of(self.url) != "postgresql":
            raise SqlSourceError(f"PostgresTable {self.table!r} needs a postgresql:// URL, not "
                                 f"{mask_url(self.url)!r}: use lf.SqliteTable for SQLite")

    def __repr__(self) -> str:
        return (f"PostgresTable({self.table!r}, url={display_url(self.url)!r}, schema={self.schema!r}, "
                f"mode={self.mode!r}, partition_column={self.partition_column!r})")

    def describe(self) -> str:
        """Return the target for logs and reports, with any password masked."""
        return f"PostgreSQL table {self.schema}.{self.table} at {display_url(self.url)}"


def postgres_type(arrow_type: pa.DataType) -> str:
    """Map an Arrow type to the PostgreSQL type of a created column.

    Raises:
        SqlSourceError: No PostgreSQL column type stores the Arrow type's values.
    """
    if pa.types.is_dictionary(arrow_type):
        return postgres_type(arrow_type.value_type)
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if arrow_type in (pa.int8(), pa.int16(), pa.uint8()):
        return "smallint"
    if arrow_type in (pa.int32(), pa.uint16()):
        return "integer"
    if arrow_type in (pa.int64(), pa.uint32()):
        return "bigint"
    if arrow_type == pa.uint64() or pa.types.is_decimal(arrow_type):
        return "numeric"
    if arrow_type in (pa.float16(), pa.float32()):
        return "real"
    if pa.types.is_floating(arrow_type):
        return "double precision"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type):
        return "text"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(
            arrow_type):
        return "bytea"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp with time zone" if arrow_type.tz else "timestamp without time zone"
    if pa.types.is_time(arrow_type):
        return "time without time zone"
    if pa.types.is_duration(arrow_type):
        return "interval"
    raise SqlSourceError(f"Arrow type {arrow_type} has no PostgreSQL column type here: cast the column to a "
                         "number, text, date or timestamp in the load node")


def load_into_postgres(target: PostgresTable, data: pa.Table, *, run_id: str, node: str,
                       partition: str) -> tuple[int, bool]:
    """Copy ``data`` into the target table once for this run, node and partition.

    Returns:
        The rows the partition loaded and whether an earlier attempt already had.
    """
    loop = EventLoopThread()
    try:
        return loop.run(_load(target, data, run_id=run_id, node=node, partition=partition))
    finally:
        loop.close()


async def _load(target: PostgresTable, data: pa.Table, *, run_id: str, node: str,
                partition: str) -> tuple[int, bool]:
    url = resolve_url(target.url, target.password)
    log = logger.bind(target=target.describe(), run_id=run_id, node=node, partition=partition or None)
    conn = await postgres_connect(url)
    try:
        await _prepare(conn, target, data.schema)
        async with conn.transaction():
            claimed = await conn.fetchval(
                f"INSERT INTO {_marker(target)} (run_id, node, partition, target, rows, loaded_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, node, partition) DO NOTHING RETURNING rows",
                run_id, node, partition, f"{target.schema}.{target.table}", data.num_rows,
                dt.datetime.now(dt.timezone.utc).isoformat(),
            )
            if claimed is None:
                rows = await conn.fetchval(
                    f"SELECT rows FROM {_marker(target)} WHERE run_id = $1 AND node = $2 AND partition = $3",
                    run_id, node, partition,
                )
                log.info("load skipped, marker already committed", rows=rows)
                return int(rows), True
            if target.mode == "replace":
                assert target.partition_column is not None
                deleted = await conn.execute(
                    f"DELETE FROM {_table(target)} WHERE {_quote(target.partition_column)}::text = $1",
                    partition,
                )
                log.info("partition rows replaced", deleted=deleted)
            if data.num_rows:
                await conn.copy_records_to_table(target.table, schema_name=target.schema,
                                                 columns=data.column_names, records=_records(data))
        log.info("load committed", rows=data.num_rows)
        return data.num_rows, False
    finally:
        await conn.close()


async def _prepare(conn: Any, target: PostgresTable, schema: pa.Schema) -> None:
    """Create the marker table and the target if missing, and check an existing target's columns.

    A transaction-scoped advisory lock serialises this step between
    concurrent loads into one table, which would otherwise race to create it.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                           f"ledgerflow-load:{target.schema}.{target.table}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(target.schema)}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_marker(target)} (run_id text NOT NULL, node text NOT NULL, "
            "partition text NOT NULL, target text NOT NULL, rows bigint NOT NULL, loaded_at text NOT NULL, "
            "PRIMARY KEY (run_id, node, partition))"
        )
        found = {
            row["column_name"]: row["data_type"]
            for row in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = $2", target.schema, target.table,
            )
        }
        if not found:
            columns = ", ".join(f"{_quote(field.name)} {postgres_type(field.type)}" for field in schema)
            await conn.execute(f"CREATE TABLE {_table(target)} ({columns})")
            return
        for field in schema:
            expected = postgres_type(field.type)
            present = found.get(field.name)
            if present is None:
                raise SchemaMismatchError(target=target.describe(), column=field.name, expected=expected,
                                          found=None)
            if pa.types.is_null(field.type):
                continue
            if _SAME_TYPES.get(present, present) != expected:
                raise SchemaMismatchError(target=target.describe(), column=field.name, expected=expected,
                                          found=present)


def _records(data: pa.Table) -> Iterator[tuple[Any, ...]]:
    for batch in data.to_batches(max_chunksize=_BATCH_ROWS):
        yield from zip(*(column.to_pylist() for column in batch.columns))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _marker(target: PostgresTable) -> str:
    return f"{_quote(target.schema)}.{_quote(MARKER_TABLE)}"


def _table(target: PostgresTable) -> str:
    return f"{_quote(target.schema)}.{_quote(target.table)}"
