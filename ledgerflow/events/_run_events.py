"""The events of a pipeline run.

Every event type that any feature records is defined here, so that every
reader can decode every stream. Payloads hold metadata only: data rows live
in checkpoint files that events point to.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ledgerflow.events._model import Event


class Manifest(BaseModel):
    """A checkpoint file written by one attempt: where it is, its rows and its SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    rows: int
    sha256: str
    bytes: int = 0


class NodeSpec(BaseModel):
    """A node of the pipeline graph as recorded at start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str
    inputs: dict[str, str] = Field(default_factory=dict)
    after: tuple[str, ...] = ()
    partitions: tuple[str, ...] | None = None
    fingerprint: str = ""


class RouteSpec(BaseModel):
    """A conditional route as recorded at start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    name: str
    to: tuple[str, ...]
    otherwise: tuple[str, ...]
    outcome: str | None = None


class RunStarted(Event):
    run_id: str
    pipeline: str
    locator: str
    fingerprint: str
    nodes: tuple[NodeSpec, ...]
    routes: tuple[RouteSpec, ...] = ()
    params: dict[str, Any] = Field(default_factory=dict)
    submitter: str
    ledgerflow_version: str
    checkpoint_root: str


class ExecutorAttached(Event):
    host: str
    pid: int
    executor_id: str
    ray_node_id: str | None = None


class RunResumed(Event):
    reason: str
    host: str
    pid: int


class CodeChangeAccepted(Event):
    changed_nodes: tuple[str, ...]
    old_fingerprint: str
    new_fingerprint: str
    accepted_by: str


class NodeStarted(Event):
    node: str
    partitions: tuple[str, ...]


class PartitionCompleted(Event):
    node: str
    partition: str
    attempt: int
    manifest: Manifest | None = None
    extra: dict[str, Manifest] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)
    duration_s: float = 0.0
    #: True when a load found its marker already written and changed nothing.
    already_loaded: bool = False


class NodeAttemptFailed(Event):
    node: str
    partition: str | None
    attempt: int
    error_type: str
    message: str
    timed_out: bool = False
    will_retry: bool = False
    retry_in_s: float | None = None


class NodeCompleted(Event):
    node: str
    rows: int
    partitions: int


class CheckpointInvalidated(Event):
    node: str
    partition: str
    uri: str
    reason: str
    expected_sha256: str
    actual_sha256: str | None = None


class StateRecorded(Event):
    node: str
    partition: str | None
    key: str
    value: Any


class WatermarkInherited(Event):
    """A new run starting from the watermark that an earlier run of the same pipeline advanced.

    ``from_run_id`` and ``from_seq`` locate that run's ``WatermarkAdvanced``
    event, so a replay does not depend on which runs the log contains later.
    """

    name: str
    value: Any
    from_run_id: str
    from_seq: int


class WatermarkAdvanced(Event):
    """An incremental source's watermark moved to the maximum value loaded by this run.

    Recorded in the batch that completes the run, after every load marker is committed.
    """

    name: str
    value: Any
    previous: Any = None


class RouteTaken(Event):
    source: str
    route: str
    condition_met: bool
    taken: tuple[str, ...]
    skipped: tuple[str, ...]
    reason: str = ""


class ApprovalRequested(Event):
    gate: str
    summary: dict[str, Any]
    sample: Manifest | None = None
    reviewers: tuple[str, ...] | None = None
    four_eyes: bool = False
    submitter: str
    checkpoints: dict[str, str]


class ApprovalGranted(Event):
    gate: str
    reviewer: str
    comment: str = ""
    request_seq: int
    checkpoints: dict[str, str]


class ApprovalRejected(Event):
    gate: str
    reviewer: str
    comment: str
    request_seq: int


class PolicyViolated(Event):
    """A policy rule's finding in the data a node handed on, and the action taken (block, mask, quarantine)."""

    node: str
    partition: str | None
    rule: str
    action: str
    detail: str
    columns: tuple[str, ...] = ()
    #: Rows the finding concerns (masked, quarantined, or that would have been handed on).
    rows: int = 0


class CancelRequested(Event):
    requested_by: str
    reason: str = ""


class RunInterrupted(Event):
    reason: str


class RunCompleted(Event):
    rows_loaded: int = 0
    duration_s: float = 0.0


class RunQuarantined(Event):
    source: str
    reason: str


class RunFailed(Event):
    node: str | None
    partition: str | None = None
    error_type: str
    message: str


class RunCancelled(Event):
    requested_by: str
    reason: str = ""


class McpToolCalled(Event):
    """One call of a tool on an MCP server, made by a node attempt.

    ``server`` is the name the pipeline gave the server, never its command,
    URL or secrets. ``result`` points to the raw tool result in the
    checkpoint store when the call returned one, so a resumed run reads it
    there instead of calling again.
    """

    node: str
    partition: str | None
    attempt: int
    server: str
    transport: str
    tool: str
    #: The call's key within its partition: tool, argument hash and occurrence.
    call_key: str
    arguments_sha256: str
    duration_s: float
    #: ``ok``, ``tool_error``, ``timeout``, ``transport_error``, ``protocol_error``, ``too_large``,
    #: or ``interrupted`` (the worker died or the attempt was cancelled mid-call).
    outcome: str
    error: str | None = None
    result: Manifest | None = None
    idempotency_key: str | None = None


class CheckpointsRemoved(Event):
    uris: tuple[str, ...]
    reason: str


#: Events after which a run does nothing more.
TERMINAL_EVENTS = (RunCompleted, RunQuarantined, RunFailed, RunCancelled, ApprovalRejected)
