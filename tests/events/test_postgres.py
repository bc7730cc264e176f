"""What only the PostgreSQL store has: its URL, connection errors, triggers, position order and NOTIFY."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from ledgerflow.events import LogFormatError, LogNotFoundError, NotALogError, StoreError, UsageError, open_store
from ledgerflow.events._backend import chain_rows
from ledgerflow.events._chain import ZERO_HASH
from ledgerflow.events._postgres import DEFAULT_SCHEMA, parse_url
from ledgerflow.events._store import encode_events

pytestmark = pytest.mark.postgres


def _schema_of(url: str) -> str:
    return url.split("?schema=")[1]


async def _sql(url: str, statement: str, *arguments: object) -> list:
    """Run one statement on the server of ``url`` with the log's schema first in the search path."""
    server, _, schema = url.partition("?schema=")
    connection = await asyncpg.connect(server, server_settings={"search_path": schema or "public"})
    try:
        return await connection.fetch(statement, *arguments)
    finally:
        await connection.close()


def test_url_schema_and_display():
    location = parse_url("postgresql://alice:s3cret@db.example:6543/ledger?schema=audit_2&sslmode=disable")

    assert location.schema == "audit_2"
    assert location.host == "db.example"
    assert location.port == 6543
    assert location.database == "ledger"
    assert location.display == "postgresql://alice@db.example:6543/ledger?schema=audit_2&sslmode=disable"
    assert "s3cret" in location.dsn
    assert "schema" not in location.dsn
    assert "sslmode=disable" in location.dsn


def test_url_default_schema():
    assert parse_url("postgres://127.0.0.1/test").schema == DEFAULT_SCHEMA


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://127.0.0.1:port/test", "invalid PostgreSQL store URL"),
        ("postgresql://127.0.0.1/test?schema=Audit", "invalid schema 'Audit'"),
        ("postgresql://127.0.0.1/test?schema=a-b", "invalid schema 'a-b'"),
        ("postgresql://127.0.0.1/test?schema=", "invalid schema ''"),
        ("postgresql://127.0.0.1/test?schema=a&schema=b", "gives schema more than once"),
    ],
)
async def test_open_invalid_url_rejected(url, message):
    with pytest.raises(UsageError, match=message):
        await open_store(url, key=None)


async def test_open_invalid_url_hides_password():
    with pytest.raises(UsageError) as caught:
        await open_store("postgresql://alice:s3cret@127.0.0.1/test?schema=Bad", key=None)

    assert "s3cret" not in str(caught.value)
    assert "alice@127.0.0.1" in str(caught.value)


async def test_open_unreachable_server_names_host():
    # A port that was free a moment ago; nothing listens on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(StoreError) as caught:
        await open_store(f"postgresql://postgres@127.0.0.1:{port}/test", key=None)

    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "start the server" in str(caught.value)


async def test_open_missing_database(postgres_server):
    server = postgres_server.rsplit("/", 1)[0]

    with pytest.raises(StoreError, match="database 'lf_no_such_database' does not exist") as caught:
        await open_store(f"{server}/lf_no_such_database", key=None)

    assert "createdb lf_no_such_database" in str(caught.value)


async def test_open_missing_without_create(postgres_store_url):
    url = postgres_store_url("absent")

    with pytest.raises(LogNotFoundError, match="no event log in schema"):
        await open_store(url, key=None, create=False)

    assert await _sql(url, "SELECT 1 FROM pg_namespace WHERE nspname = $1", _schema_of(url)) == []


async def test_open_foreign_schema_rejected(postgres_store_url):
    url = postgres_store_url("shop")
    schema = _schema_of(url)
    await _sql(url, f'CREATE SCHEMA "{schema}"')
    await _sql(url, f'CREATE TABLE "{schema}".orders (id INTEGER)')

    with pytest.raises(NotALogError, match="not a ledgerflow log"):
        await open_store(url, key=None)

    tables = await _sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    assert [row[0] for row in tables] == ["orders"]


async def test_open_newer_format_rejected(postgres_store_url, support):
    url = postgres_store_url()
    store = await open_store(url, key=None)
    await store.close()
    await _sql(url, "UPDATE meta SET value = '99' WHERE key = 'format_version'")

    with pytest.raises(LogFormatError, match="format version 99"):
        await open_store(url, key=None)


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE events SET payload = '\\x00'::bytea WHERE seq = 1", "UPDATE"),
        ("DELETE FROM events WHERE seq = 1", "DELETE"),
        ("TRUNCATE events", "TRUNCATE"),
    ],
)
async def test_triggers_reject_changes(postgres_store_url, support, statement, operation):
    url = postgres_store_url()
    store = await open_store(url, key=None)
    try:
        await store.append("run-1", [support.WorkerNoted(writer="w", index=index) for index in range(3)],
                           expected_version=0)
    finally:
        await store.close()

    with pytest.raises(asyncpg.RaiseError, match=f"append-only: {operation} is not allowed"):
        await _sql(url, statement)

    assert (await _sql(url, "SELECT count(*) FROM events"))[0][0] == 3


@pytest.mark.slow
async def test_read_all_tail_sees_every_position(postgres_store_url, support):
    # Writers in their own processes commit while this loop tails read_all.
    # A position that became visible after a higher one would be skipped
    # here and show up missing in the final comparison.
    url = postgres_store_url()
    store = await open_store(url, key=None)
    writers = [
        await asyncio.create_subprocess_exec(
            *support.command("append", url, f"writer-{number}", "--count", "150", "--batch", str(batch)),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        for number, batch in enumerate([1, 2, 3, 7])
    ]
    seen: list[int] = []
    try:
        while True:
            finished = all(writer.returncode is not None for writer in writers)
            async for event in store.read_all(after_position=seen[-1] if seen else 0):
                seen.append(event.global_position)
            if finished:
                break
            await asyncio.sleep(0.001)
            for writer in writers:
                if writer.returncode is None:
                    try:
                        await asyncio.wait_for(writer.wait(), 0.001)
                    except asyncio.TimeoutError:
                        pass
        every = [event.global_position async for event in store.read_all()]
    finally:
        errors = [(await writer.communicate())[1].decode() for writer in writers]
        await store.close()

    assert [writer.returncode for writer in writers] == [0, 0, 0, 0], errors
    assert len(every) == 600
    assert seen == every
    assert all(earlier < later for earlier, later in zip(seen, seen[1:]))


async def test_subscribe_polls_without_notify(postgres_store_url, support):
    # A writer that sends no NOTIFY (an older client, or a lost listening
    # connection): the subscriber still sees its rows through the fallback poll.
    url = postgres_store_url()
    store = await open_store(url, key=None)
    subscription = store.subscribe(poll_interval=0.01)
    reader = asyncio.ensure_future(support.collect(subscription, 2, timeout=30))
    encoded = encode_events([support.WorkerNoted(writer="quiet", index=index) for index in (1, 2)])
    rows, last_hash = chain_rows("quiet", encoded, 0, ZERO_HASH, None)
    try:
        await asyncio.sleep(0.1)
        server, _, schema = url.partition("?schema=")
        connection = await asyncpg.connect(server, server_settings={"search_path": schema})
        try:
            async with connection.transaction():
                await connection.executemany(
                    "INSERT INTO events (stream_id, seq, event_id, type, schema_version, recorded_at, payload, "
                    "prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    rows,
                )
                await connection.execute(
                    "INSERT INTO streams (stream_id, head_seq, head_hash) VALUES ($1, $2, $3)", "quiet", 2, last_hash
                )
        finally:
            await connection.close()
        seen = await reader
    finally:
        await subscription.aclose()
        await store.close()

    assert [(event.stream_id, event.seq) for event in seen] == [("quiet", 1), ("quiet", 2)]
