"""Rebuild every read model from a large log, against a raw read-and-decode of the same log.

    python bench/projections.py [--events 1000000]

The log holds runs of 1,000 events each (a start, node starts and
completions, and partition completions with manifests and reports). The
baseline reads the same rows with sqlite3, decodes each payload with msgpack
and validates it with pydantic; the rebuild does that and writes the tables.
Prints the best rate of each over alternating rounds and their ratio
(target: rebuild at least 30% of raw).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time

import msgpack

from ledgerflow.events import (
    Manifest,
    NodeCompleted,
    NodeSpec,
    NodeStarted,
    PartitionCompleted,
    RunCompleted,
    RunStarted,
    event_class,
    open_store,
)
from ledgerflow.events._codec import _ext_hook
from ledgerflow.projections import Projector

RUN_EVENTS = 1000


def _run_events(run_id: str) -> list:
    keys = tuple(str(index) for index in range(RUN_EVENTS - 5))
    events = [
        RunStarted(run_id=run_id, pipeline="bench", locator="bench.py:pipeline", fingerprint="f" * 64,
                   nodes=(NodeSpec(name="extract", kind="extract", partitions=keys),), submitter="bench",
                   ledgerflow_version="0", checkpoint_root="/tmp/checkpoints"),
        NodeStarted(node="extract", partitions=keys),
    ]
    for key in keys:
        events.append(PartitionCompleted(
            node="extract", partition=key, attempt=1, duration_s=0.01,
            manifest=Manifest(uri=f"/tmp/checkpoints/{run_id}/extract/{key}.arrow", rows=100, sha256="0" * 64),
            report={"rows_in": 100, "valid": 100, "rejected": 0},
        ))
    events += [NodeCompleted(node="extract", rows=100 * len(keys), partitions=len(keys)),
               RunCompleted(rows_loaded=0, duration_s=1.0), NodeStarted(node="extract", partitions=())]
    return events[:RUN_EVENTS]


async def _build(path: str, total: int) -> None:
    store = await open_store(path, key=None)
    for number in range(total // RUN_EVENTS):
        events = _run_events(f"run-{number:05d}")
        for start in range(0, len(events), 500):
            await store.append(f"run-{number:05d}", events[start:start + 500], expected_version=start)
    await store.close()


def _raw_read(path: str) -> tuple[float, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    conn = sqlite3.connect(path)
    cursor = conn.execute("SELECT type, payload FROM events ORDER BY global_position")
    count = 0
    while rows := cursor.fetchmany(5000):
        for event_type, payload in rows:
            event_class(event_type).model_validate(msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False))
            count += 1
    conn.close()
    return count / (time.perf_counter() - started), count / (time.process_time() - cpu_started)


async def _rebuild(path: str, target: str) -> tuple[float, float]:
    store = await open_store(path, key=None)
    projector = Projector(target)
    projector.drop()
    started, cpu_started = time.perf_counter(), time.process_time()
    applied = await projector.catch_up(store)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await store.close()
    return applied / elapsed, applied / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        log = os.path.join(directory, "log.db")
        started = time.perf_counter()
        asyncio.run(_build(log, args.events))
        print(f"built a log of {args.events:,} events in {time.perf_counter() - started:.1f} s")

        # Rounds alternate so that load from other processes hits both sides alike. CPU time
        # (all threads of this process) is printed too: it moves less than wall time on a busy machine.
        raw, rebuild = (0.0, 0.0), (0.0, 0.0)
        for number in range(args.rounds):
            raw = max(raw, _raw_read(log))
            rebuild = max(rebuild, asyncio.run(_rebuild(log, os.path.join(directory, "projections.db"))))
            print(f"round {number + 1}: raw {raw[0]:,.0f} events/s, rebuild {rebuild[0]:,.0f} events/s (best so far)")
        print(f"raw read + decode + validate: {raw[0]:,.0f} events/s ({raw[1]:,.0f} per CPU second)")
        print(f"projection rebuild:           {rebuild[0]:,.0f} events/s ({rebuild[1]:,.0f} per CPU second)")
        print(f"ratio: {rebuild[0] / raw[0]:.2f} wall, {rebuild[1] / raw[1]:.2f} CPU (target >= 0.30)")


if __name__ == "__main__":
    main()
