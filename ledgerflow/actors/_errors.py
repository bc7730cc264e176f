"""Errors raised by the runtime: pipeline definitions, runs, leases and decisions."""

from __future__ import annotations

from collections.abc import Iterable

from ledgerflow.events import LedgerflowError, UsageError


class PipelineDefinitionError(UsageError):
    """Raised when a pipeline graph is invalid: a cycle, an unknown or duplicate name."""

    def __init__(self, message: str, *, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class PipelineImportError(UsageError):
    """Raised when a pipeline locator cannot be imported or names no Pipeline."""

    def __init__(self, message: str, *, locator: str) -> None:
        super().__init__(message)
        self.locator = locator


class ParameterError(UsageError):
    """Raised when ``--param`` values do not validate against the pipeline's model."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class RunExistsError(UsageError):
    """Raised when a new run is started with a run id the log already has."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run id {run_id!r} is already used: pick another --run-id, or, if that run has not ended, "
            f"continue it with 'ledgerflow resume {run_id}'"
        )
        self.run_id = run_id


class UnfinishedIncrementalRunError(UsageError):
    """Raised when a new run would read rows that an unfinished run of the same pipeline already read."""

    def __init__(self, run_id: str, pipeline: str, status: str, sources: Iterable[str]) -> None:
        self.unfinished_run_id = run_id
        self.sources = tuple(sources)
        super().__init__(
            f"run {run_id!r} of pipeline {pipeline!r} is {status} and has read past the watermark of "
            f"{', '.join(self.sources)}; a new run would read and load those rows again: finish it with "
            f"'ledgerflow resume {run_id}' or end it with 'ledgerflow cancel {run_id}' first"
        )


class CodeChangedError(UsageError):
    """Raised when a run is continued with pipeline code that differs from its start."""

    def __init__(self, run_id: str, changed: Iterable[str]) -> None:
        self.changed_nodes = tuple(changed)
        names = ", ".join(self.changed_nodes) or "the graph"
        super().__init__(
            f"the code of run {run_id!r} changed since it started ({names}): restore the original "
            "code, or pass --allow-changed-code to continue with the new code (the choice is recorded)"
        )
        self.run_id = run_id


class LeaseHeldError(LedgerflowError):
    """Raised when another executor holds a run's lease."""

    exit_code = 7

    def __init__(self, run_id: str, holder: str) -> None:
        super().__init__(
            f"run {run_id!r} is held by another executor ({holder}): wait for it to finish, "
            f"or stop that process and run 'ledgerflow resume {run_id}'"
        )
        self.run_id = run_id
        self.holder = holder


class DecisionRefusedError(LedgerflowError):
    """Raised when an approval, rejection or cancellation does not apply to the run's state."""

    exit_code = 4

    def __init__(self, message: str, *, run_id: str, status: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class CheckpointCorruptError(LedgerflowError):
    """Raised in a task when an input checkpoint is missing or its SHA-256 does not match."""

    def __init__(self, message: str, *, uri: str, node: str, partition: str, reason: str,
                 actual_sha256: str | None) -> None:
        super().__init__(message)
        self.uri = uri
        self.node = node
        self.partition = partition
        self.reason = reason
        self.actual_sha256 = actual_sha256


class ConfigurationError(UsageError):
    """Raised when the home, store, checkpoint location or cluster settings cannot work together."""


class SchemaMismatchError(UsageError):
    """Raised before a load writes any row when the target's columns do not fit the rows.

    ``column`` is the first column that differs, ``expected`` the type the
    rows need and ``found`` the type in the target (None: the column is missing).
    """

    def __init__(self, *, target: str, column: str, expected: str, found: str | None) -> None:
        if found is None:
            message = (f"target {target} has no column {column!r}, which the rows have as {expected}: "
                       "add the column to the target, or leave it out in the load node")
        else:
            message = (f"target {target} has column {column!r} as {found}, but the rows have it as {expected}: "
                       f"drop or alter the target to match, or cast {column!r} to {found} in the load node")
        super().__init__(message)
        self.target = target
        self.column = column
        self.expected = expected
        self.found = found
