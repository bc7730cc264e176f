"""MCP client connectors: a node calls a tool on an MCP server and gets an Arrow table.

A call runs inside the node attempt's Ray task, so the server process lives
as long as the call and dies with the worker. The task returns one
``McpToolCalled`` event per call (on failure, attached to the error), and the
run's executor appends them: only the lease holder writes the log. A call
that returned is stored in the checkpoint store, and a later attempt or a
resumed run reads it there instead of calling the server again.

Transport failures and timeouts fail the attempt, so the node's ``lf.Retry``
policy retries them with its backoff. A result over the size cap is not
retried, and neither is a tool error (``isError``) unless the call sets
``retry_tool_errors``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import structlog

from ledgerflow.actors._checkpoints import CheckpointStore, _read_bytes, resolve_filesystem
from ledgerflow.actors._context import Secret
from ledgerflow.actors._errors import ConfigurationError
from ledgerflow.actors._mcp_errors import (
    McpCallError,
    McpProtocolError,
    McpResultError,
    McpResultTooLargeError,
    McpTimeoutError,
    McpToolError,
    McpTransportError,
)
from ledgerflow.actors._mcp_transport import invoke, scrub, secret_values
from ledgerflow.events import Manifest, McpToolCalled, run_sync

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "IDEMPOTENCY_META_KEY",
    "CallLedger",
    "McpCallError",
    "McpProtocolError",
    "McpResultError",
    "McpResultTooLargeError",
    "McpServer",
    "McpTimeoutError",
    "McpToolError",
    "McpTransportError",
    "arguments_sha256",
    "call_tool",
    "interrupted_call",
    "rows_to_table",
]

logger = structlog.get_logger("ledgerflow.mcp")

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Default cap on one message from a server, in bytes.
DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024
#: The ``_meta`` key that carries the idempotency key of a call that writes.
IDEMPOTENCY_META_KEY = "io.ledgerflow/idempotency-key"


# Server configuration


@dataclass(frozen=True)
class McpServer:
    """An MCP server that nodes call tools on, over stdio or streamable HTTP.

    Build one with :meth:`stdio` or :meth:`http`. Values in ``env`` and
    ``headers`` may be :class:`~ledgerflow.Secret` references: they are read
    in the worker that makes the call and never reach logs or events.
    """

    name: str
    transport: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str | Secret] = field(default_factory=dict)
    inherit_env: bool = True
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str | Secret] = field(default_factory=dict)
    timeout_s: float = 60.0
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ConfigurationError(
                f"invalid MCP server name {self.name!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if self.timeout_s <= 0:
            raise ConfigurationError(f"invalid timeout_s {self.timeout_s!r} for MCP server {self.name!r}: "
                                     "use a number of seconds above 0")
        if self.max_result_bytes <= 0:
            raise ConfigurationError(f"invalid max_result_bytes {self.max_result_bytes!r} for MCP server "
                                     f"{self.name!r}: use a number of bytes above 0")
        if self.transport == "stdio":
            if not self.command:
                raise ConfigurationError(f"MCP server {self.name!r} has no command: pass the server's executable")
        elif self.transport == "http":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ConfigurationError(f"invalid URL {self.url!r} for MCP server {self.name!r}: "
                                         "use an http:// or https:// URL of a streamable HTTP endpoint")
        else:
            raise ConfigurationError(f"invalid transport {self.transport!r} for MCP server {self.name!r}: "
                                     "use McpServer.stdio(...) or McpServer.http(...)")

    @classmethod
    def stdio(cls, name: str, command: str, args: list[str] | tuple[str, ...] = (), *,
              env: Mapping[str, str | Secret] | None = None, inherit_env: bool = True, cwd: str | None = None,
              timeout_s: float = 60.0, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> McpServer:
        """Describe a server that runs as a subprocess of the worker and speaks MCP on stdin and stdout.

        Args:
            env: Extra environment variables; values may be secrets.
            inherit_env: Start from the worker's environment (else only ``PATH`` and ``env``).
            timeout_s: Seconds one call may take, from starting the server to its result.
            max_result_bytes: The largest message the server may send; a larger one fails the call.
        """
        return cls(name=name, transport="stdio", command=command, args=tuple(args), env=dict(env or {}),
                   inherit_env=inherit_env, cwd=cwd, timeout_s=timeout_s, max_result_bytes=max_result_bytes)

    @classmethod
    def http(cls, name: str, url: str, *, headers: Mapping[str, str | Secret] | None = None,
             timeout_s: float = 60.0, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> McpServer:
        """Describe a server reached over streamable HTTP at ``url``; header values may be secrets."""
        return cls(name=name, transport="http", url=url, headers=dict(headers or {}), timeout_s=timeout_s,
                   max_result_bytes=max_result_bytes)

    def __repr__(self) -> str:
        return f"McpServer({self.name!r}, transport={self.transport!r})"


def arguments_sha256(arguments: Mapping[str, Any]) -> str:
    """Return the SHA-256 of the arguments as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# Calls


@dataclass
class CallLedger:
    """The MCP calls of one node attempt: results recorded earlier and events of this attempt."""

    run_id: str
    node: str
    partition: str
    attempt: int
    checkpoint_root: str
    recorded: Mapping[str, Manifest] = field(default_factory=dict)
    events: list[McpToolCalled] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _writes: dict[str, int] = field(default_factory=dict)

    def next_key(self, server: str, tool: str, digest: str) -> str:
        base = f"{server}:{tool}:{digest}"
        self._seen[base] = self._seen.get(base, 0) + 1
        return f"{base}#{self._seen[base]}"

    def next_idempotency_key(self, tool: str) -> str:
        self._writes[tool] = self._writes.get(tool, 0) + 1
        return f"{self.run_id}:{self.node}:{self.partition or '-'}:{tool}:{self._writes[tool]}"


def call_tool(ledger: CallLedger, server: McpServer, tool: str, arguments: Mapping[str, Any] | None = None, *,
              parser: Callable[[Any], Any] | None = None, writes: bool = False,
              idempotency_argument: str | None = None, retry_tool_errors: bool = False,
              timeout_s: float | None = None, logger_: Any = None) -> pa.Table:
    """Call ``tool`` on ``server`` once for this partition and return its result as an Arrow table.

    A result recorded by an earlier attempt or run is read from the checkpoint
    store instead. A call that ``writes`` carries an idempotency key derived
    from the run, node and partition: in ``_meta`` under
    ``io.ledgerflow/idempotency-key``, and as the argument ``idempotency_argument`` if given.

    Raises:
        McpCallError: The call failed. The subclass and its ``outcome`` name the kind of failure.
    """
    if not isinstance(server, McpServer):
        raise ConfigurationError(f"invalid MCP server {server!r}: pass an lf.McpServer")
    if not isinstance(tool, str) or not tool:
        raise ConfigurationError(f"invalid tool name {tool!r}: pass the tool's name as a string")
    log = (logger_ or logger).bind(server=server.name, tool=tool)
    call_arguments = dict(arguments or {})
    digest = arguments_sha256(call_arguments)
    key = ledger.next_key(server.name, tool, digest)
    idempotency_key = ledger.next_idempotency_key(tool) if writes else None

    recorded = ledger.recorded.get(key)
    if recorded is not None:
        stored = _read_recorded(recorded)
        if stored is not None:
            log.info("mcp call result read from checkpoint", call_key=key, uri=recorded.uri)
            return _to_table(stored, server, tool, parser)
        log.warning("mcp call result missing or changed, calling again", call_key=key, uri=recorded.uri)

    meta: dict[str, Any] = {}
    if idempotency_key is not None:
        meta[IDEMPOTENCY_META_KEY] = idempotency_key
        if idempotency_argument:
            call_arguments[idempotency_argument] = idempotency_key

    started = time.perf_counter()
    limit = timeout_s if timeout_s is not None else server.timeout_s
    log.info("mcp call started", transport=server.transport, arguments_sha256=digest, timeout_s=limit)
    result_manifest: Manifest | None = None
    error: McpCallError | None = None
    result: Any = None
    in_flight = _mark_in_flight(ledger, McpToolCalled(
        node=ledger.node, partition=ledger.partition or None, attempt=ledger.attempt, server=server.name,
        transport=server.transport, tool=tool, call_key=key, arguments_sha256=digest, duration_s=0.0,
        outcome="interrupted", idempotency_key=idempotency_key,
    ))
    try:
        result = run_sync(invoke(server, tool, call_arguments, meta or None, limit))
        if result.is_error:
            # The server may echo its environment or headers, so secrets are scrubbed here too.
            text = scrub(_result_text(result)[:500], secret_values(server))
            error = McpToolError(f"tool {tool!r} on MCP server {server.name!r} returned an error: {text}",
                                 server=server.name, tool=tool)
            error.retryable = retry_tool_errors
        else:
            result_manifest = _store_result(ledger, key, result)
    except McpCallError as err:
        error = err
        if isinstance(err, McpToolError):
            err.retryable = retry_tool_errors
    finally:
        _clear_in_flight(in_flight)
    duration = round(time.perf_counter() - started, 6)

    ledger.events.append(McpToolCalled(
        node=ledger.node, partition=ledger.partition or None, attempt=ledger.attempt, server=server.name,
        transport=server.transport, tool=tool, call_key=key, arguments_sha256=digest, duration_s=duration,
        outcome="ok" if error is None else error.outcome, error=None if error is None else str(error),
        result=result_manifest, idempotency_key=idempotency_key,
    ))
    if error is not None:
        log.warning("mcp call failed", outcome=error.outcome, error=str(error), duration_s=duration)
        raise error
    log.info("mcp call finished", duration_s=duration, bytes=result_manifest.bytes if result_manifest else 0)
    return _to_table(result, server, tool, parser)


def _in_flight_name(node: str, partition: str, attempt: int) -> str:
    return f"mcp.{node}.{partition or '_'}.a{attempt}.in-flight.json"


def _mark_in_flight(ledger: CallLedger, pending: McpToolCalled) -> str:
    """Write the call about to be made beside the checkpoints, for the executor to find if the worker dies."""
    data = pending.model_dump_json().encode("utf-8")
    name = _in_flight_name(ledger.node, ledger.partition, ledger.attempt)
    return CheckpointStore(ledger.checkpoint_root).write_bytes(data, run_id=ledger.run_id, name=name)


def _clear_in_flight(uri: str) -> None:
    filesystem, path = resolve_filesystem(uri)
    try:
        filesystem.delete_file(path)
    except (FileNotFoundError, OSError) as err:
        logger.warning("cannot remove the in-flight MCP call marker", uri=uri, error=str(err))


def interrupted_call(checkpoint_root: str, run_id: str, node: str, partition: str, attempt: int,
                     reason: str, duration_s: float) -> McpToolCalled | None:
    """Return the event of a call that a dead worker or a cancelled task left in flight, or None.

    The attempt's task wrote the call's marker before the call and removes it
    after, so a marker that remains means the call never returned.
    """
    directory = CheckpointStore(checkpoint_root).run_directory(run_id)
    data, _ = _read_bytes(f"{directory}/{_in_flight_name(node, partition, attempt)}")
    if data is None:
        return None
    try:
        pending = McpToolCalled.model_validate_json(data)
    except ValueError:
        return None
    return pending.model_copy(update={"error": reason, "duration_s": round(duration_s, 6)})


def _store_result(ledger: CallLedger, key: str, result: Any) -> Manifest:
    data = result.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:120]
    name = f"mcp.{ledger.node}.{ledger.partition or '_'}.{safe}.a{ledger.attempt}.json"
    uri = CheckpointStore(ledger.checkpoint_root).write_bytes(data, run_id=ledger.run_id, name=name)
    return Manifest(uri=uri, rows=0, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def _read_recorded(manifest: Manifest) -> Any | None:
    """Return the stored result, or None when its file is missing or its SHA-256 does not match."""
    from mcp_types import CallToolResult

    data, actual = _read_bytes(manifest.uri)
    if data is None or actual != manifest.sha256:
        return None
    return CallToolResult.model_validate_json(data)


# Results


def _result_text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content if getattr(block, "type", "") == "text")


def _to_table(result: Any, server: McpServer, tool: str, parser: Callable[[Any], Any] | None) -> pa.Table:
    """Turn a tool result into a table: through ``parser``, from structured content or from JSON text."""
    from ledgerflow.actors._tasks import to_table

    if parser is not None:
        return to_table(parser(result), node=f"parser of tool {tool}")
    data = result.structured_content
    if data is None:
        text = _result_text(result)
        try:
            data = json.loads(text)
        except ValueError as err:
            raise McpResultError(
                f"tool {tool!r} on MCP server {server.name!r} returned text that is not JSON "
                f"({text[:80]!r}): pass parser= to turn its result into a table", server=server.name, tool=tool,
            ) from err
    if isinstance(data, dict) and set(data) == {"result"} and isinstance(data["result"], str):
        # A tool that returns JSON text as a string gets it wrapped as structured content.
        try:
            data = json.loads(data["result"])
        except ValueError:
            pass
    try:
        return rows_to_table(data)
    except (TypeError, ValueError, pa.ArrowException) as err:
        raise McpResultError(f"cannot turn the result of tool {tool!r} on MCP server {server.name!r} into a "
                             f"table: {err}; pass parser= to convert it", server=server.name, tool=tool) from err


def rows_to_table(data: Any) -> pa.Table:
    """Convert JSON data to a table: a list of objects, an object of columns, one object or a list of values.

    An object whose only key is ``result`` is unwrapped first, because MCP
    server SDKs wrap a tool's non-object return value that way.
    """
    if isinstance(data, dict) and set(data) == {"result"}:
        data = data["result"]
    if isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            return pa.Table.from_pylist(data)
        return pa.table({"value": data})
    if isinstance(data, dict):
        if data and all(isinstance(value, list) for value in data.values()):
            return pa.table(data)
        return pa.Table.from_pylist([data])
    return pa.table({"value": [data]})
