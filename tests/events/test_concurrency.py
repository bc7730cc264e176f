"""Several processes on one log: parallel writers, races on one stream, and writers killed mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections import Counter

import pytest

from ledgerflow.events import open_store

# Writer i appends EVENTS_PER_WRITER events in batches of BATCH_SIZES[i].
BATCH_SIZES = [1, 2, 3, 5, 8, 13, 25, 50]
EVENTS_PER_WRITER = 100


async def _start(support, *args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *support.command(*args),
        stdin=asyncio.subprocess.PIPE if stdin else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _finish(process: asyncio.subprocess.Process, timeout: float = 120) -> tuple[str, str]:
    output, errors = await asyncio.wait_for(process.communicate(), timeout)
    return output.decode(), errors.decode()


async def _read_line(process: asyncio.subprocess.Process, timeout: float = 60) -> bytes:
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    assert line, f"process {process.pid} closed its output early: {(await process.stderr.read()).decode()}"
    return line


@pytest.mark.slow
async def test_writers_reader_subscriber_at_once(backend, tmp_path, support):
    path = backend.make_url("log")
    store = await open_store(path, key=None)
    stop_file = tmp_path / "stop"
    total = EVENTS_PER_WRITER * len(BATCH_SIZES)
    subscription = store.subscribe(poll_interval=0.01)
    subscriber = asyncio.ensure_future(support.collect(subscription, total, timeout=120))

    reader = await _start(support, "read", path, "--stop-file", str(stop_file))
    writers = [
        await _start(support, "append", path, f"writer-{number}", "--count", str(EVENTS_PER_WRITER),
                     "--batch", str(batch))
        for number, batch in enumerate(BATCH_SIZES)
    ]
    writer_results = [await _finish(writer) for writer in writers]
    stop_file.touch()
    reader_output, reader_errors = await _finish(reader)
    seen = await subscriber
    await subscription.aclose()
    report = await store.verify()
    heads = await store.list_streams()
    every = [event async for event in store.read_all()]
    await store.close()

    for writer, (_, errors) in zip(writers, writer_results):
        assert writer.returncode == 0, errors
        assert "database is locked" not in errors
    assert reader.returncode == 0, reader_output + reader_errors
    assert "database is locked" not in reader_errors
    reader_summary = support.json_lines(reader_output)[-1]
    assert reader_summary["passes"] >= 1
    assert reader_summary["events"] == total

    assert report.ok, [item for item in report.streams if not item.ok]
    assert [(head.stream_id, head.head_seq) for head in heads] == [
        (f"writer-{number}", EVENTS_PER_WRITER) for number in range(len(BATCH_SIZES))
    ]
    assert len(every) == total
    assert len({event.event_id for event in every}) == total
    for number in range(len(BATCH_SIZES)):
        stream = [event for event in every if event.stream_id == f"writer-{number}"]
        assert [event.seq for event in stream] == list(range(1, EVENTS_PER_WRITER + 1))
        assert [event.decode().index for event in stream] == list(range(1, EVENTS_PER_WRITER + 1))

    assert [event.global_position for event in seen] == [event.global_position for event in every]
    assert Counter(event.event_id for event in seen).most_common(1)[0][1] == 1


@pytest.mark.slow
async def test_racing_writers_one_wins(backend, tmp_path, support):
    path = backend.make_url("log")
    store = await open_store(path, key=None)
    await store.append("race", [support.WorkerNoted(writer="setup", index=index) for index in range(2)],
                       expected_version=0)
    rounds, racers_per_round, batch = 3, 2, 3

    # Round r starts from the head that round r - 1 leaves: 2 + 3 r.
    racers = [
        [await _start(support, "race", path, "race", "--expected", str(2 + batch * number), stdin=True)
         for _ in range(racers_per_round)]
        for number in range(rounds)
    ]
    for racer in (racer for round_racers in racers for racer in round_racers):
        assert support.json_lines((await _read_line(racer)).decode()) == [{"ready": True}]

    outcomes = []
    for number, round_racers in enumerate(racers):
        for racer in round_racers:
            racer.stdin.write(b"go\n")
        await asyncio.gather(*(racer.stdin.drain() for racer in round_racers))
        results = [await _finish(racer) for racer in round_racers]
        for racer, (_, errors) in zip(round_racers, results):
            assert racer.returncode == 0, errors
        outcomes.append([support.json_lines(output)[-1] for output, _ in results])

    heads = await store.head("race")
    every = [event async for event in store.read_stream("race")]
    await store.close()

    for number, results in enumerate(outcomes):
        expected = 2 + batch * number
        winners = [result for result in results if result["result"] == "won"]
        losers = [result for result in results if result["result"] == "conflict"]
        assert len(winners) == 1, results
        assert (winners[0]["first_seq"], winners[0]["last_seq"]) == (expected + 1, expected + batch)
        assert len(losers) == racers_per_round - 1, results
        assert all(loser["expected"] == expected for loser in losers)
        assert all(loser["actual"] == expected + batch for loser in losers)
    assert heads.head_seq == 2 + batch * rounds
    assert [event.seq for event in every] == list(range(1, heads.head_seq + 1))
    racers_written = [event.decode().writer for event in every[2:]]
    assert all(len(set(racers_written[start:start + batch])) == 1 for start in range(0, len(racers_written), batch))


async def test_writers_create_log_at_once(backend, tmp_path, support):
    path = backend.make_url("fresh")

    writers = [await _start(support, "append", path, f"writer-{number}", "--count", "5", "--batch", "5")
               for number in range(4)]
    results = [await _finish(writer) for writer in writers]

    for writer, (_, errors) in zip(writers, results):
        assert writer.returncode == 0, errors
    store = await open_store(path, key=None)
    try:
        report = await store.verify()
    finally:
        await store.close()
    assert report.ok
    assert [item.head_seq for item in report.streams] == [5, 5, 5, 5]


KILL_BATCH = 4000
KILL_ROUNDS = 10


def _wal_stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path + "-wal")
    except FileNotFoundError:
        return None
    return status.st_mtime_ns, status.st_size


@pytest.mark.slow
async def test_sigkill_mid_batch_keeps_log_whole(tmp_path, support):
    path = str(tmp_path / "log.db")
    store = await open_store(path, key=None)
    await store.close()
    landed_before_commit = 0

    for round_number in range(KILL_ROUNDS):
        target_batch = round_number % 2
        writer = await _start(support, "append", path, "victim", "--count", str(3 * KILL_BATCH),
                              "--batch", str(KILL_BATCH), "--blob-size", "200")
        start = support.json_lines((await _read_line(writer)).decode())[0]["start"]
        while True:
            message = support.json_lines((await _read_line(writer)).decode())[0]
            if message.get("appending") == target_batch:
                break
        # Kill as soon as SQLite starts writing this batch's pages to the WAL.
        stamp = _wal_stamp(path)
        deadline = time.monotonic() + 30
        while _wal_stamp(path) == stamp and time.monotonic() < deadline and writer.returncode is None:
            await asyncio.sleep(0.0005)
        writer.send_signal(signal.SIGKILL)
        await _finish(writer)
        assert writer.returncode == -signal.SIGKILL

        committed_before = start + target_batch * KILL_BATCH
        store = await open_store(path, key=None)
        try:
            report = await store.verify()
            head = await store.head("victim")
        finally:
            await store.close()
        head_seq = head.head_seq if head else 0
        connection = sqlite3.connect(path)
        try:
            integrity = connection.execute("PRAGMA integrity_check").fetchall()
            count = connection.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            connection.close()

        assert report.ok, report
        assert integrity == [("ok",)]
        assert head_seq % KILL_BATCH == 0, f"round {round_number}: head at {head_seq}, not a whole batch"
        assert head_seq in (committed_before, committed_before + KILL_BATCH)
        assert count == head_seq
        landed_before_commit += head_seq == committed_before

    # The kills must hit batches in flight, or the test shows nothing.
    assert landed_before_commit >= KILL_ROUNDS // 2, f"only {landed_before_commit} kills landed before a commit"
