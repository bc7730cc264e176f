"""The stateless Ray tasks that run node attempts and build approval samples.

A task receives its inputs as Arrow tables (object-store references while the
run lives, checkpoint manifests after a resume), runs the node through the
middleware chain, writes its checkpoint and returns the manifest. Ray never
retries a task: the executor owns retries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import ray

from ledgerflow.actors._checkpoints import CheckpointStore, read_checkpoint
from ledgerflow.actors._context import (
    Attempt,
    AttemptStopped,
    Context,
    LoggingMiddleware,
    RedactionMiddleware,
    Secret,
    bound_logger,
    register_run_secrets,
    run_with_middleware,
)
from ledgerflow.actors._logging import configure_logging
from ledgerflow.actors._parquet_sink import ParquetDataset, load_into_parquet
from ledgerflow.actors._pipeline import LoadTarget, Node, Pipeline, Validation
from ledgerflow.actors._postgres_sink import PostgresTable, load_into_postgres
from ledgerflow.actors._policy import PolicyMiddleware
from ledgerflow.actors._telemetry import TelemetryMiddleware
from ledgerflow.actors._mcp import CallLedger
from ledgerflow.actors._sinks import load_into_sqlite
from ledgerflow.events import Manifest, redact_text


@dataclass(frozen=True)
class InputPart:
    """One partition of an input: live (the next positional table) or from its checkpoint."""

    partition: str
    manifest: Manifest | None
    live: bool


@dataclass(frozen=True)
class InputSpec:
    """The source of a node parameter: which node and port, and which of its partitions."""

    parameter: str
    source: str
    port: str
    parts: tuple[InputPart, ...]


@dataclass(frozen=True)
class TaskRequest:
    """Everything a partition attempt needs, without data rows."""

    run_id: str
    node: str
    partition: str
    partition_value: Any
    attempt: int
    params: dict[str, Any]
    shared: dict[str, Any]
    checkpoint_root: str
    warehouse: str
    inputs: tuple[InputSpec, ...] = ()
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)


def to_table(value: Any, *, node: str) -> pa.Table:
    """Convert a node's result (Arrow table, record batch or pandas DataFrame) to an Arrow table."""
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    if isinstance(value, pd.DataFrame):
        return pa.Table.from_pandas(value, preserve_index=False)
    raise TypeError(
        f"node {node!r} returned {type(value).__name__}: return a pyarrow.Table or a pandas DataFrame"
    )


def _gather_inputs(request: TaskRequest, live_tables: tuple[pa.Table, ...]) -> dict[str, pa.Table]:
    tables: dict[str, pa.Table] = {}
    live = iter(live_tables)
    for spec in request.inputs:
        parts = []
        for part in spec.parts:
            if part.live:
                parts.append(next(live))
            else:
                assert part.manifest is not None
                parts.append(read_checkpoint(part.manifest, node=spec.source, partition=part.partition))
        if len(parts) == 1:
            tables[spec.parameter] = parts[0]
        else:
            tables[spec.parameter] = pa.concat_tables(parts, promote_options="default")
    return tables


def default_chain(pipeline: Pipeline, node: Node) -> list[Any]:
    """Return the middleware chain of ``node``'s attempts, outermost first.

    Logging, redaction, telemetry and the policy rules that check the node's
    output come first, then the pipeline's own members. ``after`` hooks run
    in reverse, so the pipeline's members see the node's output first and
    the policy rules check what they hand on.
    """
    return [LoggingMiddleware(), RedactionMiddleware(), TelemetryMiddleware(),
            PolicyMiddleware(pipeline.policies_for(node.name)), *pipeline.middleware]


def _call_node(pipeline: Pipeline, node: Node, request: TaskRequest, tables: dict[str, pa.Table],
               attempt: Attempt, calls: CallLedger) -> tuple[Any, dict[str, Any]]:
    assert node.function is not None
    arguments: dict[str, Any] = dict(tables)
    recorded: dict[str, Any] = {}
    if node.takes_partition:
        arguments["partition"] = request.partition_value
    params = attempt.params
    if node.takes_context:
        context = Context(
            run_id=request.run_id, node=request.node, partition=request.partition, attempt=request.attempt,
            params=params, state=dict(request.shared), logger=attempt.logger, mcp=calls,
        )
        recorded = context.recorded
        arguments["context"] = context
    result = run_with_middleware(default_chain(pipeline, node), attempt,
                                 lambda: node.function(**arguments))  # type: ignore[misc]
    return result, recorded


def _load(pipeline: Pipeline, target: LoadTarget, data: pa.Table, request: TaskRequest
          ) -> tuple[int, bool, dict[str, Any]]:
    """Load one partition into its target; return the rows, whether it was loaded before, and a report."""
    where = {"run_id": request.run_id, "node": request.node, "partition": request.partition}
    if isinstance(target, PostgresTable):
        rows, already = load_into_postgres(target, data, **where)
        return rows, already, {"target": target.describe(), "table": target.table}
    if isinstance(target, ParquetDataset):
        rows, already = load_into_parquet(target, data, **where)
        return rows, already, {"target": target.describe(), "uri": target.uri}
    params = pipeline.params_model.model_validate(request.params)
    database = target.database
    if callable(database):
        database = database(params)
    database = database or request.warehouse
    rows, already = load_into_sqlite(database, target.table, data, key=target.key, **where)
    return rows, already, {"database": database, "table": target.table}


@ray.remote(max_retries=0)
def execute_partition(pipeline: Pipeline, request: TaskRequest, *live_tables: pa.Table) -> tuple[dict[str, Any], Any]:
    """Run one attempt of one partition and checkpoint its output.

    Returns:
        ``(info, table)``: info holds the manifest(s), report, recorded facts
        and timing; table is the output for downstream tasks (None for loads).
    """
    configure_logging(request.log_level)
    started = time.perf_counter()
    node = pipeline.nodes[request.node]
    logger = bound_logger(request.run_id, request.node, request.partition, request.attempt)
    attempt = Attempt(run_id=request.run_id, node=request.node, kind=node.kind, partition=request.partition,
                      attempt=request.attempt, logger=logger,
                      params=pipeline.params_model.model_validate(request.params), telemetry=request.extra)
    calls = CallLedger(run_id=request.run_id, node=request.node, partition=request.partition,
                       attempt=request.attempt, checkpoint_root=request.checkpoint_root,
                       recorded=request.extra.get("mcp_calls", {}))
    info: dict[str, Any] = {"facts": {}, "report": {}, "extra": {}, "manifest": None, "already_loaded": False,
                            "events": attempt.events, "stopped": None, "mcp_calls": []}
    try:
        tables = _gather_inputs(request, live_tables)
        result, facts = _call_node(pipeline, node, request, tables, attempt, calls)
    except AttemptStopped as stopped:
        # A member decided to stop the run: its events and reason are the outcome, not an error to retry.
        info["stopped"] = {"reason": stopped.reason, "error_type": stopped.error_type}
        info["duration_s"] = time.perf_counter() - started
        info["mcp_calls"] = list(calls.events)
        return info, None
    except Exception as error:
        # The executor records the calls of a failed attempt too; they ride on the error.
        if calls.events:
            error.mcp_calls = list(calls.events)  # type: ignore[attr-defined]
        raise
    info["facts"] = facts
    info["mcp_calls"] = list(calls.events)

    store = CheckpointStore(request.checkpoint_root)
    where = {"run_id": request.run_id, "node": request.node, "partition": request.partition,
             "attempt": request.attempt}
    output: pa.Table | None = None
    for port, table in attempt.outputs.items():
        info["extra"][port] = store.write(to_table(table, node=request.node), port=port, **where)

    if node.kind == "validate":
        if not isinstance(result, Validation):
            raise TypeError(f"validate node {request.node!r} returned {type(result).__name__}: "
                            "return lf.Validation (for example lf.Validation.from_reasons(table, reasons))")
        output = to_table(result.valid, node=request.node)
        info["manifest"] = store.write(output, **where)
        info["extra"]["rejected"] = store.write(to_table(result.rejected, node=request.node), port="rejected",
                                                **where)
        info["report"] = dict(result.report)
    elif node.kind == "load":
        assert node.target is not None
        data = to_table(result, node=request.node)
        rows, already, report = _load(pipeline, node.target, data, request)
        info["already_loaded"] = already
        info["report"] = {"loaded_rows": rows, **report}
    elif result is not None:
        output = to_table(result, node=request.node)
        info["manifest"] = store.write(output, **where)

    info["duration_s"] = time.perf_counter() - started
    logger.debug("partition checkpointed", rows=output.num_rows if output is not None else None)
    return info, output


def _redact_strings(table: pa.Table) -> pa.Table:
    """Return ``table`` with secrets masked in its string columns (reviewers' samples leave the run)."""
    for index, column in enumerate(table.columns):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values = [None if value is None else redact_text(value) for value in column.to_pylist()]
            table = table.set_column(index, table.field(index), pa.array(values, column.type))
    return table


@ray.remote(max_retries=0)
def sample_checkpoints(manifests: list[tuple[str, str, Manifest]], *, rows: int, checkpoint_root: str,
                       run_id: str, gate: str, secrets: tuple[Secret, ...] = ()) -> dict[str, Any]:
    """Read the first rows of the given checkpoints into a sample file for reviewers.

    String values are redacted, with the values of ``secrets`` (the run's
    secret parameters, as references) registered first.

    Returns:
        The schema of each input node and the sample's manifest.
    """
    for secret in secrets:
        register_run_secrets([("secret", secret)])
    sample_node = None
    schemas: dict[str, list[tuple[str, str]]] = {}
    samples: list[pa.Table] = []
    collected = 0
    for node, partition, manifest in manifests:
        wants_sample = collected < rows and (not samples or node == sample_node)
        if node in schemas and not wants_sample:
            continue
        table = read_checkpoint(manifest, node=node, partition=partition)
        schemas.setdefault(node, [(field.name, str(field.type)) for field in table.schema])
        if wants_sample and table.num_rows:
            sample_node = node
            piece = table.slice(0, rows - collected)
            samples.append(piece)
            collected += piece.num_rows
    sample = _redact_strings(pa.concat_tables(samples)) if samples else pa.table({})
    manifest = CheckpointStore(checkpoint_root).write(sample, run_id=run_id, node=gate, partition="",
                                                     attempt=1, port="sample")
    return {"schemas": schemas, "sample": manifest}
