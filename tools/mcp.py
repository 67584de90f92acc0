"""MCP servers as Maestro tools (``mcp`` SDK 1.x, stdio and streamable HTTP).

One :class:`MCPConnection` per configured server holds a long-lived ``ClientSession`` in an
``AsyncExitStack``; its tools are listed once and exposed as :class:`maestro.Tool` objects
built with ``Tool.from_schema`` — the server's own JSON schema, name prefixed with the server
name so two servers cannot shadow each other.

Failure handling is what makes a remote tool usable from an agent loop:

* a tool result with ``isError`` goes back to the model as ``ToolRetry`` (the server said the
  call was wrong, the model may fix it);
* a server that crashes, hangs past the timeout or closes the connection raises ``ToolError``
  naming the server — the run continues, later calls fail fast with the same clear message
  until :meth:`MCPConnection.reconnect` is called.

Approval policy is per server: ``"always"``, ``"never"`` or ``"writes"`` (the default: tools
need approval unless the server marks them ``readOnlyHint``). Use ``async with`` so the
transport is opened and closed in one task (anyio's rule); closing stops a stdio server.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import anyio

from maestro import Tool, ToolError, ToolRetry, UserError

Approval = Literal["always", "never", "writes"]


@dataclass
class MCPServerConfig:
    """How to reach one server: ``command`` (+``args``, ``env``) for stdio, or ``url``."""

    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    approval: Approval = "writes"
    timeout_s: float = 60.0
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise UserError(f"MCP server {self.name!r}: give exactly one of command or url")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", self.name):
            raise UserError(f"MCP server name {self.name!r} must be 1-32 letters, digits, _ or -")


def _result_text(result: Any) -> str:
    """Text of a CallToolResult: text blocks verbatim, other blocks described."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    if not parts and result.structuredContent is not None:
        parts.append(str(result.structuredContent))
    return "\n".join(parts)


class MCPConnection:
    """A live session with one MCP server and the Maestro tools it offers."""

    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self._stack: AsyncExitStack | None = None
        self._session: Any = None
        self._broken: str | None = None
        self._errlog: Any = None
        self.listed: list[Any] = []  # the server's mcp.types.Tool entries
        self.tools: list[Tool] = []

    async def __aenter__(self) -> MCPConnection:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Open the transport, initialise the session and list the tools."""
        from mcp import ClientSession

        cfg = self.config
        stack = AsyncExitStack()
        # The transports open task groups that live as long as the stack: only the handshake
        # itself may sit inside a cancel scope of ours (anyio requires scopes to nest).
        try:
            if cfg.command is not None:
                from mcp import StdioServerParameters
                from mcp.client.stdio import stdio_client

                self._errlog = stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
                params = StdioServerParameters(command=cfg.command, args=cfg.args, env=cfg.env)
                read, write = await stack.enter_async_context(
                    stdio_client(params, errlog=self._errlog))
            else:
                from mcp.client import streamable_http

                if hasattr(streamable_http, "streamable_http_client"):  # mcp >= 1.2x
                    import httpx

                    client = await stack.enter_async_context(httpx.AsyncClient(
                        headers=cfg.headers, follow_redirects=True,
                        timeout=httpx.Timeout(cfg.timeout_s, read=300)))
                    read, write, _ = await stack.enter_async_context(
                        streamable_http.streamable_http_client(str(cfg.url), http_client=client))
                else:
                    read, write, _ = await stack.enter_async_context(
                        streamable_http.streamablehttp_client(str(cfg.url), headers=cfg.headers))
            session = await stack.enter_async_context(ClientSession(read, write))
            with anyio.fail_after(cfg.connect_timeout_s):
                await session.initialize()
                listed = await session.list_tools()
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, Exception):
                raise ToolError(
                    f"could not connect to MCP server {cfg.name!r}: {type(exc).__name__}: {exc}"
                    + self._stderr_tail()) from exc
            raise
        self._stack, self._session, self._broken = stack, session, None
        self.listed = list(listed.tools)
        self.tools = [self.make_tool(t) for t in self.listed]

    async def reconnect(self) -> None:
        await self.aclose()
        await self.connect()

    async def aclose(self) -> None:
        """Close the session; a stdio server process is terminated."""
        stack, self._stack, self._session = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):  # the server may be gone; closing must not fail
                await stack.aclose()

    def _stderr_tail(self) -> str:
        if self._errlog is None:
            return ""
        try:
            self._errlog.seek(0)
            tail = self._errlog.read()[-1500:].strip()
        except (OSError, ValueError):
            return ""
        return f"\nserver stderr (tail):\n{tail}" if tail else ""

    async def call(self, tool_name: str, arguments: dict[str, Any]) -> str:
        """Call a tool by its server-side name. ToolRetry on isError, ToolError on failure."""
        cfg = self.config
        if self._broken is not None or self._session is None:
            raise ToolError(f"MCP server {cfg.name!r} is not connected ({self._broken or 'closed'}); "
                            "reconnect it to use its tools", tool_name=tool_name)
        try:
            with anyio.fail_after(cfg.timeout_s + 1):
                result = await self._session.call_tool(
                    tool_name, arguments, read_timeout_seconds=timedelta(seconds=cfg.timeout_s))
        except Exception as exc:
            self._broken = f"{type(exc).__name__}: {exc}".rstrip(": ") or "connection lost"
            raise ToolError(
                f"MCP server {cfg.name!r} failed during {tool_name!r}: {self._broken}"
                + self._stderr_tail(), tool_name=tool_name) from exc
        text = _result_text(result)
        if result.isError:
            raise ToolRetry(f"{tool_name} (MCP server {cfg.name!r}) reported an error: {text}")
        return text

    def make_tool(self, listed: Any) -> Tool:
        """A Maestro tool for one listed MCP tool, under this server's approval policy."""
        cfg = self.config
        read_only = bool(listed.annotations and listed.annotations.readOnlyHint)
        approval = cfg.approval == "always" or (cfg.approval == "writes" and not read_only)
        local_name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{cfg.name}__{listed.name}")[:64]
        schema = dict(listed.inputSchema or {"type": "object", "properties": {}})
        schema.pop("title", None)
        remote_name = listed.name

        async def invoke(arguments: dict[str, Any]) -> str:
            return await self.call(remote_name, arguments)

        return Tool.from_schema(
            local_name, (listed.description or listed.name) + f" (MCP server {cfg.name})",
            schema, invoke, side_effects=not read_only, requires_approval=approval,
            timeout=cfg.timeout_s + 5,
        )
