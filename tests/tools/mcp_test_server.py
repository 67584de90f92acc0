"""A small MCP server for the tests: ``python mcp_test_server.py [stdio|http PORT]``."""

from __future__ import annotations

import os
import sys

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
server = FastMCP("testserver", host="127.0.0.1", port=port, log_level="WARNING")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def remember(note: str) -> str:
    """Pretend to store a note (a tool with side effects)."""
    return f"stored {note!r}"


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ValueError(reason)


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def pid() -> int:
    """The server's process id (lets the tests check it is gone after close)."""
    return os.getpid()


@server.tool()
def crash() -> str:
    """Kill the server process in the middle of the call."""
    os._exit(3)


if __name__ == "__main__":
    server.run(transport="streamable-http" if sys.argv[1:2] == ["http"] else "stdio")
