"""Monthly orders checked by a validate node, held at an approval gate, then loaded.

The validate node rejects every order whose id is a multiple of
``reject_every``. When a month rejects more than a quarter of its rows, the
run goes to the ``quarantined`` load instead of the gate. Every node attempt
appends ``node[partition]`` to the ``trace`` file.
"""

from __future__ import annotations

import random

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    trace: str
    months: list[int] = [1, 2]
    reject_every: int = 10
    #: Add a random column to the validated rows, so a recomputed checkpoint gets a new SHA-256.
    noisy: bool = False


def record_execution(context: lf.Context) -> None:
    with open(context.params.trace, "a", encoding="utf-8") as handle:
        handle.write(f"{context.node}[{context.partition}]\n")


pipeline = lf.Pipeline("gated", params=Params)


@pipeline.extract(partitions=lambda params: params.months)
def orders(partition: int, context: lf.Context) -> pa.Table:
    record_execution(context)
    ids = [partition * 100 + index for index in range(10)]
    return pa.table({"order_id": ids, "month": [partition] * 10, "amount": [float(i % 7) for i in ids]})


@pipeline.validate(partitioned_like="orders", max_rejected_share=0.25, quarantine="quarantined")
def checked(orders: pa.Table, context: lf.Context) -> lf.Validation:
    record_execution(context)
    every = context.params.reject_every
    reasons = pa.array(["sampled for rejection" if order_id % every == 0 else None
                        for order_id in orders["order_id"].to_pylist()], pa.string())
    if context.params.noisy:
        orders = orders.append_column("noise", pa.array([random.random() for _ in range(orders.num_rows)]))
    return lf.Validation.from_reasons(orders, reasons)


pipeline.approval("review", after="checked", reviewers=["alice", "bob"], four_eyes=True)


@pipeline.load(after="review", target=lf.SqliteTable("orders"))
def warehouse(checked: pa.Table, context: lf.Context) -> pa.Table:
    record_execution(context)
    return checked.select(["order_id", "month", "amount"])


@pipeline.load(target=lf.SqliteTable("quarantine"), inputs={"rejected": "checked.rejected"})
def quarantined(rejected: pa.Table, context: lf.Context) -> pa.Table:
    record_execution(context)
    return rejected.select(["order_id", "reason"])
