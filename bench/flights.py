"""Compare the durable nycflights pipeline with a plain single-process pyarrow script.

    python bench/flights.py [--scales 1,10] [--repeat 1] [--data-root DIR]

Both sides run the same functions from ``examples/nycflights/pipeline.py``
(read, enrich, reject, split) and load the same rows into a fresh SQLite
warehouse with the same keyed ``INSERT OR REPLACE``. The durable side is
``lf.run`` to the approval gate, an immediate approval and ``lf.resume`` to
the end, in a Ray cluster started beforehand (its start time is printed apart
and not counted). One unmeasured durable run of January first starts Ray's
workers and imports in them.

Scale 1 is the package's 2013 data. Scale k is a copy generated under
``--data-root`` with the flights and weather repeated k times, copy i moved
to year 2013 + i (``time_hour`` moved by i calendar years), so that flight
keys and weather keys stay unique. Each month is still one partition.

For each run it prints the wall times, the ratio durable / plain, where the
durable run's task time went per node, and two costs measured apart from the
run, because the executor does not time them itself:

- checkpoints: every checkpoint file the run wrote is read back and written
  again, one after another in this process, with ledgerflow's
  ``CheckpointStore`` (Arrow IPC, SHA-256, temporary file and rename). The
  loads' inputs are also read again with the SHA-256 check of a resumed load.
- events: the run's append transactions (events recorded with the same
  timestamp are one transaction) times the mean latency of an append
  measured on a fresh log in the same directory.

Both are serial sums. The tasks run in parallel on the cluster's CPUs, so a
sum can exceed its share of the wall time.

Wall times suffer from anything else running on the machine, so each side's
CPU seconds are printed too (with psutil installed): those of this process
and of every process it started, Ray's workers included. A process that has
ended counts only once its parent has reaped it, so the durable figure can
miss an executor that was just killed. The load average before and after
shows how busy the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import logging
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import ray

import ledgerflow as lf
from ledgerflow.actors._checkpoints import CheckpointStore, read_checkpoint
from ledgerflow.events import Manifest, NodeSpec, PartitionCompleted, RunStarted, open_store, parse_recorded_at

PIPELINE_FILE = Path(__file__).resolve().parents[1] / "examples" / "nycflights" / "pipeline.py"
LOAD_BATCH_ROWS = 50_000


def import_example() -> ModuleType:
    """Import the example's module by path, for the plain script's functions."""
    spec = importlib.util.spec_from_file_location("nycflights_example", PIPELINE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Scaled data


def _shift_years(table: pa.Table, years: int) -> pa.Table:
    """Return ``table`` with ``year`` and ``time_hour`` moved ``years`` calendar years later."""
    if years == 0:
        return table
    shifted_year = pc.add(table["year"], pa.scalar(years, pa.int64()))
    moved = table["time_hour"].to_pandas() + pd.DateOffset(years=years)
    shifted_time = pa.array(moved, type=table.schema.field("time_hour").type)
    table = table.set_column(table.schema.get_field_index("year"), "year", shifted_year)
    return table.set_column(table.schema.get_field_index("time_hour"), "time_hour", shifted_time)


def make_scaled_copy(example: ModuleType, source: Path, target: Path, scale: int) -> Path:
    """Write the data files with flights and weather repeated ``scale`` times into ``target``.

    An existing complete copy is reused; the flights file is written last, so
    its presence marks a complete copy.
    """
    flights_zip = target / "flights.csv.zip"
    if flights_zip.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("planes", "airlines", "airports"):
        shutil.copyfile(source / f"{name}.csv", target / f"{name}.csv")
    weather = example.read_lookup(source, "weather")
    pcsv.write_csv(pa.concat_tables([_shift_years(weather, i) for i in range(scale)]), target / "weather.csv")
    flights = example.read_flights(source)
    buffer = io.BytesIO()
    pcsv.write_csv(pa.concat_tables([_shift_years(flights, i) for i in range(scale)]), buffer)
    partial = target / "flights.csv.zip.partial"
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        archive.writestr("flights.csv", buffer.getvalue())
    partial.rename(flights_zip)
    return target


# CPU time


def cpu_seconds() -> float | None:
    """Return the CPU seconds used so far by this process and its descendants (None without psutil).

    Ray's workers are children of the raylet, which this process started, and
    a worker that has ended counts in its parent's children times once reaped.
    """
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _cpu_since(start: float | None) -> float | None:
    end = cpu_seconds()
    return None if start is None or end is None else end - start


# The plain script


def load_plain(database: Path, table_name: str, table: pa.Table, key: tuple[str, ...]) -> None:
    """Insert ``table`` into SQLite as the runtime's load does: one transaction, keyed INSERT OR REPLACE."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        types = {name: _sqlite_type(table.schema.field(name).type) for name in table.column_names}
        ready = table.set_column(table.schema.get_field_index("time_hour"), "time_hour",
                                 pc.cast(table["time_hour"], pa.string()))
        columns = ", ".join(f'"{name}" {kind}' for name, kind in types.items())
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{table_name}" ({columns})')
        conn.execute(f'CREATE UNIQUE INDEX IF NOT EXISTS "{table_name}_key" ON "{table_name}" '
                     f"({', '.join(key)})")
        marks = ", ".join("?" * ready.num_columns)
        for batch in ready.to_batches(max_chunksize=LOAD_BATCH_ROWS):
            rows = zip(*(column.to_pylist() for column in batch.columns))
            conn.executemany(f'INSERT OR REPLACE INTO "{table_name}" VALUES ({marks})', rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _sqlite_type(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return "INTEGER"
    if pa.types.is_floating(kind):
        return "REAL"
    return "TEXT"


def run_plain(example: ModuleType, data_dir: Path, warehouse: Path) -> dict[str, Any]:
    """Run the whole job in this process and return the wall seconds per phase and in all, and the CPU seconds."""
    cpu_start = cpu_seconds()
    started = time.perf_counter()
    flights = example.read_flights(data_dir, list(range(1, 13)))
    lookups = {name: example.read_lookup(data_dir, name) for name in example.LOOKUP_TYPES}
    read_done = time.perf_counter()

    valid_parts, rejected_parts = [], []
    for month in range(1, 13):
        month_flights = flights.filter(pc.equal(flights["month"], month))
        enriched, _ = example.enrich(month_flights, lookups["weather"], lookups["planes"], lookups["airlines"],
                                     lookups["airports"])
        validation = lf.Validation.from_reasons(enriched, example.rejection_reasons(enriched))
        valid_parts.append(validation.valid)
        rejected_parts.append(validation.rejected)
    transform_done = time.perf_counter()

    for table_name, parts in (("flights", valid_parts), ("flights_quarantine", rejected_parts)):
        for part in parts:
            load_plain(warehouse, table_name, part, example.FLIGHT_KEY)
    finished = time.perf_counter()
    return {"read": read_done - started, "transform": transform_done - read_done, "load": finished - transform_done,
            "total": finished - started, "cpu": _cpu_since(cpu_start)}


# The durable run


@dataclass
class DurableRun:
    """Timings and the final state of one durable run."""

    run_id: str
    to_gate_s: float
    decide_s: float
    resume_s: float
    state: lf.RunState
    settings: lf.Settings
    cpu_s: float | None = None
    appends: int = 0
    events: int = 0

    @property
    def total_s(self) -> float:
        return self.to_gate_s + self.decide_s + self.resume_s


def run_durable(home: Path, data_dir: Path | None, months: list[int] | None = None) -> DurableRun:
    """Run the pipeline to its gate, approve at once, resume to the end and time each step."""
    settings = lf.Settings.resolve(home=str(home))
    params: dict[str, Any] = {"data_dir": str(data_dir) if data_dir is not None else None}
    if months is not None:
        params["months"] = months
    cpu_start = cpu_seconds()
    started = time.perf_counter()
    first = lf.run(str(PIPELINE_FILE), params=params, settings=settings, submitter="bench")
    gated = time.perf_counter()
    if first.status != "waiting_for_approval":
        raise RuntimeError(f"run {first.run_id} ended {first.status} before its gate: {first.message}")
    lf.decide(first.run_id, reviewer="bench-reviewer", approve=True, settings=settings)
    decided = time.perf_counter()
    last = lf.resume(first.run_id, settings=settings)
    finished = time.perf_counter()
    cpu_s = _cpu_since(cpu_start)
    if last.status != "completed":
        raise RuntimeError(f"run {first.run_id} ended {last.status}: {last.message}")
    state = lf.load_state(first.run_id, settings=settings)
    run = DurableRun(first.run_id, gated - started, decided - gated, finished - decided, state, settings, cpu_s)
    run.events, run.appends = asyncio.run(_count_appends(settings, first.run_id))
    return run


async def _count_appends(settings: lf.Settings, run_id: str) -> tuple[int, int]:
    """Return the run's events and append transactions (events of one append share a timestamp)."""
    store = await open_store(settings.store_url, create=False)
    stamps = []
    try:
        async for recorded in store.read_stream(run_id, verify=False):
            stamps.append(recorded.recorded_at)
    finally:
        await store.close()
    return len(stamps), len(set(stamps))


def task_seconds_by_node(state: lf.RunState) -> dict[str, float]:
    """Return the summed task durations (as recorded in PartitionCompleted) of each node."""
    return {name: sum(part.duration_s for part in node.partitions.values()) for name, node in state.nodes.items()
            if node.partitions}


def node_spans(state: lf.RunState) -> dict[str, float]:
    """Return each node's seconds from NodeStarted to NodeCompleted, as recorded in the log."""
    spans = {}
    for name, node in state.nodes.items():
        if node.started_at and node.completed_at:
            spans[name] = (parse_recorded_at(node.completed_at) - parse_recorded_at(node.started_at)).total_seconds()
    return spans


@dataclass
class DataMovement:
    """Serial seconds of the copies a durable run makes of its tables, measured again in this process."""

    checkpoint_write_s: float = 0.0
    checkpoint_bytes: int = 0
    load_input_read_s: float = 0.0
    object_store_put_s: float = 0.0
    object_store_bytes: int = 0


def time_data_movement(state: lf.RunState, scratch: Path) -> DataMovement:
    """Write every checkpoint of the run again, read the loads' inputs again and put every output in Ray.

    A task returns its output through Ray's object store besides writing its
    checkpoint, except a validate node's rejected rows, which only go to a file.
    """
    store = CheckpointStore(str(scratch))
    movement = DataMovement()
    for name, node in state.nodes.items():
        for key, part in node.partitions.items():
            ports = {"output": part.manifest, **part.extra}
            for port, manifest in ports.items():
                if manifest is None:
                    continue
                table = ipc.open_file(pa.memory_map(manifest.uri)).read_all()
                started = time.perf_counter()
                store.write(table, run_id="rewrite", node=name, partition=key, attempt=1, port=port)
                movement.checkpoint_write_s += time.perf_counter() - started
                movement.checkpoint_bytes += manifest.bytes or 0
                if port == "output":
                    started = time.perf_counter()
                    reference = ray.put(table)
                    movement.object_store_put_s += time.perf_counter() - started
                    movement.object_store_bytes += table.nbytes
                    del reference
                if name == "checked":
                    started = time.perf_counter()
                    read_checkpoint(manifest, node=name, partition=key)
                    movement.load_input_read_s += time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return movement


def time_append(directory: Path, appends: int = 200) -> float:
    """Return the mean seconds of one append of a PartitionCompleted to a fresh SQLite log in ``directory``."""

    async def measure() -> float:
        store = await open_store(str(directory / "append-bench.db"), key=None)
        try:
            start = RunStarted(run_id="append", pipeline="bench", locator="bench:pipeline", fingerprint="f",
                               nodes=(NodeSpec(name="node", kind="extract", partitions=("0",)),),
                               submitter="bench", ledgerflow_version=lf.__version__, checkpoint_root=str(directory))
            await store.append("append", [start], expected_version=0)
            manifest = Manifest(uri=str(directory / "x.arrow"), rows=28_000, sha256="0" * 64, bytes=1 << 22)
            report = {"rows_in": 28_000, "valid": 27_000, "rejected": 1_000,
                      "rejected_by_reason": {"missing dep_time, arr_time, air_time": 1_000}}
            started = time.perf_counter()
            for index in range(appends):
                event = PartitionCompleted(node="node", partition="0", attempt=1, manifest=manifest,
                                           report=report, duration_s=0.1)
                await store.append("append", [event], expected_version=index + 1)
            return (time.perf_counter() - started) / appends
        finally:
            await store.close()

    try:
        return asyncio.run(measure())
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(directory / "append-bench.db") + suffix).unlink(missing_ok=True)


# Reporting


def report_pair(scale: int, repeat: int, plain: dict[str, Any], run: DurableRun, scratch: Path) -> dict[str, float]:
    """Print one plain/durable pair with its breakdown and return the figures for the summary."""
    ratio = run.total_s / plain["total"]
    print(f"scale {scale}x, repeat {repeat}: plain {plain['total']:.2f} s (read {plain['read']:.2f}, "
          f"transform {plain['transform']:.2f}, load {plain['load']:.2f}); durable {run.total_s:.2f} s "
          f"(to gate {run.to_gate_s:.2f}, decide {run.decide_s:.2f}, resume to end {run.resume_s:.2f}); "
          f"ratio durable/plain {ratio:.2f}x")
    cpu_ratio = float("nan")
    if plain["cpu"] is not None and run.cpu_s is not None:
        cpu_ratio = run.cpu_s / plain["cpu"]
        print(f"  CPU seconds: plain {plain['cpu']:.2f}, durable {run.cpu_s:.2f}, ratio {cpu_ratio:.2f}x")

    by_node = task_seconds_by_node(run.state)
    print("  task seconds per node (sum over partitions, including checkpoint writes and loads): "
          + ", ".join(f"{name} {seconds:.2f}" for name, seconds in by_node.items()))
    print("  node spans in the log (NodeStarted to NodeCompleted, seconds): "
          + ", ".join(f"{name} {seconds:.2f}" for name, seconds in node_spans(run.state).items()))
    movement = time_data_movement(run.state, scratch)
    checkpoint_s = movement.checkpoint_write_s + movement.load_input_read_s
    print(f"  checkpoints: {movement.checkpoint_bytes / 1e6:.0f} MB written; writing them again took "
          f"{movement.checkpoint_write_s:.2f} s and reading the loads' inputs with their SHA-256 check "
          f"{movement.load_input_read_s:.2f} s, serial ({checkpoint_s / run.total_s:.0%} of the durable wall "
          f"time, {checkpoint_s / sum(by_node.values()):.0%} of all task seconds)")
    print(f"  object store: putting the {movement.object_store_bytes / 1e6:.0f} MB of task outputs again took "
          f"{movement.object_store_put_s:.2f} s, serial ({movement.object_store_put_s / run.total_s:.0%} of the "
          "durable wall time)")
    append_s = time_append(Path(run.settings.home))
    events_s = run.appends * append_s
    print(f"  events: {run.events} events in {run.appends} appends x {append_s * 1000:.2f} ms per append "
          f"= {events_s:.2f} s ({events_s / run.total_s:.1%} of the durable wall time)")
    return {"plain": plain["total"], "durable": run.total_s, "ratio": ratio, "cpu_ratio": cpu_ratio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,10", help="comma-separated data scales to run (default 1,10)")
    parser.add_argument("--repeat", type=int, default=1, help="plain/durable pairs per scale (default 1)")
    parser.add_argument("--data-root", default=None,
                        help="directory for the generated scaled copies, reused when present "
                             "(default: a temporary directory removed at exit)")
    args = parser.parse_args()
    scales = [int(text) for text in args.scales.split(",")]
    os.environ.setdefault("LEDGERFLOW_LOG_LEVEL", "warning")
    example = import_example()
    source = example.data_directory(None)
    targets = {1: 2.0, 10: 1.3}

    with tempfile.TemporaryDirectory(prefix="ledgerflow-bench-") as temporary:
        work = Path(temporary)
        data_root = Path(args.data_root) if args.data_root else work / "data"

        started = time.perf_counter()
        ray.init(include_dashboard=False, namespace="ledgerflow", logging_level=logging.ERROR)
        print(f"ray start: {time.perf_counter() - started:.2f} s (not counted below); "
              f"{int(ray.cluster_resources().get('CPU', 0))} CPUs")
        warm = run_durable(work / "warm-home", None, months=[1])
        print(f"warm-up durable run of January (cold workers, not counted): {warm.total_s:.2f} s")

        print("load average before: {:.2f} {:.2f} {:.2f} (1, 5, 15 min)".format(*os.getloadavg()))
        summary: dict[int, list[dict[str, float]]] = defaultdict(list)
        for scale in scales:
            data_dir = source
            if scale != 1:
                generated = time.perf_counter()
                data_dir = make_scaled_copy(example, source, data_root / f"x{scale}", scale)
                print(f"scale {scale}x data in {data_dir} (ready after {time.perf_counter() - generated:.1f} s)")
            for repeat in range(1, args.repeat + 1):
                plain = run_plain(example, data_dir, work / f"plain-{scale}-{repeat}.db")
                run = run_durable(work / f"home-{scale}-{repeat}", None if scale == 1 else data_dir)
                summary[scale].append(report_pair(scale, repeat, plain, run, work / "rewrite"))

        print("load average after: {:.2f} {:.2f} {:.2f} (1, 5, 15 min)".format(*os.getloadavg()))
        print("summary (median over repeats):")
        for scale, pairs in summary.items():
            plain = statistics.median(pair["plain"] for pair in pairs)
            durable = statistics.median(pair["durable"] for pair in pairs)
            ratio = statistics.median(pair["ratio"] for pair in pairs)
            cpu_ratio = statistics.median(pair["cpu_ratio"] for pair in pairs)
            target = f" (target <= {targets[scale]}x)" if scale in targets else ""
            print(f"  {scale}x: plain {plain:.2f} s, durable {durable:.2f} s, ratio {ratio:.2f}x{target}; "
                  f"CPU seconds ratio {cpu_ratio:.2f}x")
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
