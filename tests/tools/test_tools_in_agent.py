"""The built-in tools inside the real agent loop (Agent.chat driven by a ScriptedModel)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from maestro import Agent, ToolResultMessage
from maestro.testing import ScriptedModel, tool_call
from tools.calculator import calculator
from tools.python.tool import PythonSessions
from tools.sql import sql_tool


@pytest.mark.sandbox
async def test_analyst_style_turn(tmp_path: Path) -> None:
    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER, total REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(1, 10.5), (2, 20.25), (3, 4.0)])
    sessions = PythonSessions(default_timeout=10)
    model = ScriptedModel([
        [tool_call("sql_query", {"query": "SELECT sum(total) AS s FROM orders"})],
        [tool_call("sql_query", {"query": "DROP TABLE orders"})],  # refused, not a crash
        [tool_call("calculator", {"expression": "34.75 / 3"})],
        [tool_call("python", {"code": "totals = [10.5, 20.25, 4.0]"})],
        [tool_call("python", {"code": "round(sum(totals) / len(totals), 4)"})],
        [tool_call("python", {"code": "undefined_name"})],  # error goes back to the model
        "The average order is 11.5833.",
    ])
    agent = Agent(model, tools=[sql_tool(f"sqlite:///{db}"), calculator, sessions.tool])
    try:
        result = await agent.chat("What is the average order value?", max_turns=10)
    finally:
        sessions.close_all()
    assert result.answer == "The average order is 11.5833."
    results = [m for m in result.new_messages if isinstance(m, ToolResultMessage)]
    assert len(results) == 6
    assert "34.75" in results[0].content and not results[0].is_error
    assert results[1].is_error and "read-only" in results[1].content
    assert results[2].content == "139/12 ≈ 11.5833333333333"
    assert results[4].content == "11.5833"  # state persisted between the two python calls
    assert results[5].is_error and "NameError" in results[5].content
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
