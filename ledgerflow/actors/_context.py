"""A node's run-time surroundings: secrets, the context and the middleware chain.

The default chain around every node attempt is logging, redaction,
telemetry and policy rules, in that order; a pipeline's own members follow
(see :func:`ledgerflow.actors._tasks.default_chain`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, model_validator

from ledgerflow.actors._errors import ParameterError
from ledgerflow.events import Event, redact_text, register_secret


class Secret(BaseModel):
    """A parameter whose value is read where it is used, never recorded.

    The log records only the reference: ``env:NAME`` (an environment
    variable of the worker) or ``file:PATH`` (a file the worker can read).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            kind, _, target = value.partition(":")
            if kind in ("env", "file") and target:
                return {kind: target}
            raise ValueError(
                "a secret parameter takes a reference, env:NAME or file:PATH, never the secret itself"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret names exactly one source: env:NAME or file:PATH")
        return self

    def reveal(self) -> str:
        """Read the secret's value in this process.

        Raises:
            ParameterError: The variable is unset or the file cannot be read.
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ParameterError(f"secret environment variable {self.env} is not set on this worker",
                                     parameter=self.env)
        else:
            try:
                with open(self.file or "", encoding="utf-8") as handle:
                    value = handle.read().strip()
            except OSError as err:
                raise ParameterError(f"cannot read secret file {self.file}: {err.strerror}",
                                     parameter=self.file) from err
        # Logs, errors and events of this process mask the value from now on.
        register_secret(value)
        return value

    def __str__(self) -> str:
        return f"Secret({'env:' + self.env if self.env else 'file:' + str(self.file)})"


@dataclass
class Context:
    """A node attempt's view of its run, given to nodes that take a ``context`` parameter.

    Attributes:
        run_id: The run's id.
        node: The node's name.
        partition: The partition's key ("" when the node is not partitioned).
        attempt: The attempt number, from 1.
        params: The run's validated parameters.
        state: The run's shared state as recorded before this node started.
        logger: A structlog logger bound with run id, node, partition and attempt.
    """

    run_id: str
    node: str
    partition: str
    attempt: int
    params: Any
    state: Mapping[str, Any]
    logger: Any
    recorded: dict[str, Any] = field(default_factory=dict)
    #: The attempt's MCP calls: results recorded earlier and the events of this attempt.
    mcp: Any = None

    def record(self, key: str, value: Any) -> None:
        """Add a small fact (a watermark, a count) to the run's shared state.

        The fact is recorded as an event once the attempt succeeds, so later
        nodes and every replay see the same value. Keep values small and
        JSON-compatible: they live in the log, which is never erased.
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"invalid state key {key!r}: use a non-empty string")
        self.recorded[key] = value

    def call_tool(self, server: Any, tool: str, arguments: Mapping[str, Any] | None = None, *,
                  parser: Any = None, writes: bool = False, idempotency_argument: str | None = None,
                  retry_tool_errors: bool = False, timeout_s: float | None = None) -> Any:
        """Call ``tool`` on an :class:`~ledgerflow.McpServer` and return its result as an Arrow table.

        Each call is recorded as an ``McpToolCalled`` event. A call that
        returned in an earlier attempt or before a resume is not made again:
        its stored result is read instead.

        Args:
            arguments: The tool's arguments; their canonical JSON's SHA-256 is recorded, not the values.
            parser: A function from the ``CallToolResult`` to a table or DataFrame; without it the
                table comes from the structured content or from JSON text.
            writes: The call changes something: it gets an idempotency key derived from the run,
                node and partition, in ``_meta`` and, with ``idempotency_argument``, as that argument.
            retry_tool_errors: Retry the attempt when the tool reports an error (default: fail).
            timeout_s: Seconds for this call instead of the server's ``timeout_s``.

        Raises:
            McpCallError: The call failed; a transport failure or timeout is retried under the node's policy.
        """
        from ledgerflow.actors._mcp import call_tool

        if self.mcp is None:
            raise RuntimeError("this context cannot call MCP tools: it was not made for a node attempt")
        return call_tool(self.mcp, server, tool, arguments, parser=parser, writes=writes,
                         idempotency_argument=idempotency_argument, retry_tool_errors=retry_tool_errors,
                         timeout_s=timeout_s, logger_=self.logger)


class AttemptStopped(Exception):
    """Raised by a middleware member to stop an attempt; the run fails with ``reason``.

    The events the member recorded on the attempt are appended with the
    failure, so the log states why the run stopped. Ray does not retry it,
    and neither does the executor.
    """

    def __init__(self, reason: str, *, error_type: str = "AttemptStopped") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


@dataclass
class Attempt:
    """One node attempt, as middleware members see it.

    Attributes:
        run_id, node, kind, partition, attempt: Which attempt this is.
        logger: A structlog logger bound with run id, node, partition and attempt.
        params: The run's validated parameters (None where a member runs outside a task).
        started: ``time.perf_counter()`` when the attempt began.
        facts: Free-form values members share during the attempt.
        events: Events a member recorded; they are appended with the attempt's outcome.
        outputs: Extra tables to checkpoint beside the output, by port name
            (for example rows a policy rule quarantined).
        telemetry: Settings and trace context handed down from the executor.
    """

    run_id: str
    node: str
    kind: str
    partition: str
    attempt: int
    logger: Any
    params: Any = None
    started: float = field(default_factory=time.perf_counter)
    facts: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)

    def record(self, event: Event) -> None:
        """Append ``event`` to the log together with this attempt's outcome."""
        self.events.append(event)

    def stop(self, reason: str, *, error_type: str = "AttemptStopped") -> None:
        """Stop the attempt and fail the run with ``reason``.

        Raises:
            AttemptStopped: Always.
        """
        raise AttemptStopped(reason, error_type=error_type)


class Middleware(Protocol):
    """A member of the chain that wraps every node attempt. Each hook is optional.

    The chain runs ``before`` hooks in order, then the node, then ``after``
    hooks in reverse order, like nested context managers. When the node or
    a hook raises, the ``on_error`` hooks of the members that were entered
    and have not yet run ``after`` run in reverse order.

    - ``before(attempt)`` runs before the node, with the attempt's ids and parameters.
    - ``after(attempt, result)`` sees the node's output (a table or
      :class:`~ledgerflow.actors.Validation`) and returns a replacement, or
      None to keep it. Raising here fails the attempt.
    - ``on_error(attempt, error)`` sees the error and may return another
      exception to raise in its place (redaction does), or None.

    A member adds events with :meth:`Attempt.record` and stops the attempt
    with a recorded reason with :meth:`Attempt.stop`.
    """

    def before(self, attempt: Attempt) -> None: ...

    def after(self, attempt: Attempt, result: Any) -> Any: ...

    def on_error(self, attempt: Attempt, error: BaseException) -> BaseException | None: ...


class LoggingMiddleware:
    """Binds the attempt's ids to every log line of the attempt, and logs its start, end and error."""

    def before(self, attempt: Attempt) -> None:
        structlog.contextvars.bind_contextvars(run_id=attempt.run_id, node=attempt.node,
                                              partition=attempt.partition or None, attempt=attempt.attempt)
        attempt.logger.debug("attempt started")

    def after(self, attempt: Attempt, result: Any) -> Any:
        rows = getattr(result, "num_rows", None)
        attempt.logger.debug("attempt finished", rows=rows,
                             duration_s=round(time.perf_counter() - attempt.started, 4))
        _unbind_attempt()
        return result

    def on_error(self, attempt: Attempt, error: BaseException) -> None:
        if isinstance(error, AttemptStopped):
            attempt.logger.error("attempt stopped", reason=error.reason)
        else:
            attempt.logger.warning("attempt failed", error_type=type(error).__name__, error=str(error))
        _unbind_attempt()


def _unbind_attempt() -> None:
    structlog.contextvars.unbind_contextvars("run_id", "node", "partition", "attempt")


class RedactionMiddleware:
    """Masks the run's secrets in what an attempt lets out of its process.

    Before the node runs it registers the values of the run's secret
    parameters with :func:`ledgerflow.events.register_secret`, so that log
    lines mask them even when a node logs them. After an error it replaces
    the exception with one whose message is masked, so neither the log nor
    Ray's error output shows the secret.
    """

    def before(self, attempt: Attempt) -> None:
        if attempt.params is not None:
            register_run_secrets(attempt.params)

    def on_error(self, attempt: Attempt, error: BaseException) -> BaseException | None:
        text = str(error)
        masked = redact_text(text)
        if masked == text:
            return None
        return _masked_copy(error, masked)


def register_run_secrets(params: Any) -> None:
    """Register the values of ``params``' secret parameters for redaction in this process.

    A secret that cannot be read here is skipped: the node that reads it reports that itself.
    """
    for name, value in params:
        if isinstance(value, Secret):
            try:
                value.reveal()
            except ParameterError:
                structlog.get_logger("ledgerflow.redaction").debug("secret parameter not readable here",
                                                                   parameter=name)


def _masked_copy(error: BaseException, message: str) -> BaseException:
    """Return an exception of the same type as ``error`` whose message is ``message``, without its cause."""
    if isinstance(error, AttemptStopped):
        return AttemptStopped(message, error_type=error.error_type)
    try:
        copy = type(error)(message)
        if str(copy) == message:
            return copy
    except Exception:  # noqa: BLE001 - some exception types take other arguments
        pass
    return RuntimeError(f"{type(error).__name__}: {message}")


def run_with_middleware(chain: Sequence[Any], attempt: Attempt, call: Any) -> Any:
    """Run ``call()`` inside ``chain`` and return its output as the members altered it.

    See :class:`Middleware` for the order of the hooks.
    """
    entered: list[Any] = []
    error: BaseException | None = None
    result: Any = None
    try:
        for member in chain:
            hook = getattr(member, "before", None)
            if hook is not None:
                hook(attempt)
            entered.append(member)
        result = call()
    except BaseException as raised:  # noqa: BLE001 - on_error hooks see every error, then it is raised again
        error = raised
    remaining = list(reversed(entered))
    while error is None and remaining:
        member = remaining.pop(0)
        hook = getattr(member, "after", None)
        if hook is None:
            continue
        try:
            replaced = hook(attempt, result)
        except BaseException as raised:  # noqa: BLE001 - see above
            error = raised
            break
        if replaced is not None:
            result = replaced
    if error is None:
        return result
    replaced_error = False
    for member in remaining:
        hook = getattr(member, "on_error", None)
        if hook is None:
            continue
        replacement = hook(attempt, error)
        if isinstance(replacement, BaseException):
            error = replacement
            replaced_error = True
    if replaced_error:
        # The original error, its cause and its traceback may contain what the replacement masks.
        raise error from None
    raise error


def bound_logger(run_id: str, node: str, partition: str, attempt: int) -> Any:
    return structlog.get_logger("ledgerflow.node").bind(
        run_id=run_id, node=node, partition=partition or None, attempt=attempt
    )


def secret_references(params: BaseModel) -> list[str]:
    """Return the names of parameters typed as secrets."""
    return [name for name, value in params if isinstance(value, Secret)]


def recorded_params(params: BaseModel) -> dict[str, Any]:
    """Return the parameters as recorded at start: secrets as references only."""
    return params.model_dump(mode="json")
