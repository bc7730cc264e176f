"""The PostgreSQL event store (asyncpg), for logs that several hosts share.

One PostgreSQL schema contains one log, with the same tables as the SQLite
store: ``meta``, ``events`` (append-only, enforced by triggers that raise on
UPDATE, DELETE and TRUNCATE), ``streams`` (each stream's head, written in the
same transaction as the append) and ``leases`` (who holds a run's lease; not
part of the chain).

URL: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]``
(``postgres://`` works too). ``schema`` picks the PostgreSQL schema of the
log, ``ledgerflow`` by default; other query parameters go to asyncpg as
libpq-style connection parameters. ``store.path`` is the URL without the
password.

Positions never become visible out of order. Every append takes a
transaction-scoped advisory lock on one key per schema before it draws
positions from the identity sequence, and holds it until commit, so appends
to one log commit one after another in position order. PostgreSQL makes a
commit visible before it releases the transaction's locks, so when a reader
sees position p, every position below p has committed or rolled back.
``read_all(after_position=p)`` therefore never skips an event that commits
late. The price is that appends to one log, across all its streams, run one
at a time.

``subscribe`` waits for a NOTIFY that each append sends on commit, and reads
again at least every second even without one, so a missed notification
(or a lost listening connection) delays it but cannot stall it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

from ledgerflow.events._backend import (
    ChainedStore,
    chain_rows,
    check_meta,
    initial_meta,
    repeated_ids_error,
    retried_append,
)
from ledgerflow.events._chain import MIN_KEY_BYTES, ZERO_HASH, head_mac, validate_stream_id
from ledgerflow.events._errors import (
    ConcurrencyError,
    LogNotFoundError,
    NotALogError,
    StoreError,
    TamperedLogError,
    UsageError,
)
from ledgerflow.events._model import Event
from ledgerflow.events._store import READ_CHUNK, AppendResult, NewEvent, RecordedEvent, StreamHead, encode_events

logger = structlog.get_logger("ledgerflow.events")

URL_SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "ledgerflow"
#: Lowercase only, because PostgreSQL folds unquoted names to lowercase and a
#: mixed-case schema would need quoting in every psql session.
SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
CONNECT_TIMEOUT_S = 10.0
#: Maximum wait of a caught-up ``subscribe`` between reads when no NOTIFY arrives.
FALLBACK_POLL_S = 1.0
POOL_MAX_SIZE = 4

_EVENT_COLUMNS = (
    "global_position, stream_id, seq, event_id, type, schema_version, recorded_at, payload, prev_hash, hash"
)


@dataclass(frozen=True)
class PostgresLocation:
    """The location of a PostgreSQL log, parsed from its URL."""

    #: The URL that asyncpg connects with: the store URL without ``schema``, password kept.
    dsn: str
    schema: str
    #: The store URL without the password, for messages and ``store.path``.
    display: str
    host: str
    port: int
    database: str

    @property
    def quoted_schema(self) -> str:
        return f'"{self.schema}"'


def parse_url(url: str) -> PostgresLocation:
    """Parse a ``postgresql://`` store URL.

    Raises:
        UsageError: The URL has an invalid port, schema or query.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in URL_SCHEMES:
        raise UsageError(f"invalid PostgreSQL store URL {_without_password(url)!r}: start it with postgresql://")
    try:
        port = parts.port or 5432
    except ValueError as err:
        raise UsageError(
            f"invalid PostgreSQL store URL {_without_password(url)!r} ({err}): "
            "use postgresql://USER@HOST:PORT/DATABASE?schema=NAME"
        ) from err
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    if len(schemas) > 1:
        raise UsageError(f"store URL {_without_password(url)!r} gives schema more than once: give it once")
    schema = schemas[0] if schemas else DEFAULT_SCHEMA
    if not SCHEMA_PATTERN.fullmatch(schema):
        raise UsageError(
            f"invalid schema {schema!r} in store URL {_without_password(url)!r}: use 1 to 63 lowercase "
            "letters, digits and '_', starting with a letter or '_'"
        )
    rest = [(name, value) for name, value in query if name != "schema"]
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    host = parts.hostname or dict(rest).get("host") or os.environ.get("PGHOST") or "localhost"
    database = parts.path.lstrip("/") or dict(rest).get("dbname") or os.environ.get("PGDATABASE") or "(default)"
    return PostgresLocation(
        dsn=dsn, schema=schema, display=_without_password(url), host=host, port=port, database=database
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def advisory_key(purpose: str, *names: str) -> int:
    """Return a signed 64-bit advisory lock key for ``purpose`` and ``names``.

    The key is the first 8 bytes of SHA-256 over the parts joined by NUL,
    so keys of different logs and runs collide only by chance (about 2**-64).
    """
    digest = hashlib.sha256("\0".join(("ledgerflow", purpose, *names)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def connect(location: PostgresLocation, **options: Any) -> asyncpg.Connection:
    """Open one connection, turning connection failures into StoreError with what to do.

    Raises:
        StoreError: The server is unreachable, the database does not exist or the login failed.
    """
    return await _translating_errors(location, asyncpg.connect(location.dsn, timeout=CONNECT_TIMEOUT_S, **options))


async def _create_pool(location: PostgresLocation) -> asyncpg.Pool:
    return await _translating_errors(
        location, asyncpg.create_pool(location.dsn, min_size=1, max_size=POOL_MAX_SIZE, timeout=CONNECT_TIMEOUT_S)
    )


async def _translating_errors(location: PostgresLocation, awaitable: Any) -> Any:
    where = f"PostgreSQL at {location.host}:{location.port}"
    try:
        return await awaitable
    except asyncpg.InvalidCatalogNameError as err:
        raise StoreError(
            f"database {location.database!r} does not exist on {where}: create it (createdb "
            f"{location.database}) or fix the database in the store URL {location.display}",
            path=location.display,
        ) from err
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as err:
        raise StoreError(
            f"{where} rejected the login ({err}): check the user and password of the store URL "
            f"{location.display} (or PGPASSWORD and ~/.pgpass)",
            path=location.display,
        ) from err
    except (OSError, asyncio.TimeoutError) as err:
        reason = f"timed out after {CONNECT_TIMEOUT_S:g} s" if isinstance(err, asyncio.TimeoutError) else str(err)
        raise StoreError(
            f"cannot connect to {where} ({reason}): start the server, or fix the host and port in "
            f"--store or LEDGERFLOW_STORE ({location.display})",
            path=location.display,
        ) from err
    except asyncpg.PostgresError as err:
        raise StoreError(f"{where} refused the connection ({err}): check the store URL {location.display}",
                         path=location.display) from err


def _schema_statements(schema: str) -> list[str]:
    """Return the statements that create a log in ``schema`` (a name SCHEMA_PATTERN accepted)."""
    s = f'"{schema}"'
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE {s}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE {s}.events (
            global_position BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            stream_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            event_id TEXT NOT NULL,
            type TEXT NOT NULL,
            schema_version INTEGER NOT NULL,
            recorded_at TEXT NOT NULL,
            payload BYTEA NOT NULL,
            prev_hash BYTEA NOT NULL,
            hash BYTEA NOT NULL,
            CONSTRAINT events_event_id UNIQUE (event_id),
            CONSTRAINT events_stream_seq UNIQUE (stream_id, seq)
        )""",
        f"""CREATE TABLE {s}.streams (
            stream_id TEXT PRIMARY KEY,
            head_seq BIGINT NOT NULL,
            head_hash BYTEA NOT NULL,
            head_mac BYTEA
        )""",
        f"""CREATE TABLE {s}.leases (
            run_id TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        f"""CREATE FUNCTION {s}.events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'ledgerflow events are append-only: % is not allowed', TG_OP;
        END
        $$""",
        f"CREATE TRIGGER events_reject_update BEFORE UPDATE ON {s}.events "
        f"FOR EACH ROW EXECUTE FUNCTION {s}.events_reject_change()",
        f"CREATE TRIGGER events_reject_delete BEFORE DELETE ON {s}.events "
        f"FOR EACH ROW EXECUTE FUNCTION {s}.events_reject_change()",
        f"CREATE TRIGGER events_reject_truncate BEFORE TRUNCATE ON {s}.events "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.events_reject_change()",
    ]


class PostgresEventStore(ChainedStore):
    """An event store in one PostgreSQL schema. Open it with :meth:`open`."""

    def __init__(self, location: PostgresLocation, pool: asyncpg.Pool, key: bytes | None, chain: str) -> None:
        self.path = location.display
        self.location = location
        self._pool = pool
        self._key = key
        self.chain = chain
        self._append_lock = advisory_key("append", location.schema)
        self._channel = "ledgerflow_" + hashlib.sha256(location.schema.encode()).hexdigest()[:20]
        s = location.quoted_schema
        self._insert = (
            f"INSERT INTO {s}.events (stream_id, seq, event_id, type, schema_version, recorded_at, payload, "
            "prev_hash, hash) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], "
            "$5::integer[], $6::text[], $7::bytea[], $8::bytea[], $9::bytea[])"
        )
        self._upsert_head = (
            f"INSERT INTO {s}.streams (stream_id, head_seq, head_hash, head_mac) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (stream_id) DO UPDATE SET head_seq = excluded.head_seq, "
            "head_hash = excluded.head_hash, head_mac = excluded.head_mac"
        )
        self._schema = s

    @classmethod
    async def open(
        cls, url: str, *, key: bytes | None = None, create: bool = True
    ) -> PostgresEventStore:
        """Open the log in the URL's schema, creating it when ``create`` is true.

        Raises:
            UsageError: The URL is invalid, the log is keyed but no key is
                set, or the key is shorter than 32 bytes.
            StoreError: The server is unreachable, the database does not
                exist or the login failed.
            LogNotFoundError: The schema contains no log and ``create`` is false.
            NotALogError: The schema contains tables but not a ledgerflow log.
            LogFormatError: The log was written by a newer format version.
            TamperedLogError: A key is set but the log is unkeyed or uses another key.
        """
        if key is not None and (not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES):
            raise UsageError(f"invalid log key: use at least {MIN_KEY_BYTES} bytes, for example from secrets.token_bytes(32)")
        location = parse_url(url)
        pool = await _create_pool(location)
        try:
            async with pool.acquire() as conn:
                chain = await _prepare_schema(conn, location, key, create)
        except BaseException:
            await pool.close()
            raise
        return cls(location, pool, key, chain)

    async def close(self) -> None:
        """Close every connection. The store cannot be used afterwards."""
        await self._pool.close()

    async def __aenter__(self) -> PostgresEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Writing

    async def append(
        self, stream_id: str, events: Sequence[Event | NewEvent], *, expected_version: int
    ) -> AppendResult:
        """Append ``events`` to ``stream_id`` in one transaction.

        An append whose event ids are all stored already is a no-op that
        returns where they are; this is checked before the version.

        Raises:
            ConcurrencyError: The stream's head is not ``expected_version``.
            StoreError: Some, but not all, of the event ids are stored already.
            UsageError: The stream id, an event, its id or its time is invalid.
            TamperedLogError: An event already sits past the stream's head row.
        """
        validate_stream_id(stream_id)
        if not events:
            raise UsageError("append needs at least one event")
        encoded = encode_events(events)
        event_ids = [item.event_id for item in encoded]
        s = self._schema
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    # Held to commit: appends commit in position order (see the module docstring).
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", self._append_lock)
                    # A retried append resends the whole batch, so a new first id means
                    # none is stored; a batch that partly repeats stored ids then fails
                    # on the unique index. The single-id lookup always uses that index.
                    stored = {}
                    if await conn.fetchval(f"SELECT 1 FROM {s}.events WHERE event_id = $1", event_ids[0]):
                        stored = {
                            row[0]: (row[1], row[2], row[3])
                            for row in await conn.fetch(
                                f"SELECT event_id, stream_id, seq, hash FROM {s}.events "
                                "WHERE event_id = ANY($1::text[])",
                                event_ids,
                            )
                        }
                    if stored:
                        return retried_append(stream_id, encoded, stored)
                    head = await conn.fetchrow(
                        f"SELECT head_seq, head_hash FROM {s}.streams WHERE stream_id = $1", stream_id
                    )
                    actual_version, prev_hash = (head[0], head[1]) if head else (0, ZERO_HASH)
                    if actual_version != expected_version:
                        raise ConcurrencyError(stream_id, expected_version, actual_version)
                    rows, last_hash = chain_rows(stream_id, encoded, actual_version, prev_hash, self._key)
                    await conn.execute(self._insert, *(list(column) for column in zip(*rows)))
                    last_seq = actual_version + len(rows)
                    mac = head_mac(self._key, stream_id, last_seq, last_hash) if self._key is not None else None
                    await conn.execute(self._upsert_head, stream_id, last_seq, last_hash, mac)
                    await conn.execute("SELECT pg_notify($1, $2)", self._channel, stream_id)
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == "events_event_id":
                    # The first id was new, so the lookup above did not look at the others.
                    rows = await conn.fetch(
                        f"SELECT event_id, stream_id, seq, hash FROM {s}.events WHERE event_id = ANY($1::text[])",
                        event_ids,
                    )
                    raise repeated_ids_error(stream_id, encoded, {row[0]: (row[1], row[2], row[3]) for row in rows}) from err
                if err.constraint_name != "events_stream_seq":
                    raise StoreError(f"append to stream {stream_id!r} failed: {err}", path=self.path) from err
                # The head row matched, yet a row already has the next seq: the head was rewound by hand.
                raise TamperedLogError(
                    f"stream {stream_id!r} already has an event at seq {expected_version + 1}, past its head row "
                    f"(seq {expected_version}): the log is tampered, so run 'ledgerflow verify' and append nothing",
                    stream_id=stream_id, seq=expected_version, reason="head mismatch",
                ) from err
        return AppendResult(stream_id, actual_version + 1, last_seq, last_hash)

    # Reading

    async def head(self, stream_id: str) -> StreamHead | None:
        """Return the stream's head, or None if the stream has no events."""
        row = await self._pool.fetchrow(
            f"SELECT stream_id, head_seq, head_hash FROM {self._schema}.streams WHERE stream_id = $1", stream_id
        )
        return StreamHead(*row) if row else None

    async def list_streams(self) -> list[StreamHead]:
        """Return the head of every stream, ordered by stream id."""
        rows = await self._pool.fetch(
            f"SELECT stream_id, head_seq, head_hash FROM {self._schema}.streams ORDER BY stream_id COLLATE \"C\""
        )
        return [StreamHead(*row) for row in rows]

    async def _stream_chunks(self, stream_id: str, from_seq: int, to_seq: int) -> AsyncIterator[list[Any]]:
        position = from_seq
        while position <= to_seq:
            rows = await self._pool.fetch(
                f"SELECT {_EVENT_COLUMNS} FROM {self._schema}.events WHERE stream_id = $1 AND seq >= $2 "
                "AND seq <= $3 ORDER BY seq LIMIT $4",
                stream_id, position, to_seq, READ_CHUNK,
            )
            if rows:
                yield rows
            if len(rows) < READ_CHUNK:
                return
            position = rows[-1][2] + 1

    async def read_all(self, *, after_position: int = 0) -> AsyncIterator[RecordedEvent]:
        """Yield every event with a global position above ``after_position``, in order.

        No event that commits later can get a position below one already
        yielded, because appends commit in position order.
        """
        position = after_position
        while True:
            rows = await self._pool.fetch(
                f"SELECT {_EVENT_COLUMNS} FROM {self._schema}.events WHERE global_position > $1 "
                "ORDER BY global_position LIMIT $2",
                position, READ_CHUNK,
            )
            for row in rows:
                yield RecordedEvent._make(row)
            if len(rows) < READ_CHUNK:
                return
            position = rows[-1][0]

    async def subscribe(
        self, *, after_position: int = 0, stream_id: str | None = None, poll_interval: float = 0.05
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events as they are committed, by this or any other process, until the caller stops.

        Once caught up, it waits on a dedicated connection for the NOTIFY
        that every append sends, or at most ``max(poll_interval,
        FALLBACK_POLL_S)`` seconds, and then reads again.
        """
        listener = await connect(self.location)
        wake = asyncio.Event()

        def notified(*_: object) -> None:
            wake.set()

        def lost(*_: object) -> None:
            logger.warning("postgres listening connection lost; polling instead", store=self.path)

        await listener.add_listener(self._channel, notified)
        listener.add_termination_listener(lost)
        wait_s = max(poll_interval, FALLBACK_POLL_S)
        try:
            position = after_position
            while True:
                # Cleared before the read, so a commit that the read misses still wakes the wait below.
                wake.clear()
                caught_up = True
                async for event in self.read_all(after_position=position):
                    position = event.global_position
                    caught_up = False
                    if stream_id is None or event.stream_id == stream_id:
                        yield event
                if not caught_up:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), wait_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            listener.remove_termination_listener(lost)
            await listener.close()

    async def _head_with_mac(self, stream_id: str) -> tuple[StreamHead, bytes | None] | None:
        row = await self._pool.fetchrow(
            f"SELECT stream_id, head_seq, head_hash, head_mac FROM {self._schema}.streams WHERE stream_id = $1",
            stream_id,
        )
        if row is None:
            return None
        return StreamHead(row[0], row[1], row[2]), row[3]

    async def _has_event(self, stream_id: str, seq: int) -> bool:
        row = await self._pool.fetchrow(
            f"SELECT 1 FROM {self._schema}.events WHERE stream_id = $1 AND seq = $2", stream_id, seq
        )
        return row is not None

    async def _all_stream_ids(self) -> list[str]:
        rows = await self._pool.fetch(
            f"SELECT stream_id FROM (SELECT stream_id FROM {self._schema}.streams UNION "
            f"SELECT stream_id FROM {self._schema}.events) AS ids ORDER BY stream_id COLLATE \"C\""
        )
        return [row[0] for row in rows]


async def _prepare_schema(
    conn: asyncpg.Connection, location: PostgresLocation, key: bytes | None, create: bool
) -> str:
    """Check or create the log in the location's schema and return its chain kind.

    An existing schema is checked before anything is written, so tables that
    are not a log stay as they were.
    """
    tables = await _tables_in(conn, location.schema)
    if not tables:
        if not create:
            raise LogNotFoundError(
                f"no event log in schema {location.schema!r} of {location.display}: start a run first or "
                "pass the right --store",
                path=location.display,
            )
        async with conn.transaction():
            # Serialises processes that create the same log at the same time.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key("create", location.schema))
            tables = await _tables_in(conn, location.schema)
            if not tables:
                for statement in _schema_statements(location.schema):
                    await conn.execute(statement)
                await conn.executemany(
                    f"INSERT INTO {location.quoted_schema}.meta (key, value) VALUES ($1, $2)",
                    list(initial_meta(key).items()),
                )
                tables = {"meta"}
    if "meta" not in tables:
        raise NotALogError(
            f"schema {location.schema!r} of {location.display} contains tables but not a ledgerflow log "
            "(no meta table): pass another schema in the store URL, for example ?schema=ledgerflow_2",
            path=location.display,
        )
    try:
        meta = dict(await conn.fetch(f"SELECT key, value FROM {location.quoted_schema}.meta"))
    except asyncpg.PostgresError as err:
        raise NotALogError(
            f"schema {location.schema!r} of {location.display} is not a ledgerflow log ({err}): "
            "pass another schema in the store URL",
            path=location.display,
        ) from err
    return check_meta(meta, location.display, key)


async def _tables_in(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        schema,
    )
    return {row[0] for row in rows}
