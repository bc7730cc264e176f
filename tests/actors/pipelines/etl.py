"""Four monthly partitions through extract, transform and a SQLite load.

Every node attempt appends ``node[partition]`` to the file named by the
``trace`` parameter, so tests can count how often each partition ran.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    trace: str
    months: list[int] = [1, 2, 3, 4]


def record_execution(context: lf.Context) -> None:
    with open(context.params.trace, "a", encoding="utf-8") as handle:
        handle.write(f"{context.node}[{context.partition}]\n")


pipeline = lf.Pipeline("etl", params=Params)


@pipeline.extract(partitions=lambda params: params.months)
def orders(partition: int, context: lf.Context) -> pd.DataFrame:
    record_execution(context)
    return pd.DataFrame({
        "order_id": [partition * 100 + index for index in range(5)],
        "month": [partition] * 5,
        "quantity": [index + 1 for index in range(5)],
    })


@pipeline.extract
def prices(context: lf.Context) -> pa.Table:
    record_execution(context)
    return pa.table({"month": [1, 2, 3, 4], "unit_price": [1.5, 2.0, 2.5, 3.0]})


@pipeline.transform(partitioned_like="orders")
def priced(orders: pa.Table, prices: pa.Table, context: lf.Context) -> pa.Table:
    record_execution(context)
    joined = orders.join(prices, "month").sort_by("order_id")
    return joined.append_column("amount", pc.multiply(joined["quantity"], joined["unit_price"]))


@pipeline.load(partitioned_like="priced", target=lf.SqliteTable("amounts"))
def warehouse(priced: pa.Table, context: lf.Context) -> pd.DataFrame:
    record_execution(context)
    return priced.select(["order_id", "month", "amount"]).to_pandas()
