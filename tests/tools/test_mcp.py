"""MCP: a real server over stdio and streamable HTTP, listed, called, crashed mid-call."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maestro import ToolContext, ToolError, ToolRetry, UserError
from tools.mcp import MCPConnection, MCPServerConfig

SERVER = str(Path(__file__).with_name("mcp_test_server.py"))
CTX = ToolContext(run_id="r", step_id="s", idempotency_key="k")


def stdio_config(**overrides: object) -> MCPServerConfig:
    return MCPServerConfig(name="test", command=sys.executable, args=[SERVER, "stdio"],
                           timeout_s=10, **overrides)  # type: ignore[arg-type]


def test_config_is_validated() -> None:
    with pytest.raises(UserError):
        MCPServerConfig(name="x")
    with pytest.raises(UserError):
        MCPServerConfig(name="bad name", url="http://127.0.0.1:1/mcp")


async def test_stdio_list_call_and_crash() -> None:
    async with MCPConnection(stdio_config()) as conn:
        tools = {t.name: t for t in conn.tools}
        assert set(tools) == {"test__add", "test__remember", "test__fail", "test__crash",
                              "test__pid"}
        add = tools["test__add"]
        assert add.parameters["required"] == ["a", "b"]
        assert not add.side_effects and not add.requires_approval  # readOnlyHint
        assert tools["test__remember"].requires_approval  # default policy: writes need approval
        assert await add.call({"a": 2, "b": 40}, CTX) == "42"
        with pytest.raises(ToolRetry):  # schema check before the call
            await add.call({"a": 2}, CTX)
        with pytest.raises(ToolRetry, match="disk on fire"):
            await tools["test__fail"].call({"reason": "disk on fire"}, CTX)
        started = time.monotonic()
        with pytest.raises(ToolError, match="MCP server 'test' failed during 'crash'"):
            await tools["test__crash"].call({}, CTX)
        assert time.monotonic() - started < 5
        # The caller carries on: later calls fail fast and clearly, until a reconnect.
        with pytest.raises(ToolError, match="not connected"):
            await add.call({"a": 1, "b": 1}, CTX)
        await conn.reconnect()
        assert await conn.call("add", {"a": 1, "b": 1}) == "2"
        server_pid = int(await conn.call("pid", {}))
    # Clean shutdown: leaving the context stops the stdio server process.
    deadline = time.monotonic() + 5
    while Path(f"/proc/{server_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{server_pid}").exists()


async def test_approval_policy_per_server() -> None:
    async with MCPConnection(stdio_config()) as conn:
        listed = conn.listed
    always = MCPConnection(stdio_config(approval="always"))
    never = MCPConnection(stdio_config(approval="never"))
    assert all(always.make_tool(t).requires_approval for t in listed)
    assert not any(never.make_tool(t).requires_approval for t in listed)


async def test_missing_server_command_is_a_clear_error() -> None:
    config = MCPServerConfig(name="ghost", command="/nonexistent/mcp-server", timeout_s=5,
                             connect_timeout_s=5)
    with pytest.raises(ToolError, match="could not connect to MCP server 'ghost'"):
        await MCPConnection(config).connect()


@pytest.fixture
def http_server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, SERVER, "http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the MCP HTTP test server did not start")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_streamable_http(http_server: str) -> None:
    config = MCPServerConfig(name="web", url=http_server, approval="never", timeout_s=10)
    async with MCPConnection(config) as conn:
        add = next(t for t in conn.tools if t.name == "web__add")
        assert await add.call({"a": 20, "b": 22}, CTX) == "42"
        with pytest.raises(ToolRetry, match="nope"):
            await conn.call("fail", {"reason": "nope"})
