"""Driver-side operations: start, resume, decide and cancel runs.

These work from the log alone. Only starting or continuing a run needs Ray:
a new executor then starts in the caller's Ray cluster, or in a private
local one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
import structlog
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import ledgerflow
from ledgerflow.actors._errors import (
    CodeChangedError,
    ConfigurationError,
    DecisionRefusedError,
    LeaseHeldError,
    RunExistsError,
)
from ledgerflow.actors._executor import ExecutorConfig, RunActor, RunOutcome
from ledgerflow.actors._lease import lease_holder, lease_is_free, open_lease
from ledgerflow.actors._loader import canonical_locator, load_pipeline, locator_of
from ledgerflow.actors._pipeline import Pipeline, changed_nodes
from ledgerflow.actors._context import recorded_params
from ledgerflow.actors._lineage import LineageEmitter, lineage_settings
from ledgerflow.actors._logging import configure_logging
from ledgerflow.actors._telemetry import telemetry_settings
from ledgerflow.events import (
    ApprovalGranted,
    ApprovalRejected,
    CancelRequested,
    ConcurrencyError,
    Event,
    LedgerflowError,
    RecordedEvent,
    RunCancelled,
    RunStarted,
    RunState,
    apply,
    is_postgres_url,
    load_run_state,
    open_store,
    redact_event,
    resolve_home,
    resolve_store_url,
    validate_stream_id,
)

logger = structlog.get_logger("ledgerflow.runner")

NAMESPACE = "ledgerflow"
EXIT_CODES = {
    "completed": 0, "failed": 1, "waiting_for_approval": 3, "quarantined": 6, "rejected": 6,
    "cancelled": 6, "interrupted": 130, "running": 0,
}

ProgressCallback = Callable[[RunState, list[RecordedEvent]], None]


@dataclass(frozen=True)
class Settings:
    """Paths of the log, checkpoints and default warehouse, and the Ray cluster to use."""

    home: str
    store_url: str
    checkpoints: str
    checkpoints_explicit: bool
    warehouse: str
    address: str | None = None

    @classmethod
    def resolve(cls, *, home: str | None = None, store: str | None = None, checkpoints: str | None = None,
                address: str | None = None) -> Settings:
        """Apply the defaults: ``--home``, else ``$LEDGERFLOW_HOME``, else ``./.ledgerflow``."""
        home_dir = resolve_home(home)
        store_url = resolve_store_url(home_dir, store)
        explicit = checkpoints is not None
        return cls(
            home=home_dir, store_url=store_url,
            checkpoints=checkpoints if explicit else os.path.join(home_dir, "checkpoints"),
            checkpoints_explicit=explicit, warehouse=os.path.join(home_dir, "warehouse.db"),
            address=address or os.environ.get("RAY_ADDRESS") or None,
        )

    @property
    def store_path(self) -> str:
        """The SQLite log's file path (the store URL without a ``sqlite://`` prefix), or a PostgreSQL URL as is."""
        return self.store_url.removeprefix("sqlite:///") if self.store_url.startswith("sqlite:///") else self.store_url


@dataclass
class RunResult:
    """The outcome of a command on a run: its status, last seq and a message."""

    run_id: str
    status: str
    seq: int = 0
    message: str = ""
    changed: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


def default_submitter() -> str:
    """Return ``user@host`` for this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def new_run_id(pipeline_name: str) -> str:
    """Return a fresh run id: the pipeline name, the UTC time and a random suffix."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in pipeline_name)[:36] or "run"
    return f"{base}-{stamp}-{secrets.token_hex(2)}"


def status_of(state: RunState, store_url: str) -> str:
    """Return the status to show: a run not ended and not held by an executor is ``interrupted``."""
    if state.status == "running" and lease_is_free(store_url, state.run_id):
        return "interrupted"
    return state.status


# Ray


_RAY_INIT_LOCK = threading.Lock()


def ensure_ray(address: str | None, *, log_to_driver: bool = False) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``) or start a private local Ray for this process.

    Safe to call from several threads at once: the first one connects.
    """
    with _RAY_INIT_LOCK:
        _connect_ray(address, log_to_driver)


def _connect_ray(address: str | None, log_to_driver: bool) -> None:
    if ray.is_initialized():
        return
    _send_ray_messages_to_stderr()
    try:
        if address:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=log_to_driver,
                     logging_level=logging.ERROR)
        else:
            # "local" starts a new cluster. Without it, Ray 2.60 joins the cluster that a
            # `ray start` left in /tmp/ray/ray_current_cluster, which is not private.
            ray.init(address="local", namespace=NAMESPACE, log_to_driver=log_to_driver, include_dashboard=False,
                     logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigurationError(f"cannot connect to Ray at {address or 'a new local cluster'}: {err}") from err


def _send_ray_messages_to_stderr() -> None:
    """Make the driver print Ray's cluster messages (such as a node's death) on stderr.

    Ray prints them on stdout from a background thread, which would break the
    single JSON object that ``--json`` promises there.
    NOTE: this wraps a private Ray function. If a Ray release renames it, the
    wrap is skipped and those messages go to stdout again.
    """
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "ledgerflow_wrapped", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.ledgerflow_wrapped = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _actor_name(run_id: str, settings: Settings) -> str:
    store = settings.store_url
    if is_postgres_url(store):
        # Without the password, so one log gets one name whichever credentials reach it.
        from ledgerflow.events._postgres import parse_url

        store = parse_url(store).display
    home_hash = hashlib.sha256(store.encode()).hexdigest()[:12]
    return f"{run_id}@{home_hash}"


EXECUTOR_RESOURCES_ENV = "LEDGERFLOW_EXECUTOR_RESOURCES"


def _executor_resources() -> dict[str, float]:
    """Return the custom Ray resources an executor requires, from ``$LEDGERFLOW_EXECUTOR_RESOURCES``.

    The value is a JSON object such as ``{"on-demand": 0.01}``, which keeps
    executors on nodes started with that resource (``ray start --resources``).

    Raises:
        ConfigurationError: The value is not a JSON object of positive numbers.
    """
    text = os.environ.get(EXECUTOR_RESOURCES_ENV, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
            isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0
            for amount in value.values()):
        raise ConfigurationError(
            f"invalid {EXECUTOR_RESOURCES_ENV}={text!r}: set a JSON object of resource names and positive "
            'amounts, for example {"on-demand": 0.01}'
        )
    return {str(name): float(amount) for name, amount in value.items()}


def _check_cluster(settings: Settings) -> None:
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) > 1 and not settings.checkpoints_explicit:
        raise ConfigurationError(
            f"this Ray cluster has {len(alive)} nodes but checkpoints are in the local directory "
            f"{settings.checkpoints}: pass --checkpoints with a URI every node can reach (for example "
            "a shared mount or s3://bucket/prefix)"
        )


# Running


def start_run(
    pipeline: Pipeline | str,
    *,
    params: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    submitter: str | None = None,
    settings: Settings | None = None,
    on_progress: ProgressCallback | None = None,
    max_in_flight: int | None = None,
    max_restarts: int = 1,
    fault_exit_after_seq: int | None = None,
    capture_states: str | None = None,
    handle_sigint: bool = False,
) -> RunResult:
    """Start a run and follow it until it ends, waits at a gate or is interrupted.

    Raises:
        PipelineImportError, PipelineDefinitionError, ParameterError: Bad pipeline or parameters.
        RunExistsError: ``run_id`` is already in the log.
    """
    configure_logging()
    settings = settings or Settings.resolve()
    if isinstance(pipeline, Pipeline):
        locator = locator_of(pipeline)
        loaded = pipeline
    else:
        locator = canonical_locator(pipeline)
        loaded = load_pipeline(pipeline)
    loaded.check()
    parsed = loaded.parse_params(dict(params or {}))
    partitions = loaded.resolve_partitions(parsed)
    run_id = validate_stream_id(run_id or new_run_id(loaded.name))
    fingerprint, _ = loaded.fingerprints()
    asyncio.run(_ensure_new(settings, run_id))
    start = RunStarted(
        run_id=run_id, pipeline=loaded.name, locator=locator, fingerprint=fingerprint,
        nodes=loaded.node_specs(partitions), routes=loaded.route_specs(), params=recorded_params(parsed),
        submitter=submitter or default_submitter(), ledgerflow_version=ledgerflow.__version__,
        checkpoint_root=settings.checkpoints,
    )
    config = ExecutorConfig(
        run_id=run_id, store_url=settings.store_url, checkpoint_root=settings.checkpoints,
        warehouse=settings.warehouse, start=start, max_in_flight=max_in_flight,
        backoff_scale=_backoff_scale(), fault_exit_after_seq=fault_exit_after_seq, log_level=_log_level(),
        capture_states=capture_states, telemetry=telemetry_settings(), lineage=lineage_settings(),
    )
    logger.debug("starting run", run_id=run_id, locator=locator)
    return _execute(settings, config, on_progress=on_progress, max_restarts=max_restarts,
                    handle_sigint=handle_sigint)


async def _ensure_new(settings: Settings, run_id: str) -> None:
    store = await open_store(settings.store_url)
    try:
        if await store.head(run_id) is not None:
            raise RunExistsError(run_id)
    finally:
        await store.close()


def resume_run(
    run_id: str,
    *,
    settings: Settings | None = None,
    locator: str | None = None,
    allow_changed_code: bool = False,
    accepted_by: str | None = None,
    reason: str = "resume",
    on_progress: ProgressCallback | None = None,
    max_in_flight: int | None = None,
    max_restarts: int = 1,
    fault_exit_after_seq: int | None = None,
    handle_sigint: bool = False,
) -> RunResult:
    """Continue a run from its last checkpoint.

    A finished run returns its final status and changes nothing; a run
    waiting at a gate stays there.

    Raises:
        RunNotFoundError: No such run.
        TamperedLogError: The run's chain does not verify.
        CodeChangedError: The code changed and ``allow_changed_code`` is false.
        LeaseHeldError: Another executor holds the run.
    """
    configure_logging()
    settings = settings or Settings.resolve()
    state = asyncio.run(_load(settings, run_id))
    if state.terminal:
        message = f"run {run_id} already ended as {state.status}"
        if state.removed_checkpoints:
            message += (f"; retention removed its checkpoints at seq {min(state.removed_checkpoints.values())}, "
                        "so they are gone on purpose, not lost")
        return RunResult(run_id, state.status, state.seq, message, changed=False)
    if state.status == "waiting_for_approval":
        return RunResult(run_id, state.status, state.seq, _waiting_message(run_id), changed=False)
    if not lease_is_free(settings.store_url, run_id):
        raise LeaseHeldError(run_id, lease_holder(settings.store_url, run_id))
    target = canonical_locator(locator) if locator else state.locator
    pipeline = load_pipeline(target)
    fingerprint, per_node = pipeline.fingerprints()
    if fingerprint != state.fingerprint and not allow_changed_code:
        raise CodeChangedError(run_id, changed_nodes([node.spec for node in state.nodes.values()], per_node))
    config = ExecutorConfig(
        run_id=run_id, store_url=settings.store_url, checkpoint_root=state.checkpoint_root or settings.checkpoints,
        warehouse=settings.warehouse, locator=target, allow_changed_code=allow_changed_code,
        accepted_by=accepted_by or default_submitter(), resume_reason=reason, max_in_flight=max_in_flight,
        backoff_scale=_backoff_scale(), fault_exit_after_seq=fault_exit_after_seq, log_level=_log_level(),
        telemetry=telemetry_settings(), lineage=lineage_settings(),
    )
    return _execute(settings, config, on_progress=on_progress, max_restarts=max_restarts,
                    handle_sigint=handle_sigint)


#: Set to 1 (``--debug`` does) to print the output of executors and workers in the driver.
RAY_OUTPUT_ENV = "LEDGERFLOW_RAY_OUTPUT"


def _execute(settings: Settings, config: ExecutorConfig, *, on_progress: ProgressCallback | None,
             max_restarts: int, handle_sigint: bool) -> RunResult:
    ensure_ray(settings.address, log_to_driver=os.environ.get(RAY_OUTPUT_ENV) == "1")
    _check_cluster(settings)
    options: dict[str, Any] = {
        "name": _actor_name(config.run_id, settings),
        "namespace": NAMESPACE,
        "max_restarts": max_restarts,
        "max_task_retries": 1 if max_restarts else 0,
    }
    resources = _executor_resources()
    if resources:
        options["resources"] = resources
    if not is_postgres_url(settings.store_url):
        # With a SQLite log the executor must run where the log file is. A
        # PostgreSQL log is reachable from every node, so Ray may place it anywhere.
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    try:
        actor = RunActor.options(**options).remote(config)
    except ValueError as err:
        raise LeaseHeldError(config.run_id, f"Ray actor {options['name']} in this cluster") from err
    try:
        outcome = asyncio.run(_follow(actor, settings, config.run_id, on_progress, handle_sigint, max_restarts))
    finally:
        ray.kill(actor, no_restart=True)
    return RunResult(outcome.run_id, outcome.status, outcome.seq, outcome.message or _status_message(outcome),
                     extra=dict(outcome.extra))


#: Seconds the command keeps calling an unavailable executor while Ray restarts it on another node.
RESTART_WAIT_S = 120.0


async def _follow(actor: Any, settings: Settings, run_id: str, on_progress: ProgressCallback | None,
                  handle_sigint: bool, max_restarts: int = 0) -> RunOutcome:
    """Wait for the executor while folding its events for progress; Ctrl-C interrupts cleanly."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    if handle_sigint and threading.current_thread() is threading.main_thread():
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    result = asyncio.wrap_future(actor.run.remote().future())
    store = await open_store(settings.store_url) if on_progress is not None else None
    state = RunState()
    unavailable_since: float | None = None
    try:
        interrupt_sent = False
        while True:
            done, _ = await asyncio.wait({result}, timeout=0.2)
            if store is not None:
                state = await _progress(store, run_id, state, on_progress)
            if done and max_restarts and isinstance(result.exception(), ray.exceptions.ActorUnavailableError):
                # The executor's node went away mid-call. Ray restarts the actor elsewhere but does not
                # repeat the call, so it is made again until the restarted executor takes it (it resumes
                # from the log) or Ray gives the actor up.
                now = loop.time()
                if unavailable_since is None:
                    unavailable_since = now
                    logger.warning("executor unavailable, calling it again until Ray restarts it", run_id=run_id,
                                   error=str(result.exception()).splitlines()[0])
                if now - unavailable_since < RESTART_WAIT_S:
                    await asyncio.sleep(1.0)
                    result = asyncio.wrap_future(actor.run.remote().future())
                    continue
            if done:
                break
            if interrupted.is_set() and not interrupt_sent:
                interrupt_sent = True
                interrupted.clear()
                await asyncio.wrap_future(actor.interrupt.remote("interrupted by Ctrl-C").future())
            elif interrupted.is_set():
                raise KeyboardInterrupt
        return _unwrap(result, run_id)
    finally:
        if handle_sigint and threading.current_thread() is threading.main_thread():
            loop.remove_signal_handler(signal.SIGINT)
        if store is not None:
            await store.close()


async def _progress(store: Any, run_id: str, state: RunState, on_progress: ProgressCallback | None) -> RunState:
    fresh: list[RecordedEvent] = []
    async for recorded in store.read_stream(run_id, from_seq=state.seq + 1, verify=False):
        apply(state, recorded.decode(store.path), seq=recorded.seq, recorded_at=recorded.recorded_at)
        fresh.append(recorded)
    if fresh and on_progress is not None:
        on_progress(state, fresh)
    return state


def _unwrap(result: asyncio.Future[Any], run_id: str) -> RunOutcome:
    try:
        return result.result()
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, LedgerflowError):
            raise cause from None
        raise
    except ray.exceptions.RayActorError as err:
        raise ExecutorDiedError(run_id, str(err)) from err


class ExecutorDiedError(LedgerflowError):
    """Raised when the executor's process died (and Ray did not restart it)."""

    def __init__(self, run_id: str, detail: str) -> None:
        first_line = detail.splitlines()[0] if detail else "no detail"
        super().__init__(f"the executor of run {run_id} died ({first_line}): "
                         f"continue it with 'ledgerflow resume {run_id}'")
        self.run_id = run_id


def _status_message(outcome: RunOutcome) -> str:
    if outcome.status == "waiting_for_approval":
        return _waiting_message(outcome.run_id)
    if outcome.status == "interrupted":
        return f"run {outcome.run_id} interrupted: continue it with 'ledgerflow resume {outcome.run_id}'"
    return f"run {outcome.run_id} {outcome.status}"


def _waiting_message(run_id: str) -> str:
    return (f"run {run_id} is waiting for approval: "
            f"ledgerflow approve {run_id} --reviewer NAME (or reject {run_id} --reviewer NAME --comment TEXT)")


def _backoff_scale() -> float:
    return float(os.environ.get("LEDGERFLOW_BACKOFF_SCALE", "1.0"))


def _log_level() -> str:
    return os.environ.get("LEDGERFLOW_LOG_LEVEL", "info")


# Reading, deciding, cancelling


async def _load(settings: Settings, run_id: str, until_seq: int | None = None) -> RunState:
    store = await open_store(settings.store_url, create=False)
    try:
        return await load_run_state(store, run_id, until_seq=until_seq)
    finally:
        await store.close()


def load_state(run_id: str, *, settings: Settings | None = None, until_seq: int | None = None) -> RunState:
    """Fold a run's stream (verified) into its state, up to ``until_seq``."""
    return asyncio.run(_load(settings or Settings.resolve(), run_id, until_seq))


def decide(run_id: str, *, reviewer: str, approve: bool, comment: str = "",
           settings: Settings | None = None) -> RunResult:
    """Record an approval or a rejection at the run's open gate.

    Raises:
        DecisionRefusedError: Not at a gate, already decided, reviewer not allowed, or four-eyes.
    """
    configure_logging()
    return asyncio.run(_decide(settings or Settings.resolve(), run_id, reviewer, approve, comment))


async def _decide(settings: Settings, run_id: str, reviewer: str, approve: bool, comment: str) -> RunResult:
    if not reviewer.strip():
        raise DecisionRefusedError("a decision needs a reviewer name: pass --reviewer NAME", run_id=run_id)
    store = await open_store(settings.store_url, create=False)
    try:
        for _ in range(3):
            state = await load_run_state(store, run_id)
            gate = _open_gate(state, run_id)
            request = gate.request
            if request.reviewers is not None and reviewer not in request.reviewers:
                raise DecisionRefusedError(
                    f"reviewer {reviewer!r} may not decide gate {request.gate!r} of run {run_id}: allowed "
                    f"reviewers are {', '.join(request.reviewers)}", run_id=run_id, status=state.status)
            if request.four_eyes and reviewer == request.submitter:
                raise DecisionRefusedError(
                    f"reviewer {reviewer!r} submitted run {run_id}, and gate {request.gate!r} needs four eyes: "
                    "ask another reviewer", run_id=run_id, status=state.status)
            event: Event
            if approve:
                event = ApprovalGranted(gate=request.gate, reviewer=reviewer, comment=comment,
                                        request_seq=gate.request_seq, checkpoints=request.checkpoints)
            else:
                event = ApprovalRejected(gate=request.gate, reviewer=reviewer, comment=comment,
                                         request_seq=gate.request_seq)
            try:
                result = await store.append(run_id, [redact_event(event)], expected_version=state.seq)
            except ConcurrencyError:
                continue
            status = "running" if approve else "rejected"
            logger.info("decision recorded", run_id=run_id, gate=request.gate, reviewer=reviewer,
                        decision="approved" if approve else "rejected")
            if not approve:
                # A rejection ends the run without an executor, so this process reports its end.
                ended = await load_run_state(store, run_id)
                await asyncio.to_thread(LineageEmitter(lineage_settings()).emit_end, ended)
            return RunResult(run_id, status, result.last_seq,
                             f"gate {request.gate!r} of run {run_id} {'approved' if approve else 'rejected'} "
                             f"by {reviewer}")
        raise DecisionRefusedError(f"run {run_id} kept changing while deciding: try again", run_id=run_id)
    finally:
        await store.close()


def _open_gate(state: RunState, run_id: str) -> Any:
    for gate in state.gates.values():
        if gate.decision is None:
            if state.status == "waiting_for_approval":
                return gate
    decided = [gate for gate in state.gates.values() if gate.decision is not None]
    if decided and (state.terminal or state.status != "waiting_for_approval"):
        last = decided[-1]
        raise DecisionRefusedError(
            f"gate {last.request.gate!r} of run {run_id} was already {last.decision} by {last.reviewer}",
            run_id=run_id, status=state.status)
    raise DecisionRefusedError(f"run {run_id} is not at an approval gate (status {state.status})",
                               run_id=run_id, status=state.status)


def cancel_run(run_id: str, *, requested_by: str | None = None, reason: str = "",
               settings: Settings | None = None, wait_s: float = 60.0) -> RunResult:
    """End a run that is not finished; it loads nothing more.

    With no executor holding the run, ``RunCancelled`` is recorded here;
    otherwise the holder sees the request and stops at its next boundary.

    Raises:
        DecisionRefusedError: The run already ended.
    """
    configure_logging()
    return asyncio.run(_cancel(settings or Settings.resolve(), run_id, requested_by or default_submitter(),
                               reason, wait_s))


async def _cancel(settings: Settings, run_id: str, requested_by: str, reason: str, wait_s: float) -> RunResult:
    store = await open_store(settings.store_url, create=False)
    try:
        state = await load_run_state(store, run_id)
        if state.terminal:
            raise DecisionRefusedError(f"run {run_id} already ended as {state.status}: nothing to cancel",
                                       run_id=run_id, status=state.status)
        lease = open_lease(settings.store_url, run_id)
        request = CancelRequested(requested_by=requested_by, reason=reason)
        try:
            # The wait covers another process probing the lease for a moment.
            lease.acquire(holder={"host": socket.gethostname(), "pid": os.getpid(), "command": "cancel"},
                          wait_s=1.0)
        except LeaseHeldError:
            await _append_retrying(store, run_id, [request])
            logger.info("cancel requested", run_id=run_id, requested_by=requested_by)
            state = await _wait_terminal(store, run_id, wait_s)
            return RunResult(run_id, status_of(state, settings.store_url), state.seq,
                             f"run {run_id} {state.status}" if state.terminal
                             else f"cancel of run {run_id} requested; the executor has not stopped yet")
        try:
            result = await _append_retrying(store, run_id, [request, RunCancelled(requested_by=requested_by,
                                                                                reason=reason)])
        finally:
            lease.release()
        logger.info("run cancelled", run_id=run_id, requested_by=requested_by)
        # No executor has the run's lease, so this process reports its end.
        await asyncio.to_thread(LineageEmitter(lineage_settings()).emit_end, await load_run_state(store, run_id))
        return RunResult(run_id, "cancelled", result, f"run {run_id} cancelled")
    finally:
        await store.close()


async def _append_retrying(store: Any, run_id: str, events: list[Event]) -> int:
    for _ in range(10):
        head = await store.head(run_id)
        try:
            result = await store.append(run_id, [redact_event(event) for event in events],
                                        expected_version=head.head_seq if head else 0)
            return result.last_seq
        except ConcurrencyError:
            continue
    raise DecisionRefusedError(f"run {run_id} kept changing: try again", run_id=run_id)


async def _wait_terminal(store: Any, run_id: str, wait_s: float) -> RunState:
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        state = await load_run_state(store, run_id)
        if state.terminal or asyncio.get_running_loop().time() > deadline:
            return state
        await asyncio.sleep(0.1)
