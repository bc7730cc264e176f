"""Pipelines that extract and load through the test MCP server in ``tests/actors/mcp_servers``.

``extract`` reads flights month by month through the server's
``flights_by_month`` tool and loads them into the warehouse. ``faulty`` and
``retried`` call the tool named by their parameters once, so tests can make
the server hang, exit, print garbage or return too much.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf

SERVERS = pathlib.Path(__file__).resolve().parent.parent / "mcp_servers"


class Params(BaseModel):
    database: str
    months: list[int] = [1, 2]
    call_timeout_s: float = 20.0


def flights_server(database: str, *, timeout_s: float = 20.0, max_result_bytes: int = 16 * 1024 * 1024,
                   env: dict[str, Any] | None = None) -> lf.McpServer:
    return lf.McpServer.stdio("flights", sys.executable, [str(SERVERS / "flights_server.py"), database],
                              env=env, timeout_s=timeout_s, max_result_bytes=max_result_bytes)


pipeline = lf.Pipeline("mcp-extract", params=Params)


@pipeline.extract(partitions=lambda params: params.months, retry=lf.Retry(attempts=2, backoff_s=0.1))
def flights(partition: int, context: lf.Context) -> pa.Table:
    server = flights_server(context.params.database, timeout_s=context.params.call_timeout_s)
    return context.call_tool(server, "flights_by_month", {"month": partition})


@pipeline.load(partitioned_like="flights", target=lf.SqliteTable("mcp_flights"))
def warehouse(flights: pa.Table) -> pa.Table:
    return flights


class FaultParams(BaseModel):
    database: str
    tool: str
    arguments: dict[str, Any] = {}
    call_timeout_s: float = 5.0
    max_result_bytes: int = 1024 * 1024
    retry_tool_errors: bool = False
    worker_pid_file: str = ""
    token: lf.Secret | None = None


def _call(context: lf.Context) -> pa.Table:
    params = context.params
    if params.worker_pid_file:
        with open(params.worker_pid_file + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        os.replace(params.worker_pid_file + ".tmp", params.worker_pid_file)
    env = {"FLIGHTS_TOKEN": params.token} if params.token is not None else None
    server = flights_server(params.database, timeout_s=params.call_timeout_s,
                            max_result_bytes=params.max_result_bytes, env=env)
    return context.call_tool(server, params.tool, params.arguments, retry_tool_errors=params.retry_tool_errors)


faulty = lf.Pipeline("mcp-faulty", params=FaultParams)


@faulty.extract
def called(context: lf.Context) -> pa.Table:
    return _call(context)


retried = lf.Pipeline("mcp-retried", params=FaultParams)


@retried.extract(retry=lf.Retry(attempts=2, backoff_s=0.1))
def called_twice(context: lf.Context) -> pa.Table:
    return _call(context)


class RecordedParams(BaseModel):
    database: str
    counter: str
    flaky_marker: str
    load_ledger: str


recorded = lf.Pipeline("mcp-recorded", params=RecordedParams)


@recorded.step(retry=lf.Retry(attempts=2, backoff_s=0.1))
def publish(context: lf.Context) -> pa.Table:
    """Count a call, write once with an idempotency key, then fail once through a server exit."""
    params = context.params
    server = flights_server(params.database, env={"LOAD_LEDGER": params.load_ledger})
    counted = context.call_tool(server, "count_calls", {"marker": params.counter})
    written = context.call_tool(server, "record_load", {"rows": counted.num_rows}, writes=True,
                                idempotency_argument="request_id")
    context.call_tool(server, "flaky", {"marker": params.flaky_marker})
    return written


class HttpParams(BaseModel):
    url: str
    month: int = 1
    max_result_bytes: int = 16 * 1024 * 1024
    token: lf.Secret | None = None


over_http = lf.Pipeline("mcp-http", params=HttpParams)


@over_http.extract
def flights_over_http(context: lf.Context) -> pa.Table:
    params = context.params
    headers = {"X-Flights-Token": params.token} if params.token is not None else None
    server = lf.McpServer.http("flights-http", params.url, headers=headers, timeout_s=20,
                               max_result_bytes=params.max_result_bytes)
    return context.call_tool(server, "flights_by_month", {"month": params.month})


class AfterCallParams(BaseModel):
    database: str
    counter: str


after_call = lf.Pipeline("mcp-after-call", params=AfterCallParams)


@after_call.step(retry=lf.Retry(attempts=2, backoff_s=0.1))
def counted(context: lf.Context) -> pa.Table:
    """Call a tool, then fail the first attempt with an error of the node's own."""
    server = flights_server(context.params.database)
    table = context.call_tool(server, "count_calls", {"marker": context.params.counter})
    if context.attempt == 1:
        raise ValueError("failing after the call on purpose")
    return table


node_timeout = lf.Pipeline("mcp-node-timeout", params=FaultParams)


@node_timeout.extract(retry=lf.Retry(attempts=1, timeout_s=3))
def cut_short(context: lf.Context) -> pa.Table:
    """Call with a call timeout longer than the node's, so the executor cancels the task mid-call."""
    return _call(context)
