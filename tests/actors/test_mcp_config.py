"""MCP server definitions and calls outside a run: invalid settings, a missing command, result tables."""

from __future__ import annotations

import pytest

import ledgerflow as lf
from ledgerflow.actors import McpTransportError
from ledgerflow.actors._mcp import CallLedger, call_tool, rows_to_table


@pytest.mark.parametrize(("build", "expected"), [
    (lambda: lf.McpServer.stdio("bad name", "python"), "invalid MCP server name 'bad name'"),
    (lambda: lf.McpServer.stdio("ok", ""), "has no command"),
    (lambda: lf.McpServer.stdio("ok", "python", timeout_s=0), "invalid timeout_s 0"),
    (lambda: lf.McpServer.stdio("ok", "python", max_result_bytes=-1), "invalid max_result_bytes -1"),
    (lambda: lf.McpServer.http("ok", "ftp://127.0.0.1/mcp"), "invalid URL 'ftp://127.0.0.1/mcp'"),
])
def test_server_definition_rejects_invalid(build, expected):
    with pytest.raises(lf.ConfigurationError, match=expected):
        build()


def test_missing_command_fails_naming_it(tmp_path):
    server = lf.McpServer.stdio("absent", str(tmp_path / "no-such-server"), timeout_s=20)
    ledger = CallLedger(run_id="run", node="node", partition="", attempt=1, checkpoint_root=str(tmp_path))

    with pytest.raises(McpTransportError, match="exited with status 127") as raised:
        call_tool(ledger, server, "anything")

    assert "no-such-server" in str(raised.value)
    assert [(event.tool, event.outcome) for event in ledger.events] == [("anything", "transport_error")]
    assert not list(tmp_path.rglob("*.in-flight.json"))


@pytest.mark.parametrize(("data", "columns", "rows"), [
    ([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], ["a", "b"], 2),
    ({"a": [1, 2, 3], "b": ["x", "y", "z"]}, ["a", "b"], 3),
    ({"a": 1, "b": "x"}, ["a", "b"], 1),
    ({"result": [{"a": 1}]}, ["a"], 1),
    ([1, 2, 3], ["value"], 3),
    (7, ["value"], 1),
])
def test_rows_to_table_shapes(data, columns, rows):
    table = rows_to_table(data)

    assert table.column_names == columns
    assert table.num_rows == rows
