"""Watermarks of incremental sources: inherited at a run's start, advanced at its end.

An incremental source reads only rows whose watermark column is past the
run's watermark, and records the maximum it read per partition under a
pending key. The executor turns the pending values into one
``WatermarkAdvanced`` event in the batch that completes the run. By then every
load has committed its marker, so a crash before that batch leaves the
watermark where it was, and the resumed loads find their markers.

A new run inherits, per source name, the watermark of the latest
``WatermarkAdvanced`` event of an earlier run of the same pipeline (same
pipeline name, same store). It reads the log, not the projections, because
the log is the record every process shares: a read model may lag behind it or
be missing, and a run must not start from a stale watermark.
"""

from __future__ import annotations

from typing import Any

from ledgerflow.actors._errors import UnfinishedIncrementalRunError
from ledgerflow.events import (
    WATERMARK_PREFIX,
    EventStore,
    RunState,
    WatermarkAdvanced,
    WatermarkInherited,
    apply,
)

#: Shared-state key prefix of the maximum watermark one partition read:
#: ``watermark-pending:<source name>:<partition>``.
PENDING_PREFIX = "watermark-pending:"


def pending_key(name: str, partition: str) -> str:
    """Return the shared-state key of the watermark that ``partition`` of source ``name`` read up to."""
    return f"{PENDING_PREFIX}{name}:{partition}"


def committed_key(name: str) -> str:
    """Return the shared-state key of source ``name``'s committed watermark."""
    return WATERMARK_PREFIX + name


def advance_events(state: RunState) -> list[WatermarkAdvanced]:
    """Return one ``WatermarkAdvanced`` per source whose partitions read rows past its watermark.

    Values of one source compare with ``max``: sources record integers,
    floats or text whose order is the column's order (ISO dates and UTC
    timestamps at a fixed precision).
    """
    pending: dict[str, list[Any]] = {}
    for key, value in state.shared.items():
        if not key.startswith(PENDING_PREFIX) or value is None:
            continue
        # Source names contain no ":", but partition keys may.
        name = key[len(PENDING_PREFIX):].split(":", 1)[0]
        pending.setdefault(name, []).append(value)
    events = []
    for name, values in sorted(pending.items()):
        previous = state.shared.get(committed_key(name))
        highest = max(values)
        if previous is not None and not highest > previous:
            continue
        events.append(WatermarkAdvanced(name=name, value=highest, previous=previous))
    return events


async def inherited_events(store: EventStore, pipeline_name: str, *, run_id: str) -> list[WatermarkInherited]:
    """Return the watermarks a new run of ``pipeline_name`` starts from, with the events they come from.

    Scans every stream of the store, decoding each stream's ``RunStarted`` and
    folding the streams of the same pipeline. The latest ``WatermarkAdvanced``
    per source name wins, ordered by the store's global position.

    NOTE: The scan reads the first event of every stream, so starting a run
    takes longer as the store gains runs.

    Raises:
        UnfinishedIncrementalRunError: An earlier run of the pipeline has not
            ended and read rows past a watermark. Its rows would be read again.
    """
    latest: dict[str, tuple[int, str, int, Any]] = {}
    for head in await store.list_streams():
        if head.stream_id == run_id:
            continue
        async for first in store.read_stream(head.stream_id, to_seq=1, verify=False):
            started = first.decode(store.path)
            break
        else:
            continue
        if getattr(started, "pipeline", None) != pipeline_name:
            continue

        state = RunState()
        async for recorded in store.read_stream(head.stream_id, verify=True):
            event = recorded.decode(store.path)
            apply(state, event, seq=recorded.seq, recorded_at=recorded.recorded_at)
            if isinstance(event, WatermarkAdvanced):
                known = latest.get(event.name)
                if known is None or recorded.global_position > known[0]:
                    latest[event.name] = (recorded.global_position, recorded.stream_id, recorded.seq, event.value)

        # An unfinished run's pending watermarks are rows it read but has not committed as read.
        pending = sorted({key[len(PENDING_PREFIX):].split(":", 1)[0] for key in state.shared
                          if key.startswith(PENDING_PREFIX)})
        if pending and not state.terminal:
            raise UnfinishedIncrementalRunError(head.stream_id, pipeline_name, state.status, pending)
    return [
        WatermarkInherited(name=name, value=value, from_run_id=stream_id, from_seq=seq)
        for name, (_, stream_id, seq, value) in sorted(latest.items())
    ]
