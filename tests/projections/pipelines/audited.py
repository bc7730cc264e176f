"""A pipeline with a flaky node, a validation route, an approval gate and a load."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    marker_dir: str
    max_rejected_share: float = 0.5


pipeline = lf.Pipeline("audited", params=Params)


@pipeline.extract(partitions=[1, 2, 3], retry=lf.Retry(attempts=3, backoff_s=0.01))
def numbers(partition: int, context: lf.Context) -> pa.Table:
    marker = os.path.join(context.params.marker_dir, f"numbers-{partition}-failed")
    if partition == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("flaky source")
    context.record(f"rows_{partition}", 10)
    return pa.table({"part": [partition] * 10, "value": list(range(10))})


@pipeline.validate(partitioned_like="numbers", max_rejected_share=0.5, quarantine="hold")
def checked(numbers: pa.Table, context: lf.Context) -> lf.Validation:
    limit = 3 if context.params.max_rejected_share >= 0.5 else 8
    reasons = pc.if_else(pc.less(numbers["value"], limit), "too small", pa.scalar(None, pa.string()))
    return lf.Validation.from_reasons(numbers, reasons)


@pipeline.step(after="checked")
def hold(checked: pa.Table) -> None:
    return None


pipeline.approval("review", after="checked")


@pipeline.load(after="review", partitioned_like="checked", target=lf.SqliteTable("numbers"))
def warehouse(checked: pa.Table) -> pa.Table:
    return checked
