"""A reviewer's account of a run, and self-verifiable export bundles."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from typing import Any

from ledgerflow.events import EventStore, McpToolCalled, TamperedLogError, load_run_state
from ledgerflow.projections._history import caught_up_projector

EXPORT_FORMAT = "ledgerflow-export"
EXPORT_VERSION = 1


async def audit_run(store: EventStore, run_id: str, home: str | None = None) -> dict[str, Any]:
    """Return the run's decisions, failures, retries, routes, findings and chain verification.

    A tampered chain is reported, not raised, so that the account still shows what is there.
    """
    report = await store.verify(run_id)
    chain = report.streams[0] if report.streams else None
    verification = {
        "ok": bool(chain and chain.ok), "chain": report.chain, "events": chain.events if chain else 0,
        "head_seq": chain.head_seq if chain else None, "head_hash": chain.head_hash if chain else None,
        "first_bad_seq": chain.first_bad_seq if chain else None, "reason": chain.reason if chain else None,
    }
    state = await load_run_state(store, run_id, verify=False) if not verification["ok"] else \
        await load_run_state(store, run_id)
    projector = await caught_up_projector(store, home)

    def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(row) for row in projector.query(sql, (run_id,))]

    decisions = rows("SELECT gate, request_seq, requested_at, summary, checkpoints, sample_uri, reviewers, four_eyes, "
                     "submitter, decision, reviewer, comment, decided_at, decision_seq FROM approvals "
                     "WHERE run_id = ? ORDER BY request_seq")
    for decision in decisions:
        for key in ("summary", "checkpoints", "reviewers"):
            if decision[key] is not None:
                decision[key] = json.loads(decision[key])
    return {
        "run_id": run_id,
        "status": state.status,
        "pipeline": state.pipeline,
        "submitter": state.submitter,
        "started_at": state.started_at,
        "ended_at": state.ended_at,
        "fingerprint": state.fingerprint,
        "params": state.params,
        "decisions": decisions,
        "attempts_failed": rows("SELECT seq, node, partition, attempt, outcome, error_type, message, timed_out, "
                                "recorded_at FROM attempts WHERE run_id = ? AND outcome != 'completed' ORDER BY seq"),
        "routes": rows("SELECT seq, source, route, condition_met, taken, skipped, reason, recorded_at FROM routes "
                       "WHERE run_id = ? ORDER BY seq"),
        "findings": rows("SELECT seq, kind, node, partition, detail, recorded_at FROM findings WHERE run_id = ? "
                         "ORDER BY seq"),
        "quarantine": rows("SELECT node, partition, reason, rows FROM quarantine WHERE run_id = ? "
                           "ORDER BY node, partition, reason"),
        "mcp_calls": await _mcp_calls(store, run_id),
        "error": state.failure.message if state.failure else None,
        "verification": verification,
    }


async def _mcp_calls(store: EventStore, run_id: str) -> list[dict[str, Any]]:
    """Return the run's MCP tool calls, oldest first, read straight from the stream."""
    calls = []
    async for recorded in store.read_stream(run_id, verify=False):
        if recorded.type != McpToolCalled.event_type:
            continue
        event = recorded.decode(store.path)
        calls.append({
            "seq": recorded.seq, "node": event.node, "partition": event.partition, "attempt": event.attempt,
            "server": event.server, "transport": event.transport, "tool": event.tool,
            "arguments_sha256": event.arguments_sha256, "outcome": event.outcome, "error": event.error,
            "duration_s": event.duration_s, "idempotency_key": event.idempotency_key,
            "result_uri": event.result.uri if event.result else None, "recorded_at": recorded.recorded_at,
        })
    return calls


async def export_run(store: EventStore, run_id: str, path: str) -> dict[str, Any]:
    """Write the run's stream as JSON lines an auditor can verify without ledgerflow.

    The first line is a header with the chain kind and head; each further
    line is one event with its stored payload (base64), envelope fields,
    ``prev_hash`` and ``hash``. The chain is verified before anything is
    written.

    Raises:
        TamperedLogError: The chain does not verify; no file is written.
    """
    lines: list[str] = []
    async for recorded in store.read_stream(run_id):
        lines.append(json.dumps({
            "stream_id": recorded.stream_id, "seq": recorded.seq, "event_id": recorded.event_id,
            "type": recorded.type, "schema_version": recorded.schema_version, "recorded_at": recorded.recorded_at,
            "payload": base64.b64encode(recorded.payload).decode("ascii"),
            "payload_sha256": hashlib.sha256(recorded.payload).hexdigest(),
            "prev_hash": recorded.prev_hash.hex(), "hash": recorded.hash.hex(),
        }, sort_keys=True))
    head = await store.head(run_id)
    if head is None or not lines:
        raise TamperedLogError(f"run {run_id!r} has no head in {store.path}", stream_id=run_id, seq=None,
                               reason="head mismatch")
    header = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "run_id": run_id,
        "chain": getattr(store, "chain", "sha256"), "head_seq": head.head_seq, "head_hash": head.head_hash.hex(),
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(), "events": len(lines),
    }
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(header, sort_keys=True) + "\n")
        for line in lines:
            handle.write(line + "\n")
    os.replace(temporary, path)
    return header
