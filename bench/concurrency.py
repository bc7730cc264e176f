"""Run 1, 8 and 32 small runs at once on each store, against one run alone in the same session.

    python bench/concurrency.py [--runs 1,8,32] [--partitions 4] [--postgres URL | --no-postgres]

Every run executes the same four-partition pipeline on one local Ray, each
followed by its own thread as `ledgerflow run` follows it. While they run,
a probe appends one small event every 20 ms to a stream of its own and
times each append: that is the latency another writer (a reviewer's
decision, a cancel) sees under the load. For each store and run count the
script prints runs per minute, events appended per second, the probe's p95
append latency, and each figure's ratio to the single-run case.

The PostgreSQL store is measured when a server is reachable at the URL (by
default the local one); each case gets a schema of its own, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import ray

import ledgerflow as lf
from ledgerflow.events import StateRecorded, open_store

DEFAULT_POSTGRES = "postgresql://127.0.0.1:5432/test"

pipeline = lf.Pipeline("concurrency")


@pipeline.extract(partitions=lambda params: range(int(os.environ.get("BENCH_PARTITIONS", "4"))))
def numbers(partition: int) -> pa.Table:
    return pa.table({"partition": [partition] * 100, "value": list(range(100))})


@pipeline.transform(partitioned_like="numbers")
def doubled(numbers: pa.Table) -> pa.Table:
    return numbers.append_column("double", pa.array([value * 2 for value in numbers["value"].to_pylist()]))


@dataclass
class Case:
    """The figures of one store and run count."""

    store: str
    runs: int
    seconds: float
    events: int
    p95_ms: float

    @property
    def runs_per_minute(self) -> float:
        return self.runs * 60 / self.seconds

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


class Probe:
    """Appends to a stream of its own every 20 ms on a thread, timing each append."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as err:  # re-raised on the main thread by __exit__
            self.error = err

    async def _run(self) -> None:
        store = await open_store(self.store_url, key=None)
        stream = f"probe-{uuid.uuid4().hex[:8]}"
        seq = 0
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                await store.append(stream, [StateRecorded(node="probe", partition="", key="probe", value=seq)], expected_version=seq)
                self.latencies.append(time.perf_counter() - started)
                seq += 1
                await asyncio.sleep(0.02)
        finally:
            await store.close()

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"the append probe failed: {self.error}") from self.error

    def p95_ms(self) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=20)[-1] * 1000


def _run_many(settings: lf.Settings, count: int) -> tuple[float, int]:
    """Start ``count`` runs at once and wait for all; return the seconds taken and the events they appended."""
    failures: list[str] = []
    results: list[lf.RunResult] = []

    def one(index: int) -> None:
        try:
            results.append(lf.run(pipeline, run_id=f"bench-{count}-{index}-{uuid.uuid4().hex[:6]}",
                                  settings=settings))
        except Exception as err:  # reported below, after the other runs finish
            failures.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures or any(result.status != "completed" for result in results):
        raise SystemExit(f"runs did not complete: {failures or [result.message for result in results]}")
    return seconds, sum(result.seq for result in results)


def _measure(store: str, store_url: str, home: str, count: int) -> Case:
    settings = lf.Settings.resolve(home=home, store=store_url, address=ray.get_runtime_context().gcs_address)
    with Probe(store_url) as probe:
        seconds, events = _run_many(settings, count)
    return Case(store, count, seconds, events, probe.p95_ms())


def _postgres_case_url(base: str) -> tuple[str, str] | None:
    """Return (URL with a fresh schema, schema name), or None when no server is reachable."""
    try:
        import asyncpg
    except ImportError:
        return None
    schema = f"bench_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(base, timeout=5)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return None
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}schema={schema}", schema


def _drop_schema(base: str, schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(base, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="1,8,32", help="comma-separated run counts; the first is the baseline")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--no-postgres", action="store_true", help="measure the SQLite store only")
    args = parser.parse_args()
    counts = [int(item) for item in args.runs.split(",")]
    os.environ["BENCH_PARTITIONS"] = str(args.partitions)
    os.environ.setdefault("LEDGERFLOW_LOG_LEVEL", "warning")
    ray.init(include_dashboard=False, namespace="ledgerflow", logging_level=logging.ERROR, log_to_driver=False)

    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as directory:
        for count in counts:
            home = os.path.join(directory, f"sqlite-{count}")
            cases.append(_measure("sqlite", os.path.join(home, "ledgerflow.db"), home, count))
            print(f"sqlite, {count} run(s): {cases[-1].seconds:.1f} s", flush=True)
        if not args.no_postgres:
            for count in counts:
                created = _postgres_case_url(args.postgres)
                if created is None:
                    print(f"no PostgreSQL server reachable at {args.postgres}: PostgreSQL skipped")
                    break
                url, schema = created
                try:
                    cases.append(_measure("postgres", url, os.path.join(directory, f"pg-{count}"), count))
                finally:
                    _drop_schema(args.postgres, schema)
                print(f"postgres, {count} run(s): {cases[-1].seconds:.1f} s", flush=True)
    ray.shutdown()

    print()
    print(f"{'store':<9}{'runs':>5}{'runs/min':>10}{'x':>7}{'events/s':>10}{'x':>7}{'p95 ms':>9}{'x':>7}")
    for store in ("sqlite", "postgres"):
        rows = [case for case in cases if case.store == store]
        if not rows:
            continue
        base = rows[0]
        for case in rows:
            print(f"{case.store:<9}{case.runs:>5}{case.runs_per_minute:>10.1f}"
                  f"{case.runs_per_minute / base.runs_per_minute:>7.2f}{case.events_per_second:>10.1f}"
                  f"{case.events_per_second / base.events_per_second:>7.2f}{case.p95_ms:>9.1f}"
                  f"{case.p95_ms / base.p95_ms:>7.2f}")


if __name__ == "__main__":
    main()
