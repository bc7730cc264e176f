"""Data-handling policy rules: declared in Python or a YAML file, checked on the data a node hands on.

A rule names the columns or rows it checks and its action:

- ``personal`` columns (personal data such as identifiers) must be masked
  or hashed before they reach a load. ``mask`` hashes them to SHA-256 hex,
  or to HMAC-SHA-256 hex keyed by the environment variable ``key_env``.
  ``block`` fails the run if an unmasked value would be handed on.
- ``forbidden`` columns may not reach a target. ``mask`` drops the column;
  ``block`` fails the run.
- ``allowed_values`` keeps rows whose ``column`` is in ``allowed``.
  ``quarantine`` moves other rows (and nulls, unless ``allow_null``) to the
  checkpoint port ``policy_quarantine``; ``block`` fails the run.

By default a rule checks the output of every node that a load node reads
from, just before it is checkpointed and handed on; ``nodes`` names other
nodes instead. Each finding is a ``PolicyViolated`` event recorded with the
partition's completion, so a resumed run never decides again for a
partition that completed.

A YAML file holds a list under ``rules``::

    rules:
      - name: hash-tail-numbers
        kind: personal
        columns: [tailnum]
        action: mask
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ledgerflow.actors._context import Attempt
from ledgerflow.actors._errors import PipelineDefinitionError
from ledgerflow.events import MASK, PolicyViolated

logger = structlog.get_logger("ledgerflow.policy")

#: The checkpoint port of rows that a quarantine rule took out of a node's output.
QUARANTINE_PORT = "policy_quarantine"
#: The error type of a run failed by a blocking rule.
BLOCKED_ERROR_TYPE = "PolicyBlocked"

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ACTIONS = {
    "personal": ("mask", "block"),
    "forbidden": ("mask", "block"),
    "allowed_values": ("quarantine", "block"),
}


class PolicyRule(BaseModel):
    """One declarative data-handling rule; see the module's documentation for the kinds and actions.

    Attributes:
        name: Names the rule in findings, errors and ``ledgerflow audit``.
        kind: ``personal``, ``forbidden`` or ``allowed_values``.
        action: ``mask``, ``block`` or ``quarantine`` (which ones a kind takes is checked).
        columns: The columns of a ``personal`` or ``forbidden`` rule.
        column: The column of an ``allowed_values`` rule.
        allowed: The values an ``allowed_values`` rule keeps.
        allow_null: Whether an ``allowed_values`` rule keeps nulls.
        key_env: An environment variable holding the key of a keyed hash
            (HMAC-SHA-256) for ``personal`` masks; unset means plain SHA-256.
        nodes: The nodes whose output the rule checks; None means every node that a load reads from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["personal", "forbidden", "allowed_values"]
    action: Literal["block", "mask", "quarantine"]
    columns: tuple[str, ...] = ()
    column: str | None = None
    allowed: tuple[Any, ...] | None = None
    allow_null: bool = False
    key_env: str | None = None
    nodes: tuple[str, ...] | None = None
    description: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyRule:
        if not _RULE_NAME.match(self.name):
            raise ValueError(f"invalid rule name {self.name!r}: use letters, digits, '.', '_' or '-'")
        if self.action not in _ACTIONS[self.kind]:
            raise ValueError(f"a {self.kind} rule takes action {' or '.join(_ACTIONS[self.kind])}, "
                             f"not {self.action!r}")
        if self.kind in ("personal", "forbidden") and not self.columns:
            raise ValueError(f"a {self.kind} rule needs columns: [NAME, ...]")
        if self.kind == "allowed_values" and (self.column is None or self.allowed is None):
            raise ValueError("an allowed_values rule needs column: NAME and allowed: [VALUE, ...]")
        if self.key_env is not None and self.kind != "personal":
            raise ValueError("key_env applies to personal rules only")
        return self

    def check(self, table: pa.Table, *, port: str) -> Finding | None:
        """Check one table a node hands on; return the finding with the table to hand on instead, or None."""
        if self.kind == "personal":
            return self._check_personal(table, port)
        if self.kind == "forbidden":
            return self._check_forbidden(table, port)
        return self._check_allowed(table, port)

    def _check_personal(self, table: pa.Table, port: str) -> Finding | None:
        present = [name for name in self.columns if name in table.column_names]
        counts = {name: _unmasked_count(table.column(name)) for name in present}
        affected = [name for name in present if counts[name]]
        if not affected:
            return None
        rows = max(counts[name] for name in affected)
        if self.action == "block":
            return Finding(self, table, rows, tuple(affected),
                           f"unmasked personal data in {_join(affected)} of {port} ({rows} rows)")
        key = self._hash_key()
        for name in affected:
            index = table.column_names.index(name)
            table = table.set_column(index, pa.field(name, pa.string()), _hash_column(table.column(name), key))
        method = "HMAC-SHA-256" if key is not None else "SHA-256"
        return Finding(self, table, rows, tuple(affected),
                       f"hashed {_join(affected)} of {port} with {method} ({rows} rows)")

    def _check_forbidden(self, table: pa.Table, port: str) -> Finding | None:
        present = tuple(name for name in self.columns if name in table.column_names)
        if not present:
            return None
        if self.action == "block":
            return Finding(self, table, table.num_rows, present,
                           f"forbidden {_join(present)} in {port} ({table.num_rows} rows)")
        return Finding(self, table.drop_columns(list(present)), table.num_rows, present,
                       f"dropped forbidden {_join(present)} from {port} ({table.num_rows} rows)")

    def _check_allowed(self, table: pa.Table, port: str) -> Finding | None:
        assert self.column is not None and self.allowed is not None
        if self.column not in table.column_names:
            return None
        values = table.column(self.column)
        allowed = pa.array(list(self.allowed), type=values.type) if self.allowed else pa.array([], values.type)
        keep = pc.is_in(values, value_set=allowed)
        if self.allow_null:
            keep = pc.or_kleene(keep, pc.is_null(values))
        keep = pc.fill_null(keep, False)
        offending = table.num_rows - pc.sum(keep).as_py() if table.num_rows else 0
        if not offending:
            return None
        listed = ", ".join(str(value) for value in self.allowed)
        if self.action == "block":
            return Finding(self, table, offending, (self.column,),
                           f"{offending} rows of {port} have {self.column} outside [{listed}]")
        quarantined = table.filter(pc.invert(keep))
        quarantined = quarantined.append_column(
            "reason", pa.array([f"policy {self.name}"] * quarantined.num_rows, pa.string()))
        return Finding(self, table.filter(keep), offending, (self.column,),
                       f"quarantined {offending} rows of {port} with {self.column} outside [{listed}]",
                       quarantined=quarantined)

    def _hash_key(self) -> bytes | None:
        if self.key_env is None:
            return None
        value = os.environ.get(self.key_env)
        if not value:
            raise PolicyConfigurationError(
                f"policy rule {self.name!r} hashes with the key in ${self.key_env}, which is not set on this "
                "worker: set it in the environment of the process that starts Ray"
            )
        return value.encode("utf-8")


class PolicyConfigurationError(PipelineDefinitionError):
    """A policy rule or rule file is invalid, or a rule cannot run as configured."""


class Finding:
    """A rule's result on one table: the table to hand on, the rows affected and a description."""

    def __init__(self, rule: PolicyRule, table: pa.Table, rows: int, columns: tuple[str, ...], detail: str,
                 *, quarantined: pa.Table | None = None) -> None:
        self.rule = rule
        self.table = table
        self.rows = rows
        self.columns = columns
        self.detail = detail
        self.quarantined = quarantined


class PolicyFile(BaseModel):
    """The top level of a YAML rule file."""

    model_config = ConfigDict(extra="forbid")

    rules: list[dict[str, Any]]


def load_policy(path: str | os.PathLike[str]) -> list[PolicyRule]:
    """Read and validate a YAML rule file.

    Raises:
        PolicyConfigurationError: The file is missing, is not YAML, or a rule
            is invalid; the message names the rule and the field.
    """
    location = str(path)
    try:
        text = Path(location).read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyConfigurationError(f"cannot read policy file {location}: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyConfigurationError(f"invalid policy file {location}: not valid YAML ({err})") from err
    try:
        document = PolicyFile.model_validate(data)
    except ValidationError as err:
        raise PolicyConfigurationError(
            f"invalid policy file {location}: {_first_error(err)}; expected a mapping with a list under 'rules'"
        ) from None
    return parse_rules(document.rules, source=location)


def parse_rules(items: Iterable[Any], *, source: str = "policy") -> list[PolicyRule]:
    """Validate rules given as mappings or :class:`PolicyRule` objects; names must be unique.

    Raises:
        PolicyConfigurationError: Naming the rule (by name, else by position) and the invalid field.
    """
    rules: list[PolicyRule] = []
    for position, item in enumerate(items):
        if isinstance(item, PolicyRule):
            rules.append(item)
            continue
        label = f"rule {item.get('name')!r} (rules[{position}])" if isinstance(item, dict) and item.get("name") \
            else f"rules[{position}]"
        try:
            rules.append(PolicyRule.model_validate(item))
        except ValidationError as err:
            raise PolicyConfigurationError(f"invalid {label} in {source}: {_first_error(err)}") from None
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PolicyConfigurationError(f"duplicate policy rule name {duplicates[0]!r} in {source}: "
                                       "give each rule its own name")
    return rules


def resolve_policies(policies: str | os.PathLike[str] | Sequence[Any] | None, *,
                     base_directory: str | None = None) -> list[PolicyRule]:
    """Return the rules of a pipeline's ``policies=`` argument: a YAML file path or a list of rules.

    A relative path is resolved against ``base_directory`` when given, else the current directory.
    """
    if policies is None:
        return []
    if isinstance(policies, (str, os.PathLike)):
        path = Path(policies)
        if not path.is_absolute() and base_directory is not None:
            path = Path(base_directory) / path
        return load_policy(path)
    return parse_rules(policies, source="the pipeline's policies")


class PolicyMiddleware:
    """Applies the rules that cover a node to every table it hands on, and records each finding.

    Args:
        rules: The rules that check this node's output.
    """

    def __init__(self, rules: Sequence[PolicyRule]) -> None:
        self.rules = list(rules)

    def after(self, attempt: Attempt, result: Any) -> Any:
        if not self.rules:
            return result
        # Imported here because _pipeline imports this module for PolicyRule.
        from ledgerflow.actors._pipeline import Validation
        from ledgerflow.actors._tasks import to_table

        if result is None:
            return None
        if isinstance(result, Validation):
            valid = self._apply(attempt, to_table(result.valid, node=attempt.node), port="output", rows=True)
            rejected = self._apply(attempt, to_table(result.rejected, node=attempt.node), port="rejected",
                                   rows=False)
            return Validation(valid=valid, rejected=rejected, report=result.report)
        return self._apply(attempt, to_table(result, node=attempt.node), port="output", rows=True)

    def _apply(self, attempt: Attempt, table: pa.Table, *, port: str, rows: bool) -> pa.Table:
        for rule in self.rules:
            if rule.kind == "allowed_values" and not rows:
                # Rejected rows are quarantined already; row rules check the rows handed on.
                continue
            finding = rule.check(table, port=port)
            if finding is None:
                continue
            attempt.record(PolicyViolated(
                node=attempt.node, partition=attempt.partition or None, rule=rule.name, action=rule.action,
                detail=finding.detail, columns=finding.columns, rows=finding.rows,
            ))
            attempt.logger.warning("policy rule matched", rule=rule.name, action=rule.action, port=port,
                                   rows=finding.rows)
            if rule.action == "block":
                attempt.stop(f"policy rule {rule.name!r} blocked the run at node {attempt.node!r}"
                             + (f" partition {attempt.partition!r}" if attempt.partition else "")
                             + f": {finding.detail}", error_type=BLOCKED_ERROR_TYPE)
            table = finding.table
            if finding.quarantined is not None:
                previous = attempt.outputs.get(QUARANTINE_PORT)
                attempt.outputs[QUARANTINE_PORT] = finding.quarantined if previous is None else \
                    pa.concat_tables([previous, finding.quarantined], promote_options="default")
        return table


def hash_value(value: str, key: bytes | None = None) -> str:
    """Return the SHA-256 hex digest of ``value`` (UTF-8), or its HMAC-SHA-256 with ``key``."""
    data = value.encode("utf-8")
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _hash_column(column: pa.ChunkedArray, key: bytes | None) -> pa.ChunkedArray:
    """Hash each distinct value once (identifiers repeat), keeping nulls and hashed values as they are."""
    text = pc.cast(column, pa.string()) if column.type != pa.string() else column
    encoded = pc.dictionary_encode(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
    replaced = [value if value is None or _is_masked(value) else hash_value(value, key)
                for value in encoded.dictionary.to_pylist()]
    return pa.chunked_array([pc.take(pa.array(replaced, pa.string()), encoded.indices)], pa.string())


def _is_masked(value: str) -> bool:
    return value == MASK or bool(_HEX_DIGEST.match(value))


def _unmasked_count(column: pa.ChunkedArray) -> int:
    """Return how many non-null values are neither a SHA-256 hex digest nor the mask text."""
    text = pc.cast(column, pa.string()) if column.type != pa.string() else column
    present = pc.drop_null(text)
    if len(present) == 0:
        return 0
    hashed = pc.match_substring_regex(present, _HEX_DIGEST.pattern)
    masked = pc.or_(hashed, pc.equal(present, MASK))
    return len(present) - pc.sum(masked).as_py()


def _join(columns: Sequence[str]) -> str:
    return ("column " if len(columns) == 1 else "columns ") + ", ".join(columns)


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"field {location!r}: {message}" if location else message
