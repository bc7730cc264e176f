"""Tampering with a log by hand: every edit shows in ``verify``, in verified reads and in an independent verifier."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ledgerflow.events import (
    KEY_ENV,
    TamperedLogError,
    UsageError,
    envelope_bytes,
    head_mac,
    open_store,
)
from ledgerflow.events._chain import format_envelope

KEY = bytes.fromhex("6b" * 32)
OTHER_KEY = bytes.fromhex("4f" * 32)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "log-format.md"


def independent_verify(path: str, key: bytes | None = None) -> list[str]:
    """Recompute every chain from the file with the standard library alone, as the log format states."""
    db = sqlite3.connect(path)
    heads = {row[0]: row[1:] for row in db.execute("SELECT stream_id, head_seq, head_hash, head_mac FROM streams")}
    last: dict[str, tuple[int, bytes]] = {}
    problems = []
    for stream, seq, event_id, kind, version, recorded_at, payload, prev_hash, digest in db.execute(
        "SELECT stream_id, seq, event_id, type, schema_version, recorded_at, payload, prev_hash, hash "
        "FROM events ORDER BY stream_id, seq"
    ):
        fields = {"event_id": event_id, "payload_sha256": hashlib.sha256(payload).hexdigest(), "recorded_at": recorded_at,
                  "schema_version": version, "seq": seq, "stream_id": stream, "type": kind}
        envelope = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
        step = hmac.new(key, prev_hash + envelope, "sha256") if key else hashlib.sha256(prev_hash + envelope)
        last_seq, last_hash = last.get(stream, (0, bytes(32)))
        if seq != last_seq + 1 or prev_hash != last_hash or step.digest() != digest:
            problems.append(f"{stream}: bad event at seq {seq}")
        last[stream] = (seq, digest)
    for stream in sorted(heads.keys() | last.keys()):
        head_seq, head_hash, mac = heads.get(stream, (None, None, None))
        if (head_seq, head_hash) != last.get(stream):
            problems.append(f"{stream}: head does not match the last event")
        elif key and mac != hmac.new(key, f"{stream}\0{head_seq}\0".encode() + head_hash, "sha256").digest():
            problems.append(f"{stream}: head MAC does not match the key")
    db.close()
    return problems


async def _build_log(path: str, support, key: bytes | None = None) -> dict[str, str]:
    """Write streams run-a (6 events in three appends) and run-b (4 events); return each head hash as hex."""
    store = await open_store(path, key=key)
    try:
        version = 0
        for size in (2, 3, 1):
            events = [support.WorkerNoted(writer="a", index=version + offset + 1) for offset in range(size)]
            version = (await store.append("run-a", events, expected_version=version)).last_seq
        await store.append("run-b", [support.WorkerNoted(writer="b", index=index) for index in range(4)], expected_version=0)
        return {head.stream_id: head.head_hash.hex() for head in await store.list_streams()}
    finally:
        await store.close()


def _tamper_sqlite(path: str, edit: Callable[[sqlite3.Connection], None]) -> None:
    """Drop the append-only triggers, as someone with write access to the file can, and apply ``edit``."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("DROP TRIGGER events_reject_update")
        connection.execute("DROP TRIGGER events_reject_delete")
        edit(connection)
        connection.commit()
    finally:
        connection.close()


class PostgresEditor:
    """A sqlite3-style connection to one PostgreSQL log, for the tamper edits written for SQLite.

    It turns ``?`` placeholders into ``$n`` and ``zeroblob(32)`` into 32 zero
    bytes, and runs every statement in one transaction on a private event
    loop, because the edits are plain functions and the tests are async.
    """

    def __init__(self, url: str) -> None:
        import asyncpg

        server, schema = url.split("?schema=")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._rows: list[tuple] = []
        self._connection = self._call(asyncpg.connect(server, server_settings={"search_path": schema}))
        self._call(self._connection.execute("BEGIN"))

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def execute(self, sql: str, parameters: tuple = ()) -> PostgresEditor:
        count = iter(range(1, len(parameters) + 1))
        sql = re.sub(r"\?", lambda _: f"${next(count)}", sql).replace("zeroblob(32)", "decode(repeat('00', 32), 'hex')")
        self._rows = [tuple(row) for row in self._call(self._connection.fetch(sql, *parameters))]
        return self

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple]:
        return self._rows

    def commit_and_close(self) -> None:
        try:
            self._call(self._connection.execute("COMMIT"))
            self._call(self._connection.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


def _tamper(backend, url: str, edit: Callable) -> None:  # type: ignore[no-untyped-def]
    """Apply ``edit`` to the log with its append-only triggers off, as someone with write access can.

    On PostgreSQL that someone is a superuser (or the table owner), who
    disables the triggers, edits and enables them again in one transaction.
    """
    if backend.name == "sqlite":
        _tamper_sqlite(url, edit)
        return
    editor = PostgresEditor(url)
    editor.execute("ALTER TABLE events DISABLE TRIGGER USER")
    edit(editor)
    editor.execute("ALTER TABLE events ENABLE TRIGGER USER")
    editor.commit_and_close()


async def _count_events(backend, url: str, stream_id: str) -> int:  # type: ignore[no-untyped-def]
    store = await open_store(url, key=None)
    try:
        return len([event async for event in store.read_all() if event.stream_id == stream_id])
    finally:
        await store.close()


def _flip_payload_byte(connection: sqlite3.Connection) -> None:
    (payload,) = connection.execute("SELECT payload FROM events WHERE stream_id = 'run-a' AND seq = 3").fetchone()
    flipped = bytes([payload[0] ^ 0x01]) + payload[1:]
    connection.execute("UPDATE events SET payload = ? WHERE stream_id = 'run-a' AND seq = 3", (flipped,))


def _delete_event(connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM events WHERE stream_id = 'run-a' AND seq = 3")


def _swap_events(connection: sqlite3.Connection) -> None:
    connection.execute("UPDATE events SET seq = -1 WHERE stream_id = 'run-a' AND seq = 2")
    connection.execute("UPDATE events SET seq = 2 WHERE stream_id = 'run-a' AND seq = 3")
    connection.execute("UPDATE events SET seq = 3 WHERE stream_id = 'run-a' AND seq = -1")


def _cut_tail(connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM events WHERE stream_id = 'run-a' AND seq >= 5")


def _rewrite_recorded_at(connection: sqlite3.Connection) -> None:
    connection.execute(
        "UPDATE events SET recorded_at = '2020-01-01T00:00:00.000000Z' WHERE stream_id = 'run-a' AND seq = 2"
    )


def _rewrite_type(connection: sqlite3.Connection) -> None:
    connection.execute("UPDATE events SET type = 'CodecRenamed' WHERE stream_id = 'run-a' AND seq = 4")


def _rewrite_schema_version(connection: sqlite3.Connection) -> None:
    connection.execute("UPDATE events SET schema_version = 2 WHERE stream_id = 'run-a' AND seq = 1")


def _rewrite_event_id(connection: sqlite3.Connection) -> None:
    connection.execute(
        "UPDATE events SET event_id = '00000000-0000-4000-8000-000000000000' WHERE stream_id = 'run-a' AND seq = 6"
    )


def _rewrite_head_hash(connection: sqlite3.Connection) -> None:
    connection.execute("UPDATE streams SET head_hash = zeroblob(32) WHERE stream_id = 'run-a'")


def _rewind_head(connection: sqlite3.Connection) -> None:
    (digest,) = connection.execute("SELECT hash FROM events WHERE stream_id = 'run-a' AND seq = 4").fetchone()
    connection.execute("UPDATE streams SET head_seq = 4, head_hash = ? WHERE stream_id = 'run-a'", (digest,))


def _delete_head_row(connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM streams WHERE stream_id = 'run-a'")


def _quote_in_event_id(connection: sqlite3.Connection) -> None:
    # An id that JSON must escape: the envelope takes the json.dumps path.
    connection.execute("UPDATE events SET event_id = 'a\"b' WHERE stream_id = 'run-a' AND seq = 2")


# (edit, first bad seq, reason) for stream run-a. Stream run-b stays intact in every case.
TAMPER_CASES = {
    "flipped payload byte": (_flip_payload_byte, 3, "hash mismatch"),
    "deleted event": (_delete_event, 3, "gap"),
    "swapped events": (_swap_events, 2, "hash mismatch"),
    "truncated tail": (_cut_tail, 5, "truncated tail"),
    "rewritten recorded_at": (_rewrite_recorded_at, 2, "hash mismatch"),
    "rewritten type": (_rewrite_type, 4, "hash mismatch"),
    "rewritten schema_version": (_rewrite_schema_version, 1, "hash mismatch"),
    "rewritten event_id": (_rewrite_event_id, 6, "hash mismatch"),
    "escaped event_id": (_quote_in_event_id, 2, "hash mismatch"),
    "rewritten head hash": (_rewrite_head_hash, 6, "head mismatch"),
    "rewound head": (_rewind_head, 4, "head mismatch"),
    "deleted head row": (_delete_head_row, None, "head mismatch"),
}


def test_triggers_reject_update_and_delete(tmp_path, support):
    path = str(tmp_path / "log.db")
    asyncio.run(_build_log(path, support))

    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE is not allowed"):
        support.query(path, "UPDATE events SET payload = x'00' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE is not allowed"):
        support.query(path, "DELETE FROM events WHERE seq = 1")

    assert support.query(path, "SELECT count(*) FROM events") == [(10,)]


@pytest.mark.parametrize("case", list(TAMPER_CASES))
async def test_tamper_detected_by_verify(backend, support, case):
    edit, bad_seq, reason = TAMPER_CASES[case]
    path = backend.make_url("log")
    await _build_log(path, support)
    _tamper(backend, path, edit)

    store = await open_store(path, key=None)
    try:
        report = await store.verify()
    finally:
        await store.close()

    by_stream = {item.stream_id: item for item in report.streams}
    assert not report.ok
    assert not by_stream["run-a"].ok
    assert by_stream["run-a"].first_bad_seq == bad_seq
    assert by_stream["run-a"].reason == reason
    assert "stream 'run-a'" in by_stream["run-a"].detail
    assert by_stream["run-b"].ok


@pytest.mark.parametrize("case", list(TAMPER_CASES))
async def test_tamper_detected_by_verified_read(backend, support, case):
    edit, bad_seq, reason = TAMPER_CASES[case]
    path = backend.make_url("log")
    await _build_log(path, support)
    _tamper(backend, path, edit)

    store = await open_store(path, key=None)
    read = []
    try:
        with pytest.raises(TamperedLogError) as caught:
            async for event in store.read_stream("run-a"):
                read.append(event.seq)
        intact = [event.seq async for event in store.read_stream("run-b")]
    finally:
        await store.close()

    assert caught.value.stream_id == "run-a"
    assert caught.value.seq == bad_seq
    assert caught.value.reason == reason
    assert path in str(caught.value)
    assert intact == [1, 2, 3, 4]
    if reason != "head mismatch":
        assert read == list(range(1, bad_seq))


async def test_append_after_rewound_head_rejected(backend, support):
    path = backend.make_url("log")
    await _build_log(path, support)
    _tamper(backend, path, _rewind_head)

    store = await open_store(path, key=None)
    try:
        with pytest.raises(TamperedLogError) as caught:
            await store.append("run-a", [support.WorkerNoted(writer="late", index=5)], expected_version=4)
        head = await store.head("run-a")
    finally:
        await store.close()

    assert (caught.value.stream_id, caught.value.seq, caught.value.reason) == ("run-a", 4, "head mismatch")
    assert head.head_seq == 4
    assert await _count_events(backend, path, "run-a") == 6


def test_independent_verifier_accepts_real_log(tmp_path, support):
    plain = str(tmp_path / "plain.db")
    keyed = str(tmp_path / "keyed.db")
    asyncio.run(_build_log(plain, support))
    asyncio.run(_build_log(keyed, support, key=KEY))

    assert independent_verify(plain) == []
    assert independent_verify(keyed, KEY) == []
    assert independent_verify(keyed, OTHER_KEY) != []


@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_independent_verifier_rejects_tampered(tmp_path, support, case):
    edit = TAMPER_CASES[case][0]
    path = str(tmp_path / "log.db")
    asyncio.run(_build_log(path, support))
    _tamper_sqlite(path, edit)

    problems = independent_verify(path)

    assert problems
    assert all(problem.startswith("run-a:") for problem in problems)


def test_envelope_bytes_equal_json_dumps():
    cases = [
        ("0190c3a4-5b6c-7d8e-9f01-23456789abcd", "ab" * 32, "2024-05-06T07:08:09.123456Z", 1, 1, "run-1", "RunStarted"),
        ("0190c3a4-5b6c-7d8e-9f01-23456789abcd", "00" * 32, "0005-01-01T00:00:00.000000Z", 12, 2**40, "a" * 64, "x.Y_z9"),
        # Values only a tampered log holds: JSON escapes them, so json.dumps decides.
        ('a"b', "ab" * 32, "2024-05-06T07:08:09.123456Z", 1, 1, "run-1", "RunStarted"),
        ("id\\x", "ab" * 32, "2024-05-06T07:08:09.123456Z", 1, 1, "run-1", "Typ\u00e9"),
        ("id", "ab" * 32, "tab\there", 1, 1, "run\n1", "RunStarted\x7f"),
        ("id", "ab" * 32, "2024", "1", True, "run-1", "RunStarted"),
    ]
    for event_id, digest, recorded_at, version, seq, stream, kind in cases:
        expected = json.dumps(
            {"event_id": event_id, "payload_sha256": digest, "recorded_at": recorded_at,
             "schema_version": version, "seq": seq, "stream_id": stream, "type": kind},
            sort_keys=True, separators=(",", ":"), ensure_ascii=True,
        ).encode("utf-8")

        actual = envelope_bytes(event_id=event_id, payload_sha256=digest, recorded_at=recorded_at,
                                schema_version=version, seq=seq, stream_id=stream, event_type=kind)

        assert actual == expected, (event_id, stream, kind)


def test_format_envelope_equals_json_dumps():
    fields = ("0190c3a4-5b6c-7d8e-9f01-23456789abcd", "cd" * 32, "2024-05-06T07:08:09.000000Z", 3, 17, "run.1_x-y", "NodeCompleted")
    expected = json.dumps(
        dict(zip(("event_id", "payload_sha256", "recorded_at", "schema_version", "seq", "stream_id", "type"), fields)),
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    ).encode("utf-8")

    assert format_envelope(*fields) == expected


async def test_stored_ids_and_times_canonical(tmp_path, support):
    path = str(tmp_path / "log.db")
    await _build_log(path, support)

    rows = support.query(path, "SELECT event_id, recorded_at FROM events")

    for event_id, recorded_at in rows:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", event_id)
        assert len(recorded_at) == 27
        moment = dt.datetime.strptime(recorded_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
        assert moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == recorded_at


def _rechain_without_key(connection: sqlite3.Connection, from_seq: int) -> None:
    """Rewrite run-a's hashes from ``from_seq`` with plain SHA-256, as an attacker without the key can."""
    rows = connection.execute(
        "SELECT seq, event_id, type, schema_version, recorded_at, payload, prev_hash FROM events "
        "WHERE stream_id = 'run-a' AND seq >= ? ORDER BY seq", (from_seq,),
    ).fetchall()
    prev_hash = rows[0][6]
    for seq, event_id, kind, version, recorded_at, payload, _ in rows:
        envelope = envelope_bytes(event_id=event_id, payload_sha256=hashlib.sha256(payload).hexdigest(),
                                  recorded_at=recorded_at, schema_version=version, seq=seq,
                                  stream_id="run-a", event_type=kind)
        digest = hashlib.sha256(prev_hash + envelope).digest()
        connection.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE stream_id = 'run-a' AND seq = ?",
                           (prev_hash, digest, seq))
        prev_hash = digest
    connection.execute("UPDATE streams SET head_hash = ? WHERE stream_id = 'run-a'", (prev_hash,))


@pytest.mark.parametrize("from_seq", [1, 3])
async def test_keyed_log_detects_unkeyed_rechain(backend, support, from_seq):
    path = backend.make_url("log")
    await _build_log(path, support, key=KEY)

    def forge(connection: sqlite3.Connection) -> None:
        _flip_payload_byte(connection)
        _rechain_without_key(connection, from_seq)

    _tamper(backend, path, forge)
    store = await open_store(path, key=KEY)
    try:
        report = await store.verify()
    finally:
        await store.close()

    by_stream = {item.stream_id: item for item in report.streams}
    assert by_stream["run-a"].first_bad_seq == from_seq
    assert by_stream["run-a"].reason == "hash mismatch"
    assert by_stream["run-b"].ok
    if backend.name == "sqlite":
        assert independent_verify(path, KEY)


async def test_unkeyed_log_misses_consistent_rechain(backend, support):
    # Without a key the chain only catches careless edits: a rewrite that
    # recomputes the hashes passes, and only a head hash kept elsewhere shows it.
    path = backend.make_url("log")
    heads_before = await _build_log(path, support)

    def forge(connection: sqlite3.Connection) -> None:
        _flip_payload_byte(connection)
        _rechain_without_key(connection, 3)

    _tamper(backend, path, forge)
    store = await open_store(path, key=None)
    try:
        report = await store.verify()
    finally:
        await store.close()

    assert report.ok
    if backend.name == "sqlite":
        assert independent_verify(path) == []
    heads_after = {item.stream_id: item.head_hash for item in report.streams}
    assert heads_after["run-a"] != heads_before["run-a"]
    assert heads_after["run-b"] == heads_before["run-b"]


async def test_keyed_log_detects_cut_tail(backend, support):
    path = backend.make_url("log")
    await _build_log(path, support, key=KEY)

    def cut(connection: sqlite3.Connection) -> None:
        _cut_tail(connection)
        _rewind_head(connection)

    _tamper(backend, path, cut)
    store = await open_store(path, key=KEY)
    try:
        report = await store.verify()
        with pytest.raises(TamperedLogError) as caught:
            async for _ in store.read_stream("run-a"):
                pass
    finally:
        await store.close()

    by_stream = {item.stream_id: item for item in report.streams}
    assert by_stream["run-a"].first_bad_seq == 4
    assert by_stream["run-a"].reason == "wrong key"
    assert caught.value.reason == "wrong key"
    if backend.name == "sqlite":
        assert independent_verify(path, KEY) == ["run-a: head MAC does not match the key"]


async def test_unkeyed_log_misses_consistent_cut(backend, support):
    path = backend.make_url("log")
    heads_before = await _build_log(path, support)

    def cut(connection: sqlite3.Connection) -> None:
        _cut_tail(connection)
        _rewind_head(connection)

    _tamper(backend, path, cut)
    store = await open_store(path, key=None)
    try:
        report = await store.verify()
    finally:
        await store.close()

    assert report.ok
    assert {item.stream_id: item.head_hash for item in report.streams}["run-a"] != heads_before["run-a"]


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
async def test_deleted_stream_passes_verify(backend, support, key):
    # A stream deleted with its head row leaves nothing to check, keyed or
    # not: only its head hash, kept elsewhere, shows that it existed.
    path = backend.make_url("log")
    heads_before = await _build_log(path, support, key=key)

    def delete_stream(connection: sqlite3.Connection) -> None:
        connection.execute("DELETE FROM events WHERE stream_id = 'run-b'")
        connection.execute("DELETE FROM streams WHERE stream_id = 'run-b'")

    _tamper(backend, path, delete_stream)
    store = await open_store(path, key=key)
    try:
        report = await store.verify()
    finally:
        await store.close()

    assert report.ok
    assert [item.stream_id for item in report.streams] == ["run-a"]
    assert "run-b" in heads_before


async def test_keyed_log_forged_head_mac_detected(backend, support):
    path = backend.make_url("log")
    heads = await _build_log(path, support, key=KEY)
    forged = head_mac(OTHER_KEY, "run-b", 4, bytes.fromhex(heads["run-b"]))

    _tamper(backend, path, lambda connection: connection.execute(
        "UPDATE streams SET head_mac = ? WHERE stream_id = 'run-b'", (forged,)))
    store = await open_store(path, key=KEY)
    try:
        report = await store.verify()
    finally:
        await store.close()

    by_stream = {item.stream_id: item for item in report.streams}
    assert by_stream["run-a"].ok
    assert (by_stream["run-b"].first_bad_seq, by_stream["run-b"].reason) == (4, "wrong key")


async def test_keyed_log_other_key_rejected(backend, support):
    path = backend.make_url("log")
    await _build_log(path, support, key=KEY)

    with pytest.raises(TamperedLogError) as caught:
        await open_store(path, key=OTHER_KEY)

    assert caught.value.reason == "wrong key"
    assert path in str(caught.value)


async def test_keyed_log_no_key_rejected(backend, support, monkeypatch):
    path = backend.make_url("log")
    await _build_log(path, support, key=KEY)
    monkeypatch.delenv(KEY_ENV, raising=False)

    with pytest.raises(UsageError, match=f"set {KEY_ENV}") as caught:
        await open_store(path)

    assert not isinstance(caught.value, TamperedLogError)


async def test_unkeyed_log_opened_with_key_tampered(backend, support):
    path = backend.make_url("log")
    await _build_log(path, support)

    with pytest.raises(TamperedLogError) as caught:
        await open_store(path, key=KEY)

    assert caught.value.reason == "wrong key"


async def test_log_key_from_environment(backend, support, monkeypatch):
    path = backend.make_url("log")
    await _build_log(path, support, key=KEY)
    monkeypatch.setenv(KEY_ENV, KEY.hex())

    store = await open_store(path)
    try:
        report = await store.verify()
    finally:
        await store.close()

    assert report.ok
    assert report.chain == "hmac-sha256"


@pytest.mark.parametrize("text", ["zz", "ab" * 31])
async def test_log_key_invalid_environment(tmp_path, monkeypatch, text):
    monkeypatch.setenv(KEY_ENV, text)

    with pytest.raises(UsageError, match=KEY_ENV):
        await open_store(str(tmp_path / "log.db"))

    assert not os.path.exists(tmp_path / "log.db")


async def test_log_key_too_short_rejected(tmp_path):
    with pytest.raises(UsageError, match="at least 32 bytes"):
        await open_store(str(tmp_path / "log.db"), key=b"short")


def _docs_verifier() -> str:
    text = DOCS.read_text()
    section = text[text.index("## A standalone verifier"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/log-format.md has no python block under 'A standalone verifier'"
    return match.group(1)


def test_docs_verifier_short_stdlib_only():
    script = _docs_verifier()
    imported = {name.strip() for line in re.findall(r"^import (.+)$", script, re.M) for name in line.split(",")}

    assert len([line for line in script.splitlines() if line.strip()]) <= 26
    assert imported <= {"hashlib", "hmac", "json", "sqlite3", "sys"}
    assert "from " not in script


@pytest.mark.parametrize("case", ["intact", *TAMPER_CASES])
def test_docs_verifier_checks_log(tmp_path, support, case):
    path = str(tmp_path / "log.db")
    heads = asyncio.run(_build_log(path, support))
    if case != "intact":
        _tamper_sqlite(path, TAMPER_CASES[case][0])
    script = tmp_path / "verify_log.py"
    script.write_text(_docs_verifier())

    completed = subprocess.run([sys.executable, str(script), path], capture_output=True, text=True, timeout=60)

    if case == "intact":
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert f"run-a 6 {heads['run-a']}" in completed.stdout
        assert f"run-b 4 {heads['run-b']}" in completed.stdout
    else:
        assert completed.returncode == 1, completed.stdout + completed.stderr
        assert "run-a" in completed.stdout


def test_docs_verifier_keyed(tmp_path, support):
    path = str(tmp_path / "log.db")
    asyncio.run(_build_log(path, support, key=KEY))
    script = tmp_path / "verify_log.py"
    script.write_text(_docs_verifier())

    right = subprocess.run([sys.executable, str(script), path, KEY.hex()], capture_output=True, text=True, timeout=60)
    wrong = subprocess.run([sys.executable, str(script), path, OTHER_KEY.hex()], capture_output=True, text=True, timeout=60)

    assert right.returncode == 0, right.stdout + right.stderr
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
