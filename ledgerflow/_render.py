"""Terminal rendering for the command line: progress, summaries, the gate prompt."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.prompt import Prompt
from rich.table import Table

from ledgerflow.events import RecordedEvent, RunState, parse_recorded_at

_console = Console()
_errors = Console(stderr=True)


def _duration(start: str | None, end: str | None) -> float | None:
    if not start:
        return None
    finish = parse_recorded_at(end).timestamp() if end else time.time()
    return round(finish - parse_recorded_at(start).timestamp(), 3)


def _rows_of(node: Any) -> int:
    total = 0
    for part in node.partitions.values():
        if part.manifest is not None:
            total += part.manifest.rows
        else:
            total += int(part.report.get("loaded_rows", 0) or 0)
    return total


class Progress:
    """Live per-node progress in a terminal; plain lines on stderr otherwise; silent with --json."""

    def __init__(self, *, enabled: bool, quiet: bool) -> None:
        self.enabled = enabled
        self.quiet = quiet
        self._live: Live | None = None
        self._state: RunState | None = None
        self._announced: set[tuple[str, str]] = set()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._live = Live(self._table(), console=_console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc_info)
            self._live = None

    def update(self, state: RunState, fresh: list[RecordedEvent]) -> None:
        self._state = state
        if self._live is not None:
            self._live.update(self._table())
        elif not self.quiet:
            self._print_milestones(state, fresh)

    def _print_milestones(self, state: RunState, fresh: list[RecordedEvent]) -> None:
        for recorded in fresh:
            if recorded.type in ("NodeCompleted", "NodeAttemptFailed", "RouteTaken", "ApprovalRequested",
                                 "RunCompleted", "RunFailed", "RunQuarantined", "RunCancelled",
                                 "RunInterrupted", "CheckpointInvalidated"):
                _errors.print(f"[{recorded.seq}] {recorded.type} {_short_payload(recorded)}", markup=False,
                              highlight=False, soft_wrap=True)

    def _table(self) -> Table:
        table = Table(title=f"run {self._state.run_id}" if self._state else "starting run", expand=False)
        for column in ("node", "kind", "status", "partitions", "rows", "elapsed s"):
            table.add_column(column, justify="right" if column in ("partitions", "rows", "elapsed s") else "left")
        if self._state is None:
            return table
        for name, node in self._state.nodes.items():
            elapsed = _duration(node.started_at, node.completed_at)
            table.add_row(name, node.spec.kind, node.status, f"{node.partitions_done}/{len(node.partitions)}",
                          f"{_rows_of(node):,}", "" if elapsed is None else f"{elapsed:.1f}")
        return table


def _short_payload(recorded: RecordedEvent) -> str:
    try:
        payload = recorded.decode().model_dump(mode="json")
    except Exception:  # noqa: BLE001 - progress lines never fail a run
        return ""
    for bulky in ("summary", "nodes", "checkpoints", "report", "extra", "manifest", "sample"):
        payload.pop(bulky, None)
    return json.dumps(payload, default=str)[:300]


def ask_decision(state: RunState, default_reviewer: str) -> tuple[bool, str, str] | None:
    """Show the open gate's summary and ask for a decision; None means decide later."""
    gate = next((gate for gate in state.gates.values() if gate.decision is None), None)
    if gate is None:
        return None
    request = gate.request
    _console.rule(f"approval gate {request.gate!r} of run {state.run_id}")
    for node, entry in request.summary.get("inputs", {}).items():
        table = Table(title=f"{node} ({entry.get('kind')}): {entry.get('rows', 0):,} rows")
        table.add_column("partition")
        table.add_column("rows", justify="right")
        validation = entry.get("validation") or {}
        by_partition = validation.get("by_partition", {})
        if validation:
            table.add_column("rejected", justify="right")
        for key, rows in entry.get("rows_by_partition", {}).items():
            cells = [str(key), f"{rows:,}"]
            if validation:
                cells.append(f"{by_partition.get(key, {}).get('rejected', 0):,}")
            table.add_row(*cells)
        _console.print(table)
        if validation.get("rejected_by_reason"):
            _console.print("quarantined by reason: " + ", ".join(
                f"{reason}: {count:,}" for reason, count in validation["rejected_by_reason"].items()))
        extra = {key: value for key, value in validation.items()
                 if key not in ("by_partition", "rejected_by_reason", "rows_in", "valid", "rejected")}
        if extra:
            _console.print("report: " + json.dumps(extra, default=str))
        if entry.get("schema"):
            _console.print("schema: " + ", ".join(f"{name} {kind}" for name, kind in entry["schema"]))
    findings = request.summary.get("policy_findings") or []
    if findings:
        _console.print(f"policy findings ({len(findings)}):")
        for finding in findings:
            where = finding["node"] + (f"[{finding['partition']}]" if finding.get("partition") else "")
            _console.print(f"  {finding['rule']} ({finding['action']}) at {where}: {finding['detail']}", markup=False)
    if request.sample is not None:
        _console.print(f"sample: {request.sample.rows} rows in {request.sample.uri}")
    rules = []
    if request.reviewers:
        rules.append("reviewers: " + ", ".join(request.reviewers))
    if request.four_eyes:
        rules.append(f"four eyes (not {request.submitter})")
    if rules:
        _console.print("rules: " + "; ".join(rules))
    choice = Prompt.ask("decision", choices=["approve", "reject", "later"], default="approve")
    if choice == "later":
        return None
    reviewer = Prompt.ask("reviewer", default=default_reviewer)
    comment = Prompt.ask("comment", default="" if choice == "approve" else None)
    return choice == "approve", reviewer, comment or ""


def run_row(state: RunState, status: str) -> dict[str, Any]:
    return {"run_id": state.run_id, "pipeline": state.pipeline, "status": status, "submitter": state.submitter,
            "started_at": state.started_at, "ended_at": state.ended_at, "events": state.seq}


def print_runs(rows: list[dict[str, Any]]) -> None:
    if not rows:
        _console.print("no runs yet: start one with 'ledgerflow run PIPELINE'")
        return
    table = Table()
    for column in ("run_id", "pipeline", "status", "started_at", "events"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[column] or "") for column in ("run_id", "pipeline", "status", "started_at", "events")))
    _console.print(table)


def run_summary(state: RunState, status: str) -> dict[str, Any]:
    """Return a run's status, nodes, timings and row counts as a JSON-compatible dict."""
    nodes = []
    for name, node in state.nodes.items():
        nodes.append({
            "node": name, "kind": node.spec.kind, "status": node.status,
            "partitions_done": node.partitions_done, "partitions": len(node.partitions),
            "rows": _rows_of(node), "attempts": max((p.attempts for p in node.partitions.values()), default=0),
            "started_at": node.started_at, "completed_at": node.completed_at,
            "duration_s": _duration(node.started_at, node.completed_at) if node.completed_at else None,
        })
    gates = {name: {"decision": gate.decision, "reviewer": gate.reviewer, "comment": gate.comment,
                    "requested_seq": gate.request_seq, "decided_at": gate.decided_at}
             for name, gate in state.gates.items()}
    summary: dict[str, Any] = {
        "run_id": state.run_id, "status": status, "pipeline": state.pipeline, "locator": state.locator,
        "submitter": state.submitter, "started_at": state.started_at, "ended_at": state.ended_at,
        "events": state.seq, "params": state.params, "nodes": nodes, "gates": gates,
        "shared_state": state.shared, "failed_attempts": state.attempts_failed,
    }
    if state.failure is not None:
        summary["error"] = state.failure.message
    if state.quarantine is not None:
        summary["quarantine_reason"] = state.quarantine.reason
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    _console.print(f"run {summary['run_id']} ({summary['pipeline']}): [bold]{summary['status']}[/bold]")
    _console.print(f"submitted by {summary['submitter']}, started {summary['started_at']}, "
                   f"ended {summary['ended_at'] or '-'}, {summary['events']} events")
    table = Table()
    for column in ("node", "kind", "status", "partitions", "rows", "attempts", "duration s"):
        table.add_column(column, justify="right" if column in ("partitions", "rows", "attempts", "duration s")
                         else "left")
    for node in summary["nodes"]:
        table.add_row(node["node"], node["kind"], node["status"], f"{node['partitions_done']}/{node['partitions']}",
                      f"{node['rows']:,}", str(node["attempts"]),
                      "" if node["duration_s"] is None else f"{node['duration_s']:.2f}")
    _console.print(table)
    for name, gate in summary["gates"].items():
        _console.print(f"gate {name}: {gate['decision'] or 'waiting'}"
                       + (f" by {gate['reviewer']} ({gate['comment']})" if gate["reviewer"] else ""))
    if summary.get("error"):
        _console.print(f"error: {summary['error']}", markup=False)
    if summary.get("quarantine_reason"):
        _console.print(f"quarantined: {summary['quarantine_reason']}", markup=False)


def event_line(recorded: RecordedEvent, payload: dict[str, Any]) -> str:
    for bulky in ("summary", "nodes"):
        if bulky in payload:
            payload[bulky] = "…"
    return f"{recorded.seq:>6}  {recorded.recorded_at}  {recorded.type:<20} {json.dumps(payload, default=str)}"


def print_verify(path: str, chain: str, streams: list[dict[str, Any]]) -> None:
    _console.print(f"log {path} ({chain} chain)")
    if not streams:
        _console.print("no runs in the log")
    for stream in streams:
        if stream["status"] == "ok":
            # soft_wrap keeps each head hash on one line for scripts, whatever the terminal width.
            _console.print(f"ok        {stream['run_id']}  {stream['events']} events  head {stream['head_hash']}",
                           markup=False, highlight=False, soft_wrap=True)
        else:
            _console.print(f"TAMPERED  {stream['run_id']}  first bad seq {stream['first_bad_seq']} "
                           f"({stream['reason']})", markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()


def print_checkpoint_checks(checks: list[dict[str, Any]]) -> None:
    """Print the state of a run's checkpoint files: counts, then each file that is not intact."""
    counts: dict[str, int] = {}
    for check in checks:
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    _console.print("checkpoints: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items())),
                   markup=False)
    for check in checks:
        if check["status"] != "ok":
            _console.print(f"  {check['status']:<8} {check['label']}  {check['uri']}  {check['detail']}",
                           markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()


def print_gc(results: list[Any], dry_run: bool) -> None:
    """Print what a collection did with each run, and the bytes it freed."""
    table = Table("run", "status", "action", "files", "bytes", "reason", box=None)
    for item in results:
        table.add_row(item.run_id, item.status, item.action, str(item.files), f"{item.bytes:,}", item.reason)
    _console.print(table)
    done = [item for item in results if item.action in ("removed", "would remove")]
    verb = "would free" if dry_run else "freed"
    _console.print(f"{len(done)} run(s), {verb} {sum(item.bytes for item in done):,} bytes", markup=False)
    sys.stdout.flush()


def print_audit(account: dict[str, Any]) -> None:
    """Print a reviewer's account of a run, oldest fact first."""
    _console.rule(f"audit of run {account['run_id']} ({account['pipeline']}): {account['status']}")
    _console.print(f"submitted by {account['submitter']}; started {account['started_at']}; ended "
                   f"{account['ended_at'] or '-'}; code fingerprint {account['fingerprint']}", markup=False)
    _console.print(f"parameters: {json.dumps(account['params'], default=str)}", markup=False, soft_wrap=True)
    for decision in account["decisions"]:
        _console.print(f"gate {decision['gate']}: requested at {decision['requested_at']} (seq "
                       f"{decision['request_seq']}); {decision['decision'] or 'undecided'}"
                       + (f" by {decision['reviewer']} at {decision['decided_at']}: {decision['comment'] or ''}"
                          if decision["decision"] else ""), markup=False)
        for node, entry in (decision["summary"] or {}).get("inputs", {}).items():
            validation = entry.get("validation") or {}
            _console.print(f"  {node}: {entry.get('rows', 0):,} rows; rejected {validation.get('rejected', 0):,} "
                           f"{json.dumps(validation.get('rejected_by_reason', {}))}", markup=False)
        _console.print(f"  bound checkpoints: {len(decision['checkpoints'] or {})}", markup=False)
    for attempt in account["attempts_failed"]:
        partition = f"[{attempt['partition']}]" if attempt["partition"] else ""
        _console.print(f"seq {attempt['seq']}: {attempt['node']}{partition} attempt {attempt['attempt']} "
                       f"{attempt['outcome']}{' (timed out)' if attempt['timed_out'] else ''}: "
                       f"{attempt['error_type']}: {attempt['message']}", markup=False, soft_wrap=True)
    for route in account["routes"]:
        _console.print(f"seq {route['seq']}: route {route['route']} after {route['source']}: {route['reason']}; "
                       f"skipped {route['skipped']}", markup=False, soft_wrap=True)
    for call in account.get("mcp_calls", ()):
        partition = f"[{call['partition']}]" if call["partition"] else ""
        _console.print(f"seq {call['seq']}: {call['node']}{partition} attempt {call['attempt']} called "
                       f"{call['tool']} on MCP server {call['server']}: {call['outcome']} in "
                       f"{call['duration_s']:.3f} s" + (f": {call['error']}" if call["error"] else ""),
                       markup=False, soft_wrap=True)
    for finding in account["findings"]:
        _console.print(f"seq {finding['seq']}: {finding['kind']}: {finding['detail']}", markup=False, soft_wrap=True)
    if account["quarantine"]:
        total = sum(row["rows"] for row in account["quarantine"])
        _console.print(f"quarantined rows: {total:,}", markup=False)
    if account.get("error"):
        _console.print(f"error: {account['error']}", markup=False, soft_wrap=True)
    check = account["verification"]
    if check["ok"]:
        _console.print(f"chain ({check['chain']}): ok, {check['events']} events, head seq {check['head_seq']}, "
                       f"head hash {check['head_hash']}", markup=False, soft_wrap=True)
    else:
        _console.print(f"chain ({check['chain']}): TAMPERED from seq {check['first_bad_seq']} ({check['reason']})",
                       markup=False, soft_wrap=True)
