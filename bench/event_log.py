"""Measure the event log against raw sqlite3 and the eventsourcing library, in the same run.

    python bench/event_log.py [--rounds 5] [--full] [--dir DIR]

Every comparison runs both sides in alternation, ``--rounds`` times, on fresh
files in the same directory. It prints the median rate of each side and the
median of the per-round ratios, since pairing neighbouring runs cancels most
of a shared machine's drift. The ratio by CPU time (all threads of the
process) is printed too, because it moves less than wall-clock time when
other programs load the machine, though it leaves out waiting for the disk:

(a) One event per append, against raw sqlite3 committing one prepared row
    (and the head row) per transaction.
(b) Batches of 100 with the rows encoded beforehand, against raw sqlite3
    inserting the same rows. Only the store's own work counts: hashing the
    chain, checking ids and version, inserting and committing.
(c) Batches of 100 end to end (models in, encoded, chained, committed),
    against the eventsourcing library saving an aggregate with 100 pending
    events. This part needs eventsourcing installed.
(d) Replaying a 200,000-event stream into models with the chain verified,
    against a raw select, msgpack decode, pydantic validation and the same
    SHA-256 recomputation in plain Python.
(e) The peak memory that replaying a stream adds, measured in a fresh
    process: 200,000 events by default, 1,000,000 with ``--full``.

The raw sqlite3 side uses the store's own schema, indexes, triggers and
INSERT statements, WAL mode and synchronous=FULL. The figures depend on the disk's sync latency and
on other load on the machine, so compare ratios from one run, not rates
across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import msgpack

from ledgerflow.events import Event, SqliteEventStore, ZERO_HASH
from ledgerflow.events._chain import format_envelope
from ledgerflow.events._sqlite import _SCHEMA, _UPSERT_HEAD, insert_values
from ledgerflow.events._store import EncodedEvent, encode_events

BATCH = 100
SINGLE_EVENTS = 1000
BATCHED_EVENTS = 50_000
REPLAY_EVENTS = 200_000
FULL_REPLAY_EVENTS = 1_000_000
BUILD_BATCH = 1000
SELECT_COLUMNS = "stream_id, seq, event_id, type, schema_version, recorded_at, payload, prev_hash, hash"


class BenchPartitionDone(Event):
    """A partition finished: the shape of a typical run event, with flat fields only."""

    node: str
    partition: str
    attempt: int
    rows: int
    sha256: str
    duration_s: float


def make_events(count: int, start: int = 0) -> list[BenchPartitionDone]:
    return [
        BenchPartitionDone(node="transform", partition=f"2013-{index % 12 + 1:02d}-{index}", attempt=1,
                           rows=1000 + index, sha256=hashlib.sha256(str(index).encode()).hexdigest(),
                           duration_s=0.25)
        for index in range(start, start + count)
    ]


class Rates(NamedTuple):
    """Events per second of wall-clock time, and per second of the process's CPU time (all its threads)."""

    wall: float
    cpu: float


class Stopwatch:
    """Wall-clock and process CPU seconds, summed over the ``running()`` spans."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu

    def rates(self, events: int) -> Rates:
        return Rates(events / self.wall, events / self.cpu)


@dataclass
class Comparison:
    label: str
    ours: list[Rates]
    baseline: list[Rates]
    baseline_name: str
    target: str

    def report(self) -> str:
        wall_ratios = [left.wall / right.wall for left, right in zip(self.ours, self.baseline)]
        cpu_ratios = [left.cpu / right.cpu for left, right in zip(self.ours, self.baseline)]
        rounds = ", ".join(f"{ratio:.0%}" for ratio in wall_ratios)
        return (f"{self.label}\n    ledgerflow {statistics.median(rate.wall for rate in self.ours):>10,.0f} events/s   "
                f"{self.baseline_name} {statistics.median(rate.wall for rate in self.baseline):>10,.0f} events/s   "
                f"ratio {statistics.median(wall_ratios):.0%} (target {self.target})\n"
                f"    per round {rounds}; by CPU time {statistics.median(cpu_ratios):.0%}")


# Raw sqlite3, the floor of what the store can do with its schema


class RawLog:
    """A log file with the store's schema, written with plain sqlite3 calls."""

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute(f"PRAGMA synchronous = {synchronous}")
        for statement in _SCHEMA.split(";\n"):
            if statement.strip():
                self.connection.execute(statement)

    def append(self, values: list, head: tuple) -> None:
        """Insert rows given as one flat list, with the store's own INSERT statements, and the head row."""
        self.connection.execute("BEGIN IMMEDIATE")
        insert_values(self.connection, values)
        self.connection.execute(_UPSERT_HEAD, head)
        self.connection.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()


def chained_rows(stream_id: str, encoded: list[EncodedEvent]) -> list[tuple]:
    """Return insert rows for ``encoded`` as seq 1, 2, …, with the hash chain computed."""
    rows = []
    prev_hash = ZERO_HASH
    for seq, item in enumerate(encoded, start=1):
        envelope = format_envelope(item.event_id, item.payload_sha256, item.recorded_at, item.schema_version, seq,
                                   stream_id, item.event_type)
        digest = hashlib.sha256(prev_hash + envelope).digest()
        rows.append((stream_id, seq, item.event_id, item.event_type, item.schema_version, item.recorded_at,
                     item.payload, prev_hash, digest))
        prev_hash = digest
    return rows


def encode_in_batches(models: list[Event], size: int) -> list[EncodedEvent]:
    # Batches of ``size`` get distinct times and id prefixes, as real appends would.
    encoded: list[EncodedEvent] = []
    for start in range(0, len(models), size):
        encoded.extend(encode_events(models[start:start + size]))
    return encoded


def time_raw(path: str, rows: list[tuple], size: int, synchronous: str = "FULL") -> Rates:
    log = RawLog(path, synchronous)
    batches = [
        ([value for row in rows[start:start + size] for value in row], rows[min(start + size, len(rows)) - 1])
        for start in range(0, len(rows), size)
    ]
    stopwatch = Stopwatch()
    with stopwatch.running():
        for values, last in batches:
            log.append(values, (last[0], last[1], last[8], None))
    log.close()
    return stopwatch.rates(len(rows))


# ledgerflow's store


async def time_store_append(path: str, models: list[Event], size: int, synchronous: str = "FULL") -> Rates:
    store = await SqliteEventStore.open(path, synchronous=synchronous)
    batches = [models[start:start + size] for start in range(0, len(models), size)]
    version = 0
    stopwatch = Stopwatch()
    with stopwatch.running():
        for batch in batches:
            result = await store.append("bench", batch, expected_version=version)
            version = result.last_seq
    await store.close()
    return stopwatch.rates(len(models))


async def time_store_encoded(path: str, encoded: list[EncodedEvent], size: int) -> Rates:
    store = await SqliteEventStore.open(path)
    batches = [encoded[start:start + size] for start in range(0, len(encoded), size)]
    version = 0
    stopwatch = Stopwatch()
    with stopwatch.running():
        for batch in batches:
            result = await store._append_encoded("bench", batch, version)
            version = result.last_seq
    await store.close()
    return stopwatch.rates(len(encoded))


# The eventsourcing library


@functools.cache
def eventsourcing_classes() -> tuple[type, type] | None:
    """Return eventsourcing's Application and an aggregate like BenchPartitionDone, or None if it is absent.

    Every connection it opens is set to synchronous=FULL, as the store's are.
    """
    try:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event
        from eventsourcing.sqlite import SQLiteConnectionPool
    except ImportError:
        return None

    create_connection = SQLiteConnectionPool._create_connection

    def create_with_full_sync(self):  # type: ignore[no-untyped-def]
        connection = create_connection(self)
        connection._sqlite_conn.execute("PRAGMA synchronous = FULL")
        return connection

    SQLiteConnectionPool._create_connection = create_with_full_sync

    class Partition(Aggregate):
        @event("PartitionDone")
        def done(self, node: str, partition: str, attempt: int, rows: int, sha256: str, duration_s: float) -> None:
            pass

    return Application, Partition


def time_eventsourcing(path: str, count: int) -> Rates:
    """Save ``count`` events with eventsourcing, BATCH pending events per save, and return the rates."""
    classes = eventsourcing_classes()
    assert classes is not None
    application_class, aggregate_class = classes
    application = application_class(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path})
    aggregate = aggregate_class()
    application.save(aggregate)
    stopwatch = Stopwatch()
    for start in range(0, count, BATCH):
        # Making the events is the caller's work, as building the models is for ledgerflow.
        for model in make_events(BATCH, start):
            aggregate.done(**model.model_dump())
        with stopwatch.running():
            application.save(aggregate)
    application.close()
    return stopwatch.rates(count)


# Replay


async def build_stream(path: str, count: int) -> None:
    store = await SqliteEventStore.open(path)
    version = 0
    for start in range(0, count, BUILD_BATCH):
        result = await store.append("replay", make_events(min(BUILD_BATCH, count - start), start),
                                    expected_version=version)
        version = result.last_seq
    await store.close()


async def time_store_replay(path: str) -> Rates:
    store = await SqliteEventStore.open(path, create=False)
    count = 0
    stopwatch = Stopwatch()
    with stopwatch.running():
        async for recorded in store.read_stream("replay"):
            recorded.decode(path)
            count += 1
    await store.close()
    return stopwatch.rates(count)


def time_raw_replay(path: str) -> Rates:
    stopwatch = Stopwatch()
    with stopwatch.running():
        count = _raw_replay(path)
    return stopwatch.rates(count)


def _raw_replay(path: str) -> int:
    """Replay the stream with sqlite3, msgpack and pydantic directly, check the chain, and return the events read."""
    sha256 = hashlib.sha256
    validate = BenchPartitionDone.model_validate
    connection = sqlite3.connect(path)
    cursor = connection.execute(f"SELECT {SELECT_COLUMNS} FROM events WHERE stream_id = ? ORDER BY seq", ("replay",))
    previous, expected_seq, count = ZERO_HASH, 1, 0
    while rows := cursor.fetchmany(2000):
        for stream, seq, event_id, kind, version, recorded_at, payload, prev_hash, digest in rows:
            envelope = (
                f'{{"event_id":"{event_id}","payload_sha256":"{sha256(payload).hexdigest()}",'
                f'"recorded_at":"{recorded_at}","schema_version":{version},"seq":{seq},'
                f'"stream_id":"{stream}","type":"{kind}"}}'
            ).encode("ascii")
            if seq != expected_seq or prev_hash != previous or sha256(prev_hash + envelope).digest() != digest:
                raise SystemExit(f"raw replay: the chain breaks at seq {seq}")
            validate(msgpack.unpackb(payload, raw=False))
            previous, expected_seq, count = digest, seq + 1, count + 1
    connection.close()
    return count


def replay_memory(path: str) -> dict[str, int]:
    """Replay the stream in this process, and return the events and the resident memory before and at peak, in KiB.

    On Linux the peak is reset before the replay (``/proc/self/clear_refs``),
    so it is the replay's own. Elsewhere it is the process's peak so far,
    which may hide a replay that stays below the import-time peak.
    """

    async def replay(to_seq: int | None) -> int:
        store = await SqliteEventStore.open(path, create=False)
        count = 0
        async for recorded in store.read_stream("replay", to_seq=to_seq):
            recorded.decode(path)
            count += 1
        await store.close()
        return count

    # A short replay first keeps first-use allocations out of the figure.
    asyncio.run(replay(10))
    peak_reset = _reset_peak_rss()
    before = _status_kib("VmRSS") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = asyncio.run(replay(None))
    peak = _status_kib("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"events": count, "rss_before_kib": before, "rss_peak_kib": peak, "peak_reset": peak_reset}


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/self/status")


def measure_memory_in_subprocess(path: str) -> dict[str, int]:
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--replay-memory", path],
        capture_output=True, text=True, check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


# The run


async def compare(rounds: int, run_ours: Callable[[str], Awaitable[Rates]], run_baseline: Callable[[str], Rates],
                  directory: str, name: str) -> tuple[list[Rates], list[Rates]]:
    ours, baseline = [], []
    for round_number in range(rounds):
        # Alternate which side goes first, so that a slow spell of the disk hits both.
        order = ("baseline", "ours") if round_number % 2 == 0 else ("ours", "baseline")
        for side in order:
            path = os.path.join(directory, f"{name}-{side}-{round_number}.db")
            if side == "ours":
                ours.append(await run_ours(path))
            else:
                baseline.append(run_baseline(path))
    return ours, baseline


async def run(options: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="ledgerflow-bench-", dir=options.dir)
    print(f"event log benchmark: Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs, files in {directory}, {options.rounds} rounds per comparison\n", flush=True)
    results: list[Comparison] = []
    try:
        # (a) one event per append.
        single_models = make_events(SINGLE_EVENTS)
        single_rows = chained_rows("bench", encode_in_batches(single_models, 1))
        ours, baseline = await compare(
            options.rounds, lambda path: time_store_append(path, single_models, 1),
            lambda path: time_raw(path, single_rows, 1), directory, "single",
        )
        results.append(Comparison("(a) one event per append", ours, baseline, "raw sqlite3", ">= 50%"))
        print(results[-1].report(), flush=True)
        normal = [
            await time_store_append(os.path.join(directory, f"single-normal-{round_number}.db"), single_models, 1,
                                    synchronous="NORMAL")
            for round_number in range(options.rounds)
        ]
        normal_rate = statistics.median(rate.wall for rate in normal)
        print(f"    with synchronous=NORMAL ledgerflow appends {normal_rate:,.0f} events/s, "
              f"{normal_rate / statistics.median(rate.wall for rate in ours):.1f}x its FULL rate", flush=True)

        # (b) batches of 100, rows encoded beforehand.
        batched_models = make_events(BATCHED_EVENTS)
        batched_encoded = encode_in_batches(batched_models, BATCH)
        batched_rows = chained_rows("bench", batched_encoded)
        ours, baseline = await compare(
            options.rounds, lambda path: time_store_encoded(path, batched_encoded, BATCH),
            lambda path: time_raw(path, batched_rows, BATCH), directory, "encoded",
        )
        results.append(Comparison("(b) batches of 100, rows encoded beforehand", ours, baseline, "raw sqlite3",
                                  ">= 50%"))
        print(results[-1].report(), flush=True)

        # (c) batches of 100 end to end.
        if eventsourcing_classes() is None:
            print("(c) batches of 100 end to end: skipped, because eventsourcing is not installed "
                  "(pip install eventsourcing to compare)", flush=True)
        else:
            ours, baseline = await compare(
                options.rounds, lambda path: time_store_append(path, batched_models, BATCH),
                lambda path: time_eventsourcing(path, BATCHED_EVENTS), directory, "end-to-end",
            )
            results.append(Comparison("(c) batches of 100 end to end", ours, baseline, "eventsourcing",
                                      ">= 100%, aim 150%"))
            print(results[-1].report(), flush=True)

        # (d) replay with the chain verified.
        replay_path = os.path.join(directory, "replay.db")
        started = time.perf_counter()
        await build_stream(replay_path, REPLAY_EVENTS)
        print(f"    (built a {REPLAY_EVENTS:,}-event stream in {time.perf_counter() - started:.1f} s)", flush=True)
        ours, baseline = [], []
        for round_number in range(options.rounds):
            if round_number % 2 == 0:
                baseline.append(time_raw_replay(replay_path))
                ours.append(await time_store_replay(replay_path))
            else:
                ours.append(await time_store_replay(replay_path))
                baseline.append(time_raw_replay(replay_path))
        results.append(Comparison(f"(d) replay of {REPLAY_EVENTS:,} events, chain verified", ours, baseline,
                                  "raw Python", ">= 60%"))
        print(results[-1].report(), flush=True)

        # (e) memory of a long replay.
        memory_path = replay_path
        if options.full:
            memory_path = os.path.join(directory, "replay-full.db")
            started = time.perf_counter()
            await build_stream(memory_path, FULL_REPLAY_EVENTS)
            print(f"    (built a {FULL_REPLAY_EVENTS:,}-event stream in {time.perf_counter() - started:.1f} s)",
                  flush=True)
        started = time.perf_counter()
        memory = measure_memory_in_subprocess(memory_path)
        growth_mib = (memory["rss_peak_kib"] - memory["rss_before_kib"]) / 1024
        measured = "resident memory peaked" if memory["peak_reset"] else "peak resident memory grew"
        print(f"(e) replay of {memory['events']:,} events in a fresh process: {measured} {growth_mib:.1f} MiB above "
              f"the {memory['rss_before_kib'] / 1024:.0f} MiB it started from (target < 200 MB; "
              f"{time.perf_counter() - started:.1f} s)", flush=True)
        if not options.full:
            print("    (run with --full to measure a 1,000,000-event stream)")
    finally:
        if options.keep:
            print(f"\nkept the files in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measurements per side of each comparison")
    parser.add_argument("--full", action="store_true",
                        help="measure replay memory on a 1,000,000-event stream, which the run builds first")
    parser.add_argument("--dir", default=None, help="directory for the benchmark's files (default: the system's temp)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's files afterwards")
    parser.add_argument("--replay-memory", metavar="LOG", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.replay_memory:
        print(json.dumps(replay_memory(options.replay_memory)))
        return
    asyncio.run(run(options))


if __name__ == "__main__":
    main()
