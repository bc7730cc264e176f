"""The SQLite event store (aiosqlite), the embedded default.

One file holds every stream: the ``events`` table (append-only, enforced by
triggers), the ``streams`` head table written in the same transaction as each
append, and a ``meta`` table with the format version and chain kind.

Durability: ``synchronous=FULL`` (the default) makes every committed append
survive a power loss; ``NORMAL`` is faster but in WAL mode may lose the last
transactions on power loss (never on a process crash), and the ``streams``
head table then still matches the events that remain.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite
import structlog

from ledgerflow.events._chain import (
    CHAIN_HMAC,
    CHAIN_SHA256,
    MIN_KEY_BYTES,
    ZERO_HASH,
    chain_step,
    format_envelope,
    head_mac,
    key_id,
    validate_stream_id,
)
from ledgerflow.events._errors import (
    ConcurrencyError,
    LogFormatError,
    LogNotFoundError,
    NotALogError,
    StoreError,
    TamperedLogError,
    UsageError,
)
from ledgerflow.events._model import Event
from ledgerflow.events._store import (
    READ_CHUNK,
    AppendResult,
    EncodedEvent,
    NewEvent,
    RecordedEvent,
    StreamHead,
    StreamReport,
    VerifyReport,
    encode_events,
)
from ledgerflow.events._verify import ChainChecker

logger = structlog.get_logger("ledgerflow.events")

FORMAT_NAME = "ledgerflow-log"
FORMAT_VERSION = 1
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 60_000

_EVENT_COLUMNS = (
    "global_position, stream_id, seq, event_id, type, schema_version, recorded_at, payload, prev_hash, hash"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    global_position INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    payload BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (stream_id, seq)
);
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    head_seq INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    head_mac BLOB
);
CREATE TRIGGER IF NOT EXISTS events_reject_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'ledgerflow events are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS events_reject_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'ledgerflow events are append-only: DELETE is not allowed'); END;
"""

_INSERT_EVENT = (
    "INSERT INTO events (stream_id, seq, event_id, type, schema_version, recorded_at, payload, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Rows per INSERT statement. 100 rows bind 900 values, under the 999 that
#: SQLite before 3.32 allows in one statement.
ROWS_PER_INSERT = 100
_VALUES_PER_ROW = 9
_UPSERT_HEAD = (
    "INSERT INTO streams (stream_id, head_seq, head_hash, head_mac) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (stream_id) DO UPDATE SET head_seq = excluded.head_seq, "
    "head_hash = excluded.head_hash, head_mac = excluded.head_mac"
)


class SqliteEventStore:
    """An event store in one SQLite file. Open it with :meth:`open`."""

    def __init__(self, path: str, conn: aiosqlite.Connection, key: bytes | None, chain: str) -> None:
        self.path = path
        self._conn = conn
        self._key = key
        self.chain = chain

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        synchronous: str = "FULL",
        create: bool = True,
    ) -> SqliteEventStore:
        """Open the log at ``path``, creating it when ``create`` is true.

        Raises:
            NotALogError: The file exists but is not a ledgerflow log.
            LogFormatError: The log was written by a newer format version.
            TamperedLogError: A key is set but the log is unkeyed or uses another key.
            UsageError: The log is keyed but no key is set, the key is shorter
                than 32 bytes, or ``synchronous`` is invalid.
        """
        path = os.fspath(path)
        if key is not None and (not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES):
            raise UsageError(f"invalid log key: use at least {MIN_KEY_BYTES} bytes, for example from secrets.token_bytes(32)")
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise UsageError(f"invalid synchronous mode {synchronous!r}: use one of {', '.join(SYNCHRONOUS_MODES)}")
        exists = os.path.exists(path) and os.path.getsize(path) > 0
        if not exists and not create:
            raise LogNotFoundError(f"no event log at {path}: start a run first or pass the right --home",
                                   path=path)
        if not exists:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            chain = await conn._execute(_prepare_file, conn._conn, path, mode, key, exists)
        except BaseException:
            await conn.close()
            raise
        return cls(path, conn, key, chain)

    async def close(self) -> None:
        """Close the connection. The store cannot be used afterwards."""
        await self._conn.close()

    async def __aenter__(self) -> SqliteEventStore:
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
        """
        validate_stream_id(stream_id)
        if not events:
            raise UsageError("append needs at least one event")
        return await self._append_encoded(stream_id, encode_events(events), expected_version)

    async def _append_encoded(
        self, stream_id: str, encoded: list[EncodedEvent], expected_version: int
    ) -> AppendResult:
        # NOTE: aiosqlite has no public call that runs a function on its
        # connection thread. The private _execute (checked on aiosqlite
        # 0.22.1) runs the whole transaction in one thread hop.
        return await self._conn._execute(
            _append_sync, self._conn._conn, stream_id, encoded, expected_version, self._key
        )

    # Reading

    async def head(self, stream_id: str) -> StreamHead | None:
        """Return the stream's head, or None if the stream has no events."""
        rows = await self._conn.execute_fetchall(
            "SELECT stream_id, head_seq, head_hash FROM streams WHERE stream_id = ?", (stream_id,)
        )
        return StreamHead(*rows[0]) if rows else None

    async def list_streams(self) -> list[StreamHead]:
        """Return the head of every stream, ordered by stream id."""
        rows = await self._conn.execute_fetchall(
            "SELECT stream_id, head_seq, head_hash FROM streams ORDER BY stream_id"
        )
        return [StreamHead(*row) for row in rows]

    async def read_stream(
        self, stream_id: str, *, from_seq: int = 1, to_seq: int | None = None, verify: bool = True
    ) -> AsyncIterator[RecordedEvent]:
        """Yield the stream's events in seq order, fetched in chunks of ``READ_CHUNK``.

        The read stops at the head as of its start (or at ``to_seq``, if
        lower), so events appended meanwhile are not included. With
        ``verify`` the chain is checked on the way, and a read that reaches
        that head also checks the head row. Events before a bad one are
        yielded before the error is raised.

        Raises:
            TamperedLogError: The chain does not verify.
        """
        head_row = await self._head_with_mac(stream_id) if verify or to_seq is None else None
        head_seq = head_row[0].head_seq if head_row else None
        if head_seq is None:
            end = 2**62 if to_seq is None else to_seq
        else:
            end = head_seq if to_seq is None else min(to_seq, head_seq)
        checker = ChainChecker(stream_id, key=self._key, path=self.path, start_seq=from_seq) if verify else None

        async for rows in self._stream_chunks(stream_id, from_seq, end):
            if checker is None:
                for row in rows:
                    yield RecordedEvent._make(row)
                continue
            events, error = checker.check_rows(rows)
            for event in events:
                yield event
            if error is not None:
                raise error

        if checker is None:
            return
        if head_row is None:
            if checker.count:
                checker.finish(None, None)
        elif end == head_seq and from_seq <= head_seq:
            checker.finish(head_row[0], head_row[1], events_after_head=await self._events_after_head(stream_id, head_seq))
        else:
            checker.check_reached(end)

    async def _events_after_head(self, stream_id: str, head_seq: int) -> bool:
        """Return whether events follow ``head_seq`` while the head row still ends the stream there.

        An append commits its events and the head row together, and the
        event is looked up first, so only a rewound head row returns True.
        """
        rows = await self._conn.execute_fetchall(
            "SELECT 1 FROM events WHERE stream_id = ? AND seq = ?", (stream_id, head_seq + 1)
        )
        if not rows:
            return False
        head = await self.head(stream_id)
        return head is None or head.head_seq == head_seq

    async def _stream_chunks(self, stream_id: str, from_seq: int, to_seq: int) -> AsyncIterator[list[Any]]:
        """Yield the stream's rows from seq ``from_seq`` to ``to_seq``, ``READ_CHUNK`` rows at a time.

        Chunks are fetched one after the other. Fetching the next chunk
        while the caller handles the current one gained nothing measurable,
        because building the rows on the connection's thread needs the GIL.
        """
        position = from_seq
        while position <= to_seq:
            rows = await self._conn.execute_fetchall(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE stream_id = ? AND seq >= ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (stream_id, position, to_seq, READ_CHUNK),
            )
            if rows:
                yield rows
            if len(rows) < READ_CHUNK:
                return
            position = rows[-1][2] + 1

    async def read_all(self, *, after_position: int = 0) -> AsyncIterator[RecordedEvent]:
        """Yield every event with a global position above ``after_position``, in order."""
        position = after_position
        while True:
            rows = await self._conn.execute_fetchall(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE global_position > ? ORDER BY global_position LIMIT ?",
                (position, READ_CHUNK),
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

        Once caught up, it polls ``PRAGMA data_version`` on a second
        connection every ``poll_interval`` seconds. That reads no table, and
        the value changes whenever another connection commits.
        """
        watcher = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await watcher.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            position = after_position
            while True:
                # The version is taken before the read, so a commit that the
                # read misses still changes it.
                version = await _data_version(watcher)
                caught_up = True
                async for event in self.read_all(after_position=position):
                    position = event.global_position
                    caught_up = False
                    if stream_id is None or event.stream_id == stream_id:
                        yield event
                if not caught_up:
                    continue
                while await _data_version(watcher) == version:
                    await asyncio.sleep(poll_interval)
        finally:
            await watcher.close()

    async def _head_with_mac(self, stream_id: str) -> tuple[StreamHead, bytes | None] | None:
        rows = await self._conn.execute_fetchall(
            "SELECT stream_id, head_seq, head_hash, head_mac FROM streams WHERE stream_id = ?", (stream_id,)
        )
        if not rows:
            return None
        stream, seq, digest, mac = rows[0]
        return StreamHead(stream, seq, digest), mac

    # Verification

    async def verify(self, stream_id: str | None = None) -> VerifyReport:
        """Recompute every chain (or one stream's) and report the first bad seq of each."""
        if stream_id is not None:
            stream_ids = [stream_id]
        else:
            rows = await self._conn.execute_fetchall(
                "SELECT stream_id FROM streams UNION SELECT DISTINCT stream_id FROM events ORDER BY 1"
            )
            stream_ids = [row[0] for row in rows]
        reports = [await self._verify_stream(stream) for stream in stream_ids]
        return VerifyReport(path=self.path, chain=self.chain, streams=tuple(reports))

    async def _verify_stream(self, stream_id: str) -> StreamReport:
        checker = ChainChecker(stream_id, key=self._key, path=self.path)
        head_row = None
        try:
            # Events are read before the head row. An append commits both
            # together, so a head past the last event read means appends
            # landed meanwhile (read on) or the tail was cut (nothing more).
            while True:
                count_before = checker.count
                async for rows in self._stream_chunks(stream_id, checker.expected_seq, 2**62):
                    _, error = checker.check_rows(rows)
                    if error is not None:
                        raise error
                head_row = await self._head_with_mac(stream_id)
                behind = head_row is not None and head_row[0].head_seq >= checker.expected_seq
                if not behind or checker.count == count_before:
                    break
            checker.finish(head_row[0] if head_row else None, head_row[1] if head_row else None)
        except TamperedLogError as err:
            if head_row is None:
                head_row = await self._head_with_mac(stream_id)
            return StreamReport(
                stream_id=stream_id, ok=False, events=checker.count,
                head_seq=head_row[0].head_seq if head_row else None,
                head_hash=head_row[0].head_hash.hex() if head_row else None,
                first_bad_seq=err.seq, reason=err.reason, detail=str(err),
            )
        return StreamReport(
            stream_id=stream_id, ok=True, events=checker.count,
            head_seq=head_row[0].head_seq if head_row else None,
            head_hash=head_row[0].head_hash.hex() if head_row else None,
        )


async def _data_version(connection: aiosqlite.Connection) -> int:
    rows = await connection.execute_fetchall("PRAGMA data_version")
    return rows[0][0]


def _prepare_file(conn: sqlite3.Connection, path: str, synchronous: str, key: bytes | None, exists: bool) -> str:
    """Check or create the schema and return the log's chain kind. Runs on the connection thread.

    An existing file is checked before anything is set or written, so a file
    that is not a log, or a log this version cannot read, stays as it was.
    """
    try:
        if exists:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            # A database without tables is empty, or another process is creating the log in it right now.
            exists = bool(tables)
        if exists:
            if "meta" not in tables:
                raise NotALogError(
                    f"{path} is a SQLite database but not a ledgerflow log (no meta table): "
                    "pass another --home or --store",
                    path=path,
                )
            _check_meta(dict(conn.execute("SELECT key, value FROM meta").fetchall()), path, key)
        _enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if not exists:
            # Another process may create the same file at the same time, so
            # every statement tolerates finding the schema already there.
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            chain = CHAIN_HMAC if key is not None else CHAIN_SHA256
            initial = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "chain": chain}
            if key is not None:
                initial["key_id"] = key_id(key)
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", initial.items())
            conn.execute("COMMIT")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as err:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
            raise StoreError(
                f"timed out after {BUSY_TIMEOUT_MS // 1000} s waiting for the lock on {path}, which another "
                "process holds: retry when it is done",
                path=path,
            ) from err
        raise NotALogError(
            f"{path} is not a ledgerflow log ({err}): pass another --home or --store", path=path
        ) from err
    return _check_meta(meta, path, key)


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL, waiting out writers that hold the lock.

    Switching takes an exclusive lock. If another process is creating the
    schema in a fresh file, SQLite reports "locked" at once instead of calling
    the busy handler, because waiting could deadlock. This loop waits instead,
    up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _check_meta(meta: dict[str, str], path: str, key: bytes | None) -> str:
    if meta.get("format") != FORMAT_NAME:
        raise NotALogError(f"{path} is not a ledgerflow log (meta has no format row): pass another --home or --store", path=path)
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise LogFormatError(
            f"{path} has an invalid log format version {meta.get('format_version')!r} in its meta table",
            path=path,
        ) from None
    if version > FORMAT_VERSION:
        raise LogFormatError(
            f"{path} has log format version {version}, newer than the {FORMAT_VERSION} this ledgerflow "
            "reads: upgrade ledgerflow",
            path=path,
        )
    chain = meta.get("chain", CHAIN_SHA256)
    if chain not in (CHAIN_SHA256, CHAIN_HMAC):
        raise LogFormatError(
            f"{path} uses the chain {chain!r}, which this ledgerflow does not know: upgrade ledgerflow",
            path=path,
        )
    if chain == CHAIN_HMAC and key is None:
        raise UsageError(
            f"the log {path} is keyed (key id {meta.get('key_id')}): set LEDGERFLOW_LOG_KEY to its key"
        )
    if chain == CHAIN_SHA256 and key is not None:
        raise TamperedLogError(
            f"log {path} is unkeyed but LEDGERFLOW_LOG_KEY is set: a keyed log never loses its key, "
            "so treat this file as tampered (or unset the key if the log was created without one)",
            stream_id="", seq=None, reason="wrong key",
        )
    if key is not None and meta.get("key_id") != key_id(key):
        raise TamperedLogError(
            f"log {path} was keyed with key id {meta.get('key_id')}, not {key_id(key)}: "
            "set LEDGERFLOW_LOG_KEY to the log's key",
            stream_id="", seq=None, reason="wrong key",
        )
    return chain


def _append_sync(
    conn: sqlite3.Connection,
    stream_id: str,
    encoded: list[EncodedEvent],
    expected_version: int,
    key: bytes | None,
) -> AppendResult:
    """Run one append transaction. Runs on the connection thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = _append_in_transaction(conn, stream_id, encoded, expected_version, key)
        if result.written:
            conn.execute("COMMIT")
        else:
            conn.execute("ROLLBACK")
        return result
    except sqlite3.IntegrityError as err:
        conn.execute("ROLLBACK")
        if "event_id" in str(err):
            # The first id was new, so _stored_ids did not look at the others.
            stored = _stored_ids(conn, [item.event_id for item in encoded], check_first=False)
            raise _repeated_ids_error(stream_id, encoded, stored) from err
        actual = conn.execute("SELECT head_seq FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
        actual_version = actual[0] if actual else 0
        if actual_version == expected_version:
            # The head row matched, yet a row already has the next seq: the head was rewound by hand.
            raise TamperedLogError(
                f"stream {stream_id!r} already has an event at seq {expected_version + 1}, past its head row "
                f"(seq {expected_version}): the log is tampered, so run 'ledgerflow verify' and append nothing",
                stream_id=stream_id, seq=expected_version, reason="head mismatch",
            ) from err
        raise ConcurrencyError(stream_id, expected_version, actual_version) from err
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _append_in_transaction(
    conn: sqlite3.Connection,
    stream_id: str,
    encoded: list[EncodedEvent],
    expected_version: int,
    key: bytes | None,
) -> AppendResult:
    stored = _stored_ids(conn, [item.event_id for item in encoded])
    if stored:
        return _retried_append(stream_id, encoded, stored)

    head = conn.execute("SELECT head_seq, head_hash FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
    actual_version, prev_hash = head if head else (0, ZERO_HASH)
    if actual_version != expected_version:
        raise ConcurrencyError(stream_id, expected_version, actual_version)

    values: list[Any] = []
    seq = actual_version
    sha256 = hashlib.sha256
    for event_id, event_type, schema_version, recorded_at, payload, payload_sha256 in encoded:
        seq += 1
        # encode_events made every field of the envelope, so it needs no escaping check.
        envelope = format_envelope(event_id, payload_sha256, recorded_at, schema_version, seq, stream_id, event_type)
        digest = sha256(prev_hash + envelope).digest() if key is None else chain_step(prev_hash, envelope, key)
        values += (stream_id, seq, event_id, event_type, schema_version, recorded_at, payload, prev_hash, digest)
        prev_hash = digest
    insert_values(conn, values)
    mac = head_mac(key, stream_id, seq, prev_hash) if key is not None else None
    conn.execute(_UPSERT_HEAD, (stream_id, seq, prev_hash, mac))
    return AppendResult(stream_id, actual_version + 1, seq, prev_hash)


def insert_values(conn: sqlite3.Connection, values: list[Any]) -> None:
    """Insert event rows given as one flat list of values, in ``_INSERT_EVENT`` column order.

    One INSERT of up to ROWS_PER_INSERT rows took about a fifth less CPU
    than executemany of the same rows, in a measurement of 100-row appends
    to this table on SQLite 3.40.1.
    """
    step = ROWS_PER_INSERT * _VALUES_PER_ROW
    for start in range(0, len(values), step):
        chunk = values[start : start + step]
        conn.execute(_insert_statement(len(chunk) // _VALUES_PER_ROW), chunk)


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_statement(rows: int) -> str:
    return _INSERT_EVENT + ", (?, ?, ?, ?, ?, ?, ?, ?, ?)" * (rows - 1)


def _stored_ids(
    conn: sqlite3.Connection, event_ids: list[str], *, check_first: bool = True
) -> dict[str, tuple[str, int, bytes]]:
    """Return the stored events among ``event_ids``.

    With ``check_first``, a new first id ends the search: a retried append
    resends the whole batch, and a batch that only partly repeats stored ids
    fails on the unique index instead.
    """
    if check_first and conn.execute("SELECT 1 FROM events WHERE event_id = ?", (event_ids[0],)).fetchone() is None:
        return {}
    found: dict[str, tuple[str, int, bytes]] = {}
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for event_id, stream, seq, digest in conn.execute(
            f"SELECT event_id, stream_id, seq, hash FROM events WHERE event_id IN ({marks})", chunk
        ):
            found[event_id] = (stream, seq, digest)
    return found


def _retried_append(
    stream_id: str, encoded: list[EncodedEvent], stored: dict[str, tuple[str, int, bytes]]
) -> AppendResult:
    if len(stored) != len(encoded) or any(stream != stream_id for stream, _, _ in stored.values()):
        raise _repeated_ids_error(stream_id, encoded, stored)
    seqs = sorted(stored.values(), key=lambda entry: entry[1])
    return AppendResult(stream_id, seqs[0][1], seqs[-1][1], seqs[-1][2], written=False)


def _repeated_ids_error(
    stream_id: str, encoded: list[EncodedEvent], stored: dict[str, tuple[str, int, bytes]]
) -> StoreError:
    example = next(iter(stored.items()), None)
    where = f"; for example {example[0]} is seq {example[1][1]} of stream {example[1][0]!r}" if example else ""
    return StoreError(
        f"append to stream {stream_id!r} repeats {len(stored)} of {len(encoded)} event ids that are "
        f"already stored{where}: a retried append must resend the same batch to the same stream"
    )
