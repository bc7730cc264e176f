"""The MCP server behind ``ledgerflow mcp``: runs, events, verification and audits for MCP clients.

Every tool reads the log, as the command line does. Only a server started
with ``allow_decisions`` records approvals and rejections, under the same
rules as ``ledgerflow approve`` and ``reject``. It never continues a run:
``ledgerflow resume`` does that after an approval.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from ledgerflow import _render as render
from ledgerflow.actors import Settings, decide, lease_is_free, status_of
from ledgerflow.events import LedgerflowError, RunNotFoundError, RunState, apply, load_run_state, open_store
from ledgerflow.projections import audit_run, caught_up_projector

logger = structlog.get_logger("ledgerflow.mcp_server")

#: The largest page of events one ``run_events`` call returns.
MAX_EVENTS_PAGE = 1000


def _tool_error(err: LedgerflowError) -> ToolError:
    return ToolError(f"{err} (ledgerflow exit status {err.exit_code})")


def build_server(settings: Settings, *, allow_decisions: bool = False) -> MCPServer:
    """Build the MCP server for the log in ``settings``."""
    server = MCPServer(
        "ledgerflow",
        instructions="Inspect ledgerflow runs: list them, show one, page through its events, verify its hash "
                     "chain and read its audit account. Approve and reject work only when the server was "
                     "started with --allow-decisions, and they only record the decision: run "
                     "'ledgerflow resume RUN' to continue an approved run.",
    )

    async def reading(run: Any) -> Any:
        store = await open_store(settings.store_url, create=False)
        try:
            return await run(store)
        except LedgerflowError as err:
            logger.info("mcp request failed", error=str(err), error_type=type(err).__name__)
            raise _tool_error(err) from err
        finally:
            await store.close()

    @server.tool()
    async def list_runs() -> dict[str, Any]:
        """List every run, newest first, with its status, pipeline, submitter and times."""
        if not os.path.exists(settings.store_path):
            return {"runs": [], "status": "ok"}

        async def collect(store: Any) -> dict[str, Any]:
            projector = await caught_up_projector(store)
            rows = [dict(row) for row in projector.query(
                "SELECT run_id, pipeline, status, submitter, started_at, ended_at, events FROM runs "
                "ORDER BY started_at DESC")]
            for row in rows:
                if row["status"] == "running" and lease_is_free(store.path, row["run_id"]):
                    row["status"] = "interrupted"
            return {"runs": rows, "status": "ok"}

        return await reading(collect)

    @server.tool()
    async def show_run(run_id: str) -> dict[str, Any]:
        """Show one run: its status, nodes, timings, row counts and gates."""

        async def collect(store: Any) -> dict[str, Any]:
            state = await load_run_state(store, run_id)
            return render.run_summary(state, status_of(state, settings.store_path))

        return await reading(collect)

    @server.tool()
    async def run_events(run_id: str, from_seq: int = 1, limit: int = 100) -> dict[str, Any]:
        """Return up to ``limit`` events of a run from ``from_seq`` on; ``next_from_seq`` is the next page.

        The chain is verified up to the last event returned.
        """
        if from_seq < 1:
            raise ToolError(f"invalid from_seq {from_seq}: use 1 or more")
        if not 1 <= limit <= MAX_EVENTS_PAGE:
            raise ToolError(f"invalid limit {limit}: use 1 to {MAX_EVENTS_PAGE}")

        async def collect(store: Any) -> dict[str, Any]:
            head = await store.head(run_id)
            if head is None:
                raise RunNotFoundError(run_id, store.path)
            last = min(head.head_seq, from_seq + limit - 1)
            state = RunState()
            events = []
            async for recorded in store.read_stream(run_id, to_seq=last):
                event = recorded.decode(store.path)
                apply(state, event, seq=recorded.seq, recorded_at=recorded.recorded_at)
                if recorded.seq >= from_seq:
                    events.append({
                        "seq": recorded.seq, "type": recorded.type, "recorded_at": recorded.recorded_at,
                        "event_id": recorded.event_id, "schema_version": recorded.schema_version,
                        "status": state.status, "hash": recorded.hash.hex(),
                        "payload": event.model_dump(mode="json"),
                    })
            return {"run_id": run_id, "head_seq": head.head_seq, "events": events,
                    "next_from_seq": last + 1 if last < head.head_seq else None}

        return await reading(collect)

    @server.tool()
    async def verify(run_id: str | None = None) -> dict[str, Any]:
        """Check the hash chain of one run, or of every run; return each head hash."""

        async def collect(store: Any) -> dict[str, Any]:
            report = await store.verify(run_id)
            if run_id is not None and not report.streams[0].events and report.streams[0].head_seq is None:
                raise RunNotFoundError(run_id, report.path)
            streams = [
                {"run_id": item.stream_id, "status": "ok" if item.ok else "tampered", "events": item.events,
                 "head_seq": item.head_seq, "head_hash": item.head_hash, "first_bad_seq": item.first_bad_seq,
                 "reason": item.reason, "detail": item.detail}
                for item in report.streams
            ]
            return {"ok": report.ok, "chain": report.chain, "streams": streams,
                    "status": "ok" if report.ok else "tampered"}

        return await reading(collect)

    @server.tool()
    async def audit(run_id: str) -> dict[str, Any]:
        """Return a reviewer's account of a run: decisions, failures, retries, routes, findings and chain check."""
        return await reading(lambda store: audit_run(store, run_id))

    async def record_decision(run_id: str, reviewer: str, approve: bool, comment: str) -> dict[str, Any]:
        if not allow_decisions:
            raise ToolError("decisions are disabled on this server: restart it with "
                            "'ledgerflow mcp --allow-decisions' to approve or reject runs")
        try:
            decided = await anyio.to_thread.run_sync(
                lambda: decide(run_id, reviewer=reviewer, approve=approve, comment=comment, settings=settings))
        except LedgerflowError as err:
            logger.info("mcp decision rejected", run_id=run_id, reviewer=reviewer, error=str(err))
            raise _tool_error(err) from err
        logger.info("mcp decision recorded", run_id=run_id, reviewer=reviewer, approved=approve)
        result = {"run_id": run_id, "status": decided.status, "seq": decided.seq, "message": decided.message,
                  "decision": "approved" if approve else "rejected", "reviewer": reviewer}
        if approve:
            result["next_step"] = f"ledgerflow resume {run_id}"
        return result

    @server.tool()
    async def approve(run_id: str, reviewer: str, comment: str = "") -> dict[str, Any]:
        """Record an approval of the run's open gate by ``reviewer`` (needs --allow-decisions).

        The run does not continue here: run 'ledgerflow resume RUN' afterwards.
        """
        return await record_decision(run_id, reviewer, True, comment)

    @server.tool()
    async def reject(run_id: str, reviewer: str, comment: str) -> dict[str, Any]:
        """Record a rejection of the run's open gate by ``reviewer``, with a reason (needs --allow-decisions)."""
        if not comment.strip():
            raise ToolError("missing comment: a rejection needs a comment with the reason")
        return await record_decision(run_id, reviewer, False, comment)

    return server


def serve(settings: Settings, *, allow_decisions: bool = False) -> None:
    """Serve over stdio until the client closes the connection."""
    logger.info("mcp server started", store=settings.store_url, allow_decisions=allow_decisions)
    build_server(settings, allow_decisions=allow_decisions).run("stdio")
    logger.info("mcp server stopped")
