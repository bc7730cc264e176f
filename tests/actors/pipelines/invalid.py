"""Pipelines that define without error but fail their graph check, one per attribute."""

from __future__ import annotations

import pyarrow as pa

import ledgerflow as lf

cycle = lf.Pipeline("cycle")


@cycle.transform
def first(second: pa.Table) -> pa.Table:
    return second


@cycle.transform
def second(first: pa.Table) -> pa.Table:
    return first


unknown_dependency = lf.Pipeline("unknown_dependency")


@unknown_dependency.transform
def enriched(missing_source: pa.Table) -> pa.Table:
    return missing_source


unknown_partitioned_like = lf.Pipeline("unknown_partitioned_like")


@unknown_partitioned_like.transform(partitioned_like="no_such_node")
def per_month() -> pa.Table:
    return pa.table({"x": [1]})


route_to_missing = lf.Pipeline("route_to_missing")


@route_to_missing.extract
def source() -> pa.Table:
    return pa.table({"x": [1]})


route_to_missing.route("source", when=lambda data: True, to="no_such_target")
