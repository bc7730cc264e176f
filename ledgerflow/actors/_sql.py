"""SQL sources: a table or a query from SQLite or PostgreSQL, read as typed Arrow batches.

::

    orders = SqlSource("postgresql://etl@db.internal/shop", table="orders", key="order_id",
                       partitions=8, watermark="updated_at", password=lf.Secret(env="SHOP_DB_PASSWORD"))

    @pipeline.extract(partitions=orders.partitions)
    def raw_orders(partition: str, context: lf.Context) -> pa.Table:
        return orders.read(partition, context=context)

A partition is a half-open range of the key, named by its bounds
(``min..1001``, ``1001..2001``, ``2001..max``). The first and last ranges are
open, so every row falls in exactly one range even if rows arrive after the
bounds were computed. The bounds are in the key itself, so a resumed run reads
the same ranges as the run that started.

Connection URLs: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
``postgresql://user[:password]@host[:port]/database``. Logs and reports show
the URL with its password replaced by ``***``. The PostgreSQL driver is
asyncpg, run on an event loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import os
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from ledgerflow.actors._context import Context, Secret
from ledgerflow.actors._watermarks import committed_key, pending_key
from ledgerflow.events import UsageError

logger = structlog.get_logger("ledgerflow.sql")

#: The open ends of the first and last key ranges.
LOWEST = "min"
HIGHEST = "max"
_RANGE_SEPARATOR = ".."
_INTEGER = re.compile(r"^-?[0-9]+$")

#: PostgreSQL type names (``pg_type.typname``) and the Arrow type their values read as.
#: ``numeric`` has no fixed scale in the row description asyncpg exposes, so it reads
#: as decimal128(38, 9). Pass ``schema=`` for another precision or scale.
POSTGRES_TYPES: dict[str, pa.DataType] = {
    "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "oid": pa.int64(),
    "float4": pa.float32(), "float8": pa.float64(), "numeric": pa.decimal128(38, 9),
    "bool": pa.bool_(),
    "text": pa.string(), "varchar": pa.string(), "bpchar": pa.string(), "name": pa.string(),
    "char": pa.string(), "uuid": pa.string(), "json": pa.string(), "jsonb": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(), "time": pa.time64("us"), "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"), "interval": pa.duration("us"),
}


class SqlSourceError(UsageError):
    """Raised when a SQL source is misconfigured or its database returns what it cannot read.

    ``url`` is the connection URL with its password masked.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


# Connection URLs


def mask_url(url: str) -> str:
    """Return ``url`` with the password of its user part replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def dialect_of(url: str) -> str:
    """Return ``sqlite`` or ``postgresql`` for a connection URL.

    Raises:
        SqlSourceError: Any other scheme.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise SqlSourceError(
        f"unsupported database URL {mask_url(url)!r}: use sqlite:///PATH or postgresql://USER@HOST/DATABASE",
        url=mask_url(url),
    )


def sqlite_path(url: str) -> str:
    """Return the file path of a ``sqlite:///PATH`` URL (four slashes for an absolute path)."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise SqlSourceError(f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////absolute.db",
                             url=url)
    return url[len("sqlite:///"):]


def resolve_url(url: str | Secret, password: Secret | None) -> str:
    """Return the connection URL to use in this process, with secrets read here.

    ``url`` may itself be a secret. ``password``, if given, replaces the
    URL's password.
    """
    text = url.reveal() if isinstance(url, Secret) else url
    if not isinstance(text, str) or not text:
        raise SqlSourceError(f"invalid database URL {url!r}: use a non-empty string or lf.Secret(env=NAME)")
    if password is None:
        return text
    parts = urllib.parse.urlsplit(text)
    if not parts.username:
        raise SqlSourceError(
            f"database URL {mask_url(text)!r} names no user, so password= has nowhere to go: "
            "add USER@ before the host", url=mask_url(text),
        )
    quoted = urllib.parse.quote(password.reveal(), safe="")
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:{quoted}@{host}"))


def display_url(url: str | Secret) -> str:
    """Return a URL for logs and reports: a secret's reference, or the URL with its password masked."""
    return str(url) if isinstance(url, Secret) else mask_url(url)


def quote_identifier(name: str) -> str:
    """Quote a (possibly schema-qualified) identifier: ``a.b`` becomes ``"a"."b"``."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class EventLoopThread:
    """An event loop in a thread of its own, to drive asyncpg from synchronous code.

    A thread of its own, because the caller may already run a loop (the
    executor's async actor resolves partitions, a notebook runs cells).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ledgerflow-asyncpg", daemon=True)
        self.thread.start()

    def run(self, awaitable: Any) -> Any:
        """Wait for ``awaitable`` on the loop's thread and return its result."""

        async def wait() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


# Key ranges


def _parse_bound(text: str) -> int | dt.date:
    if _INTEGER.match(text):
        return int(text)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise SqlSourceError(f"invalid key bound {text!r}: use an integer or an ISO date such as 2024-01-31") from None


def _bound_text(value: int | dt.date) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _as_key_value(value: Any, column: str) -> int | dt.date:
    """Convert a MIN/MAX or boundary value to an integer or a date."""
    if isinstance(value, bool):
        raise SqlSourceError(f"key column {column!r} is boolean: partition by an integer or date column")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        raise SqlSourceError(f"key column {column!r} contains timestamps: partition by an integer or date column, "
                             "or by a date computed in the query")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise SqlSourceError(f"key column {column!r} has value {value!r}, neither an integer nor a date: "
                         "partition by an integer or date column")


def split_range(lowest: int | dt.date, highest: int | dt.date, count: int) -> list[int | dt.date]:
    """Return up to ``count - 1`` increasing inner boundaries that cut ``[lowest, highest]`` into even ranges."""
    as_date = isinstance(lowest, dt.date)
    low = lowest.toordinal() if isinstance(lowest, dt.date) else lowest
    high = highest.toordinal() if isinstance(highest, dt.date) else highest
    span = high - low + 1
    inner: list[int] = []
    for index in range(1, count):
        cut = low + (span * index) // count
        if low < cut <= high and (not inner or cut > inner[-1]):
            inner.append(cut)
    if as_date:
        return [dt.date.fromordinal(value) for value in inner]
    return list(inner)


def range_keys(boundaries: Sequence[int | dt.date]) -> list[str]:
    """Return the partition keys of the ranges that ``boundaries`` separate, open at both ends."""
    texts = [LOWEST, *(_bound_text(value) for value in boundaries), HIGHEST]
    return [f"{low}{_RANGE_SEPARATOR}{high}" for low, high in zip(texts, texts[1:])]


def parse_range(key: str) -> tuple[int | dt.date | None, int | dt.date | None]:
    """Return the (inclusive lower, exclusive upper) bounds of a range key; None is an open end."""
    low, separator, high = str(key).partition(_RANGE_SEPARATOR)
    if not separator:
        raise SqlSourceError(f"invalid partition key {key!r}: expected LOW..HIGH, such as min..1001 or 1001..max")
    return (None if low == LOWEST else _parse_bound(low)), (None if high == HIGHEST else _parse_bound(high))


# Values


def _arrow_column(values: Sequence[Any], target: pa.DataType | None, column: str, url: str) -> pa.Array:
    """Build one Arrow column, converting the driver's values to ``target`` (None: infer)."""
    if target is None:
        return pa.array(values)
    if pa.types.is_string(target) and any(value is not None and not isinstance(value, str) for value in values):
        values = [None if value is None else str(value) for value in values]
    try:
        return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        pass
    try:
        return pc.cast(pa.array(values), target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as err:
        example = next((value for value in values if value is not None), None)
        raise SqlSourceError(
            f"column {column!r} from {url} has value {example!r}, which does not convert to {target}: "
            f"pass schema= with another type for {column!r}, or CAST the column in the query ({err})",
            url=url,
        ) from err


def encode_watermark(value: Any, column: str) -> Any:
    """Return a watermark value as recorded in the log: JSON-compatible, ordered like the column."""
    if isinstance(value, bool) or isinstance(value, (decimal.Decimal, bytes)):
        raise SqlSourceError(f"watermark column {column!r} has value {value!r}: use an integer, float, date, "
                             "timestamp or text column")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (int, float, str)):
        return value
    raise SqlSourceError(f"watermark column {column!r} has value {value!r} of type {type(value).__name__}: "
                         "use an integer, float, date, timestamp or text column")


def _decode_postgres_watermark(value: Any, type_name: str) -> Any:
    if not isinstance(value, str):
        return value
    if type_name == "date":
        return dt.date.fromisoformat(value)
    if type_name in ("timestamp", "timestamptz"):
        return dt.datetime.fromisoformat(value)
    return value


def sqlite_arrow_type(declared: str) -> pa.DataType | None:
    """Map a SQLite declared column type to an Arrow type, following SQLite's affinity rules.

    Dates and timestamps, which SQLite stores as text, are recognised by the
    words DATE, DATETIME and TIMESTAMP. None means no declared type: the
    values decide.
    """
    text = declared.upper()
    if not text:
        return None
    if "INT" in text:
        return pa.int64()
    if "BOOL" in text:
        return pa.bool_()
    if "DATETIME" in text or "TIMESTAMP" in text:
        return pa.timestamp("us")
    if "DATE" in text:
        return pa.date32()
    if "CHAR" in text or "CLOB" in text or "TEXT" in text:
        return pa.string()
    if "BLOB" in text:
        return pa.binary()
    return pa.float64()


class SqlSource:
    """A table or query of a SQLite or PostgreSQL database, read in batches as Arrow tables.

    Args:
        url: A connection URL, or an :class:`~ledgerflow.Secret` that contains one.
        table: The table to read (``schema.table`` allowed). Give ``table`` or ``query``.
        query: A SELECT statement to read. It runs as a subquery, so it takes
            no ORDER BY that the database rejects there.
        name: The source's name in logs and watermark keys. Defaults to ``table``.
        key: An integer or date column to split the rows into ranges by.
        partitions: The number of key ranges, computed from the key's MIN and MAX
            when :meth:`partitions` is called (at run start).
        boundaries: Explicit increasing inner boundaries of the key ranges,
            in place of ``partitions``.
        watermark: A column that grows as rows are added or changed. With a
            watermark, :meth:`read` needs the node's context. It reads only rows
            whose watermark is greater than the run's, and records the maximum it
            read. The run advances its watermark to that maximum once every load
            has committed.
        password: A secret that replaces the URL's password.
        schema: Arrow types for some or all columns, overriding the mapping from
            database types (see :data:`POSTGRES_TYPES` and :func:`sqlite_arrow_type`).
        batch_rows: Rows fetched per batch; bounds the reader's memory.

    NOTE: A row whose watermark value is committed after a run read past it
    (a long transaction that commits late) is not read by later runs either.
    """

    def __init__(
        self,
        url: str | Secret,
        *,
        table: str | None = None,
        query: str | None = None,
        name: str | None = None,
        key: str | None = None,
        partitions: int | None = None,
        boundaries: Sequence[int | dt.date | str] | None = None,
        watermark: str | None = None,
        password: Secret | None = None,
        schema: pa.Schema | dict[str, pa.DataType] | None = None,
        batch_rows: int = 10_000,
    ) -> None:
        self.url = url
        self.table = table
        self.query = query
        self.name = name or table or ""
        self.key = key
        self.partition_count = partitions
        self.watermark = watermark
        self.password = password
        self.schema = dict(zip(schema.names, schema.types)) if isinstance(schema, pa.Schema) else dict(schema or {})
        self.batch_rows = batch_rows
        self.boundaries: list[int | dt.date] | None = None
        self._check_options(boundaries)
        self.dialect = dialect_of(url) if isinstance(url, str) else None

    def __repr__(self) -> str:
        return f"SqlSource({display_url(self.url)!r}, name={self.name!r})"

    def _check_options(self, boundaries: Sequence[int | dt.date | str] | None) -> None:
        if (self.table is None) == (self.query is None):
            raise SqlSourceError("a SQL source reads exactly one of table= or query=")
        if not self.name:
            raise SqlSourceError("a SQL source with query= needs name=, which names it in logs and watermarks")
        if ":" in self.name:
            raise SqlSourceError(f"invalid source name {self.name!r}: leave out ':'")
        if not isinstance(self.batch_rows, int) or self.batch_rows < 1:
            raise SqlSourceError(f"invalid batch_rows={self.batch_rows!r}: use a positive integer")
        if self.partition_count is not None and boundaries is not None:
            raise SqlSourceError("give partitions= or boundaries=, not both")
        if (self.partition_count is not None or boundaries is not None) and self.key is None:
            raise SqlSourceError("key ranges need key=: name an integer or date column")
        if self.partition_count is not None and (not isinstance(self.partition_count, int) or self.partition_count < 1):
            raise SqlSourceError(f"invalid partitions={self.partition_count!r}: use a positive integer")
        if boundaries is not None:
            values = [_parse_bound(item) if isinstance(item, str) else _as_key_value(item, str(self.key))
                      for item in boundaries]
            if any(later <= earlier for earlier, later in zip(values, values[1:])):  # type: ignore[operator]
                raise SqlSourceError(f"invalid boundaries={list(boundaries)!r}: list them in increasing order")
            self.boundaries = values

    # Partitions

    def partitions(self, params: Any = None) -> list[str]:
        """Return the key ranges to read, one partition each.

        ``params`` is ignored. It is there so the method can be passed as a
        node's ``partitions=``, which the runtime calls with the run's parameters.
        """
        if self.boundaries is not None:
            return range_keys(self.boundaries)
        if self.key is None or self.partition_count in (None, 1):
            return range_keys([])
        lowest, highest = self._key_extent()
        if lowest is None or highest is None:
            return range_keys([])
        low = _as_key_value(lowest, self.key)
        high = _as_key_value(highest, self.key)
        assert self.partition_count is not None
        return range_keys(split_range(low, high, self.partition_count))

    def _key_extent(self) -> tuple[Any, Any]:
        assert self.key is not None
        column = quote_identifier(self.key)
        sql = f"SELECT MIN({column}), MAX({column}) FROM ({self._relation()}) AS lf_source"
        url = resolve_url(self.url, self.password)
        if dialect_of(url) == "sqlite":
            with _sqlite_connect(url) as conn:
                return conn.execute(sql).fetchone()
        loop = EventLoopThread()
        try:
            return loop.run(_postgres_fetchrow(url, sql))
        finally:
            loop.close()

    # Reading

    def read(self, partition: str | None = None, *, context: Context | None = None) -> pa.Table:
        """Read one key range (None: every row) into one table."""
        batches = list(self.iter_batches(partition, context=context))
        if batches:
            return pa.Table.from_batches(batches)
        return self._empty_table(partition)

    def iter_batches(self, partition: str | None = None, *, context: Context | None = None
                     ) -> Iterator[pa.RecordBatch]:
        """Yield one key range's rows in batches of at most ``batch_rows``.

        With a watermark, the rows past the run's watermark, and the maximum
        read is recorded in ``context`` once the last batch was yielded.
        """
        if self.watermark is not None and context is None:
            raise SqlSourceError(
                f"source {self.name!r} reads incrementally by {self.watermark!r}, so it needs the node's "
                "context: call read(partition, context=context)"
            )
        url = resolve_url(self.url, self.password)
        masked_url = mask_url(url)
        since = context.state.get(committed_key(self.name)) if context is not None and self.watermark else None
        log = logger.bind(source=self.name, url=masked_url, partition=partition)
        log.info("sql read started", watermark=since)
        tracker = _MaxTracker(self.watermark)
        rows = 0
        if dialect_of(url) == "sqlite":
            batches = self._sqlite_batches(url, partition, since, tracker)
        else:
            batches = self._postgres_batches(url, partition, since, tracker)
        for batch in batches:
            rows += batch.num_rows
            yield batch
        if context is not None and self.watermark is not None and tracker.highest is not None:
            context.record(pending_key(self.name, context.partition),
                           encode_watermark(tracker.highest, self.watermark))
        log.info("sql read finished", rows=rows)

    def _relation(self) -> str:
        return self.query if self.query is not None else f"SELECT * FROM {quote_identifier(self.table or '')}"

    def _select(self, partition: str | None, since: Any, placeholder: Callable[[int], str]
                ) -> tuple[str, list[Any]]:
        """Build the SELECT for a key range and watermark; values go in as parameters."""
        conditions: list[str] = []
        values: list[Any] = []
        if partition is not None:
            if self.key is None:
                if parse_range(partition) != (None, None):
                    raise SqlSourceError(f"source {self.name!r} has no key=, so its only partition is "
                                         f"{range_keys([])[0]!r}, not {partition!r}")
            else:
                low, high = parse_range(partition)
                column = quote_identifier(self.key)
                if low is not None:
                    values.append(low)
                    conditions.append(f"{column} >= {placeholder(len(values))}")
                if high is not None:
                    values.append(high)
                    conditions.append(f"{column} < {placeholder(len(values))}")
        if self.watermark is not None and since is not None:
            values.append(since)
            conditions.append(f"{quote_identifier(self.watermark)} > {placeholder(len(values))}")
        sql = f"SELECT * FROM ({self._relation()}) AS lf_source"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        return sql, values

    def _sqlite_batches(self, url: str, partition: str | None, since: Any, tracker: _MaxTracker
                        ) -> Iterator[pa.RecordBatch]:
        sql, values = self._select(partition, since, lambda index: "?")
        values = [value.isoformat() if isinstance(value, dt.date) else value for value in values]
        with _sqlite_connect(url) as conn:
            types = self._sqlite_types(conn)
            cursor = conn.execute(sql, values)
            names = [column[0] for column in cursor.description]
            while True:
                rows = cursor.fetchmany(self.batch_rows)
                if not rows:
                    return
                yield self._batch(names, rows, types, url, tracker)

    def _sqlite_types(self, conn: sqlite3.Connection) -> dict[str, pa.DataType | None]:
        """Return each column's Arrow type from the declared types of the table or query's columns."""
        view = "lf_probe_types"
        conn.execute(f"DROP VIEW IF EXISTS temp.{view}")
        conn.execute(f"CREATE TEMP VIEW {view} AS {self._relation()}")
        try:
            info = conn.execute(f"PRAGMA temp.table_info({view})").fetchall()
        finally:
            conn.execute(f"DROP VIEW temp.{view}")
        return {row[1]: self.schema.get(row[1], sqlite_arrow_type(row[2] or "")) for row in info}

    def _postgres_batches(self, url: str, partition: str | None, since: Any, tracker: _MaxTracker
                          ) -> Iterator[pa.RecordBatch]:
        loop = EventLoopThread()
        conn = None
        try:
            conn = loop.run(postgres_connect(url))
            transaction = conn.transaction(readonly=True)
            loop.run(transaction.start())
            types = loop.run(self._postgres_types(conn))
            if since is not None and self.watermark is not None:
                since = _decode_postgres_watermark(since, types.get(self.watermark, ("", None))[0])
            sql, values = self._select(partition, since, lambda index: f"${index}")
            statement = loop.run(conn.prepare(sql))
            names = [attribute.name for attribute in statement.get_attributes()]
            arrow_types = {name: arrow for name, (_, arrow) in types.items()}
            cursor = loop.run(statement.cursor(*values))
            while True:
                rows = loop.run(cursor.fetch(self.batch_rows))
                if not rows:
                    break
                yield self._batch(names, [tuple(row) for row in rows], arrow_types, mask_url(url), tracker)
            loop.run(transaction.rollback())
        finally:
            if conn is not None:
                loop.run(conn.close())
            loop.close()

    async def _postgres_types(self, conn: Any) -> dict[str, tuple[str, pa.DataType]]:
        statement = await conn.prepare(f"SELECT * FROM ({self._relation()}) AS lf_source")
        types = {}
        for attribute in statement.get_attributes():
            type_name = attribute.type.name
            types[attribute.name] = (type_name, self.schema.get(attribute.name, POSTGRES_TYPES.get(type_name,
                                                                                                   pa.string())))
        return types

    def _batch(self, names: list[str], rows: list[tuple[Any, ...]], types: dict[str, pa.DataType | None],
               url: str, tracker: _MaxTracker) -> pa.RecordBatch:
        columns = list(zip(*rows))
        arrays = []
        for index, name in enumerate(names):
            target = types.get(name)
            array = _arrow_column(columns[index], target, name, mask_url(url))
            if target is None:
                # A column without a declared type keeps the type its first batch inferred.
                types[name] = array.type
            arrays.append(array)
            if name == tracker.column:
                tracker.update(columns[index])
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def _empty_table(self, partition: str | None) -> pa.Table:
        url = resolve_url(self.url, self.password)
        if dialect_of(url) == "sqlite":
            with _sqlite_connect(url) as conn:
                types = self._sqlite_types(conn)
            fields = [pa.field(name, kind or pa.null()) for name, kind in types.items()]
        else:
            loop = EventLoopThread()
            try:
                types = loop.run(_postgres_types_only(self, url))
            finally:
                loop.close()
            fields = [pa.field(name, kind) for name, (_, kind) in types.items()]
        return pa.schema(fields).empty_table()


class _MaxTracker:
    """The maximum non-null value seen in the watermark column, as the driver returned it."""

    def __init__(self, column: str | None) -> None:
        self.column = column
        self.highest: Any = None

    def update(self, values: Sequence[Any]) -> None:
        present = [value for value in values if value is not None]
        if not present:
            return
        top = max(present)
        if self.highest is None or top > self.highest:
            self.highest = top


@contextlib.contextmanager
def _sqlite_connect(url: str) -> Iterator[sqlite3.Connection]:
    """Open a SQLite database read-only, and close it on exit."""
    path = sqlite_path(url)
    if not os.path.exists(path):
        raise SqlSourceError(f"SQLite database {path} not found: check the path in {url!r}", url=url)
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise SqlSourceError(f"cannot open SQLite database {path}: {err}", url=url) from err
    try:
        yield conn
    finally:
        conn.close()


async def postgres_connect(url: str) -> Any:
    """Connect with asyncpg; a failure names the URL with its password masked."""
    import asyncpg

    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        raise SqlSourceError(f"cannot connect to {mask_url(url)}: {err}", url=mask_url(url)) from err


async def _postgres_fetchrow(url: str, sql: str) -> tuple[Any, ...]:
    conn = await postgres_connect(url)
    try:
        row = await conn.fetchrow(sql)
        return tuple(row) if row is not None else (None, None)
    finally:
        await conn.close()


async def _postgres_types_only(source: SqlSource, url: str) -> dict[str, tuple[str, pa.DataType]]:
    conn = await postgres_connect(url)
    try:
        return await source._postgres_types(conn)
    finally:
        await conn.close()
