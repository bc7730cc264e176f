"""Measure what ledgerflow adds per partition, against plain Ray tasks in the same run.

    python bench/run_overhead.py [--partitions 200]

Prints: the plain Ray time, the executor's time (first to last event), the
added cost per partition (checkpoint file, events and scheduling included),
how soon the executor was ready after its actor started, and how long
rebuilding a run of 10,000 recorded events from the log takes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time

import pyarrow as pa
import ray

import ledgerflow as lf

pipeline = lf.Pipeline("overhead", max_in_flight=None)


@pipeline.extract(partitions=lambda params: range(int(os.environ.get("BENCH_PARTITIONS", "200"))))
def trivial(partition: int) -> pa.Table:
    return pa.table({"partition": [partition]})


@ray.remote(max_retries=0)
def plain_task(partition: int) -> pa.Table:
    return pa.table({"partition": [partition]})


def _plain(partitions: int) -> float:
    started = time.perf_counter()
    ray.get([plain_task.remote(index) for index in range(partitions)])
    return time.perf_counter() - started


def _executor_span(settings: lf.Settings, run_id: str) -> float:
    from ledgerflow.events import parse_recorded_at

    state_times: list[str] = []

    async def read() -> None:
        store = await lf_events.open_store(settings.store_url)
        async for recorded in store.read_stream(run_id):
            state_times.append(recorded.recorded_at)
        await store.close()

    asyncio.run(read())
    return (parse_recorded_at(state_times[-1]) - parse_recorded_at(state_times[0])).total_seconds()


def _recovery(directory: str, events: int) -> float:
    from ledgerflow.events import Manifest, NodeSpec, PartitionCompleted, RunStarted, load_run_state

    async def build_and_load() -> float:
        store = await lf_events.open_store(os.path.join(directory, "recovery.db"), key=None)
        keys = tuple(str(index) for index in range(events - 1))
        start = RunStarted(run_id="recovery", pipeline="overhead", locator="x:pipeline", fingerprint="f",
                           nodes=(NodeSpec(name="trivial", kind="extract", partitions=keys),), submitter="bench",
                           ledgerflow_version=lf.__version__, checkpoint_root=directory)
        batch: list[lf_events.Event] = [start]
        version = 0
        for key in keys:
            batch.append(PartitionCompleted(node="trivial", partition=key, attempt=1,
                                            manifest=Manifest(uri=f"/tmp/{key}.arrow", rows=1, sha256="0" * 64)))
            if len(batch) == 1000:
                await store.append("recovery", batch, expected_version=version)
                version += len(batch)
                batch = []
        if batch:
            await store.append("recovery", batch, expected_version=version)
        started = time.perf_counter()
        state = await load_run_state(store, "recovery")
        elapsed = time.perf_counter() - started
        assert state.seq == events
        await store.close()
        return elapsed

    return asyncio.run(build_and_load())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ["BENCH_PARTITIONS"] = str(args.partitions)
    os.environ.setdefault("LEDGERFLOW_LOG_LEVEL", "warning")

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": {"BENCH_PARTITIONS": str(args.partitions)}})
    print(f"ray start: {time.perf_counter() - started:.2f} s (not counted below)")
    _plain(args.partitions)  # warm the worker pool

    with tempfile.TemporaryDirectory() as directory:
        for repeat in range(args.repeat):
            plain = _plain(args.partitions)
            settings = lf.Settings.resolve(home=os.path.join(directory, f"home{repeat}"))
            wall_started = time.perf_counter()
            result = lf.run(os.path.abspath(__file__) + ":pipeline", settings=settings)
            wall = time.perf_counter() - wall_started
            assert result.status == "completed", result
            span = _executor_span(settings, result.run_id)
            added_ms = (span - plain) / args.partitions * 1000
            print(f"run {repeat + 1}: plain Ray {plain:.3f} s; executor {span:.3f} s (first to last event), "
                  f"driver wall {wall:.2f} s; ratio {span / plain:.2f}x; added {added_ms:.3f} ms per partition "
                  f"(target <= 1 ms); executor ready {result.extra.get('ready_s', float('nan')):.3f} s after its "
                  "actor started (target <= 0.5 s)")
        recovery = _recovery(directory, 10_000)
        print(f"recovery: rebuilding a run of 10,000 events (verified, decoded, folded) took {recovery:.3f} s "
              "(target < 1 s)")
    ray.shutdown()


import ledgerflow.events as lf_events  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
