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
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite
import structlog

from ledgerflow.events._chain import (
    CHAIN_HMAC,
    CHAIN_SHA256,
    ZERO_HASH,
    chain_step,
    envelope_bytes,
    head_mac,
    key_id,
    validate_stream_id,
)
from ledgerflow.events._errors import (
    ConcurrencyError,
    LogFormatError,
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
            UsageError: The log is keyed but no key is set, or ``synchronous`` is invalid.
        """
        path = os.fspath(path)
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise UsageError(f"invalid synchronous mode {synchronous!r}: use one of {', '.join(SYNCHRONOUS_MODES)}")
        exists = os.path.exists(path) and os.path.getsize(path) > 0
        if not exists and not create:
            raise StoreError(f"no event log at {path}: start a run first or pass the right --home", path=path)
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
        """
        validate_stream_id(stream_id)
        if not events:
            raise UsageError("append needs at least one event")
        encoded = [EncodedEvent.from_new(item) for item in events]
        # NOTE: aiosqlite has no public call that runs a function on its
        # connection thread; _execute (stable since aiosqlite 0.11) keeps the
        # whole transaction to one thread hop.
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
        """Yield the stream's events in seq order, in chunks of ``READ_CHUNK``.

        With ``verify`` the chain is checked on the way; reading to the end
        (``to_seq`` None) also checks the head row, as of the start of the read.

        Raises:
            TamperedLogError: The chain does not verify.
        """
        head_row = await self._head_with_mac(stream_id) if to_seq is None else None
        if to_seq is None:
            to_seq = head_row[0].head_seq if head_row else 2**62
        checker = ChainChecker(stream_id, key=self._key, path=self.path, start_seq=from_seq) if verify else None
        position = from_seq
        while position <= to_seq:
            rows = await self._conn.execute_fetchall(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE stream_id = ? AND seq >= ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (stream_id, position, to_seq, READ_CHUNK),
            )
            for row in rows:
                event = RecordedEvent(*row)
                if checker is not None:
                    checker.check(event)
                yield event
            if len(rows) < READ_CHUNK:
                break
            position = rows[-1][2] + 1
        reached_end = head_row is not None or to_seq == 2**62
        if checker is not None and reached_end and from_seq == 1 and (head_row is not None or checker.count):
            checker.finish(*(head_row or (None, None)))

    async def read_all(self, *, after_position: int = 0) -> AsyncIterator[RecordedEvent]:
        """Yield every event with a global position above ``after_position``, in order."""
        position = after_position
        while True:
            rows = await self._conn.execute_fetchall(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE global_position > ? ORDER BY global_position LIMIT ?",
                (position, READ_CHUNK),
            )
            for row in rows:
                yield RecordedEvent(*row)
            if len(rows) < READ_CHUNK:
                return
            position = rows[-1][0]

    async def subscribe(
        self, *, after_position: int = 0, stream_id: str | None = None, poll_interval: float = 0.05
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events as they are committed, by this or any other process, forever.

        Between batches it polls ``PRAGMA data_version`` on a second
        connection every ``poll_interval`` seconds, which costs no table read.
        """
        watcher = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await watcher.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = None
            position = after_position
            while True:
                found = False
                async for event in self.read_all(after_position=position):
                    position = event.global_position
                    found = True
                    if stream_id is None or event.stream_id == stream_id:
                        yield event
                if found:
                    continue
                while True:
                    rows = await watcher.execute_fetchall("PRAGMA data_version")
                    current = rows[0][0]
                    if version is None:
                        version = current
                    elif current != version:
                        version = current
                        break
                    await asyncio.sleep(poll_interval)
                    if version is not None and await self._has_events_after(position):
                        break
        finally:
            await watcher.close()

    async def _has_events_after(self, position: int) -> bool:
        rows = await self._conn.execute_fetchall(
            "SELECT 1 FROM events WHERE global_position > ? LIMIT 1", (position,)
        )
        return bool(rows)

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
        head_row = await self._head_with_mac(stream_id)
        checker = ChainChecker(stream_id, key=self._key, path=self.path)
        head_seq = head_row[0].head_seq if head_row else None
        head_hex = head_row[0].head_hash.hex() if head_row else None
        try:
            async for event in self.read_stream(stream_id, to_seq=2**62, verify=False):
                checker.check(event)
            checker.finish(head_row[0] if head_row else None, head_row[1] if head_row else None)
        except TamperedLogError as err:
            return StreamReport(
                stream_id=stream_id, ok=False, events=checker.count, head_seq=head_seq, head_hash=head_hex,
                first_bad_seq=err.seq, reason=err.reason, detail=str(err),
            )
        return StreamReport(
            stream_id=stream_id, ok=True, events=checker.count, head_seq=head_seq, head_hash=head_hex
        )


def _prepare_file(conn: sqlite3.Connection, path: str, synchronous: str, key: bytes | None, exists: bool) -> str:
    """Check or create the schema and return the log's chain kind. Runs on the connection thread."""
    try:
        if exists:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" not in tables:
                raise NotALogError(
                    f"{path} is a SQLite database but not a ledgerflow log (no meta table): "
                    "pass another --home or --store",
                    path=path,
                )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if not exists:
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
        raise NotALogError(
            f"{path} is not a ledgerflow log ({err}): pass another --home or --store", path=path
        ) from err
    return _check_meta(meta, path, key)


def _check_meta(meta: dict[str, str], path: str, key: bytes | None) -> str:
    if meta.get("format") != FORMAT_NAME:
        raise NotALogError(f"{path} is not a ledgerflow log (meta has no format row): pass another --home or --store", path=path)
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise LogFormatError(
            f"{path} has log format version {version}, newer than the {FORMAT_VERSION} this ledgerflow "
            "reads: upgrade ledgerflow",
            path=path,
        )
    chain = meta.get("chain", CHAIN_SHA256)
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
        actual = conn.execute("SELECT head_seq FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
        raise ConcurrencyError(stream_id, expected_version, actual[0] if actual else 0) from err
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

    rows: list[tuple[Any, ...]] = []
    seq = actual_version
    for item in encoded:
        seq += 1
        envelope = envelope_bytes(
            event_id=item.event_id,
            payload_sha256=item.payload_sha256,
            recorded_at=item.recorded_at,
            schema_version=item.schema_version,
            seq=seq,
            stream_id=stream_id,
            event_type=item.event_type,
        )
        digest = chain_step(prev_hash, envelope, key)
        rows.append(
            (stream_id, seq, item.event_id, item.event_type, item.schema_version, item.recorded_at,
             item.payload, prev_hash, digest)
        )
        prev_hash = digest
    conn.executemany(_INSERT_EVENT, rows)
    mac = head_mac(key, stream_id, seq, prev_hash) if key is not None else None
    conn.execute(_UPSERT_HEAD, (stream_id, seq, prev_hash, mac))
    return AppendResult(stream_id, actual_version + 1, seq, prev_hash)


def _stored_ids(conn: sqlite3.Connection, event_ids: list[str]) -> dict[str, tuple[str, int, bytes]]:
    """Return the stored events among ``event_ids``: the first id decides whether to look at all."""
    if conn.execute("SELECT 1 FROM events WHERE event_id = ?", (event_ids[0],)).fetchone() is None:
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
        raise StoreError(
            f"append to stream {stream_id!r} repeats {len(stored)} of {len(encoded)} event ids already "
            "stored elsewhere: a retried append must resend the same batch"
        )
    seqs = sorted(stored.values(), key=lambda entry: entry[1])
    return AppendResult(stream_id, seqs[0][1], seqs[-1][1], seqs[-1][2], written=False)
