"""Incremental extract of a SQLite table by its ``updated`` column, in two key ranges, into the warehouse."""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    database: str
    ranges: int = 2


def orders_source(params: Params) -> lf.SqlSource:
    return lf.SqlSource(f"sqlite:///{params.database}", table="orders", key="order_id", partitions=params.ranges,
                        watermark="updated", batch_rows=3)


pipeline = lf.Pipeline("incremental-orders", params=Params)


@pipeline.extract(partitions=lambda params: orders_source(params).partitions())
def orders(partition: str, context: lf.Context) -> pa.Table:
    return orders_source(context.params).read(partition, context=context)


@pipeline.load(partitioned_like="orders", target=lf.SqliteTable("orders_copy"))
def warehouse(orders: pa.Table) -> pa.Table:
    return orders
