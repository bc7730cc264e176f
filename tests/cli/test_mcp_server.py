"""``ledgerflow mcp`` driven by the ``mcp`` SDK's client over stdio, on a run waiting at its gate."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client


@contextlib.asynccontextmanager
async def _session(cli, helpers, *extra: str) -> AsyncIterator[ClientSession]:
    server = StdioServerParameters(command=helpers.LEDGERFLOW, args=["mcp", "--home", str(cli.home), *extra])
    async with stdio_client(server) as (read_stream, write_stream):
        async with ClientSession(read_stream, write_stream) as session:
            await session.initialize()
            yield session


async def _call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    return await session.call_tool(tool, arguments)


def _gated_run(cli, helpers, run_id: str) -> None:
    result = cli("run", helpers.pipeline_path("gated.py"), "--run-id", run_id, "--json")
    assert result.returncode == 3, str(result)


async def test_mcp_lists_shows_pages_and_audits(cli, helpers):
    _gated_run(cli, helpers, "numbers-mcp")
    logged = cli.logged("numbers-mcp")

    async with _session(cli, helpers) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        listed = await _call(session, "list_runs")
        shown = await _call(session, "show_run", run_id="numbers-mcp")
        first = await _call(session, "run_events", run_id="numbers-mcp", limit=3)
        rest = await _call(session, "run_events", run_id="numbers-mcp",
                           from_seq=first.structured_content["next_from_seq"], limit=1000)
        verified = await _call(session, "verify", run_id="numbers-mcp")
        audited = await _call(session, "audit", run_id="numbers-mcp")
        missing = await _call(session, "show_run", run_id="no-such-run")

    assert {"list_runs", "show_run", "run_events", "verify", "audit", "approve", "reject"} <= tools
    assert [(row["run_id"], row["status"]) for row in listed.structured_content["runs"]] == [
        ("numbers-mcp", "waiting_for_approval")]
    assert shown.structured_content["status"] == "waiting_for_approval"
    assert shown.structured_content["gates"]["review"]["decision"] is None
    assert [event["seq"] for event in first.structured_content["events"]] == [1, 2, 3]
    assert first.structured_content["next_from_seq"] == 4
    paged = first.structured_content["events"] + rest.structured_content["events"]
    assert [(event["seq"], event["type"]) for event in paged] == [(seq, kind) for seq, kind, _ in logged]
    assert rest.structured_content["next_from_seq"] is None
    assert verified.structured_content["ok"] is True
    assert verified.structured_content["streams"][0]["head_seq"] == len(logged)
    assert audited.structured_content["run_id"] == "numbers-mcp"
    assert audited.structured_content["verification"]["ok"] is True
    assert missing.is_error
    assert "not found" in missing.content[0].text


async def test_mcp_decisions_refused_without_flag(cli, helpers):
    _gated_run(cli, helpers, "numbers-refused")
    before = len(cli.logged("numbers-refused"))

    async with _session(cli, helpers) as session:
        refused = await _call(session, "approve", run_id="numbers-refused", reviewer="bob")

    assert refused.is_error
    assert "--allow-decisions" in refused.content[0].text
    assert len(cli.logged("numbers-refused")) == before


async def test_mcp_approval_recorded_with_flag(cli, helpers):
    _gated_run(cli, helpers, "numbers-approved")

    async with _session(cli, helpers, "--allow-decisions") as session:
        approved = await _call(session, "approve", run_id="numbers-approved", reviewer="bob",
                               comment="sample checked")
        again = await _call(session, "approve", run_id="numbers-approved", reviewer="carol")

    assert not approved.is_error, approved.content
    assert approved.structured_content["decision"] == "approved"
    assert approved.structured_content["next_step"] == "ledgerflow resume numbers-approved"
    granted = [payload for _, kind, payload in cli.logged("numbers-approved") if kind == "ApprovalGranted"]
    assert [(event["reviewer"], event["comment"]) for event in granted] == [("bob", "sample checked")]
    assert again.is_error
    assert "already approved by bob" in again.content[0].text
    assert "exit status 4" in again.content[0].text
    # The server only records the decision; the run continues when resumed.
    assert cli("show", "numbers-approved", "--json").json()["status"] == "interrupted"
    resumed = cli("resume", "numbers-approved", "--json")
    assert resumed.returncode == 0, str(resumed)
    assert len(cli.rows("numbers")) == 35


async def test_mcp_rejection_needs_comment(cli, helpers):
    _gated_run(cli, helpers, "numbers-rejected")

    async with _session(cli, helpers, "--allow-decisions") as session:
        bare = await _call(session, "reject", run_id="numbers-rejected", reviewer="bob", comment=" ")
        rejected = await _call(session, "reject", run_id="numbers-rejected", reviewer="bob",
                               comment="counts are off")

    assert bare.is_error
    assert "missing comment" in bare.content[0].text
    assert rejected.structured_content["status"] == "rejected"
    assert cli("show", "numbers-rejected", "--json").json()["status"] == "rejected"
