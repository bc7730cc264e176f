"""Files and rows the store cannot use: each raises its own error, names what is wrong and changes nothing."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from ledgerflow.events import (
    Event,
    LogFormatError,
    NotALogError,
    PayloadValidationError,
    RunNotFoundError,
    StoreError,
    UnknownEventTypeError,
    UsageError,
    chain_step,
    envelope_bytes,
    load_run_state,
    open_store,
)
from ledgerflow.events._sqlite import SqliteEventStore


class BadInputCounted(Event):
    """An event whose newer writer (in a subprocess) declares ``count`` as text."""

    count: int


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _siblings(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path.parent) if name.startswith(path.name))


async def _make_log(path: Path, support) -> None:
    store = await open_store(str(path), key=None)
    try:
        await store.append("run-1", [support.WorkerNoted(writer="w", index=index) for index in range(3)],
                           expected_version=0)
    finally:
        await store.close()


def _event_count(path: Path) -> int:
    return len(_query(path, "SELECT seq FROM events"))


def _query(path: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(sql, parameters).fetchall()
        connection.commit()
        return rows
    finally:
        connection.close()


@pytest.mark.parametrize(
    "content", [b"this is a text file, not a database\n" * 200, os.urandom(8192), b"SQLite format 3\x00" + bytes(100)],
    ids=["text", "random bytes", "truncated header"],
)
async def test_open_non_sqlite_file_rejected(tmp_path, content):
    path = tmp_path / "notes.db"
    path.write_bytes(content)

    with pytest.raises(NotALogError) as caught:
        await open_store(str(path), key=None)

    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content
    assert _siblings(path) == ["notes.db"]


async def test_open_other_sqlite_database_rejected(tmp_path):
    path = tmp_path / "shop.db"
    _query(path, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    before = _digest(path)

    with pytest.raises(NotALogError, match="no meta table") as caught:
        await open_store(str(path), key=None)

    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    assert _digest(path) == before
    assert _query(path, "PRAGMA journal_mode") == [("delete",)]
    assert _query(path, "SELECT name FROM sqlite_master") == [("customers",)]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE meta (name TEXT)",
    ],
    ids=["meta without format row", "meta with other columns"],
)
async def test_open_foreign_meta_table_rejected(tmp_path, statement):
    path = tmp_path / "other.db"
    _query(path, statement)
    before = _digest(path)

    with pytest.raises(NotALogError) as caught:
        await open_store(str(path), key=None)

    assert str(path) in str(caught.value)
    assert _digest(path) == before
    assert _query(path, "PRAGMA journal_mode") == [("delete",)]


async def test_open_newer_format_rejected(tmp_path, support):
    path = tmp_path / "log.db"
    await _make_log(path, support)
    _query(path, "UPDATE meta SET value = '2' WHERE key = 'format_version'")
    before = _digest(path)

    with pytest.raises(LogFormatError, match="log format version 2, newer than the 1") as caught:
        await open_store(str(path), key=None)

    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    assert _digest(path) == before
    assert _event_count(path) == 3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("format_version", "one", "invalid log format version 'one'"), ("chain", "blake3", "chain 'blake3'")],
)
async def test_open_unreadable_meta_rejected(tmp_path, support, key, value, message):
    path = tmp_path / "log.db"
    await _make_log(path, support)
    _query(path, "UPDATE meta SET value = ? WHERE key = ?", (value, key))
    before = _digest(path)

    with pytest.raises(LogFormatError, match=message) as caught:
        await open_store(str(path), key=None)

    assert str(path) in str(caught.value)
    assert _digest(path) == before


async def test_open_missing_without_create(tmp_path):
    path = tmp_path / "absent" / "log.db"

    with pytest.raises(StoreError, match="no event log at") as caught:
        await open_store(str(path), key=None, create=False)

    assert caught.value.path == str(path)
    assert not path.parent.exists()


async def test_open_unsupported_url_rejected(tmp_path):
    with pytest.raises(UsageError, match="unsupported store URL 'mysql://host/db'"):
        await open_store("mysql://host/db", key=None)


async def test_open_invalid_synchronous_rejected(tmp_path):
    path = tmp_path / "log.db"

    with pytest.raises(UsageError, match="invalid synchronous mode 'SOMETIMES'"):
        await SqliteEventStore.open(path, synchronous="SOMETIMES")

    assert not path.exists()


async def test_open_sqlite_url(tmp_path, support):
    path = tmp_path / "log.db"
    await _make_log(path, support)

    store = await open_store(f"sqlite:///{path}", key=None)
    try:
        head = await store.head("run-1")
    finally:
        await store.close()

    assert head.head_seq == 3


# A newer ledgerflow, run in a subprocess: it has an event type that this
# process lacks, and declares BadInputCounted.count as text.
NEWER_WRITER = """
import asyncio, sys
from ledgerflow.events import Event, open_store

class BadInputFuture(Event):
    note: str

class BadInputCounted(Event):
    count: str

async def main(path):
    store = await open_store(path, key=None)
    await store.append("run-1", [BadInputFuture(note="from the future"), BadInputCounted(count="many")],
                       expected_version=3)
    await store.close()

asyncio.run(main(sys.argv[1]))
"""


async def test_read_unknown_event_type_raises(tmp_path, support):
    path = tmp_path / "log.db"
    await _make_log(path, support)
    support.run_python(NEWER_WRITER, str(path))
    before = _digest(path)

    store = await open_store(str(path), key=None)
    try:
        stored = [event async for event in store.read_stream("run-1")]
        report = await store.verify()
        with pytest.raises(UnknownEventTypeError) as caught:
            stored[3].decode(store.path)
        with pytest.raises(UnknownEventTypeError) as caught_in_fold:
            await load_run_state(store, "run-1")
    finally:
        await store.close()

    assert report.ok
    assert [event.decode().index for event in stored[:3]] == [0, 1, 2]
    for error in (caught.value, caught_in_fold.value):
        assert (error.path, error.stream_id, error.seq, error.event_type) == (str(path), "run-1", 4, "BadInputFuture")
        assert str(path) in str(error)
        assert "stream 'run-1' seq 4" in str(error)
        assert "'BadInputFuture'" in str(error)
    assert _digest(path) == before


async def test_read_invalid_payload_raises(tmp_path, support):
    path = tmp_path / "log.db"
    await _make_log(path, support)
    support.run_python(NEWER_WRITER, str(path))
    before = _digest(path)

    store = await open_store(str(path), key=None)
    try:
        stored = [event async for event in store.read_stream("run-1")]
        with pytest.raises(PayloadValidationError) as caught:
            stored[4].decode(store.path)
    finally:
        await store.close()

    error = caught.value
    assert (error.path, error.stream_id, error.seq, error.event_type) == (str(path), "run-1", 5, "BadInputCounted")
    assert f"invalid BadInputCounted payload at stream 'run-1' seq 5 in {path}" in str(error)
    assert "count" in str(error)
    assert _digest(path) == before


def _append_raw_row(path: Path, payload: bytes) -> None:
    """Append a correctly chained row whose payload is not msgpack, as a broken writer could."""
    connection = sqlite3.connect(path)
    try:
        seq, prev_hash = connection.execute("SELECT head_seq, head_hash FROM streams WHERE stream_id = 'run-1'").fetchone()
        seq += 1
        event_id = "01900000-0000-7000-8000-000000000001"
        recorded_at = "2024-01-01T00:00:00.000000Z"
        envelope = envelope_bytes(event_id=event_id, payload_sha256=hashlib.sha256(payload).hexdigest(),
                                  recorded_at=recorded_at, schema_version=1, seq=seq, stream_id="run-1",
                                  event_type="WorkerNoted")
        digest = chain_step(prev_hash, envelope)
        connection.execute(
            "INSERT INTO events (stream_id, seq, event_id, type, schema_version, recorded_at, payload, prev_hash, hash) "
            "VALUES ('run-1', ?, ?, 'WorkerNoted', 1, ?, ?, ?, ?)",
            (seq, event_id, recorded_at, payload, prev_hash, digest),
        )
        connection.execute("UPDATE streams SET head_seq = ?, head_hash = ? WHERE stream_id = 'run-1'", (seq, digest))
        connection.commit()
    finally:
        connection.close()


@pytest.mark.parametrize("payload", [b"\xc1", b"", b"\x92\x01\x02", b"\x81\xa6writer\x01"],
                         ids=["reserved byte", "empty", "array", "wrong field type"])
async def test_read_undecodable_payload_raises(tmp_path, support, payload):
    path = tmp_path / "log.db"
    await _make_log(path, support)
    _append_raw_row(path, payload)

    store = await open_store(str(path), key=None)
    try:
        stored = [event async for event in store.read_stream("run-1")]
        with pytest.raises(PayloadValidationError) as caught:
            stored[3].decode(store.path)
    finally:
        await store.close()

    assert (caught.value.stream_id, caught.value.seq, caught.value.path) == ("run-1", 4, str(path))
    assert _event_count(path) == 4


async def test_load_run_state_unknown_run(tmp_path, support):
    path = tmp_path / "log.db"
    await _make_log(path, support)

    store = await open_store(str(path), key=None)
    try:
        with pytest.raises(RunNotFoundError, match="run 'run-2' not found") as caught:
            await load_run_state(store, "run-2")
    finally:
        await store.close()

    assert caught.value.path == str(path)


async def test_open_empty_database_becomes_log(tmp_path, support):
    path = tmp_path / "empty.db"
    _query(path, "PRAGMA user_version = 7")
    assert path.stat().st_size > 0

    await _make_log(path, support)

    assert _query(path, "SELECT value FROM meta WHERE key = 'format'") == [("ledgerflow-log",)]
    assert _event_count(path) == 3
