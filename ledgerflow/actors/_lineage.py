"""OpenLineage run events built from a run's log (the optional ``lineage`` extra).

Each run emits START when it starts and one terminal event when it ends:
COMPLETE (completed), FAIL (failed) or ABORT (quarantined, rejected or
cancelled). The executor emits it, or the command that rejected or cancelled
a run that no executor held. A resumed run emits no second START.
The client reads the standard OpenLineage configuration (``OPENLINEAGE_URL``,
``OPENLINEAGE_CONFIG``, ``OPENLINEAGE__TRANSPORT__...`` variables); without
any, openlineage-python uses its console transport. The process that starts a
run hands its ``OPENLINEAGE*`` variables to the executor, except those whose
names look like credentials, which must be set where Ray starts.
``OPENLINEAGE_DISABLED=true`` turns emission off.

Datasets: each extract node's output is an input dataset (namespace
``ledgerflow``, name ``PIPELINE.NODE``) and each load target is an output
dataset (namespace ``sqlite://DATABASE``, name the table), both with the
schema facet read from a checkpoint the log points to. An emitter that fails
is logged and never fails the run.

NOTE: a process that crashes between recording the run's end and emitting
its terminal event emits none, and the resumed run, already ended, emits none either.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import structlog

import ledgerflow
from ledgerflow.actors._checkpoints import resolve_filesystem
from ledgerflow.events import Manifest, RunState, is_secret_key, redact_text

logger = structlog.get_logger("ledgerflow.lineage")

PRODUCER = "https://github.com/ledgerflow/ledgerflow"
NAMESPACE = "ledgerflow"
_TERMINAL_TYPES = {"completed": "COMPLETE", "failed": "FAIL", "quarantined": "ABORT", "rejected": "ABORT",
                   "cancelled": "ABORT"}


def lineage_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the ``OPENLINEAGE*`` variables to hand to an executor, without credential-like ones."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items()
            if name.startswith("OPENLINEAGE") and not is_secret_key(name)}


def lineage_run_id(run_id: str) -> str:
    """Return the run's OpenLineage run id, a UUID derived from ``run_id`` (OpenLineage requires UUIDs)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ledgerflow:{run_id}"))


class LineageEmitter:
    """Builds OpenLineage events from a run's state and sends them, logging failures."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        for name, value in settings.items():
            # The executor's own environment wins over what the starting process handed on.
            os.environ.setdefault(name, value)
        self.disabled = os.environ.get("OPENLINEAGE_DISABLED", "").lower() in ("1", "true", "yes")
        self._client: Any = None

    def _get_client(self) -> Any:
        if self._client is None:
            from openlineage.client import OpenLineageClient

            self._client = OpenLineageClient()
        return self._client

    def emit_start(self, state: RunState) -> None:
        self._emit(state, "START")

    def emit_end(self, state: RunState) -> None:
        event_type = _TERMINAL_TYPES.get(state.status)
        if event_type is not None:
            self._emit(state, event_type)

    def _emit(self, state: RunState, event_type: str) -> None:
        if self.disabled:
            return
        try:
            event = build_event(state, event_type)
            self._get_client().emit(event)
        except ImportError:
            logger.debug("lineage not emitted: install ledgerflow[lineage]", run_id=state.run_id)
        except Exception as err:  # noqa: BLE001 - a failing emitter never fails the run
            logger.warning("lineage event not emitted", run_id=state.run_id, event_type=event_type,
                           error_type=type(err).__name__, error=redact_text(str(err)))
        else:
            logger.info("lineage event emitted", run_id=state.run_id, event_type=event_type)


def build_event(state: RunState, event_type: str) -> Any:
    """Return the OpenLineage ``RunEvent`` of ``state`` (datasets only for terminal events)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState as OLState

    inputs: list[Any] = []
    outputs: list[Any] = []
    if event_type != "START":
        for name, fields in _extract_datasets(state).items():
            inputs.append(InputDataset(namespace=NAMESPACE, name=f"{state.pipeline}.{name}",
                                       facets=_schema_facet(fields)))
        for (database, table), fields in _load_datasets(state).items():
            outputs.append(OutputDataset(namespace=f"sqlite://{database}", name=table, facets=_schema_facet(fields)))
    return RunEvent(
        eventType=getattr(OLState, event_type),
        eventTime=(state.ended_at or dt.datetime.now(dt.timezone.utc).isoformat()) if event_type != "START"
        else (state.started_at or dt.datetime.now(dt.timezone.utc).isoformat()),
        run=Run(runId=lineage_run_id(state.run_id)),
        job=Job(namespace=os.environ.get("OPENLINEAGE_NAMESPACE", NAMESPACE), name=state.pipeline),
        producer=f"{PRODUCER}/tree/{ledgerflow.__version__}",
        inputs=inputs,
        outputs=outputs,
    )


def _schema_facet(fields: list[tuple[str, str]]) -> dict[str, Any]:
    from openlineage.client.facet_v2 import schema_dataset

    if not fields:
        return {}
    return {"schema": schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=name, type=kind) for name, kind in fields])}


def _extract_datasets(state: RunState) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for name, node in state.nodes.items():
        if node.spec.kind != "extract":
            continue
        found[name] = _first_schema(part.manifest for part in node.partitions.values())
    return found


def _load_datasets(state: RunState) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Return each load target with the schema of the checkpoint its load node read."""
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in state.nodes.values():
        if node.spec.kind != "load":
            continue
        for part in node.partitions.values():
            database, table = part.report.get("database"), part.report.get("table")
            if not database or not table or (database, table) in found:
                continue
            manifests = []
            for source in node.spec.inputs.values():
                base, _, port = source.partition(".")
                upstream = state.nodes.get(base)
                if upstream is None:
                    continue
                for upstream_part in upstream.partitions.values():
                    manifests.append(upstream_part.extra.get(port) if port else upstream_part.manifest)
            found[(str(database), str(table))] = _first_schema(manifests)
    return found


def _first_schema(manifests: Any) -> list[tuple[str, str]]:
    for manifest in manifests:
        if manifest is None:
            continue
        schema = _read_schema(manifest)
        if schema is not None:
            return [(field.name, str(field.type)) for field in schema]
    return []


def _read_schema(manifest: Manifest) -> pa.Schema | None:
    try:
        filesystem, path = resolve_filesystem(manifest.uri)
        with filesystem.open_input_file(path) as handle:
            return ipc.open_file(handle).schema
    except (OSError, pa.ArrowInvalid) as err:
        logger.debug("checkpoint schema not readable", uri=manifest.uri, error=str(err))
        return None
