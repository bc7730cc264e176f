"""The executor: one per run, folding its stream and scheduling whatever is ready.

It holds metadata only: tables stay in Ray's object store and in checkpoint
files. Every state transition is appended to the log before the executor acts
on it, so a crash at any point resumes from the log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
import structlog

from ledgerflow.actors._checkpoints import check_checkpoint
from ledgerflow.actors._context import Secret, register_run_secrets
from ledgerflow.actors._errors import (
    CheckpointCorruptError,
    CodeChangedError,
    RunExistsError,
)
from ledgerflow.actors._lease import open_lease
from ledgerflow.actors._lineage import LineageEmitter
from ledgerflow.actors._loader import load_pipeline
from ledgerflow.actors._mcp import interrupted_call
from ledgerflow.actors._logging import configure_logging
from ledgerflow.actors._pipeline import REJECTED_SUFFIX, WHOLE, Pipeline, RouteInput, changed_nodes
from ledgerflow.actors._telemetry import Telemetry
from ledgerflow.actors._tasks import InputPart, InputSpec, TaskRequest, execute_partition, sample_checkpoints
from ledgerflow.actors._watermarks import advance_events, inherited_events
from ledgerflow.events import (
    ApprovalRequested,
    CheckpointInvalidated,
    CodeChangeAccepted,
    ConcurrencyError,
    Event,
    EventStore,
    ExecutorAttached,
    NewEvent,
    NodeAttemptFailed,
    NodeCompleted,
    NodeStarted,
    PartitionCompleted,
    RouteTaken,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
    RunQuarantined,
    RunResumed,
    RunStarted,
    RunState,
    StateRecorded,
    apply,
    format_recorded_at,
    load_run_state,
    open_store,
    parse_recorded_at,
    redact_event,
    snapshot,
)

logger = structlog.get_logger("ledgerflow.executor")

#: Seconds between checks for events other processes appended (cancellations).
POLL_INTERVAL_S = 0.25
#: The shortest wait for finished attempts, in seconds.
MIN_WAIT_S = 0.005


@dataclass(frozen=True)
class ExecutorConfig:
    """The settings an executor needs to start or continue one run."""

    run_id: str
    store_url: str
    checkpoint_root: str
    warehouse: str
    start: RunStarted | None = None
    locator: str | None = None
    allow_changed_code: bool = False
    accepted_by: str = ""
    resume_reason: str = "resume"
    max_in_flight: int | None = None
    backoff_scale: float = 1.0
    fault_exit_after_seq: int | None = None
    #: Test hook: append each state the executor holds, one JSON line per event, to this file.
    capture_states: str | None = None
    log_level: str = "info"
    sample_rows: int = 20
    #: OpenTelemetry settings from the starting process (see ``telemetry_settings``).
    telemetry: dict[str, str] = field(default_factory=dict)
    #: OpenLineage settings from the starting process (see ``lineage_settings``).
    lineage: dict[str, str] = field(default_factory=dict)


@dataclass
class Flight:
    """One attempt in flight."""

    node: str
    partition: str
    attempt: int
    info_ref: Any
    output_ref: Any
    timeout_s: float | None
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """A finished attempt, as the scheduler receives it."""

    flight: Flight
    info: dict[str, Any] | None = None
    error: BaseException | None = None
    timed_out: bool = False


@dataclass
class RunOutcome:
    """The run's status and last seq when an executor returns."""

    run_id: str
    status: str
    seq: int
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Executor:
    """Runs one pipeline run to its end, to its approval gate, or until stopped."""

    def __init__(self, config: ExecutorConfig) -> None:
        configure_logging(config.log_level)
        self.config = config
        self.state = RunState()
        self.pipeline: Pipeline | None = None
        self.store: EventStore | None = None
        self.log = logger.bind(run_id=config.run_id)
        self._interrupt: str | None = None
        self._flights: dict[tuple[str, str], Flight] = {}
        self._outputs: dict[tuple[str, str], Any] = {}
        self._retry_at: dict[tuple[str, str], float] = {}
        self._results: asyncio.Queue[Outcome] = asyncio.Queue()
        self._pipeline_ref: Any = None
        self._order: list[str] = []
        self._partition_values: dict[str, dict[str, Any]] = {}
        self._gates_to_check: set[str] = set()
        self._routes: dict[str, Any] = {}
        self._created = time.perf_counter()
        self._ready_s: float | None = None
        self.telemetry = Telemetry.for_settings(config.telemetry)
        self.lineage = LineageEmitter(config.lineage)
        self._run_span: Any = None
        self._node_spans: dict[str, Any] = {}

    def request_interrupt(self, reason: str) -> None:
        """Ask the run to stop at the next boundary and record ``RunInterrupted``."""
        self._interrupt = reason

    # Life cycle

    async def run(self) -> RunOutcome:
        self.store = await open_store(self.config.store_url)
        lease = open_lease(self.config.store_url, self.config.run_id)
        try:
            lease.acquire(holder={"host": socket.gethostname(), "pid": os.getpid()}, wait_s=2.0)
            self.log.info("executor started", pid=os.getpid())
            self._run_span = self.telemetry.start_span(
                "ledgerflow.run", attributes={"ledgerflow.run_id": self.config.run_id})
            outcome: RunOutcome | None = None
            try:
                outcome = await self._run()
            finally:
                await self._stop_flights()
                self._end_spans(outcome)
            self.log.info("executor stopped", status=outcome.status, seq=outcome.seq)
            return outcome
        finally:
            lease.release()
            await self.store.close()

    async def _run(self) -> RunOutcome:
        config = self.config
        attached = ExecutorAttached(
            host=socket.gethostname(), pid=os.getpid(), executor_id=str(uuid.uuid4()),
            ray_node_id=_ray_node_id(),
        )
        # Ray restarts a crashed executor with the config it started with, so a
        # restarted executor of a new run finds its own RunStarted and resumes.
        restarted = config.start is not None and await self._recorded_start() == redact_event(config.start)
        resuming = config.start is None or restarted
        if not resuming:
            await self._start_new(attached)
        else:
            self.state = await load_run_state(self.store, config.run_id)
            if self.state.terminal or self.state.status == "waiting_for_approval":
                return self._outcome()
            self.pipeline = load_pipeline(config.locator or self.state.locator)
            reason = "executor restarted by Ray" if restarted else config.resume_reason
            events: list[Event] = [attached, RunResumed(reason=reason, host=attached.host, pid=attached.pid)]
            events.extend(self._code_change_events())
            await self._append(events)

        assert self.pipeline is not None
        self._order = self.pipeline.check()
        params = self.pipeline.params_model.model_validate(self.state.params)
        # Errors and log lines of this process then mask the run's secrets too.
        register_run_secrets(params)
        self._partition_values = {
            name: {str(value): value for value in values} if values is not None else {}
            for name, values in self.pipeline.resolve_partitions(params).items()
        }
        self._pipeline_ref = ray.put(self.pipeline)
        self._routes = self.pipeline.all_routes()
        if resuming:
            self._gates_to_check = {name for name in self.state.gates if self.state.nodes[name].status == "completed"}
            await self._invalidate_bad_checkpoints()
        return await self._loop()

    async def _recorded_start(self) -> Event | None:
        """Return the run's recorded RunStarted, or None for a run not started yet."""
        assert self.store is not None
        async for recorded in self.store.read_stream(self.config.run_id, to_seq=1, verify=False):
            return recorded.decode(self.store.path)
        return None

    async def _start_new(self, attached: ExecutorAttached) -> None:
        assert self.store is not None and self.config.start is not None
        if await self.store.head(self.config.run_id) is not None:
            raise RunExistsError(self.config.run_id)
        self.pipeline = load_pipeline(self.config.start.locator)
        inherited = await inherited_events(self.store, self.config.start.pipeline, run_id=self.config.run_id)
        for event in inherited:
            self.log.info("watermark inherited", source=event.name, from_run_id=event.from_run_id,
                          from_seq=event.from_seq)
        try:
            await self._append([self.config.start, attached, *inherited], expected_version=0)
        except ConcurrencyError as err:
            raise RunExistsError(self.config.run_id) from err
        self.log.info("run started", pipeline=self.config.start.pipeline, submitter=self.config.start.submitter)
        await asyncio.to_thread(self.lineage.emit_start, self.state)

    def _code_change_events(self) -> list[Event]:
        assert self.pipeline is not None
        current, per_node = self.pipeline.fingerprints()
        if current == self.state.fingerprint:
            return []
        started = self._recorded_specs()
        changed = changed_nodes(started, per_node) or ["graph"]
        if not self.config.allow_changed_code:
            raise CodeChangedError(self.config.run_id, changed)
        self.log.warning("continuing with changed code", changed_nodes=changed)
        return [CodeChangeAccepted(changed_nodes=tuple(changed), old_fingerprint=self.state.fingerprint,
                                   new_fingerprint=current, accepted_by=self.config.accepted_by)]

    def _recorded_specs(self) -> list[Any]:
        return [node.spec for node in self.state.nodes.values()]

    # Appending

    async def _append(self, events: list[Event], *, expected_version: int | None = None) -> None:
        """Append ``events`` after the state's head, folding in what other processes appended first."""
        assert self.store is not None
        if not events:
            return
        # The log is never erased, so secrets are masked before anything is appended.
        events = [redact_event(event) for event in events]
        now = dt.datetime.now(dt.timezone.utc)
        batch = [NewEvent(event, recorded_at=now) for event in events]
        stamp = format_recorded_at(now)
        while True:
            version = self.state.seq if expected_version is None else expected_version
            try:
                result = await self.store.append(self.config.run_id, batch, expected_version=version)
                break
            except ConcurrencyError:
                if expected_version is not None:
                    raise
                await self._catch_up()
        was_terminal = self.state.terminal
        for offset, item in enumerate(batch):
            apply(self.state, item.event, seq=result.first_seq + offset, recorded_at=stamp)
            self._capture()
            if isinstance(item.event, NodeCompleted):
                Telemetry.end_span(self._node_spans.pop(item.event.node, None),
                                   attributes={"ledgerflow.rows": item.event.rows})
        if self._ready_s is None:
            self._ready_s = time.perf_counter() - self._created
        fault = self.config.fault_exit_after_seq
        if fault is not None and result.first_seq <= fault <= result.last_seq:
            # Test hook for the crash matrix: die as abruptly as a killed process.
            os._exit(86)
        if self.state.terminal and not was_terminal:
            await asyncio.to_thread(self.lineage.emit_end, self.state)

    async def _catch_up(self) -> None:
        """Fold events that other processes appended (decisions, cancellations)."""
        assert self.store is not None
        async for recorded in self.store.read_stream(self.config.run_id, from_seq=self.state.seq + 1,
                                                     verify=False):
            apply(self.state, recorded.decode(self.store.path), seq=recorded.seq,
                  recorded_at=recorded.recorded_at)
            self._capture()

    def _capture(self) -> None:
        if self.config.capture_states is not None:
            with open(self.config.capture_states, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"seq": self.state.seq, "state": snapshot(self.state)}) + "\n")

    async def _poll_foreign(self) -> None:
        assert self.store is not None
        head = await self.store.head(self.config.run_id)
        if head is not None and head.head_seq > self.state.seq:
            await self._catch_up()

    # Scheduling

    async def _loop(self) -> RunOutcome:
        while True:
            if self.state.terminal:
                return self._outcome()
            if self._interrupt is not None:
                await self._stop_flights()
                await self._append([RunInterrupted(reason=self._interrupt)])
                self.log.info("run interrupted", reason=self._interrupt)
                return self._outcome(status="interrupted")
            if self.state.cancel_requested is not None:
                await self._stop_flights()
                request = self.state.cancel_requested
                await self._append([RunCancelled(requested_by=request.requested_by, reason=request.reason)])
                self.log.info("run cancelled", requested_by=request.requested_by)
                return self._outcome()
            waiting = await self._advance()
            if waiting is not None:
                return waiting
            if self.state.terminal:
                continue
            outcomes = await self._next_outcomes()
            if outcomes:
                await self._record_outcomes(outcomes)

    async def _next_outcomes(self) -> list[Outcome]:
        """Wait for finished attempts (all that are ready, for one group commit) or a poll tick."""
        assert self.pipeline is not None
        timeout = POLL_INTERVAL_S
        limit = self.config.max_in_flight or self.pipeline.max_in_flight
        # A due retry waits for a free slot, so its time matters only while a slot is free.
        # The floor keeps the timeout positive because on Python 3.11 wait_for with a zero
        # timeout cancels get() before it runs, and finished attempts are never received.
        if self._retry_at and (limit is None or len(self._flights) < limit):
            timeout = max(MIN_WAIT_S, min(timeout, min(self._retry_at.values()) - time.monotonic()))
        try:
            first = await asyncio.wait_for(self._results.get(), timeout=timeout)
        except asyncio.TimeoutError:
            await self._poll_foreign()
            return []
        outcomes = [first]
        while not self._results.empty():
            outcomes.append(self._results.get_nowait())
        return outcomes

    async def _advance(self) -> RunOutcome | None:
        """Record node starts, completions and routes, dispatch ready partitions, then open a ready gate."""
        assert self.pipeline is not None
        ready_gate = None
        while True:
            events: list[Event] = []
            for name in self._order:
                node_state = self.state.nodes[name]
                kind = self.pipeline.nodes[name].kind
                if node_state.status in ("completed", "skipped", "rejected"):
                    # A gate input that is being recomputed has no checkpoint yet, so
                    # the binding is checked only once every input is complete again.
                    if name in self._gates_to_check and self._dependencies_done(name):
                        self._gates_to_check.discard(name)
                        reopened = await self._check_gate_binding(name)
                        if reopened is not None:
                            return reopened
                    continue
                if not self._dependencies_done(name):
                    continue
                if kind == "approval":
                    ready_gate = ready_gate or name
                    continue
                if node_state.status == "pending":
                    events.append(NodeStarted(node=name, partitions=tuple(node_state.partitions)))
                    continue
                if node_state.partitions_done == len(node_state.partitions):
                    rows = sum(part.manifest.rows if part.manifest else part.report.get("loaded_rows", 0)
                               for part in node_state.partitions.values())
                    events.append(NodeCompleted(node=name, rows=rows, partitions=len(node_state.partitions)))
                    events.extend(self._route_events(name))
                    self._gates_to_check.update(
                        gate for gate in self.pipeline.children(name)
                        if self.pipeline.nodes[gate].kind == "approval"
                        and self.state.nodes[gate].status == "completed"
                    )
            if events:
                await self._append(events)
                continue
            break
        finished = self._finish_events()
        if finished:
            await self._append(finished)
            return None
        self._dispatch_ready()
        if ready_gate is not None and not self._flights and not self._retry_at:
            return await self._open_gate(ready_gate)
        return None

    def _dependencies_done(self, name: str) -> bool:
        assert self.pipeline is not None
        return all(self.state.nodes[dependency].status == "completed"
                   for dependency in self.pipeline.nodes[name].dependencies)

    def _route_events(self, name: str) -> list[Event]:
        assert self.pipeline is not None
        route = self._routes.get(name)
        if route is None or name in self.state.routes_taken:
            return []
        node_state = self.state.nodes[name]
        data = RouteInput(
            source=name,
            reports={key: part.report for key, part in node_state.partitions.items()},
            rows={key: part.manifest.rows if part.manifest else 0 for key, part in node_state.partitions.items()},
            shared=dict(self.state.shared),
            params=self.pipeline.params_model.model_validate(self.state.params),
        )
        try:
            met = bool(route.when(data))
        except Exception as err:
            self.log.error("route condition failed", route=route.name, source=name, error=str(err))
            return [RunFailed(node=name, error_type=type(err).__name__,
                              message=f"route {route.name!r} after {name!r} failed: {err}")]
        taken, other = (route.to, route.otherwise) if met else (route.otherwise, route.to)
        skipped = sorted(self.pipeline.descendants(other) - {n for n, s in self.state.nodes.items()
                                                             if s.status == "completed"})
        reason = _route_reason(route.name, met, data)
        self.log.info("route taken", source=name, route=route.name, condition_met=met, skipped=skipped)
        return [RouteTaken(source=name, route=route.name, condition_met=met, taken=taken,
                           skipped=tuple(skipped), reason=reason)]

    def _finish_events(self) -> list[Event]:
        assert self.pipeline is not None
        if any(node.status not in ("completed", "skipped") for node in self.state.nodes.values()):
            return []
        routes = self._routes
        for source, taken in self.state.routes_taken.items():
            route = routes.get(source)
            if taken.condition_met and route is not None and route.outcome == "quarantined":
                self.log.info("run quarantined", source=source)
                return [RunQuarantined(source=source, reason=taken.reason)]
        loaded = sum(part.report.get("loaded_rows", 0) for name, node in self.state.nodes.items()
                     if self.pipeline.nodes[name].kind == "load" for part in node.partitions.values())
        duration = _seconds_since(self.state.started_at)
        # Every load has committed its marker by now, so the watermarks may move
        # past the rows they loaded, in the same batch as RunCompleted.
        advanced = advance_events(self.state)
        for event in advanced:
            self.log.info("watermark advanced", source=event.name)
        self.log.info("run completed", rows_loaded=loaded)
        return [*advanced, RunCompleted(rows_loaded=loaded, duration_s=duration)]

    def _dispatch_ready(self) -> None:
        assert self.pipeline is not None
        limit = self.config.max_in_flight or self.pipeline.max_in_flight
        now = time.monotonic()
        for name in self._order:
            node_state = self.state.nodes[name]
            if node_state.status != "running" or self.pipeline.nodes[name].kind == "approval":
                continue
            # An input whose checkpoint was invalidated is being recomputed and has no manifest yet.
            if not self._dependencies_done(name):
                continue
            for key, part in node_state.partitions.items():
                if part.status == "completed" or (name, key) in self._flights:
                    continue
                if part.status == "failed":
                    continue
                if self._retry_at.get((name, key), 0) > now:
                    continue
                if limit is not None and len(self._flights) >= limit:
                    return
                self._retry_at.pop((name, key), None)
                self._launch(name, key)

    def _launch(self, name: str, key: str) -> None:
        assert self.pipeline is not None
        node = self.pipeline.nodes[name]
        part = self.state.nodes[name].partitions[key]
        attempt = part.attempts + 1
        specs, live = self._inputs_for(name, key)
        request = TaskRequest(
            run_id=self.config.run_id, node=name, partition=key,
            partition_value=self._partition_values.get(name, {}).get(key, key), attempt=attempt,
            params=self.state.params, shared=dict(self.state.shared),
            checkpoint_root=self.state.checkpoint_root or self.config.checkpoint_root,
            warehouse=self.config.warehouse, inputs=tuple(specs), log_level=self.config.log_level,
            extra={"telemetry": self.config.telemetry, "trace_context": Telemetry.carrier(self._node_span(name)),
                   **({"mcp_calls": dict(part.calls)} if part.calls else {})},
        )
        info_ref, output_ref = execute_partition.options(
            num_returns=2, name=f"ledgerflow:{name}[{key}]#{attempt}"
        ).remote(self._pipeline_ref, request, *live)
        flight = Flight(node=name, partition=key, attempt=attempt, info_ref=info_ref, output_ref=output_ref,
                        timeout_s=node.retry.timeout_s)
        flight.task = asyncio.create_task(self._watch(flight))
        self._flights[(name, key)] = flight
        self.log.debug("partition dispatched", node=name, partition=key or None, attempt=attempt)

    def _node_span(self, name: str) -> Any:
        """Return the node's span, started at its first dispatch by this executor."""
        if name not in self._node_spans:
            self._node_spans[name] = self.telemetry.start_span(
                "ledgerflow.node", parent=self._run_span,
                attributes={"ledgerflow.run_id": self.config.run_id, "ledgerflow.node": name,
                            "ledgerflow.kind": self.state.nodes[name].spec.kind})
        return self._node_spans[name]

    def _end_spans(self, outcome: RunOutcome | None) -> None:
        for name in list(self._node_spans):
            Telemetry.end_span(self._node_spans.pop(name))
        status = outcome.status if outcome is not None else "error"
        error = outcome.message if outcome is not None and status == "failed" else None
        if outcome is None:
            error = "executor stopped by an error"
        Telemetry.end_span(self._run_span, error=error,
                           attributes={"ledgerflow.status": status, "ledgerflow.pipeline": self.state.pipeline})
        self._run_span = None
        self.telemetry.flush()

    def _inputs_for(self, name: str, key: str) -> tuple[list[InputSpec], list[Any]]:
        assert self.pipeline is not None
        node = self.pipeline.nodes[name]
        specs: list[InputSpec] = []
        live: list[Any] = []
        for parameter, source in node.inputs.items():
            base = source.removesuffix(REJECTED_SUFFIX)
            port = "rejected" if source.endswith(REJECTED_SUFFIX) else "output"
            source_parts = self.state.nodes[base].partitions
            # A partition of a node partitioned like its source reads the same
            # partition; otherwise the node reads every partition of the source.
            wanted = [key] if key != WHOLE and key in source_parts else list(source_parts)
            parts = []
            for part_key in wanted:
                ref = self._outputs.get((base, part_key)) if port == "output" else None
                if ref is not None:
                    live.append(ref)
                    parts.append(InputPart(partition=part_key, manifest=None, live=True))
                else:
                    part = source_parts[part_key]
                    manifest = part.manifest if port == "output" else part.extra.get(port)
                    parts.append(InputPart(partition=part_key, manifest=manifest, live=False))
            specs.append(InputSpec(parameter=parameter, source=base, port=port, parts=tuple(parts)))
        return specs, live

    async def _watch(self, flight: Flight) -> None:
        try:
            if flight.timeout_s is not None:
                info = await asyncio.wait_for(flight.info_ref, timeout=flight.timeout_s)
            else:
                info = await flight.info_ref
            outcome = Outcome(flight, info=info)
        except asyncio.TimeoutError:
            ray.cancel(flight.info_ref, force=True)
            outcome = Outcome(flight, error=TimeoutError(f"attempt timed out after {flight.timeout_s} s"),
                              timed_out=True)
        except asyncio.CancelledError:
            raise
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            outcome = Outcome(flight, error=cause if isinstance(cause, BaseException) else err)
        except ray.exceptions.RayError as err:
            outcome = Outcome(flight, error=err)
        self._results.put_nowait(outcome)

    async def _stop_flights(self) -> None:
        for flight in list(self._flights.values()):
            ray.cancel(flight.info_ref, force=True)
            if flight.task is not None:
                flight.task.cancel()
        self._flights.clear()

    # Outcomes

    async def _record_outcomes(self, outcomes: list[Outcome]) -> None:
        events: list[Event] = []
        for outcome in outcomes:
            flight = outcome.flight
            self._flights.pop((flight.node, flight.partition), None)
            if self.state.terminal:
                continue
            if outcome.info is not None:
                events.extend(self._success_events(outcome))
            else:
                events.extend(self._failure_events(outcome))
        await self._append(events)

    def _success_events(self, outcome: Outcome) -> list[Event]:
        flight, info = outcome.flight, outcome.info
        assert info is not None
        events: list[Event] = list(info.get("mcp_calls", ()))
        events.extend(
            StateRecorded(node=flight.node, partition=flight.partition or None, key=key, value=value)
            for key, value in info["facts"].items()
        )
        # Events that middleware members recorded (policy findings) go in the same batch as the
        # completion, so a crash never separates a decision from the partition it concerns.
        events.extend(info.get("events") or ())
        stopped = info.get("stopped")
        if stopped is not None:
            self.log.error("attempt stopped, run failed", node=flight.node, partition=flight.partition or None,
                           attempt=flight.attempt, reason=stopped["reason"])
            events.append(RunFailed(node=flight.node, partition=flight.partition or None,
                                    error_type=stopped["error_type"], message=stopped["reason"]))
            return events
        events.append(PartitionCompleted(
            node=flight.node, partition=flight.partition, attempt=flight.attempt,
            manifest=info["manifest"], extra=info["extra"], report=info["report"],
            duration_s=round(info["duration_s"], 6), already_loaded=info["already_loaded"],
        ))
        if info["manifest"] is not None:
            self._outputs[(flight.node, flight.partition)] = flight.output_ref
        return events

    def _failure_events(self, outcome: Outcome) -> list[Event]:
        assert self.pipeline is not None
        flight, error = outcome.flight, outcome.error
        assert error is not None
        if isinstance(error, CheckpointCorruptError):
            self.log.warning("checkpoint invalid, recomputing", node=error.node, partition=error.partition,
                             uri=error.uri, reason=error.reason)
            part = self.state.nodes[error.node].partitions[error.partition]
            self._outputs.pop((error.node, error.partition), None)
            if part.status != "completed":
                return []
            expected = part.manifest.sha256 if part.manifest else ""
            return [CheckpointInvalidated(node=error.node, partition=error.partition, uri=error.uri,
                                          reason=error.reason, expected_sha256=expected,
                                          actual_sha256=error.actual_sha256)]
        retry = self.pipeline.nodes[flight.node].retry
        # An error may declare itself not worth retrying (an MCP tool error, an oversized result).
        will_retry = flight.attempt < retry.attempts and getattr(error, "retryable", True) is not False
        delay = retry.delay(flight.attempt) * self.config.backoff_scale if will_retry else None
        message = _error_message(error)
        # The MCP calls of a failed attempt come back attached to its error. A worker that
        # died or was cancelled mid-call returns nothing, but leaves the call's marker.
        events: list[Event] = list(getattr(error, "mcp_calls", None) or ())
        if not events:
            interrupted = interrupted_call(
                self.state.checkpoint_root or self.config.checkpoint_root, self.config.run_id, flight.node,
                flight.partition, flight.attempt, reason=message, duration_s=time.monotonic() - flight.started)
            if interrupted is not None:
                events.append(interrupted)
        events.append(NodeAttemptFailed(
            node=flight.node, partition=flight.partition or None, attempt=flight.attempt,
            error_type=type(error).__name__, message=message, timed_out=outcome.timed_out,
            will_retry=will_retry, retry_in_s=delay,
        ))
        if will_retry:
            self._retry_at[(flight.node, flight.partition)] = time.monotonic() + (delay or 0.0)
            self.log.warning("attempt failed, retrying", node=flight.node, partition=flight.partition or None,
                             attempt=flight.attempt, error_type=type(error).__name__, error=message,
                             retry_in_s=delay)
        else:
            self.log.error("node failed", node=flight.node, partition=flight.partition or None,
                           attempt=flight.attempt, error_type=type(error).__name__, error=message)
            events.append(RunFailed(
                node=flight.node, partition=flight.partition or None, error_type=type(error).__name__,
                message=f"node {flight.node!r}"
                        + (f" partition {flight.partition!r}" if flight.partition else "")
                        + f" failed after {flight.attempt} attempt(s): {message}",
            ))
        return events

    # Checkpoints and gates

    async def _invalidate_bad_checkpoints(self) -> None:
        """On resume, check every checkpoint an unfinished node still needs; record bad ones."""
        assert self.pipeline is not None
        needed: set[str] = set()
        for name in self._order:
            if self.state.nodes[name].status not in ("completed", "skipped"):
                needed.update(self.pipeline.nodes[name].dependencies)
        events: list[Event] = []
        for name in sorted(needed):
            for key, part in self.state.nodes[name].partitions.items():
                if part.status != "completed":
                    continue
                for manifest in [part.manifest, *part.extra.values()]:
                    if manifest is None:
                        continue
                    reason, actual = await asyncio.to_thread(check_checkpoint, manifest)
                    if reason is not None:
                        self.log.warning("checkpoint invalid, recomputing", node=name, partition=key or None,
                                         uri=manifest.uri, reason=reason)
                        events.append(CheckpointInvalidated(
                            node=name, partition=key, uri=manifest.uri, reason=reason,
                            expected_sha256=manifest.sha256, actual_sha256=actual,
                        ))
                        break
        await self._append(events)

    def _gate_checkpoints(self, gate: str) -> dict[str, str]:
        assert self.pipeline is not None
        hashes: dict[str, str] = {}
        for dependency in self.pipeline.nodes[gate].dependencies:
            for key, part in self.state.nodes[dependency].partitions.items():
                label = f"{dependency}[{key}]" if key else dependency
                if part.manifest is not None:
                    hashes[label] = part.manifest.sha256
                for port, manifest in part.extra.items():
                    hashes[f"{label}.{port}"] = manifest.sha256
        return hashes

    async def _check_gate_binding(self, gate: str) -> RunOutcome | None:
        decision = self.state.gates.get(gate)
        if decision is None or decision.checkpoints == self._gate_checkpoints(gate):
            return None
        self.log.info("gate inputs changed since approval, asking again", gate=gate)
        return await self._request_approval(gate)

    async def _open_gate(self, gate: str) -> RunOutcome:
        current = self.state.gates.get(gate)
        if current is not None and current.decision is None and \
                current.request.checkpoints == self._gate_checkpoints(gate):
            return self._outcome()
        return await self._request_approval(gate)

    async def _request_approval(self, gate: str) -> RunOutcome:
        assert self.pipeline is not None
        node = self.pipeline.nodes[gate]
        manifests = [
            (dependency, key, part.manifest)
            for dependency in node.dependencies
            for key, part in self.state.nodes[dependency].partitions.items()
            if part.manifest is not None
        ]
        params = self.pipeline.params_model.model_validate(self.state.params)
        sampled = await sample_checkpoints.remote(
            manifests, rows=self.config.sample_rows, checkpoint_root=self.state.checkpoint_root,
            run_id=self.config.run_id, gate=gate,
            secrets=tuple(value for _, value in params if isinstance(value, Secret)),
        )
        summary = self._gate_summary(gate, sampled["schemas"])
        four_eyes = node.four_eyes
        if callable(four_eyes):
            four_eyes = bool(four_eyes(self.pipeline.params_model.model_validate(self.state.params)))
        await self._append([ApprovalRequested(
            gate=gate, summary=summary, sample=sampled["sample"], reviewers=node.reviewers,
            four_eyes=four_eyes, submitter=self.state.submitter, checkpoints=self._gate_checkpoints(gate),
        )])
        self.log.info("waiting for approval", gate=gate)
        return self._outcome()

    def _gate_summary(self, gate: str, schemas: dict[str, Any]) -> dict[str, Any]:
        assert self.pipeline is not None
        inputs: dict[str, Any] = {}
        for dependency in self.pipeline.nodes[gate].dependencies:
            node_state = self.state.nodes[dependency]
            by_partition = {key or "all": part.manifest.rows if part.manifest else 0
                            for key, part in node_state.partitions.items()}
            entry: dict[str, Any] = {"kind": node_state.spec.kind, "rows": sum(by_partition.values()),
                                     "rows_by_partition": by_partition,
                                     "schema": [list(column) for column in schemas.get(dependency, [])]}
            reports = {key or "all": part.report for key, part in node_state.partitions.items() if part.report}
            if reports:
                entry["validation"] = _merge_reports(reports)
            inputs[dependency] = entry
        findings = [{"rule": finding.rule, "action": finding.action, "node": finding.node,
                     "partition": finding.partition, "rows": finding.rows, "detail": finding.detail}
                    for finding in self.state.findings]
        return {"inputs": inputs, "shared_state": dict(self.state.shared), "policy_findings": findings}

    def _outcome(self, status: str | None = None) -> RunOutcome:
        state = self.state
        message = ""
        if state.failure is not None:
            message = state.failure.message
        elif state.quarantine is not None:
            message = state.quarantine.reason
        return RunOutcome(run_id=self.config.run_id, status=status or state.status, seq=state.seq,
                          message=message, extra={"ready_s": self._ready_s})


@ray.remote(num_cpus=0)
class RunActor:
    """The Ray actor that hosts one run's executor."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.executor = Executor(config)

    async def run(self) -> RunOutcome:
        return await self.executor.run()

    async def interrupt(self, reason: str) -> None:
        self.executor.request_interrupt(reason)

    def ping(self) -> int:
        return os.getpid()


def _merge_reports(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"rows_in": 0, "valid": 0, "rejected": 0, "rejected_by_reason": {}}
    for report in reports.values():
        for key in ("rows_in", "valid", "rejected"):
            totals[key] += int(report.get(key, 0) or 0)
        for reason, count in (report.get("rejected_by_reason") or {}).items():
            totals["rejected_by_reason"][reason] = totals["rejected_by_reason"].get(reason, 0) + count
    totals["by_partition"] = reports
    return totals


def _route_reason(name: str, met: bool, data: RouteInput) -> str:
    if name != "quarantine":
        return f"condition of route {name!r} {'held' if met else 'did not hold'}"
    shares = {key: (report.get("rejected", 0) / report["rows_in"]) if report.get("rows_in") else 0.0
              for key, report in data.reports.items()}
    worst = max(shares, key=lambda key: shares[key]) if shares else ""
    label = f"partition {worst}" if worst else "the node"
    return f"{label} rejected {shares.get(worst, 0.0):.1%} of its rows" + (
        " (over the limit)" if met else " (within the limit)")


def _error_message(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 2000 else text[:2000] + "…"


def _seconds_since(recorded_at: str | None) -> float:
    if not recorded_at:
        return 0.0
    return round((dt.datetime.now(dt.timezone.utc) - parse_recorded_at(recorded_at)).total_seconds(), 3)


def _ray_node_id() -> str | None:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray there is no node id
        return None
