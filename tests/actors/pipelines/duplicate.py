"""A pipeline file that declares the node name ``rows`` twice."""

from __future__ import annotations

import pyarrow as pa

import ledgerflow as lf

pipeline = lf.Pipeline("duplicate")


@pipeline.extract
def rows() -> pa.Table:
    return pa.table({"x": [1]})


@pipeline.transform(name="rows")
def rows_again() -> pa.Table:
    return pa.table({"x": [2]})
