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
    Context,
    LoggingMiddleware,
    bound_logger,
    run_with_middleware,
)
from ledgerflow.actors._logging import configure_logging
from ledgerflow.actors._mcp import CallLedger
from ledgerflow.actors._pipeline import Node, Pipeline, Validation
from ledgerflow.actors._sinks import load_into_sqlite
from ledgerflow.events import Manifest


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


def _call_node(pipeline: Pipeline, node: Node, request: TaskRequest, tables: dict[str, pa.Table],
               attempt: Attempt, calls: CallLedger) -> tuple[Any, dict[str, Any]]:
    assert node.function is not None
    arguments: dict[str, Any] = dict(tables)
    recorded: dict[str, Any] = {}
    if node.takes_partition:
        arguments["partition"] = request.partition_value
    if node.takes_context:
        params = pipeline.params_model.model_validate(request.params)
        context = Context(
            run_id=request.run_id, node=request.node, partition=request.partition, attempt=request.attempt,
            params=params, state=dict(request.shared), logger=attempt.logger, mcp=calls,
        )
        recorded = context.recorded
        arguments["context"] = context
    chain = [LoggingMiddleware(), *pipeline.middleware]
    result = run_with_middleware(chain, attempt, lambda: node.function(**arguments))  # type: ignore[misc]
    return result, recorded


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
                      attempt=request.attempt, logger=logger)
    calls = CallLedger(run_id=request.run_id, node=request.node, partition=request.partition,
                       attempt=request.attempt, checkpoint_root=request.checkpoint_root,
                       recorded=request.extra.get("mcp_calls", {}))
    try:
        tables = _gather_inputs(request, live_tables)
        result, facts = _call_node(pipeline, node, request, tables, attempt, calls)
    except Exception as error:
        # The executor records the calls of a failed attempt too; they ride on the error.
        if calls.events:
            error.mcp_calls = list(calls.events)  # type: ignore[attr-defined]
        raise

    store = CheckpointStore(request.checkpoint_root)
    where = {"run_id": request.run_id, "node": request.node, "partition": request.partition,
             "attempt": request.attempt}
    info: dict[str, Any] = {"facts": facts, "report": {}, "extra": {}, "manifest": None, "already_loaded": False,
                            "mcp_calls": list(calls.events)}
    output: pa.Table | None = None

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
        params = pipeline.params_model.model_validate(request.params)
        database = node.target.database
        if callable(database):
            database = database(params)
        database = database or request.warehouse
        rows, already = load_into_sqlite(database, node.target.table, data, run_id=request.run_id,
                                         node=request.node, partition=request.partition, key=node.target.key)
        info["already_loaded"] = already
        info["report"] = {"loaded_rows": rows, "database": database, "table": node.target.table}
    elif result is not None:
        output = to_table(result, node=request.node)
        info["manifest"] = store.write(output, **where)

    info["duration_s"] = time.perf_counter() - started
    logger.debug("partition checkpointed", rows=output.num_rows if output is not None else None)
    return info, output


@ray.remote(max_retries=0)
def sample_checkpoints(manifests: list[tuple[str, str, Manifest]], *, rows: int, checkpoint_root: str,
                       run_id: str, gate: str) -> dict[str, Any]:
    """Read the first rows of the given checkpoints into a sample file for reviewers.

    Returns:
        The schema of each input node and the sample's manifest.
    """
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
    sample = pa.concat_tables(samples) if samples else pa.table({})
    manifest = CheckpointStore(checkpoint_root).write(sample, run_id=run_id, node=gate, partition="",
                                                     attempt=1, port="sample")
    return {"schemas": schemas, "sample": manifest}
