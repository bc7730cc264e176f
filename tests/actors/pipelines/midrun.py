"""A run whose checkpoint can be damaged while it runs.

``held[1]`` waits until ``release_file`` exists, so a test can damage a
checkpoint of ``source`` before ``summary`` (which reads every partition of
``source``) starts. Every node attempt appends ``node[partition]`` to ``trace``.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    trace: str
    started_file: str
    release_file: str


def record_execution(context: lf.Context) -> None:
    with open(context.params.trace, "a", encoding="utf-8") as handle:
        handle.write(f"{context.node}[{context.partition}]\n")


pipeline = lf.Pipeline("midrun", params=Params)


@pipeline.extract(partitions=[1, 2])
def source(partition: int, context: lf.Context) -> pa.Table:
    record_execution(context)
    return pa.table({"month": [partition] * 3, "value": [partition * 10 + index for index in range(3)]})


@pipeline.transform(partitioned_like="source")
def held(source: pa.Table, context: lf.Context) -> pa.Table:
    record_execution(context)
    if context.partition == "1" and context.attempt == 1:
        with open(context.params.started_file, "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not os.path.exists(context.params.release_file):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{context.params.release_file} did not appear within 120 s")
            time.sleep(0.05)
    return source


@pipeline.transform(inputs={"rows": "source"}, after="held")
def summary(rows: pa.Table, context: lf.Context) -> pa.Table:
    record_execution(context)
    return pa.table({"rows": [rows.num_rows], "total": [sum(rows["value"].to_pylist())]})


@pipeline.load(target=lf.SqliteTable("summary"))
def stored(summary: pa.Table) -> pa.Table:
    return summary
