"""A small pipeline with an approval gate: four partitions of numbers, validated, then loaded.

Rows whose value is a multiple of 8 are rejected, which is 1 to 2 rows in each
partition of 10, within the 0.5 limit, so a run always reaches the gate.
"""

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

import ledgerflow as lf


class NumberParams(BaseModel):
    parts: list[int] = [1, 2, 3, 4]
    factor: int = 2


pipeline = lf.Pipeline("numbers", params=NumberParams)


def selected_parts(params: NumberParams) -> list[int]:
    return params.parts


@pipeline.extract(partitions=selected_parts)
def numbers(partition: int) -> pa.Table:
    values = list(range(partition * 10, partition * 10 + 10))
    return pa.table({"part": [partition] * len(values), "value": values})


@pipeline.transform(partitioned_like="numbers")
def scaled(numbers: pa.Table, context: lf.Context) -> pa.Table:
    return numbers.append_column("scaled", pc.multiply(numbers["value"], context.params.factor))


@pipeline.validate(partitioned_like="scaled", max_rejected_share=0.5, quarantine=None)
def checked(scaled: pa.Table) -> lf.Validation:
    is_multiple = pc.equal(pc.bit_wise_and(scaled["value"], 7), 0)
    reasons = pc.if_else(is_multiple, "multiple of 8", pa.scalar(None, pa.string()))
    return lf.Validation.from_reasons(scaled, reasons)


pipeline.approval("review", after="checked")


@pipeline.load(after="review", target=lf.SqliteTable("numbers"))
def warehouse(checked: pa.Table) -> pa.Table:
    return checked
