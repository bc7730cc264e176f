"""MCP transports for one tool call: a stdio server started through the launcher, or streamable HTTP.

A call opens a session, initializes it, calls the tool and closes the
session, all within the call's timeout. A stdio server's stdout is read
here rather than by the SDK. So text that is not an MCP message, or a
message over the size cap, fails the call at once. The server process is
stopped when the call ends, whatever its outcome.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from ledgerflow.actors._context import Secret
from ledgerflow.actors._mcp_errors import (
    McpCallError,
    McpProtocolError,
    McpResultTooLargeError,
    McpTimeoutError,
    McpToolError,
    McpTransportError,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # anyio installs it on Python 3.10

if TYPE_CHECKING:
    from ledgerflow.actors._mcp import McpServer

logger = structlog.get_logger("ledgerflow.mcp")

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mcp_launcher.py")
#: Seconds a stdio server gets to exit after its stdin closes, and again after SIGTERM.
SHUTDOWN_GRACE_S = 2.0
_READ_CHUNK = 64 * 1024
_STDERR_TAIL = 2000


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


def secret_values(server: McpServer) -> list[str]:
    """Return the values of the server's secret environment variables and headers, read here."""
    _, env_secrets = _reveal(server.env)
    _, header_secrets = _reveal(server.headers)
    return env_secrets + header_secrets


def scrub(text: str, secrets: list[str]) -> str:
    """Replace each secret value in ``text`` with ``[redacted]``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text






async def invoke(server: McpServer, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None,
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
            # Only a transport failure cancels the scope, and the watcher stores its reason.
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
    except BaseExceptionGroup as group:
        if watcher.error is not None:
            raise _scrubbed(watcher.error, secrets) from None
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup) and first.exceptions:
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
    text = scrub(str(error), secrets)
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
        tail = scrub(stderr_tail.decode("utf-8", "replace").strip(), secrets)
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
                        excerpt = scrub(line[:200].decode("utf-8", "replace"), secrets)
                        watcher.fail(McpProtocolError(
                            f"MCP server {server.name!r} printed text that is not an MCP message on stdout: "
                            f"{excerpt!r}; a stdio server must write only JSON-RPC messages there (log to stderr)",
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
