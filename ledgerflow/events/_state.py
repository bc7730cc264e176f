"""``RunState`` and ``apply``: the one fold of a run's events.

The executor, ``resume``, ``replay`` and the notebook's ``state_at`` all use
this fold, so they agree on what a stream means.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel

from ledgerflow.events._model import Event
from ledgerflow.events._run_events import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    CancelRequested,
    CheckpointInvalidated,
    CheckpointsRemoved,
    CodeChangeAccepted,
    ExecutorAttached,
    Manifest,
    McpToolCalled,
    NodeAttemptFailed,
    NodeCompleted,
    NodeSpec,
    NodeStarted,
    PartitionCompleted,
    PolicyViolated,
    RouteSpec,
    RouteTaken,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
    RunQuarantined,
    RunResumed,
    RunStarted,
    StateRecorded,
    WatermarkAdvanced,
    WatermarkInherited,
)

#: The shared-state key prefix of committed watermarks: ``watermark:<source name>``.
WATERMARK_PREFIX = "watermark:"

#: Statuses that end a run for good.
TERMINAL_STATUSES = frozenset({"completed", "quarantined", "rejected", "failed", "cancelled"})


@dataclass
class PartitionState:
    """One partition of a node: its attempts and, once done, its checkpoint."""

    status: str = "pending"
    attempts: int = 0
    manifest: Manifest | None = None
    extra: dict[str, Manifest] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    last_error: str | None = None
    completed_at: str | None = None
    #: Results of MCP tool calls that returned, by call key, so they are never made again.
    calls: dict[str, Manifest] = field(default_factory=dict)


@dataclass
class NodeState:
    """One node: its status, its partitions and when it ran."""

    spec: NodeSpec
    status: str = "pending"
    partitions: dict[str, PartitionState] = field(default_factory=dict)
    rows: int = 0
    started_at: str | None = None
    completed_at: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def partitions_done(self) -> int:
        return sum(1 for part in self.partitions.values() if part.status == "completed")


@dataclass
class GateState:
    """An approval gate's latest request and decision."""

    request: ApprovalRequested
    request_seq: int
    decision: str | None = None
    reviewer: str | None = None
    comment: str | None = None
    decided_at: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)


@dataclass
class RunState:
    """A run as folded from its stream up to ``seq``."""

    run_id: str = ""
    status: str = "new"
    seq: int = 0
    pipeline: str = ""
    locator: str = ""
    fingerprint: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    submitter: str = ""
    checkpoint_root: str = ""
    routes: tuple[RouteSpec, ...] = ()
    nodes: dict[str, NodeState] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    routes_taken: dict[str, RouteTaken] = field(default_factory=dict)
    gates: dict[str, GateState] = field(default_factory=dict)
    executor: ExecutorAttached | None = None
    cancel_requested: CancelRequested | None = None
    failure: RunFailed | None = None
    quarantine: RunQuarantined | None = None
    interrupted: bool = False
    started_at: str | None = None
    ended_at: str | None = None
    attempts_failed: int = 0
    #: Checkpoint URIs that retention removed, each with the seq that recorded it.
    removed_checkpoints: dict[str, int] = field(default_factory=dict)
    findings: list[PolicyViolated] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def node(self, name: str) -> NodeState:
        return self.nodes[name]


def snapshot(state: RunState) -> dict[str, Any]:
    """Return the state as JSON-compatible data, for comparing states and printing them."""
    return json.loads(json.dumps(asdict(state), default=_json_default, sort_keys=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def fold(events: list[tuple[int, str, Event]] | Any, state: RunState | None = None) -> RunState:
    """Fold ``(seq, recorded_at, event)`` triples into a state."""
    state = state or RunState()
    for seq, recorded_at, event in events:
        apply(state, event, seq=seq, recorded_at=recorded_at)
    return state


def apply(state: RunState, event: Event, *, seq: int | None = None, recorded_at: str | None = None) -> RunState:
    """Apply one event to ``state`` in place and return it.

    The result depends only on the state and the event, never on the clock,
    the environment or the pipeline's code. Events a run does not know (from
    later features) change only ``seq``.
    """
    state.seq = seq if seq is not None else state.seq + 1
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(state, event, recorded_at)
    return state


def _run_started(state: RunState, event: RunStarted, at: str | None) -> None:
    state.run_id = event.run_id
    state.status = "running"
    state.pipeline = event.pipeline
    state.locator = event.locator
    state.fingerprint = event.fingerprint
    state.params = dict(event.params)
    state.submitter = event.submitter
    state.checkpoint_root = event.checkpoint_root
    state.routes = event.routes
    state.started_at = at
    for spec in event.nodes:
        node = NodeState(spec=spec)
        for key in spec.partitions or ("",):
            node.partitions[key] = PartitionState()
        state.nodes[spec.name] = node


def _executor_attached(state: RunState, event: ExecutorAttached, at: str | None) -> None:
    state.executor = event
    state.interrupted = False


def _run_resumed(state: RunState, event: RunResumed, at: str | None) -> None:
    state.interrupted = False


def _code_change_accepted(state: RunState, event: CodeChangeAccepted, at: str | None) -> None:
    state.fingerprint = event.new_fingerprint


def _node_started(state: RunState, event: NodeStarted, at: str | None) -> None:
    node = state.nodes[event.node]
    node.status = "running"
    node.started_at = node.started_at or at
    for key in event.partitions:
        node.partitions.setdefault(key, PartitionState())


def _partition_completed(state: RunState, event: PartitionCompleted, at: str | None) -> None:
    node = state.nodes[event.node]
    part = node.partitions.setdefault(event.partition, PartitionState())
    part.status = "completed"
    part.attempts = max(part.attempts, event.attempt)
    part.manifest = event.manifest
    part.extra = dict(event.extra)
    part.report = dict(event.report)
    part.duration_s = event.duration_s
    part.completed_at = at


def _attempt_failed(state: RunState, event: NodeAttemptFailed, at: str | None) -> None:
    state.attempts_failed += 1
    node = state.nodes[event.node]
    part = node.partitions.setdefault(event.partition or "", PartitionState())
    part.attempts = max(part.attempts, event.attempt)
    part.last_error = f"{event.error_type}: {event.message}"
    if not event.will_retry:
        part.status = "failed"


def _mcp_tool_called(state: RunState, event: McpToolCalled, at: str | None) -> None:
    if event.result is None:
        return
    node = state.nodes[event.node]
    part = node.partitions.setdefault(event.partition or "", PartitionState())
    part.calls[event.call_key] = event.result


def _node_completed(state: RunState, event: NodeCompleted, at: str | None) -> None:
    node = state.nodes[event.node]
    node.status = "completed"
    node.rows = event.rows
    node.completed_at = at


def _checkpoints_removed(state: RunState, event: CheckpointsRemoved, at: str | None) -> None:
    for uri in event.uris:
        state.removed_checkpoints.setdefault(uri, state.seq)


def _checkpoint_invalidated(state: RunState, event: CheckpointInvalidated, at: str | None) -> None:
    node = state.nodes[event.node]
    part = node.partitions[event.partition]
    part.status = "pending"
    part.manifest = None
    part.extra = {}
    if node.status == "completed":
        node.status = "running"


def _state_recorded(state: RunState, event: StateRecorded, at: str | None) -> None:
    state.shared[event.key] = event.value


def _watermark_set(state: RunState, event: WatermarkInherited | WatermarkAdvanced, at: str | None) -> None:
    state.shared[WATERMARK_PREFIX + event.name] = event.value


def _route_taken(state: RunState, event: RouteTaken, at: str | None) -> None:
    state.routes_taken[event.source] = event
    for name in event.skipped:
        state.nodes[name].status = "skipped"


def _approval_requested(state: RunState, event: ApprovalRequested, at: str | None) -> None:
    state.gates[event.gate] = GateState(request=event, request_seq=state.seq)
    state.nodes[event.gate].status = "waiting"
    state.nodes[event.gate].started_at = state.nodes[event.gate].started_at or at
    state.status = "waiting_for_approval"


def _approval_granted(state: RunState, event: ApprovalGranted, at: str | None) -> None:
    gate = state.gates[event.gate]
    gate.decision = "approved"
    gate.reviewer = event.reviewer
    gate.comment = event.comment
    gate.decided_at = at
    gate.checkpoints = dict(event.checkpoints)
    node = state.nodes[event.gate]
    node.status = "completed"
    node.completed_at = at
    node.partitions[""].status = "completed"
    state.status = "running"


def _approval_rejected(state: RunState, event: ApprovalRejected, at: str | None) -> None:
    gate = state.gates[event.gate]
    gate.decision = "rejected"
    gate.reviewer = event.reviewer
    gate.comment = event.comment
    gate.decided_at = at
    state.nodes[event.gate].status = "rejected"
    state.status = "rejected"
    state.ended_at = at


def _policy_violated(state: RunState, event: PolicyViolated, at: str | None) -> None:
    state.findings.append(event)


def _cancel_requested(state: RunState, event: CancelRequested, at: str | None) -> None:
    state.cancel_requested = event


def _run_interrupted(state: RunState, event: RunInterrupted, at: str | None) -> None:
    state.interrupted = True


def _terminal(status: str):  # type: ignore[no-untyped-def]
    def handle(state: RunState, event: Event, at: str | None) -> None:
        state.status = status
        state.ended_at = at
        if isinstance(event, RunFailed):
            state.failure = event
        if isinstance(event, RunQuarantined):
            state.quarantine = event

    return handle


_HANDLERS: dict[type[Event], Any] = {
    RunStarted: _run_started,
    ExecutorAttached: _executor_attached,
    RunResumed: _run_resumed,
    CodeChangeAccepted: _code_change_accepted,
    NodeStarted: _node_started,
    PartitionCompleted: _partition_completed,
    NodeAttemptFailed: _attempt_failed,
    McpToolCalled: _mcp_tool_called,
    NodeCompleted: _node_completed,
    CheckpointInvalidated: _checkpoint_invalidated,
    CheckpointsRemoved: _checkpoints_removed,
    StateRecorded: _state_recorded,
    WatermarkInherited: _watermark_set,
    WatermarkAdvanced: _watermark_set,
    RouteTaken: _route_taken,
    ApprovalRequested: _approval_requested,
    ApprovalGranted: _approval_granted,
    ApprovalRejected: _approval_rejected,
    PolicyViolated: _policy_violated,
    CancelRequested: _cancel_requested,
    RunInterrupted: _run_interrupted,
    RunCompleted: _terminal("completed"),
    RunQuarantined: _terminal("quarantined"),
    RunFailed: _terminal("failed"),
    RunCancelled: _terminal("cancelled"),
}
