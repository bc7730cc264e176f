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

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pyarrow as pa
import structlog

from ledgerflow.actors._checkpoints import CheckpointStore, _read_bytes, resolve_filesystem
from ledgerflow.actors._context import Secret
from ledgerflow.actors._errors import ConfigurationError
from ledgerflow.events import LedgerflowError, Manifest, McpToolCalled

logger = structlog.get_logger("ledgerflow.mcp")

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mcp_launcher.py")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Default cap on one message from a server, in bytes.
DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024
#: Seconds a stdio server gets to exit after its stdin closes, and again after SIGTERM.
SHUTDOWN_GRACE_S = 2.0
_READ_CHUNK = 64 * 1024
_STDERR_TAIL = 2000
#: The ``_meta`` key that carries the idempotency key of a call that writes.
IDEMPOTENCY_META_KEY = "io.ledgerflow/idempotency-key"


# Errors


class McpCallError(LedgerflowError):
    """Raised when a tool call on an MCP server fails; ``outcome`` names how."""

    outcome = "error"
    #: Whether the executor retries the attempt under the node's retry policy.
    retryable = True

    def __init__(self, message: str, *, server: str, tool: str) -> None:
        super().__init__(message)
        self.server = server
        self.tool = tool


class McpTransportError(McpCallError):
    """Raised when the server cannot be reached, exits mid-call or closes the connection."""

    outcome = "transport_error"


class McpProtocolError(McpCallError):
    """Raised when a stdio server prints text on stdout that is not an MCP message."""

    outcome = "protocol_error"


class McpTimeoutError(McpCallError):
    """Raised when a call does not return within its timeout."""

    outcome = "timeout"


class McpResultTooLargeError(McpCallError):
    """Raised when a message from the server exceeds the server's ``max_result_bytes``."""

    outcome = "too_large"
    retryable = False


class McpToolError(McpCallError):
    """Raised when the tool reports an error (``isError``) or the server returns an error response."""

    outcome = "tool_error"
    retryable = False


class McpResultError(McpCallError):
    """Raised when a tool's result cannot be turned into an Arrow table."""

    outcome = "invalid_result"
    retryable = False


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


def _reveal(values: Mapping[str, str | Secret]) -> tuple[dict[str, str], list[str]]:
    """Return the values with secrets read, and the secret values (to scrub from error text)."""
    revealed: dict[str, str] = {}
    secrets: list[str] = []
    for key, value in values.items():
        if isinstance(value, Secret):
            text = value.reveal()
            secrets.append(text)
            revealed[key] = text
        else:
            revealed[key] = str(value)
    return revealed, secrets


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


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
        result = _run_async(_invoke(server, tool, call_arguments, meta or None, limit))
        if result.is_error:
            text = _result_text(result)[:500]
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


def _run_async(coroutine: Any) -> Any:
    """Run ``coroutine`` to its end, in a new thread when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coroutine)
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            box["error"] = err

    thread = threading.Thread(target=target, name="ledgerflow-mcp-call")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _invoke(server: McpServer, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None,
                  timeout_s: float) -> Any:
    """Open a session on ``server``, call ``tool`` once and close the session, within ``timeout_s``."""
    from mcp import ClientSession
    from mcp.shared.exceptions import MCPError

    secrets: list[str] = []
    watcher = _Watcher(server=server.name, tool=tool)
    opener = _stdio_streams if server.transport == "stdio" else _http_streams
    try:
        with anyio.fail_after(timeout_s):
            with anyio.CancelScope() as scope:
                watcher.scope = scope
                async with opener(server, watcher, secrets) as (read_stream, write_stream):
                    async with ClientSession(read_stream, write_stream) as session:
                        await session.initialize()
                        return await session.call_tool(tool, arguments, meta=meta)
            # Only a transport failure cancels the scope, and the watcher holds its reason.
            raise watcher.error or McpTransportError(
                f"connection to MCP server {server.name!r} ended during call of {tool!r}",
                server=server.name, tool=tool)
    except TimeoutError as err:
        if watcher.error is not None:
            raise _scrubbed(watcher.error, secrets) from None
        raise McpTimeoutError(f"call of tool {tool!r} on MCP server {server.name!r} timed out after "
                              f"{timeout_s} s", server=server.name, tool=tool) from err
    except McpCallError as err:
        raise _scrubbed(err, secrets) from None
    except MCPError as err:
        raise _scrubbed(watcher.error or _from_mcp_error(err, server, tool), secrets) from None
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as err:
        raise _scrubbed(watcher.error or McpTransportError(
            f"connection to MCP server {server.name!r} failed during call of {tool!r}: "
            f"{type(err).__name__}: {err}", server=server.name, tool=tool), secrets) from None
    except BaseExceptionGroup as group:  # noqa: F821 - builtin on Python 3.11
        if watcher.error is not None:
            raise _scrubbed(watcher.error, secrets) from None
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup) and first.exceptions:  # noqa: F821
            first = first.exceptions[0]
        if isinstance(first, MCPError):
            raise _scrubbed(_from_mcp_error(first, server, tool), secrets) from None
        raise _scrubbed(McpTransportError(
            f"connection to MCP server {server.name!r} failed during call of {tool!r}: "
            f"{type(first).__name__}: {first}", server=server.name, tool=tool), secrets) from None


def _from_mcp_error(err: Any, server: McpServer, tool: str) -> McpCallError:
    """Classify an error response or an SDK transport error raised as ``MCPError``."""
    message = err.error.message
    # mcp 2.3 reports an SSE event over max_sse_event_size as an MCPError with this text.
    if "exceeded the" in message and "byte limit" in message:
        return _too_large(server, tool, server.max_result_bytes + 1)
    if message.startswith("SSE stream failed"):
        return McpTransportError(f"connection to MCP server {server.name!r} failed during call of {tool!r}: "
                                 f"{message}", server=server.name, tool=tool)
    return McpToolError(f"MCP server {server.name!r} returned an error for tool {tool!r}: {message} "
                        f"(code {err.error.code})", server=server.name, tool=tool)


def _scrubbed(error: McpCallError, secrets: list[str]) -> McpCallError:
    text = _scrub(str(error), secrets)
    if text == str(error):
        return error
    clean = type(error)(text, server=error.server, tool=error.tool)
    clean.retryable = error.retryable
    return clean


@dataclass
class _Watcher:
    """The first transport failure of a call; recording it cancels the call's scope."""

    server: str
    tool: str
    scope: anyio.CancelScope | None = None
    error: McpCallError | None = None
    closing: bool = False

    def fail(self, error: McpCallError) -> None:
        if self.closing or self.error is not None:
            return
        self.error = error
        if self.scope is not None:
            self.scope.cancel()


@asynccontextmanager
async def _stdio_streams(server: McpServer, watcher: _Watcher, secrets: list[str]) -> AsyncIterator[Any]:
    """Start the server through the launcher and exchange JSON-RPC lines with it.

    The server's stdout is read here, not by the SDK, so that a line over the
    size cap fails the call before it is buffered whole, and text that is
    not an MCP message fails it at once.
    """
    from mcp.shared.message import SessionMessage
    from mcp_types import jsonrpc_message_adapter

    extra, revealed = _reveal(server.env)
    secrets.extend(revealed)
    env = dict(os.environ) if server.inherit_env else {"PATH": os.environ.get("PATH", "")}
    env.update(extra)
    assert server.command is not None
    argv = [sys.executable, "-I", "-S", LAUNCHER, str(os.getpid()), "--", server.command, *server.args]
    try:
        process = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, env=env, cwd=server.cwd,
                                           start_new_session=True)
    except OSError as err:
        raise McpTransportError(f"failed to start MCP server {server.name!r}: {err}", server=server.name,
                                tool=watcher.tool) from err
    logger.debug("mcp server started", server=server.name, pid=process.pid)
    read_writer, read_stream = anyio.create_memory_object_stream[Any](0)
    write_stream, write_reader = anyio.create_memory_object_stream[Any](0)
    stderr_tail = bytearray()
    cap = server.max_result_bytes

    def describe_exit() -> str:
        code = process.returncode
        tail = _scrub(stderr_tail.decode("utf-8", "replace").strip(), secrets)
        status = f"status {code}" if code is not None and code >= 0 else \
            f"signal {-code}" if code is not None else "an unknown status"
        return f"exited with {status}" + (f"; stderr: {tail[-500:]}" if tail else "")

    async def read_stdout() -> None:
        assert process.stdout is not None
        buffer = bytearray()
        async with read_writer:
            while True:
                try:
                    chunk = await process.stdout.receive(_READ_CHUNK)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    break
                buffer += chunk
                while True:
                    end = buffer.find(b"\n")
                    if end < 0:
                        break
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    if not line.strip():
                        continue
                    if len(line) > cap:
                        watcher.fail(_too_large(server, watcher.tool, len(line)))
                        return
                    try:
                        message = jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError:
                        shown = _scrub(line[:200].decode("utf-8", "replace"), secrets)
                        watcher.fail(McpProtocolError(
                            f"MCP server {server.name!r} printed text that is not an MCP message on stdout: "
                            f"{shown!r}; a stdio server must write only JSON-RPC messages there (log to stderr)",
                            server=server.name, tool=watcher.tool))
                        return
                    try:
                        await read_writer.send(SessionMessage(message))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return
                if len(buffer) > cap:
                    watcher.fail(_too_large(server, watcher.tool, len(buffer)))
                    return
            # The failure is recorded before the read stream closes, so the session's
            # own error about the closed stream never hides the exit status.
            if not watcher.closing:
                with anyio.move_on_after(SHUTDOWN_GRACE_S):
                    await process.wait()
                watcher.fail(McpTransportError(
                    f"MCP server {server.name!r} closed its stdout during call of {watcher.tool!r} and "
                    f"{describe_exit()}", server=server.name, tool=watcher.tool))

    async def write_stdin() -> None:
        assert process.stdin is not None
        async with write_reader:
            async for item in write_reader:
                data = item.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                try:
                    await process.stdin.send(data.encode("utf-8"))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    watcher.fail(McpTransportError(
                        f"MCP server {server.name!r} stopped reading its stdin during call of {watcher.tool!r}",
                        server=server.name, tool=watcher.tool))
                    return

    async def read_stderr() -> None:
        assert process.stderr is not None
        while True:
            try:
                chunk = await process.stderr.receive(_READ_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            stderr_tail.extend(chunk)
            del stderr_tail[:-_STDERR_TAIL]

    graceful = True
    async with anyio.create_task_group() as group:
        group.start_soon(read_stdout)
        group.start_soon(write_stdin)
        group.start_soon(read_stderr)
        try:
            yield read_stream, write_stream
        except BaseException:
            # A timeout, a failure or a cancellation: the server gets no grace period.
            graceful = False
            raise
        finally:
            watcher.closing = True
            with anyio.CancelScope(shield=True):
                await _stop_process(process, server.name, graceful=graceful and watcher.error is None)
            group.cancel_scope.cancel()


def _too_large(server: McpServer, tool: str, size: int) -> McpResultTooLargeError:
    return McpResultTooLargeError(
        f"MCP server {server.name!r} sent a message of more than {server.max_result_bytes} bytes "
        f"(at least {size}) for tool {tool!r}: raise max_result_bytes or ask for less data",
        server=server.name, tool=tool)


async def _stop_process(process: Any, name: str, *, graceful: bool) -> None:
    """End the server: close its stdin, then SIGTERM and SIGKILL its process group.

    A server whose call succeeded gets ``SHUTDOWN_GRACE_S`` to exit after its
    stdin closes, as the MCP stdio transport specifies. After a failure it
    gets SIGTERM at once.
    """
    if process.stdin is not None:
        try:
            await process.stdin.aclose()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
    if process.returncode is None and graceful:
        with anyio.move_on_after(SHUTDOWN_GRACE_S):
            await process.wait()
    for sig, wait_s in ((signal.SIGTERM, SHUTDOWN_GRACE_S / 4), (signal.SIGKILL, SHUTDOWN_GRACE_S)):
        if process.returncode is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        with anyio.move_on_after(wait_s):
            await process.wait()
    if process.returncode is None:
        logger.error("mcp server did not exit after SIGKILL", server=name, pid=process.pid)
    else:
        logger.debug("mcp server stopped", server=name, pid=process.pid, returncode=process.returncode)
    await process.aclose()


@asynccontextmanager
async def _http_streams(server: McpServer, watcher: _Watcher, secrets: list[str]) -> AsyncIterator[Any]:
    """Connect over streamable HTTP.

    NOTE: the cap applies to SSE events while they arrive, but a plain JSON
    response is read whole by the HTTP client and checked afterwards.
    """
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers, revealed = _reveal(server.headers)
    secrets.extend(revealed)
    assert server.url is not None
    client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(server.timeout_s),
                                event_hooks={"response": [_size_hook(server, watcher)]})
    async with client:
        async with streamable_http_client(server.url, http_client=client,
                                          max_sse_event_size=server.max_result_bytes) as streams:
            yield streams[0], streams[1]


def _size_hook(server: McpServer, watcher: _Watcher) -> Callable[[Any], Any]:
    async def check(response: Any) -> None:
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > server.max_result_bytes:
            watcher.fail(_too_large(server, watcher.tool, int(length)))

    return check


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
