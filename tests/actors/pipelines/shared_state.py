"""A node records a random watermark in the run's shared state, and a later node reads it.

Every node attempt appends ``node[partition]`` to the ``trace`` file.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    trace: str


def record_execution(context: lf.Context) -> None:
    with open(context.params.trace, "a", encoding="utf-8") as handle:
        handle.write(f"{context.node}[{context.partition}]\n")


pipeline = lf.Pipeline("shared_state", params=Params)


@pipeline.extract
def batch(context: lf.Context) -> pa.Table:
    record_execution(context)
    # A fresh value on every execution, so a rerun would show.
    context.record("watermark", uuid.uuid4().hex)
    context.record("batch_rows", 3)
    return pa.table({"item": ["a", "b", "c"]})


@pipeline.transform
def stamped(batch: pa.Table, context: lf.Context) -> pa.Table:
    record_execution(context)
    watermark = context.state["watermark"]
    return batch.append_column("watermark", pa.array([watermark] * batch.num_rows))


@pipeline.load(target=lf.SqliteTable("stamped"))
def stored(stamped: pa.Table) -> pa.Table:
    return stamped
