"""Pipelines whose nodes fail on purpose: flaky, broken, slow and crashing attempts.

Each is a separate attribute. Run one with ``retries.py:NAME``.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


def _rows(partition: object) -> pa.Table:
    return pa.table({"partition": [str(partition)] * 2, "value": [1, 2]})


class TraceParams(BaseModel):
    trace: str


def record_execution(context: lf.Context) -> None:
    with open(context.params.trace, "a", encoding="utf-8") as handle:
        handle.write(f"{context.node}[{context.partition}]\n")


# Fails on attempts 1 and 2, succeeds on attempt 3.
flaky = lf.Pipeline("flaky", params=TraceParams)


@flaky.extract(retry=lf.Retry(attempts=3, backoff_s=0.5))
def unreliable(context: lf.Context) -> pa.Table:
    record_execution(context)
    if context.attempt < 3:
        raise ConnectionError(f"source unavailable on attempt {context.attempt}")
    return _rows("")


# Partition 2 fails on every attempt.
broken = lf.Pipeline("broken", params=TraceParams)


@broken.extract(partitions=[1, 2], retry=lf.Retry(attempts=2, backoff_s=0.5))
def parsed(partition: int, context: lf.Context) -> pa.Table:
    record_execution(context)
    if partition == 2:
        raise ValueError("order 207 has no month")
    return _rows(partition)


# Partition 1 fails once, and its retry comes due while partition 2 runs in the only slot.
queued = lf.Pipeline("queued", params=TraceParams, max_in_flight=1)


# With the tests' LEDGERFLOW_BACKOFF_SCALE of 0.01, the retry waits 0.5 s: long enough for
# partition 2 to take the slot first, and short enough to come due while it still runs.
@queued.extract(partitions=[1, 2], retry=lf.Retry(attempts=2, backoff_s=50))
def batches(partition: int, context: lf.Context) -> pa.Table:
    record_execution(context)
    if partition == 1 and context.attempt == 1:
        raise ConnectionError("source busy")
    if partition == 2:
        time.sleep(2.0)
    return _rows(partition)


class SlowParams(BaseModel):
    trace: str
    #: The attempt writes its process id here, then waits until it is killed.
    pid_file: str


# The only attempt waits past its 4 s timeout.
slow = lf.Pipeline("slow", params=SlowParams)


@slow.extract(retry=lf.Retry(attempts=1, timeout_s=4))
def stalled(context: lf.Context) -> pa.Table:
    record_execution(context)
    with open(context.params.pid_file, "w", encoding="utf-8") as handle:
        handle.write(str(os.getpid()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise RuntimeError("the attempt was not cancelled within 120 s")


class CrashParams(BaseModel):
    trace: str
    #: Created by the first attempt of partition 1 just before its worker process exits.
    marker: str


# The worker process running partition 1 exits abruptly on its first attempt.
crashing = lf.Pipeline("crashing", params=CrashParams)


@crashing.extract(partitions=[1, 2], retry=lf.Retry(attempts=2, backoff_s=0.1))
def extract(partition: int, context: lf.Context) -> pa.Table:
    record_execution(context)
    if partition == 1 and not os.path.exists(context.params.marker):
        with open(context.params.marker, "w", encoding="utf-8") as handle:
            handle.write("crashed")
        os._exit(1)
    return _rows(partition)


@crashing.load(target=lf.SqliteTable("crashing"))
def stored(extract: pa.Table) -> pa.Table:
    return extract
