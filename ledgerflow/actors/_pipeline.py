"""Pipeline definitions: nodes, dependencies, partitions, retries and routes.

A node's inputs are named by its function's parameters, so the graph shows
in the signatures::

    pipeline = lf.Pipeline("flights", params=FlightParams)

    @pipeline.extract(partitions=range(1, 13))
    def flights(partition: int) -> pa.Table: ...

    @pipeline.transform(partitioned_like="flights")
    def enriched(flights: pa.Table, weather: pa.Table) -> pa.Table: ...

Two parameter names are reserved: ``partition`` receives the partition key
and ``context`` receives a :class:`~ledgerflow.actors.Context`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ledgerflow.actors._context import Secret
from ledgerflow.actors._errors import ParameterError, PipelineDefinitionError
from ledgerflow.actors._parquet_sink import ParquetDataset
from ledgerflow.actors._postgres_sink import PostgresTable
from ledgerflow.actors._sql import display_url
from ledgerflow.actors._policy import PolicyRule, resolve_policies
from ledgerflow.events import NodeSpec, RouteSpec

KINDS = ("extract", "transform", "validate", "approval", "load", "step")
RESERVED_PARAMETERS = ("partition", "context")
REJECTED_SUFFIX = ".rejected"
WHOLE = ""  # the partition key of a node that is not partitioned


class Retry(BaseModel):
    """A node's retry policy: attempts in all, exponential backoff and a per-attempt timeout."""

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(default=1, ge=1)
    backoff_s: float = Field(default=1.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    max_backoff_s: float = Field(default=60.0, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)

    def delay(self, failed_attempt: int) -> float:
        """Return the seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        return min(self.backoff_s * self.multiplier ** (failed_attempt - 1), self.max_backoff_s)


class NoParams(BaseModel):
    """The parameter model of a pipeline that declares none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Validation:
    """The result of a validate node: the rows that pass, the rows rejected (with a
    ``reason`` column) and a JSON-compatible report for reviewers."""

    valid: pa.Table
    rejected: pa.Table
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_reasons(cls, table: pa.Table, reasons: pa.Array | pa.ChunkedArray,
                     report: dict[str, Any] | None = None) -> Validation:
        """Split ``table`` by ``reasons``: a null reason keeps the row, any string rejects it."""
        import pyarrow.compute as pc

        keep = pc.is_null(reasons)
        valid = table.filter(keep)
        rejected = table.filter(pc.invert(keep)).append_column(
            "reason", pc.filter(reasons, pc.invert(keep)).cast(pa.string())
        )
        counts: dict[str, int] = {}
        for item in pc.value_counts(pc.drop_null(reasons)).to_pylist():
            counts[str(item["values"])] = int(item["counts"])
        base = {"rows_in": table.num_rows, "valid": valid.num_rows, "rejected": rejected.num_rows,
                "rejected_by_reason": counts}
        base.update(report or {})
        return cls(valid=valid, rejected=rejected, report=base)


@dataclass(frozen=True)
class SqliteTable:
    """A load target: a table in a SQLite database, loaded at most once per run and partition.

    Args:
        table: The table name; created from the first batch's schema if missing.
        database: A file path, a function of the run's parameters returning
            one, or None for ``<home>/warehouse.db``.
        key: Columns that identify a row. With a key, a row that is already
            in the table (from another run) is replaced, not duplicated.
    """

    table: str
    database: str | Callable[[Any], str | None] | None = None
    key: tuple[str, ...] | None = None


LoadTarget = typing.Union[SqliteTable, PostgresTable, ParquetDataset]
LOAD_TARGETS = (SqliteTable, PostgresTable, ParquetDataset)


@dataclass
class Node:
    """One node of a pipeline graph."""

    name: str
    kind: str
    function: Callable[..., Any] | None
    inputs: dict[str, str]
    after: tuple[str, ...] = ()
    partitions: Iterable[Any] | Callable[[Any], Iterable[Any]] | None = None
    partitioned_like: str | None = None
    retry: Retry = field(default_factory=Retry)
    target: LoadTarget | None = None
    quarantine: str | None = None
    max_rejected_share: float | None = None
    reviewers: tuple[str, ...] | None = None
    four_eyes: bool | Callable[[Any], bool] = False
    takes_partition: bool = False
    takes_context: bool = False

    @property
    def dependencies(self) -> tuple[str, ...]:
        """Names of the nodes this one waits for, inputs first, without duplicates."""
        names = [source.removesuffix(REJECTED_SUFFIX) for source in self.inputs.values()]
        return tuple(dict.fromkeys([*names, *self.after]))

    @property
    def partitioned(self) -> bool:
        return self.partitions is not None or self.partitioned_like is not None


@dataclass(frozen=True)
class Route:
    """A conditional route after ``source`` completes.

    ``when`` receives a :class:`RouteInput`; when it returns true the run
    follows ``to`` and skips ``otherwise``, else the reverse. ``outcome``
    names the run's final status when the condition held (``quarantined``).
    """

    source: str
    name: str
    when: Callable[[RouteInput], bool]
    to: tuple[str, ...]
    otherwise: tuple[str, ...]
    outcome: str | None = None
    describe: Callable[[RouteInput], str] | None = None


@dataclass(frozen=True)
class RouteInput:
    """The input of a route condition: the source's reports per partition and the shared state."""

    source: str
    reports: Mapping[str, Mapping[str, Any]]
    rows: Mapping[str, int]
    shared: Mapping[str, Any]
    params: Any


class Pipeline:
    """A named graph of nodes with explicit dependencies and conditional routes.

    Args:
        name: Shown in run listings and recorded at start.
        params: A pydantic model class for the run's parameters.
        middleware: The pipeline's own middleware members, run inside the default
            chain (logging, redaction, telemetry, policy rules), in the order given.
        policies: Data-handling rules: a list of :class:`~ledgerflow.actors.PolicyRule`
            (or mappings of their fields), or the path of a YAML rule file. A relative
            path is resolved against the directory of the module that creates the pipeline.
        max_in_flight: The maximum number of tasks in flight at once (None: no limit).

    Raises:
        PolicyConfigurationError: A rule or the rule file is invalid.
    """

    def __init__(
        self,
        name: str,
        *,
        params: type[BaseModel] | None = None,
        middleware: Sequence[Any] = (),
        policies: str | os.PathLike[str] | Sequence[Any] | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        self.name = name
        self.params_model: type[BaseModel] = params or NoParams
        self.middleware = list(middleware)
        caller = sys._getframe(1).f_globals.get("__file__")
        self.policies: list[PolicyRule] = resolve_policies(
            policies, base_directory=os.path.dirname(os.path.abspath(caller)) if caller else None)
        self.max_in_flight = max_in_flight
        self.nodes: dict[str, Node] = {}
        self.routes: dict[str, Route] = {}

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, nodes={list(self.nodes)})"

    # Decorators

    def extract(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare an extract node; ``partitions=`` fans it out, one task per key."""
        return self._decorate("extract", function, options)

    def transform(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare a transform node; ``partitioned_like=NODE`` runs one task per partition of NODE."""
        return self._decorate("transform", function, options)

    def validate(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare a validate node returning :class:`Validation`.

        ``max_rejected_share`` (0 to 1) routes the run to ``quarantine`` (a
        node name, or None to end there) when any partition rejects more.
        """
        return self._decorate("validate", function, options)

    def load(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare a load node; ``target=`` is where its rows go, once per partition."""
        return self._decorate("load", function, options)

    def step(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare a plain step, for work that fits no other kind."""
        return self._decorate("step", function, options)

    def approval(self, name: str, *, after: str | Sequence[str], reviewers: Sequence[str] | None = None,
                 four_eyes: bool | Callable[[Any], bool] = False) -> None:
        """Declare an approval gate: the run pauses after ``after`` until someone decides.

        Args:
            reviewers: The only reviewers allowed to decide (None: anyone).
            four_eyes: Refuse a reviewer who is the run's submitter; a function of the
                run's parameters decides it per run.
        """
        self._add(Node(
            name=name, kind="approval", function=None, inputs={}, after=_names(after),
            reviewers=tuple(reviewers) if reviewers is not None else None, four_eyes=four_eyes,
        ))

    def route(self, source: str, *, when: Callable[[RouteInput], bool], to: str | Sequence[str],
              otherwise: str | Sequence[str] = (), name: str = "route", outcome: str | None = None) -> None:
        """Route the run after ``source``: follow ``to`` when ``when`` holds, else ``otherwise``.

        The condition is evaluated once; the decision is recorded and never
        evaluated again, not even on resume.
        """
        if source in self.routes:
            raise PipelineDefinitionError(f"node {source!r} already has a route", node=source)
        self.routes[source] = Route(source=source, name=name, when=when, to=_names(to),
                                    otherwise=_names(otherwise), outcome=outcome)

    def _decorate(self, kind: str, function: Callable[..., Any] | None, options: dict[str, Any]) -> Any:
        if function is not None:
            self._add(self._make_node(kind, function, options))
            return function

        def register(inner: Callable[..., Any]) -> Callable[..., Any]:
            self._add(self._make_node(kind, inner, options))
            return inner

        return register

    def _make_node(self, kind: str, function: Callable[..., Any], options: dict[str, Any]) -> Node:
        known = {"name", "partitions", "partitioned_like", "after", "retry", "inputs", "target",
                 "quarantine", "max_rejected_share"}
        unknown = set(options) - known
        name = options.get("name", function.__name__)
        if unknown:
            raise PipelineDefinitionError(
                f"node {name!r} got unknown options {sorted(unknown)}: use {sorted(known)}", node=name
            )
        signature = inspect.signature(function)
        overrides = dict(options.get("inputs") or {})
        inputs: dict[str, str] = {}
        for parameter in signature.parameters:
            if parameter in RESERVED_PARAMETERS:
                continue
            inputs[parameter] = overrides.pop(parameter, parameter)
        if overrides:
            raise PipelineDefinitionError(
                f"node {name!r} maps inputs {sorted(overrides)} that are not parameters of {function.__name__}",
                node=name,
            )
        retry = options.get("retry") or Retry()
        if isinstance(retry, Mapping):
            retry = Retry(**retry)
        if kind == "load" and not isinstance(options.get("target"), LOAD_TARGETS):
            raise PipelineDefinitionError(
                f"load node {name!r} has target={options.get('target')!r}: use lf.SqliteTable(...), "
                "lf.PostgresTable(...) or lf.ParquetDataset(...)", node=name
            )
        share = options.get("max_rejected_share")
        if share is not None and not 0 <= share <= 1:
            raise PipelineDefinitionError(
                f"node {name!r} has max_rejected_share={share}: use a share between 0 and 1", node=name
            )
        partitions = options.get("partitions")
        if partitions is not None and not callable(partitions):
            partitions = list(partitions)
        return Node(
            name=name, kind=kind, function=function, inputs=inputs, after=_names(options.get("after", ())),
            partitions=partitions, partitioned_like=options.get("partitioned_like"), retry=retry,
            target=options.get("target"), quarantine=options.get("quarantine"),
            max_rejected_share=share,
            takes_partition="partition" in signature.parameters,
            takes_context="context" in signature.parameters,
        )

    def _add(self, node: Node) -> None:
        if node.name in self.nodes:
            raise PipelineDefinitionError(f"duplicate node name {node.name!r} in pipeline {self.name!r}",
                                          node=node.name)
        if not node.name.isidentifier():
            raise PipelineDefinitionError(
                f"invalid node name {node.name!r}: use a Python identifier", node=node.name
            )
        self.nodes[node.name] = node

    # Checks

    def check(self) -> list[str]:
        """Check the graph and return the nodes in a topological order.

        Raises:
            PipelineDefinitionError: Naming the node with an unknown dependency,
                a cycle, a bad ``partitioned_like`` or a route to a missing node.
        """
        for node in self.nodes.values():
            for parameter, source in node.inputs.items():
                base = source.removesuffix(REJECTED_SUFFIX)
                if base not in self.nodes:
                    raise PipelineDefinitionError(
                        f"node {node.name!r} takes input {parameter!r} from {base!r}, but pipeline "
                        f"{self.name!r} has no node {base!r}", node=node.name,
                    )
                if source.endswith(REJECTED_SUFFIX) and self.nodes[base].kind != "validate":
                    raise PipelineDefinitionError(
                        f"node {node.name!r} reads {source!r}, but only validate nodes have rejected rows",
                        node=node.name,
                    )
            for name in node.after:
                if name not in self.nodes:
                    raise PipelineDefinitionError(
                        f"node {node.name!r} runs after {name!r}, but pipeline {self.name!r} has no node {name!r}",
                        node=node.name,
                    )
            self._check_partitioning(node)
            if node.quarantine is not None and node.quarantine not in self.nodes:
                raise PipelineDefinitionError(
                    f"node {node.name!r} routes to quarantine node {node.quarantine!r}, which does not exist",
                    node=node.name,
                )
        order = self._topological_order()
        for rule in self.policies:
            for name in rule.nodes or ():
                if name not in self.nodes:
                    raise PipelineDefinitionError(
                        f"policy rule {rule.name!r} checks node {name!r}, but pipeline {self.name!r} has no "
                        f"node {name!r}", node=name,
                    )
        for route in self.all_routes().values():
            for name in (*route.to, *route.otherwise):
                if name not in self.nodes:
                    raise PipelineDefinitionError(
                        f"route {route.name!r} after {route.source!r} goes to {name!r}, which does not exist",
                        node=route.source,
                    )
            if route.source not in self.nodes:
                raise PipelineDefinitionError(f"route {route.name!r} starts at missing node {route.source!r}",
                                              node=route.source)
        return order

    def _check_partitioning(self, node: Node) -> None:
        if node.partitions is not None and node.partitioned_like is not None:
            raise PipelineDefinitionError(
                f"node {node.name!r} sets both partitions and partitioned_like: keep one", node=node.name
            )
        like = node.partitioned_like
        if like is None:
            return
        if like not in self.nodes:
            raise PipelineDefinitionError(
                f"node {node.name!r} is partitioned like {like!r}, which does not exist", node=node.name
            )
        if not self.nodes[like].partitioned:
            raise PipelineDefinitionError(
                f"node {node.name!r} is partitioned like {like!r}, which is not partitioned", node=node.name
            )

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        marks: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> None:
            if marks.get(name) == "done":
                return
            if marks.get(name) == "active":
                cycle = " -> ".join([*path[path.index(name):], name])
                raise PipelineDefinitionError(f"cycle in pipeline {self.name!r}: {cycle}", node=name)
            marks[name] = "active"
            for dependency in self.nodes[name].dependencies:
                visit(dependency, [*path, name])
            marks[name] = "done"
            order.append(name)

        for name in self.nodes:
            visit(name, [])
        return order

    def all_routes(self) -> dict[str, Route]:
        """Return the declared routes plus the quarantine routes of validate nodes."""
        routes = dict(self.routes)
        for node in self.nodes.values():
            if node.kind == "validate" and node.max_rejected_share is not None and node.name not in routes:
                routes[node.name] = _quarantine_route(self, node)
        return routes

    def policies_for(self, name: str) -> list[PolicyRule]:
        """Return the policy rules that check the output of node ``name``.

        A rule without ``nodes`` checks every node that a load node reads from.
        """
        return [rule for rule in self.policies if name in self._policy_scope(rule)]

    def _policy_scope(self, rule: PolicyRule) -> set[str]:
        if rule.nodes is not None:
            return set(rule.nodes)
        return {source.removesuffix(REJECTED_SUFFIX) for node in self.nodes.values() if node.kind == "load"
                for source in node.inputs.values()}

    def children(self, name: str) -> list[str]:
        """Return the nodes that depend directly on ``name``."""
        return [node.name for node in self.nodes.values() if name in node.dependencies]

    def descendants(self, names: Iterable[str]) -> set[str]:
        """Return ``names`` and every node downstream of them."""
        found: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name in found:
                continue
            found.add(name)
            pending.extend(self.children(name))
        return found

    # Parameters, partitions and fingerprints

    def parse_params(self, raw: Mapping[str, Any]) -> BaseModel:
        """Validate raw parameter values (strings from ``--param`` or Python values).

        Raises:
            ParameterError: Naming the first invalid or unknown parameter.
        """
        fields = self.params_model.model_fields
        unknown = [key for key in raw if key not in fields]
        if unknown:
            known = ", ".join(fields) or "none"
            raise ParameterError(
                f"unknown parameter {unknown[0]!r} for pipeline {self.name!r}: known parameters are {known}",
                parameter=unknown[0],
            )
        values = {key: _coerce_text(value, fields[key].annotation) for key, value in raw.items()}
        try:
            return self.params_model.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            location = ".".join(str(part) for part in first["loc"]) or "parameters"
            name = str(first["loc"][0]) if first["loc"] else ""
            if first["type"] == "missing":
                raise ParameterError(f"missing required parameter {location!r} for pipeline {self.name!r}",
                                     parameter=location) from err
            if name in fields and _is_secret(fields[name].annotation):
                # The given text may be the secret itself, so neither the message
                # nor the chained pydantic error (which quotes the input) may show it.
                raise ParameterError(f"invalid secret parameter {location}: {first['msg']}",
                                     parameter=location) from None
            given = raw.get(name) if first["loc"] else None
            raise ParameterError(
                f"invalid parameter {location}={given!r}: {first['msg']}", parameter=location
            ) from err

    def resolve_partitions(self, params: BaseModel) -> dict[str, list[Any] | None]:
        """Return each node's partition values for these parameters (None: not partitioned)."""
        resolved: dict[str, list[Any] | None] = {}
        for name in self._topological_order():
            node = self.nodes[name]
            if node.partitions is not None:
                values = node.partitions(params) if callable(node.partitions) else node.partitions
                values = list(values)
                keys = [partition_key(value) for value in values]
                if len(set(keys)) != len(keys) or not values:
                    raise PipelineDefinitionError(
                        f"node {name!r} has {'no' if not values else 'duplicate'} partition keys: {keys}",
                        node=name,
                    )
                resolved[name] = values
            elif node.partitioned_like is not None:
                resolved[name] = resolved[node.partitioned_like]
            else:
                resolved[name] = None
        return resolved

    def fingerprints(self) -> tuple[str, dict[str, str]]:
        """Return the pipeline's fingerprint and each node's: graph shape plus source code."""
        per_node: dict[str, str] = {}
        for name, node in self.nodes.items():
            shape = {
                "kind": node.kind, "inputs": node.inputs, "after": list(node.after),
                "partitioned_like": node.partitioned_like, "quarantine": node.quarantine,
                "max_rejected_share": node.max_rejected_share, "target": _target_shape(node.target),
                "reviewers": node.reviewers,
                "four_eyes": _source_of(node.four_eyes) if callable(node.four_eyes) else node.four_eyes,
                "source": _source_of(node.function),
            }
            per_node[name] = _sha256_json(shape)
        routes = {name: [route.name, route.to, route.otherwise, route.outcome, _source_of(route.when)]
                  for name, route in sorted(self.routes.items())}
        shape: dict[str, Any] = {"nodes": per_node, "routes": routes}
        if self.policies:
            # Only pipelines with rules include them, so fingerprints of older runs stay the same.
            shape["policies"] = [rule.model_dump(mode="json") for rule in self.policies]
        overall = _sha256_json(shape)
        return overall, per_node

    def node_specs(self, partitions: Mapping[str, list[Any] | None]) -> tuple[NodeSpec, ...]:
        _, per_node = self.fingerprints()
        specs = []
        for name in self.check():
            node = self.nodes[name]
            values = partitions.get(name)
            specs.append(NodeSpec(
                name=name, kind=node.kind, inputs=node.inputs, after=node.after,
                partitions=tuple(partition_key(value) for value in values) if values is not None else None,
                fingerprint=per_node[name],
            ))
        return tuple(specs)

    def route_specs(self) -> tuple[RouteSpec, ...]:
        return tuple(
            RouteSpec(source=route.source, name=route.name, to=route.to, otherwise=route.otherwise,
                      outcome=route.outcome)
            for route in self.all_routes().values()
        )


def partition_key(value: Any) -> str:
    """Return the string key a partition value is recorded and checkpointed under."""
    text = str(value)
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise PipelineDefinitionError(f"invalid partition value {value!r}: its text must be a file name")
    return text


def changed_nodes(recorded: Sequence[NodeSpec], current: Mapping[str, str]) -> list[str]:
    """Return the nodes whose fingerprint differs, plus nodes added or removed."""
    before = {spec.name: spec.fingerprint for spec in recorded}
    names = sorted(set(before) | set(current))
    return [name for name in names if before.get(name) != current.get(name)]


def _quarantine_route(pipeline: Pipeline, node: Node) -> Route:
    limit = node.max_rejected_share or 0.0
    quarantine = (node.quarantine,) if node.quarantine else ()
    otherwise = tuple(child for child in pipeline.children(node.name) if child not in quarantine)

    def exceeded(data: RouteInput) -> bool:
        return any(_rejected_share(report) > limit for report in data.reports.values())

    return Route(source=node.name, name="quarantine", when=exceeded, to=quarantine, otherwise=otherwise,
                 outcome="quarantined")


def _rejected_share(report: Mapping[str, Any]) -> float:
    rows_in = report.get("rows_in") or 0
    return (report.get("rejected") or 0) / rows_in if rows_in else 0.0


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _is_secret(annotation: Any) -> bool:
    """Return True when a parameter's annotation is ``Secret`` or a union containing it."""
    return annotation is Secret or Secret in typing.get_args(annotation)


def _coerce_text(value: Any, annotation: Any) -> Any:
    """Split ``a,b,c`` into a list for list-typed parameters given as text."""
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        origin = next((typing.get_origin(arg) for arg in typing.get_args(annotation)
                       if typing.get_origin(arg) in (list, tuple, set, frozenset)), None)
    if origin in (list, tuple, set, frozenset):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _target_shape(target: LoadTarget | None) -> Any:
    """Describe a load target by value: a function's repr contains its address, which changes every import."""
    if target is None:
        return None
    if isinstance(target, PostgresTable):
        return {"postgres_table": target.table, "schema": target.schema, "url": display_url(target.url),
                "mode": target.mode, "partition_column": target.partition_column}
    if isinstance(target, ParquetDataset):
        return {"parquet_dataset": target.uri}
    database = target.database
    return {"table": target.table, "key": target.key,
            "database": _source_of(database) if callable(database) else database}


def _source_of(function: Callable[..., Any] | None) -> str:
    if function is None:
        return ""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        code = getattr(function, "__code__", None)
        return code.co_code.hex() if code is not None else repr(function)


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
