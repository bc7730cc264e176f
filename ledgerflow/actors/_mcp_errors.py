"""The errors of MCP tool calls. Each names how the call failed and whether a retry may help."""

from __future__ import annotations

from ledgerflow.events import LedgerflowError


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
