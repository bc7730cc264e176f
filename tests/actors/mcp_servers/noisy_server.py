"""An MCP server that prints a banner on stdout before it starts, as a careless server might."""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("noisy")


@server.tool()
def ping() -> str:
    """Return ``pong``."""
    return "pong"


if __name__ == "__main__":
    sys.stdout.write("Welcome to the noisy server v1.0\n")
    sys.stdout.flush()
    server.run()
