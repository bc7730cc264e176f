"""Rebuild every read model from a large log, against a raw read-and-decode of the same log.

    python bench/projections.py [--events 1000000]

The log holds runs of 1,000 events each (a start, node starts and
completions, and partition completions with manifests and reports). The
baseline reads the same rows with sqlite3, decodes each payload with msgpack
and validates it with pydantic; the rebuild does that and writes the tables.
Prints both rates and their ratio (target: rebuild at least 30% of raw).
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


def _raw_read(path: str) -> float:
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    cursor = conn.execute("SELECT type, payload FROM events ORDER BY global_position")
    count = 0
    while rows := cursor.fetchmany(5000):
        for event_type, payload in rows:
            event_class(event_type).model_validate(msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False))
            count += 1
    conn.close()
    return count / (time.perf_counter() - started)


async def _rebuild(path: str, target: str) -> float:
    store = await open_store(path, key=None)
    projector = Projector(target)
    projector.drop()
    started = time.perf_counter()
    applied = await projector.catch_up(store)
    elapsed = time.perf_counter() - started
    await store.close()
    return applied / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        log = os.path.join(directory, "log.db")
        started = time.perf_counter()
        asyncio.run(_build(log, args.events))
        print(f"built a log of {args.events:,} events in {time.perf_counter() - started:.1f} s")
        raw = _raw_read(log)
        rebuild = asyncio.run(_rebuild(log, os.path.join(directory, "projections.db")))
        print(f"raw read + decode + validate: {raw:,.0f} events/s")
        print(f"projection rebuild:           {rebuild:,.0f} events/s")
        print(f"ratio: {rebuild / raw:.2f} (target >= 0.30)")


if __name__ == "__main__":
    main()
