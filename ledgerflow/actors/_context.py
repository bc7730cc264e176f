"""A node's run-time surroundings: secrets, the context and the middleware chain."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, model_validator

from ledgerflow.actors._errors import ParameterError


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
            return value
        try:
            with open(self.file or "", encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as err:
            raise ParameterError(f"cannot read secret file {self.file}: {err.strerror}", parameter=self.file) from err

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


@dataclass
class Attempt:
    """One node attempt, as passed to middleware hooks."""

    run_id: str
    node: str
    kind: str
    partition: str
    attempt: int
    logger: Any
    started: float = field(default_factory=time.perf_counter)
    facts: dict[str, Any] = field(default_factory=dict)


class Middleware(Protocol):
    """Wraps every node attempt. Each hook is optional."""

    def before(self, attempt: Attempt) -> None: ...

    def after(self, attempt: Attempt, result: Any) -> Any: ...

    def on_error(self, attempt: Attempt, error: BaseException) -> None: ...


class LoggingMiddleware:
    """The first member of every chain: logs each attempt's start, end and error."""

    def before(self, attempt: Attempt) -> None:
        attempt.logger.debug("attempt started")

    def after(self, attempt: Attempt, result: Any) -> Any:
        rows = getattr(result, "num_rows", None)
        attempt.logger.debug("attempt finished", rows=rows,
                             duration_s=round(time.perf_counter() - attempt.started, 4))
        return result

    def on_error(self, attempt: Attempt, error: BaseException) -> None:
        attempt.logger.warning("attempt failed", error_type=type(error).__name__, error=str(error))


def run_with_middleware(chain: Sequence[Any], attempt: Attempt, call: Any) -> Any:
    """Run ``call()`` inside ``chain``: befores in order, afters and errors in reverse."""
    for member in chain:
        hook = getattr(member, "before", None)
        if hook is not None:
            hook(attempt)
    try:
        result = call()
    except BaseException as error:
        for member in reversed(chain):
            hook = getattr(member, "on_error", None)
            if hook is not None:
                hook(attempt, error)
        raise
    for member in reversed(chain):
        hook = getattr(member, "after", None)
        if hook is not None:
            replaced = hook(attempt, result)
            if replaced is not None:
                result = replaced
    return result


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
