"""The ``ledgerflow`` command line.

Exit statuses: 0 completed (or a query answered), 1 failed, 2 usage or input
error, 3 waiting for approval, 4 decision refused, 5 log tampered, 6 ended
without loading, 7 run held by another executor, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from ledgerflow import _render as render
from ledgerflow.actors import (
    DEFAULT_RETENTION_DAYS,
    EXIT_CODES,
    RunResult,
    Settings,
    cancel_run,
    check_run_checkpoints,
    collect_garbage,
    record_export,
    decide,
    default_submitter,
    lease_is_free,
    load_pipeline,
    load_state,
    resume_run,
    start_run,
    status_of,
)
from ledgerflow.actors._loader import canonical_locator
from ledgerflow.actors._logging import LEVEL_ENV, LEVELS, configure_logging
from ledgerflow.actors._runner import RAY_OUTPUT_ENV, new_run_id
from ledgerflow.projections import audit_run, caught_up_projector, export_run
from ledgerflow.events import (
    LedgerflowError,
    LogNotFoundError,
    RunNotFoundError,
    RunState,
    TamperedLogError,
    UsageError,
    apply,
    load_run_state,
    open_store,
    redact_text,
    validate_stream_id,
)


class Options:
    """The options every command takes."""

    def __init__(self, home: str | None, store: str | None, checkpoints: str | None, address: str | None,
                 as_json: bool, debug: bool) -> None:
        self.settings = Settings.resolve(home=home, store=store, checkpoints=checkpoints, address=address)
        self.as_json = as_json
        self.debug = debug

    @property
    def interactive(self) -> bool:
        return not self.as_json and sys.stdin.isatty() and sys.stdout.isatty()


def common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared options and turn ledgerflow errors into one line and an exit status."""

    @click.option("--home", envvar="LEDGERFLOW_HOME", type=click.Path(file_okay=False),
                  help="Directory of the log, checkpoints and default warehouse [default: ./.ledgerflow].")
    @click.option("--store", envvar="LEDGERFLOW_STORE", help="Event store: a SQLite file path or a postgresql:// URL [default: HOME/ledgerflow.db].")
    @click.option("--checkpoints", help="Checkpoint directory or pyarrow.fs URI [default: HOME/checkpoints].")
    @click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join [default: a private local Ray].")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object (JSON lines for events); never prompt.")
    @click.option("--debug", is_flag=True, help="Show tracebacks and Ray's worker output.")
    @click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False),
                  help=f"Level of ledgerflow's log lines on standard error, here and in executors and workers "
                       f"(or ${LEVEL_ENV}) [default: warning here, info in executors].")
    @functools.wraps(command)
    def wrapper(home: str | None, store: str | None, checkpoints: str | None, address: str | None,
                as_json: bool, debug: bool, log_level: str | None, **kwargs: Any) -> None:
        # The command line reports outcomes itself; library logs show with --debug,
        # --log-level or LEDGERFLOW_LOG_LEVEL.
        if log_level is not None:
            # Executors and workers read the level from the environment of the process that starts them.
            os.environ[LEVEL_ENV] = log_level.lower()
        if debug:
            # Executors then log failed attempts with their tracebacks, and Ray forwards that output here.
            os.environ.setdefault(LEVEL_ENV, "debug")
            os.environ[RAY_OUTPUT_ENV] = "1"
        try:
            configure_logging("debug" if debug else os.environ.get(LEVEL_ENV) or "warning")
        except ValueError as err:
            _fail(UsageError(f"{err} (from ${LEVEL_ENV})"), debug, as_json, 2)
        try:
            options = Options(home, store, checkpoints, address, as_json, debug)
            code = command(options, **kwargs)
        except LedgerflowError as err:
            _fail(err, debug, as_json, err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as err:  # noqa: BLE001 - the last line of defence prints one line
            _fail(err, debug, as_json, 1, unexpected=True)
        sys.exit(code or 0)

    return wrapper


def _fail(err: BaseException, debug: bool, as_json: bool, code: int, *, unexpected: bool = False) -> None:
    if debug:
        click.echo(redact_text("".join(traceback.format_exception(err))), err=True, nl=False)
    prefix = f"unexpected {type(err).__name__}: " if unexpected else ""
    message = redact_text(f"{prefix}{err}")
    if as_json:
        payload: dict[str, Any] = {"error": message, "error_type": type(err).__name__, "exit_code": code}
        for attribute in ("run_id", "status", "seq", "stream_id"):
            if getattr(err, attribute, None) is not None:
                payload[attribute] = getattr(err, attribute)
        # A stream is a run: errors from the log name the stream, and --json promises run_id.
        if "run_id" not in payload and "stream_id" in payload:
            payload["run_id"] = payload["stream_id"]
        if isinstance(err, TamperedLogError):
            payload["status"] = "tampered"
        click.echo(json.dumps(payload))
    click.echo(f"error: {message}" + ("" if debug or not unexpected else " (rerun with --debug for the traceback)"),
               err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ledgerflow")
def main() -> None:
    """Durable, event-sourced ETL pipelines on Ray."""


def _parse_params(values: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid --param {item!r}: use KEY=VALUE")
        params[key.strip()] = value
    return params


# Running


@main.command()
@click.argument("pipeline")
@click.option("--param", "params", multiple=True, metavar="K=V", help="A pipeline parameter; repeat for more.")
@click.option("--run-id", help="Id of the new run [default: PIPELINE-TIME-RANDOM].")
@click.option("--submitter", help="Who submits the run [default: user@host].")
@click.option("--max-in-flight", type=click.IntRange(min=1), help="Most partition tasks running at once.")
@common_options
def run(options: Options, pipeline: str, params: tuple[str, ...], run_id: str | None, submitter: str | None,
        max_in_flight: int | None) -> int:
    """Start a run of PIPELINE (path/file.py[:NAME] or module:NAME) and follow it."""
    loaded = load_pipeline(pipeline)
    run_id = validate_stream_id(run_id or new_run_id(loaded.name))
    if not options.as_json:
        click.echo(f"run {run_id}", err=not options.interactive)
    progress = render.Progress(enabled=options.interactive, quiet=options.as_json)
    with progress:
        result = start_run(
            canonical_locator(pipeline), params=_parse_params(params), run_id=run_id, submitter=submitter,
            settings=options.settings, on_progress=progress.update, max_in_flight=max_in_flight,
            handle_sigint=True,
        )
    return _after_run(options, result, progress, max_in_flight)


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--pipeline", "locator", help="Where the pipeline is now, if its file moved.")
@click.option("--allow-changed-code", is_flag=True, help="Continue even if the code changed since the start (recorded).")
@click.option("--max-in-flight", type=click.IntRange(min=1), help="Most partition tasks running at once.")
@common_options
def resume(options: Options, run_id: str, locator: str | None, allow_changed_code: bool,
           max_in_flight: int | None) -> int:
    """Continue RUN from its last checkpoint."""
    progress = render.Progress(enabled=options.interactive, quiet=options.as_json)
    with progress:
        result = resume_run(run_id, settings=options.settings, locator=locator,
                            allow_changed_code=allow_changed_code, on_progress=progress.update,
                            max_in_flight=max_in_flight, handle_sigint=True)
    return _after_run(options, result, progress, max_in_flight)


def _after_run(options: Options, result: RunResult, progress: render.Progress, max_in_flight: int | None) -> int:
    while result.status == "waiting_for_approval" and options.interactive and result.changed:
        state = _load(options, result.run_id)
        decision = render.ask_decision(state, default_submitter())
        if decision is None:
            break
        approve, reviewer, comment = decision
        decided = decide(result.run_id, reviewer=reviewer, approve=approve, comment=comment,
                         settings=options.settings)
        click.echo(decided.message)
        if not approve:
            result = RunResult(result.run_id, "rejected", decided.seq, decided.message)
            break
        with progress:
            result = resume_run(result.run_id, settings=options.settings, reason="approved",
                                on_progress=progress.update, max_in_flight=max_in_flight, handle_sigint=True)
    return _report(options, result)


def _report(options: Options, result: RunResult, **extra: Any) -> int:
    if options.as_json:
        click.echo(json.dumps({"run_id": result.run_id, "status": result.status, "seq": result.seq,
                               "message": redact_text(result.message), **extra}))
    else:
        click.echo(redact_text(result.message) or f"run {result.run_id} {result.status}")
    return EXIT_CODES.get(result.status, 1)


# Decisions


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reviewer", required=True, help="Who approves.")
@click.option("--comment", default="", help="Why.")
@click.option("--no-wait", is_flag=True, help="Only record the decision; do not continue the run here.")
@common_options
def approve(options: Options, run_id: str, reviewer: str, comment: str, no_wait: bool) -> int:
    """Approve RUN at its gate, then continue it."""
    decided = decide(run_id, reviewer=reviewer, approve=True, comment=comment, settings=options.settings)
    if no_wait:
        return _report(options, decided, decision="approved")
    if not options.as_json:
        click.echo(decided.message)
    progress = render.Progress(enabled=options.interactive, quiet=options.as_json)
    with progress:
        result = resume_run(run_id, settings=options.settings, reason="approved", on_progress=progress.update,
                            handle_sigint=True)
    return _report(options, result, decision="approved", reviewer=reviewer)


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reviewer", required=True, help="Who rejects.")
@click.option("--comment", required=True, help="Why (recorded for auditors).")
@common_options
def reject(options: Options, run_id: str, reviewer: str, comment: str) -> int:
    """Reject RUN at its gate; it ends without loading."""
    decided = decide(run_id, reviewer=reviewer, approve=False, comment=comment, settings=options.settings)
    return _report(options, decided, decision="rejected", reviewer=reviewer)


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", default="", help="Why (recorded).")
@common_options
def cancel(options: Options, run_id: str, reason: str) -> int:
    """End RUN if it has not finished; it loads nothing more."""
    result = cancel_run(run_id, reason=reason, settings=options.settings)
    return _report(options, result)


# Queries


def _load(options: Options, run_id: str, until_seq: int | None = None) -> RunState:
    return load_state(run_id, settings=options.settings, until_seq=until_seq)


@main.command()
@common_options
def runs(options: Options) -> int:
    """List runs, newest first (from the read models, caught up with the log first)."""

    async def collect() -> list[dict[str, Any]]:
        url = options.settings.store_url
        # A missing SQLite file means no runs yet; any other URL goes to open_store, which rejects unknown kinds.
        if "://" not in url.removeprefix("sqlite://") and not os.path.exists(options.settings.store_path):
            return []
        try:
            store = await open_store(options.settings.store_url, create=False)
        except LogNotFoundError:
            return []
        try:
            projector = await caught_up_projector(store, home=options.settings.home)
            rows = [dict(row) for row in projector.query(
                "SELECT run_id, pipeline, status, submitter, started_at, ended_at, events, interrupted "
                "FROM runs ORDER BY started_at DESC")]
        finally:
            await store.close()
        for row in rows:
            row.pop("interrupted")
            if row["status"] == "running" and lease_is_free(options.settings.store_url, row["run_id"]):
                row["status"] = "interrupted"
        return rows

    rows = asyncio.run(collect())
    if options.as_json:
        click.echo(json.dumps({"runs": rows, "status": "ok"}))
    else:
        render.print_runs(rows)
    return 0


@main.command()
@click.argument("run_id", metavar="RUN")
@common_options
def show(options: Options, run_id: str) -> int:
    """Show RUN's status, nodes, timings and row counts."""
    state = _load(options, run_id)
    status = status_of(state, options.settings.store_url)
    summary = render.run_summary(state, status)
    if options.as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        render.print_summary(summary)
    return 0


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--until", "until_seq", type=click.IntRange(min=1), help="Fold events up to this seq.")
@common_options
def replay(options: Options, run_id: str, until_seq: int | None) -> int:
    """Show RUN's state folded from its log, up to --until SEQ."""
    state = _load(options, run_id, until_seq)
    summary = render.run_summary(state, state.status)
    summary["seq"] = state.seq
    if options.as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        render.print_summary(summary)
    return 0


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--from", "from_seq", type=click.IntRange(min=1), default=1, help="First seq to print.")
@click.option("--follow", is_flag=True, help="Keep printing until the run ends or waits for approval.")
@common_options
def events(options: Options, run_id: str, from_seq: int, follow: bool) -> int:
    """Print RUN's events, one a line."""
    return asyncio.run(_print_events(options, run_id, from_seq, follow))


async def _print_events(options: Options, run_id: str, from_seq: int, follow: bool) -> int:
    store = await open_store(options.settings.store_url, create=False)
    try:
        state = await load_run_state(store, run_id)
        prefix = RunState()
        async for recorded in store.read_stream(run_id, to_seq=state.seq):
            event = recorded.decode(store.path)
            apply(prefix, event, seq=recorded.seq, recorded_at=recorded.recorded_at)
            if recorded.seq >= from_seq:
                _echo_event(options, recorded, event, prefix.status)
        if not follow or _stops_following(prefix, options.settings.store_url):
            return 0
        position = await _global_position(store, run_id, state.seq)
        async for recorded in store.subscribe(after_position=position, stream_id=run_id, poll_interval=0.1):
            event = recorded.decode(store.path)
            apply(prefix, event, seq=recorded.seq, recorded_at=recorded.recorded_at)
            if recorded.seq >= from_seq:
                _echo_event(options, recorded, event, prefix.status)
            if _stops_following(prefix, options.settings.store_url):
                break
        return 0
    finally:
        await store.close()


def _stops_following(state: RunState, store_url: str) -> bool:
    if state.terminal or state.status == "waiting_for_approval":
        return True
    return bool(state.interrupted) and lease_is_free(store_url, state.run_id)


async def _global_position(store: Any, run_id: str, seq: int) -> int:
    async for recorded in store.read_stream(run_id, from_seq=seq, to_seq=seq, verify=False):
        return recorded.global_position
    return 0


def _echo_event(options: Options, recorded: Any, event: Any, status: str) -> None:
    payload = event.model_dump(mode="json")
    if options.as_json:
        click.echo(json.dumps({
            "run_id": recorded.stream_id, "seq": recorded.seq, "type": recorded.type,
            "recorded_at": recorded.recorded_at, "event_id": recorded.event_id,
            "schema_version": recorded.schema_version, "status": status, "hash": recorded.hash.hex(),
            "payload": payload,
        }, default=str))
    else:
        click.echo(render.event_line(recorded, payload))
    sys.stdout.flush()


@main.command()
@click.argument("run_id", metavar="RUN", required=False)
@common_options
def verify(options: Options, run_id: str | None) -> int:
    """Check the hash chains of every run, or of RUN and its checkpoint files; print each head hash."""

    async def check() -> Any:
        store = await open_store(options.settings.store_url, create=False)
        try:
            report = await store.verify(run_id)
            state = None
            if run_id is not None and report.ok and report.streams[0].events:
                state = await load_run_state(store, run_id, verify=False)
            return report, state
        finally:
            await store.close()

    report, state = asyncio.run(check())
    streams = [
        {"run_id": item.stream_id, "status": "ok" if item.ok else "tampered", "events": item.events,
         "head_seq": item.head_seq, "head_hash": item.head_hash, "first_bad_seq": item.first_bad_seq,
         "reason": item.reason, "detail": item.detail}
        for item in report.streams
    ]
    if run_id is not None and not report.streams[0].events and report.streams[0].head_seq is None:
        raise RunNotFoundError(run_id, report.path)

    # With a RUN, its checkpoint files are checked too: retention's removals are expected, other losses are not.
    checks = [vars(item) for item in check_run_checkpoints(state)] if state is not None else []
    damaged = [item for item in checks if item["status"] in ("missing", "corrupt")]
    if options.as_json:
        payload: dict[str, Any] = {"ok": report.ok and not damaged, "chain": report.chain, "log": report.path,
                                   "streams": streams, "status": "ok" if report.ok else "tampered"}
        if run_id is not None:
            payload["run_id"] = run_id
            payload["checkpoints"] = checks
        click.echo(json.dumps(payload))
    else:
        render.print_verify(report.path, report.chain, streams)
        if checks:
            render.print_checkpoint_checks(checks)
    if not report.ok:
        bad = next(item for item in report.streams if not item.ok)
        if not options.as_json:
            click.echo(f"error: {bad.detail}", err=True)
        return TamperedLogError.exit_code
    if damaged:
        if not options.as_json:
            click.echo(f"error: {len(damaged)} checkpoint file(s) of run {run_id} are missing or changed; "
                       f"`ledgerflow resume {run_id}` recomputes them for a run that has not ended", err=True)
        return 1
    return 0


@main.command()
@click.argument("run_id", metavar="RUN")
@common_options
def audit(options: Options, run_id: str) -> int:
    """Print a reviewer's account of RUN: decisions, failures, retries, routes, findings, chain check."""

    async def collect() -> dict[str, Any]:
        store = await open_store(options.settings.store_url, create=False)
        try:
            return await audit_run(store, run_id, home=options.settings.home)
        finally:
            await store.close()

    account = asyncio.run(collect())
    if options.as_json:
        click.echo(json.dumps(account, default=str))
    else:
        render.print_audit(account)
    if not account["verification"]["ok"]:
        if not options.as_json:
            click.echo(f"error: the chain of run {run_id} does not verify from seq "
                       f"{account['verification']['first_bad_seq']} ({account['verification']['reason']})", err=True)
        return TamperedLogError.exit_code
    return 0


@main.command()
@click.argument("run_id", metavar="RUN")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@common_options
def export(options: Options, run_id: str, file: str) -> int:
    """Write RUN's verified stream to FILE as JSON lines an auditor can check without ledgerflow."""

    directory = os.path.dirname(os.path.abspath(file))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write the export to {file}: directory {directory} does not exist; create it or "
                         "pass another FILE")

    async def write() -> tuple[dict[str, Any], RunState]:
        store = await open_store(options.settings.store_url, create=False)
        try:
            state = await load_run_state(store, run_id)
            return {**await export_run(store, run_id, file), "status": state.status}, state
        finally:
            await store.close()

    header, state = asyncio.run(write())
    try:
        record_export(state, dt.datetime.now(dt.timezone.utc))
    except OSError as err:
        # The export is written; only gc's reminder of it is missing.
        click.echo(f"warning: could not record the export in {state.checkpoint_root} ({err}): gc may remove "
                   "this run's checkpoints before the export is old", err=True)
    if options.as_json:
        click.echo(json.dumps({"run_id": run_id, "file": os.path.abspath(file), **header}))
    else:
        click.echo(f"exported {header['events']} events of run {run_id} to {file}; "
                   f"head seq {header['head_seq']}, head hash {header['head_hash']}")
    return 0


@main.command()
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=DEFAULT_RETENTION_DAYS,
              show_default=True, metavar="DAYS", help="Remove checkpoints of runs that ended more than DAYS ago.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed and remove nothing.")
@common_options
def gc(options: Options, older_than: float, dry_run: bool) -> int:
    """Remove the checkpoints of finished runs, recording each removal in the run's stream."""
    results = collect_garbage(older_than_days=older_than, dry_run=dry_run, settings=options.settings)
    tampered = [item for item in results if item.status == "tampered"]
    if options.as_json:
        click.echo(json.dumps({"status": "tampered" if tampered else "ok", "older_than_days": older_than,
                               "dry_run": dry_run, "runs": [item.as_dict() for item in results]}))
    else:
        render.print_gc(results, dry_run)
    return TamperedLogError.exit_code if tampered else 0


@main.command()
@click.option("--allow-decisions", is_flag=True,
              help="Let MCP clients approve and reject runs (decisions are only recorded).")
@common_options
def mcp(options: Options, allow_decisions: bool) -> int:
    """Serve runs, events, verification and audits to MCP clients over stdio."""
    from ledgerflow._mcp_server import serve

    serve(options.settings, allow_decisions=allow_decisions)
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
