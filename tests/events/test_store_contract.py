"""The contract every event store backend honours, run once per backend in ``conftest.BACKENDS``."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid

import pytest

from ledgerflow.events import (
    ZERO_HASH,
    ConcurrencyError,
    EventStore,
    InvalidStreamIdError,
    NewEvent,
    StoreError,
    UsageError,
)
from ledgerflow.events._store import READ_CHUNK


def _noted(support, writer: str, count: int, *, start: int = 1) -> list:
    return [support.WorkerNoted(writer=writer, index=index) for index in range(start, start + count)]


async def _read(store: EventStore, stream_id: str, **options) -> list:
    return [event async for event in store.read_stream(stream_id, **options)]


async def _count_all(store: EventStore) -> int:
    return len([event async for event in store.read_all()])


async def test_append_read_round_trip(store, support):
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    new_events = [
        NewEvent(support.WorkerNoted(writer="w", index=1, blob=b"\x00\xff"), event_id=str(uuid.uuid4()), recorded_at=moment),
        NewEvent(support.WorkerNoted(writer="w", index=2), event_id=str(uuid.uuid4()), recorded_at=moment),
    ]

    result = await store.append("run-1", new_events, expected_version=0)
    stored = await _read(store, "run-1")

    assert result.stream_id == "run-1"
    assert (result.first_seq, result.last_seq) == (1, 2)
    assert result.written is True
    assert result.head_hash == stored[-1].hash
    assert [event.seq for event in stored] == [1, 2]
    assert [event.event_id for event in stored] == [item.event_id for item in new_events]
    assert [event.decode() for event in stored] == [item.event for item in new_events]
    assert all(event.type == "WorkerNoted" for event in stored)
    assert all(event.schema_version == 1 for event in stored)
    assert all(event.recorded_at == "2024-05-06T07:08:09.123456Z" for event in stored)
    assert all(event.recorded_time == moment for event in stored)
    assert stored[0].prev_hash == ZERO_HASH
    assert stored[1].prev_hash == stored[0].hash
    assert all(len(event.hash) == 32 for event in stored)
    assert stored[0].global_position < stored[1].global_position


async def test_append_default_id_and_time(store, support):
    before = dt.datetime.now(dt.timezone.utc)

    await store.append("run-1", _noted(support, "w", 3), expected_version=0)
    stored = await _read(store, "run-1")

    after = dt.datetime.now(dt.timezone.utc)
    for event in stored:
        parsed = uuid.UUID(event.event_id)
        assert str(parsed) == event.event_id
        assert parsed.version == 7
        assert before - dt.timedelta(milliseconds=1) <= event.recorded_time <= after
    assert len({event.event_id for event in stored}) == 3


async def test_append_seq_counts_from_one(store, support):
    version = 0
    for size in (1, 4, 2, 7):
        result = await store.append("run-1", _noted(support, "w", size), expected_version=version)
        assert result.first_seq == version + 1
        version = result.last_seq

    stored = await _read(store, "run-1")

    assert [event.seq for event in stored] == list(range(1, 15))
    assert (await store.head("run-1")).head_seq == 14


async def test_append_version_mismatch_raises(store, support):
    await store.append("run-1", _noted(support, "w", 2), expected_version=0)
    head_before = await store.head("run-1")

    with pytest.raises(ConcurrencyError) as caught:
        await store.append("run-1", _noted(support, "late", 3), expected_version=1)

    assert caught.value.stream_id == "run-1"
    assert caught.value.expected_version == 1
    assert caught.value.actual_version == 2
    assert "version 2" in str(caught.value)
    assert "expected 1" in str(caught.value)
    assert await store.head("run-1") == head_before
    assert await _count_all(store) == 2


async def test_append_new_stream_wrong_version(store, support):
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("run-new", _noted(support, "w", 1), expected_version=3)

    assert caught.value.actual_version == 0
    assert await store.head("run-new") is None
    assert await store.list_streams() == []
    assert await _count_all(store) == 0


async def test_append_retry_is_noop(store, support):
    batch = [NewEvent(event) for event in _noted(support, "w", 3)]
    first = await store.append("run-1", batch, expected_version=0)
    await store.append("run-1", _noted(support, "other", 2), expected_version=3)

    # The retry carries the stale version: the stored ids are found first.
    retried = await store.append("run-1", batch, expected_version=0)

    assert retried.written is False
    assert (retried.first_seq, retried.last_seq) == (1, 3)
    assert retried.head_hash == first.head_hash
    assert (await store.head("run-1")).head_seq == 5
    assert await _count_all(store) == 5


async def test_append_partly_stored_ids_rejected(store, support):
    stored_batch = [NewEvent(event) for event in _noted(support, "w", 2)]
    await store.append("run-1", stored_batch, expected_version=0)

    for mixed in (
        [stored_batch[0], NewEvent(support.WorkerNoted(writer="new", index=1))],
        [NewEvent(support.WorkerNoted(writer="new", index=1)), stored_batch[1]],
    ):
        with pytest.raises(StoreError, match="repeats 1 of 2 event ids"):
            await store.append("run-1", mixed, expected_version=2)

    assert (await store.head("run-1")).head_seq == 2
    assert await _count_all(store) == 2


async def test_append_stored_ids_other_stream_rejected(store, support):
    batch = [NewEvent(event) for event in _noted(support, "w", 2)]
    await store.append("run-1", batch, expected_version=0)

    with pytest.raises(StoreError, match="already stored"):
        await store.append("run-2", batch, expected_version=0)

    assert await store.head("run-2") is None


async def test_append_repeated_id_in_batch_rejected(store, support):
    event_id = str(uuid.uuid4())
    batch = [NewEvent(event, event_id=event_id) for event in _noted(support, "w", 2)]

    with pytest.raises(UsageError, match="repeats an event id"):
        await store.append("run-1", batch, expected_version=0)

    assert await _count_all(store) == 0


async def test_append_batch_is_atomic(store, support):
    await store.append("run-1", _noted(support, "w", 2), expected_version=0)
    stored_elsewhere = NewEvent(support.WorkerNoted(writer="stored_elsewhere", index=1))
    await store.append("run-2", [stored_elsewhere], expected_version=0)
    # The third event's id is stored in another stream, so its insert fails
    # after the first two rows of the batch were inserted.
    batch = [NewEvent(event) for event in _noted(support, "w", 2, start=3)] + [stored_elsewhere]

    with pytest.raises(StoreError):
        await store.append("run-1", batch, expected_version=2)

    assert [event.seq for event in await _read(store, "run-1")] == [1, 2]
    assert (await store.head("run-1")).head_seq == 2
    assert await _count_all(store) == 3
    assert (await store.verify()).ok


@pytest.mark.parametrize(
    "event_id", ["not-a-uuid", "", "1234", "g" * 32],
)
async def test_append_invalid_event_id_rejected(store, support, event_id):
    with pytest.raises(UsageError, match="invalid event id"):
        await store.append("run-1", [NewEvent(support.WorkerNoted(writer="w", index=1), event_id=event_id)],
                           expected_version=0)

    assert await _count_all(store) == 0


async def test_append_event_id_canonicalised(store, support):
    value = uuid.uuid4()
    forms = [str(value).upper(), "{" + str(value) + "}", value.hex]

    # Every form names the same id, so the later appends are retries.
    results = []
    for form in forms:
        event = NewEvent(support.WorkerNoted(writer="w", index=1), event_id=form)
        results.append(await store.append("run-1", [event], expected_version=0))

    stored = await _read(store, "run-1")
    assert [result.written for result in results] == [True, False, False]
    assert [event.event_id for event in stored] == [str(value)]


async def test_append_naive_time_rejected(store, support):
    naive = NewEvent(support.WorkerNoted(writer="w", index=1), recorded_at=dt.datetime(2024, 1, 1))

    with pytest.raises(UsageError, match="timezone-aware"):
        await store.append("run-1", [naive], expected_version=0)

    assert await _count_all(store) == 0


async def test_append_non_event_rejected(store, support):
    for item in (support.WorkerNoted, {"writer": "w"}, "WorkerNoted"):
        with pytest.raises(UsageError, match="registered Event subclasses"):
            await store.append("run-1", [item], expected_version=0)

    with pytest.raises(UsageError, match="at least one event"):
        await store.append("run-1", [], expected_version=0)
    assert await _count_all(store) == 0


async def test_read_stream_from_and_to_seq(store, support):
    await store.append("run-1", _noted(support, "w", 10), expected_version=0)

    cases = {
        (1, None): list(range(1, 11)),
        (4, None): list(range(4, 11)),
        (1, 3): [1, 2, 3],
        (3, 7): [3, 4, 5, 6, 7],
        (10, 10): [10],
        (10, None): [10],
        (11, None): [],
        (5, 4): [],
        (8, 50): [8, 9, 10],
    }
    for (from_seq, to_seq), expected in cases.items():
        for verify in (True, False):
            events = await _read(store, "run-1", from_seq=from_seq, to_seq=to_seq, verify=verify)
            assert [event.seq for event in events] == expected, (from_seq, to_seq, verify)


async def test_read_stream_unknown_is_empty(store, support):
    await store.append("run-1", _noted(support, "w", 1), expected_version=0)

    assert await _read(store, "run-2") == []
    assert await _read(store, "run-2", to_seq=5) == []


async def test_read_stream_in_chunks(store, support):
    total = 2 * READ_CHUNK + 7
    version = 0
    while version < total:
        size = min(1000, total - version)
        result = await store.append("long", _noted(support, "w", size, start=version + 1), expected_version=version)
        version = result.last_seq

    whole = await _read(store, "long")
    tail = await _read(store, "long", from_seq=READ_CHUNK - 1)
    window = await _read(store, "long", from_seq=READ_CHUNK - 1, to_seq=2 * READ_CHUNK + 1)

    assert [event.seq for event in whole] == list(range(1, total + 1))
    assert [event.decode().index for event in whole] == list(range(1, total + 1))
    assert [event.seq for event in tail] == list(range(READ_CHUNK - 1, total + 1))
    assert [event.seq for event in window] == list(range(READ_CHUNK - 1, 2 * READ_CHUNK + 2))
    assert await _count_all(store) == total
    report = await store.verify("long")
    assert report.ok
    assert report.streams[0].events == total


async def test_read_stream_stops_early(store, support):
    await store.append("long", _noted(support, "w", READ_CHUNK + 10), expected_version=0)

    first = []
    async for event in store.read_stream("long"):
        first.append(event.seq)
        if len(first) == 3:
            break

    assert first == [1, 2, 3]
    await store.append("long", _noted(support, "w", 1), expected_version=READ_CHUNK + 10)
    assert (await store.head("long")).head_seq == READ_CHUNK + 11


async def test_read_all_after_position(store, support):
    for round_number in range(3):
        for stream in ("run-a", "run-b"):
            await store.append(stream, _noted(support, stream, 2), expected_version=2 * round_number)

    every = [event async for event in store.read_all()]
    middle = every[4].global_position
    after = [event async for event in store.read_all(after_position=middle)]
    past_end = [event async for event in store.read_all(after_position=every[-1].global_position)]

    assert len(every) == 12
    assert [event.global_position for event in every] == sorted(event.global_position for event in every)
    assert [(event.stream_id, event.seq) for event in every[:4]] == [
        ("run-a", 1), ("run-a", 2), ("run-b", 1), ("run-b", 2)
    ]
    assert after == every[5:]
    assert past_end == []


async def test_read_all_in_chunks(store, support):
    total = READ_CHUNK + 50
    await store.append("run-a", _noted(support, "a", total // 2), expected_version=0)
    await store.append("run-b", _noted(support, "b", total - total // 2), expected_version=0)

    positions = [event.global_position async for event in store.read_all()]

    assert len(positions) == total
    assert len(set(positions)) == total
    assert positions == sorted(positions)


async def test_subscribe_sees_other_process(store, support):
    await store.append("local", _noted(support, "local", 3), expected_version=0)
    start = [event async for event in store.read_all()][-1].global_position
    remote_count = 60
    subscription = store.subscribe(after_position=start, stream_id="remote", poll_interval=0.01)
    everything = store.subscribe(after_position=0, poll_interval=0.01)

    writer = subprocess.Popen(
        support.command("append", store.path, "remote", "--count", str(remote_count), "--batch", "7"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen = await support.collect(subscription, remote_count, timeout=60)
        seen_all = await support.collect(everything, remote_count + 3, timeout=60)
    finally:
        output, errors = writer.communicate(timeout=60)
        await subscription.aclose()
        await everything.aclose()

    assert writer.returncode == 0, errors
    assert [event.seq for event in seen] == list(range(1, remote_count + 1))
    assert all(event.stream_id == "remote" for event in seen)
    assert [event.decode().index for event in seen] == list(range(1, remote_count + 1))
    assert [event.stream_id for event in seen_all[:3]] == ["local"] * 3
    assert seen_all[3:] == seen


async def test_subscribe_sees_same_store(store, support):
    subscription = store.subscribe(poll_interval=0.01)
    reader = asyncio.ensure_future(support.collect(subscription, 5, timeout=30))

    for version in range(5):
        await store.append("run-1", _noted(support, "w", 1, start=version + 1), expected_version=version)
    seen = await reader
    await subscription.aclose()

    assert [event.seq for event in seen] == [1, 2, 3, 4, 5]


async def test_list_streams_sorted_heads(store, support):
    results = {}
    for stream, size in (("run-b", 3), ("run-a", 1), ("run-c", 2)):
        results[stream] = await store.append(stream, _noted(support, stream, size), expected_version=0)

    heads = await store.list_streams()

    assert [head.stream_id for head in heads] == ["run-a", "run-b", "run-c"]
    assert [head.head_seq for head in heads] == [1, 3, 2]
    assert [head.head_hash for head in heads] == [results[name].head_hash for name in ("run-a", "run-b", "run-c")]


async def test_head_tracks_appends(store, support):
    assert await store.head("run-1") is None

    first = await store.append("run-1", _noted(support, "w", 2), expected_version=0)
    assert (await store.head("run-1")).head_seq == 2
    assert (await store.head("run-1")).head_hash == first.head_hash

    second = await store.append("run-1", _noted(support, "w", 1), expected_version=2)
    head = await store.head("run-1")

    assert head.stream_id == "run-1"
    assert head.head_seq == 3
    assert head.head_hash == second.head_hash


@pytest.mark.parametrize(
    "stream_id", ["", "-run", ".run", "_run", "a" * 65, "run 1", "run/1", "run:1", "rün", "run\n", "run'1"],
)
async def test_append_invalid_stream_id_rejected(store, support, stream_id):
    with pytest.raises(InvalidStreamIdError) as caught:
        await store.append(stream_id, _noted(support, "w", 1), expected_version=0)

    assert isinstance(caught.value, UsageError)
    assert caught.value.stream_id == stream_id
    assert await store.list_streams() == []
    assert await _count_all(store) == 0


@pytest.mark.parametrize("stream_id", ["a" * 64, "R", "9", "run-1.retry_2", "A.b-c_D"])
async def test_append_valid_stream_id_accepted(store, support, stream_id):
    await store.append(stream_id, _noted(support, "w", 1), expected_version=0)

    assert [head.stream_id for head in await store.list_streams()] == [stream_id]


async def test_verify_clean_log(store, support):
    await store.append("run-a", _noted(support, "a", 5), expected_version=0)
    await store.append("run-b", _noted(support, "b", 2), expected_version=0)

    report = await store.verify()
    single = await store.verify("run-b")

    assert report.ok
    assert report.path == store.path
    assert report.chain == "sha256"
    assert [(item.stream_id, item.events, item.head_seq) for item in report.streams] == [
        ("run-a", 5, 5), ("run-b", 2, 2)
    ]
    assert report.streams[1].head_hash == (await store.head("run-b")).head_hash.hex()
    assert [item.stream_id for item in single.streams] == ["run-b"]


async def test_keyed_store_round_trip(store_factory, support):
    key = bytes(range(32))
    keyed = await store_factory("keyed", key=key)
    await keyed.append("run-1", _noted(support, "w", 3), expected_version=0)

    report = await keyed.verify()
    events = await _read(keyed, "run-1")

    assert report.ok
    assert report.chain == "hmac-sha256"
    assert [event.seq for event in events] == [1, 2, 3]


async def test_concurrent_appends_one_store(store, support):
    async def write(stream: str) -> None:
        version = 0
        for _ in range(10):
            result = await store.append(stream, _noted(support, stream, 3), expected_version=version)
            version = result.last_seq

    await asyncio.gather(*(write(f"run-{number}") for number in range(4)))

    heads = await store.list_streams()
    assert [head.head_seq for head in heads] == [30] * 4
    assert (await store.verify()).ok
