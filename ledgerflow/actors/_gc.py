"""Retention: remove the checkpoints of finished runs, and record what was removed.

A run's checkpoints are removed only when the run has ended (completed,
quarantined, rejected, failed or cancelled) longer ago than the policy
allows. Runs still running, waiting at a gate or interrupted keep theirs,
because a resume reads them. ``CheckpointsRemoved`` is appended before any
file is deleted, so a crash in between leaves files that a later collection
removes, never a missing file that the log cannot explain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from ledgerflow.actors._checkpoints import CheckpointStore, check_checkpoint
from ledgerflow.actors._errors import ConfigurationError, LeaseHeldError
from ledgerflow.actors._lease import open_lease
from ledgerflow.actors._logging import configure_logging
from ledgerflow.actors._runner import Settings
from ledgerflow.events import (
    CheckpointsRemoved,
    ConcurrencyError,
    Manifest,
    RunState,
    TamperedLogError,
    load_run_state,
    open_store,
    parse_recorded_at,
)

logger = structlog.get_logger("ledgerflow.gc")

#: Days a finished run keeps its checkpoints when no policy is given.
DEFAULT_RETENTION_DAYS = 30.0

#: The side file in a run's checkpoint directory that records its latest export.
EXPORT_MARKER = "_exported.json"


@dataclass
class Collected:
    """The outcome of a collection for one run."""

    run_id: str
    status: str
    action: str  # "removed", "would remove", "kept" or "skipped"
    reason: str
    files: int = 0
    bytes: int = 0
    seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_garbage(*, older_than_days: float = DEFAULT_RETENTION_DAYS, dry_run: bool = False,
                    settings: Settings | None = None, now: dt.datetime | None = None) -> list[Collected]:
    """Remove the checkpoints of runs that ended more than ``older_than_days`` ago.

    Returns one entry per run in the log. A run whose chain does not verify
    is skipped and reported, never touched.

    Raises:
        ConfigurationError: ``older_than_days`` is negative.
    """
    if older_than_days < 0:
        raise ConfigurationError(f"invalid retention of {older_than_days} days: pass 0 or more")
    configure_logging()
    moment = now or dt.datetime.now(dt.timezone.utc)
    return asyncio.run(_collect(settings or Settings.resolve(), older_than_days, dry_run, moment))


async def _collect(settings: Settings, days: float, dry_run: bool, now: dt.datetime) -> list[Collected]:
    cutoff = now - dt.timedelta(days=days)
    store = await open_store(settings.store_url, create=False)
    results: list[Collected] = []
    try:
        streams = await store.list_streams()
        logger.info("collection started", runs=len(streams), older_than_days=days, dry_run=dry_run)
        for head in streams:
            try:
                state = await load_run_state(store, head.stream_id)
            except TamperedLogError as err:
                logger.error("run skipped, chain does not verify", run_id=head.stream_id, error=str(err))
                results.append(Collected(head.stream_id, "tampered", "skipped", str(err)))
                continue
            results.append(await _collect_run(store, settings.store_url, state, cutoff, days, dry_run))
    finally:
        await store.close()
    removed = [item for item in results if item.action == "removed"]
    logger.info("collection finished", runs_removed=len(removed), bytes=sum(item.bytes for item in removed))
    return results


async def _collect_run(store: Any, store_url: str, state: RunState, cutoff: dt.datetime, days: float,
                       dry_run: bool) -> Collected:
    run_id = state.run_id
    if not state.terminal:
        return Collected(run_id, state.status, "kept", f"run is {state.status}; a resume needs its checkpoints")
    assert state.ended_at is not None
    if parse_recorded_at(state.ended_at) > cutoff:
        return Collected(run_id, state.status, "kept", f"ended {state.ended_at}, within {days:g} days")

    checkpoints = CheckpointStore(state.checkpoint_root)
    exported = await asyncio.to_thread(last_export, checkpoints, run_id)
    if exported is not None and exported > cutoff:
        # An auditor holding a recent export may still open the sample and checkpoints it points to.
        return Collected(run_id, state.status, "kept", f"exported {exported.isoformat()}, within {days:g} days")
    files, size = await asyncio.to_thread(checkpoints.run_usage, run_id)
    uris = sorted(manifest.uri for _, manifest in recorded_checkpoints(state)
                  if manifest.uri not in state.removed_checkpoints)
    if not files and not uris:
        return Collected(run_id, state.status, "kept", "no checkpoints left")
    if dry_run:
        return Collected(run_id, state.status, "would remove", f"ended {state.ended_at}", files, size)

    # The lease keeps a resume of the finished run from reading files while they go.
    lease = open_lease(store_url, run_id)
    try:
        lease.acquire(holder={"host": socket.gethostname(), "pid": os.getpid(), "command": "gc"}, wait_s=1.0)
    except LeaseHeldError as err:
        return Collected(run_id, state.status, "skipped", str(err))
    try:
        seq = None
        if uris:
            reason = f"retention: run ended {state.ended_at}, more than {days:g} days ago"
            try:
                result = await store.append(run_id, [CheckpointsRemoved(uris=tuple(uris), reason=reason)],
                                            expected_version=state.seq)
            except ConcurrencyError:
                return Collected(run_id, state.status, "skipped", "the run changed during collection: run gc again")
            seq = result.last_seq
        await asyncio.to_thread(checkpoints.remove_run, run_id)
    finally:
        lease.release()
    logger.info("checkpoints removed", run_id=run_id, files=files, bytes=size, seq=seq)
    return Collected(run_id, state.status, "removed", f"ended {state.ended_at}", files, size, seq)


def record_export(state: RunState, exported_at: dt.datetime) -> None:
    """Note in the run's checkpoint directory when it was exported, so that gc keeps its files for a policy period.

    Nothing is written for a run whose checkpoints retention already removed.
    """
    if not state.checkpoint_root or state.removed_checkpoints:
        return
    marker = json.dumps({"run_id": state.run_id, "exported_at": exported_at.astimezone(dt.timezone.utc).isoformat()})
    CheckpointStore(state.checkpoint_root).write_bytes(marker.encode(), run_id=state.run_id, name=EXPORT_MARKER)


def last_export(checkpoints: CheckpointStore, run_id: str) -> dt.datetime | None:
    """Return when the run was last exported, or None when no valid export marker exists."""
    data = checkpoints.read_bytes(run_id=run_id, name=EXPORT_MARKER)
    if data is None:
        return None
    try:
        return dt.datetime.fromisoformat(json.loads(data)["exported_at"])
    except (ValueError, KeyError, TypeError):
        logger.warning("export marker unreadable, ignored", run_id=run_id, marker=EXPORT_MARKER)
        return None


def recorded_checkpoints(state: RunState) -> list[tuple[str, Manifest]]:
    """Return every checkpoint the run's state points to, labelled: partition outputs, other ports and gate samples."""
    labelled: list[tuple[str, Manifest]] = []
    for name, node in state.nodes.items():
        for key, part in node.partitions.items():
            label = f"{name}[{key}]" if key else name
            if part.manifest is not None:
                labelled.append((label, part.manifest))
            labelled.extend((f"{label}.{port}", manifest) for port, manifest in part.extra.items())
    for name, gate in state.gates.items():
        if gate.request.sample is not None:
            labelled.append((f"{name} sample", gate.request.sample))
    return labelled


@dataclass
class CheckpointCheck:
    """The state of one recorded checkpoint file."""

    label: str
    uri: str
    status: str  # "ok", "removed", "missing" or "corrupt"
    detail: str = ""


def check_run_checkpoints(state: RunState) -> list[CheckpointCheck]:
    """Check every checkpoint the run points to, telling files removed by retention from lost or changed ones."""
    checks: list[CheckpointCheck] = []
    for label, manifest in recorded_checkpoints(state):
        removed_at = state.removed_checkpoints.get(manifest.uri)
        if removed_at is not None:
            checks.append(CheckpointCheck(label, manifest.uri, "removed", f"removed by retention at seq {removed_at}"))
            continue
        reason, actual = check_checkpoint(manifest)
        if reason is None:
            checks.append(CheckpointCheck(label, manifest.uri, "ok"))
        elif reason == "missing":
            checks.append(CheckpointCheck(label, manifest.uri, "missing", "file not found and no removal recorded"))
        else:
            checks.append(CheckpointCheck(label, manifest.uri, "corrupt",
                                          f"SHA-256 {actual} does not match the recorded {manifest.sha256}"))
    return checks
