"""A pipeline that converts times through ``mcp-server-time``, a third-party MCP server from PyPI."""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    executable: str
    times: list[str] = ["09:15", "16:30"]
    source_timezone: str = "America/New_York"
    target_timezone: str = "Europe/London"


pipeline = lf.Pipeline("mcp-time", params=Params)


def _flatten(result) -> pa.Table:  # type: ignore[no-untyped-def]
    """Keep the target's datetime and the difference from the server's nested result."""
    data = result.structured_content
    return pa.table({"source": [data["source"]["datetime"]], "target": [data["target"]["datetime"]],
                     "difference": [data["time_difference"]]})


@pipeline.extract(partitions=lambda params: params.times, retry=lf.Retry(attempts=2, backoff_s=0.1))
def converted(partition: str, context: lf.Context) -> pa.Table:
    params = context.params
    server = lf.McpServer.stdio("time", params.executable, ["--local-timezone", "UTC"], timeout_s=30)
    return context.call_tool(server, "convert_time", {
        "source_timezone": params.source_timezone, "time": partition,
        "target_timezone": params.target_timezone,
    }, parser=_flatten)


@pipeline.load(partitioned_like="converted", target=lf.SqliteTable("converted_times"))
def warehouse(converted: pa.Table) -> pa.Table:
    return converted
