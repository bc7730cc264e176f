"""Extract monthly carrier delays through an MCP server and load them into the warehouse.

Run it with ``ledgerflow run examples/mcp_extract/pipeline.py``. Each month
is one partition whose node calls the ``carrier_delays`` tool of
``server.py``, started over stdio for the call. Each call is recorded as an
``McpToolCalled`` event, and its result is kept in the checkpoint store, so a
resumed run never calls the server again for a month it already has.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf

SERVER = lf.McpServer.stdio("nycflights13", sys.executable, [str(Path(__file__).resolve().with_name("server.py"))],
                            timeout_s=120)


class Params(BaseModel):
    months: list[int] = [1, 2, 3]


pipeline = lf.Pipeline("mcp_extract", params=Params)


@pipeline.extract(partitions=lambda params: params.months, retry=lf.Retry(attempts=3, backoff_s=1.0))
def delays(partition: int, context: lf.Context) -> pa.Table:
    return context.call_tool(SERVER, "carrier_delays", {"month": partition})


@pipeline.extract(retry=lf.Retry(attempts=3, backoff_s=1.0))
def airlines(context: lf.Context) -> pa.Table:
    return context.call_tool(SERVER, "airlines")


@pipeline.transform(partitioned_like="delays")
def named(delays: pa.Table, airlines: pa.Table) -> pa.Table:
    return delays.join(airlines, "carrier", join_type="left outer").sort_by("carrier")


@pipeline.load(partitioned_like="named", target=lf.SqliteTable("carrier_delays", key=("month", "carrier")))
def warehouse(named: pa.Table) -> pa.Table:
    return named
