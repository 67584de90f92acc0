"""Connecting an MCP server: an agent uses tools served over the Model Context Protocol.

This file is both sides. ``--serve`` runs a small MCP server (stdio) exposing the invoice
ledger in ``examples/data/invoices.csv`` as two read-only tools; without it, the file
starts that server as a subprocess, connects with :class:`tools.mcp.MCPConnection`, and gives
the server's tools to an agent. Tool names are prefixed with the server name
(``ledger__overdue_total``) so two servers cannot shadow each other; read-only tools need no
approval under the default ``"writes"`` policy.

    python examples/mcp_tools.py                       # ask the default question
    python examples/mcp_tools.py "Which invoices are overdue?" --model http://localhost:8000/v1

Any MCP server works the same way: ``MCPServerConfig(name=..., command=..., args=[...])``
for stdio, or ``MCPServerConfig(name=..., url="http://host/mcp")`` for streamable HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from pathlib import Path

from maestro import Agent, Model, Requirement
from maestro.llm.spec import resolve_model
from tools.mcp import MCPConnection, MCPServerConfig

LEDGER = Path(__file__).parent / "data" / "invoices.csv"
QUESTION = "What is the total amount of overdue invoices, in EUR?"


def _rows() -> list[dict[str, str]]:
    with LEDGER.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def serve() -> None:
    """The MCP server side (stdio)."""
    from mcp.server.fastmcp import FastMCP
    from mcp.types import ToolAnnotations

    server = FastMCP("ledger", log_level="WARNING")
    read_only = ToolAnnotations(readOnlyHint=True)

    @server.tool(annotations=read_only)
    def overdue_total() -> str:
        """The number and total amount (EUR) of overdue invoices."""
        overdue = [r for r in _rows() if r["status"] == "overdue"]
        total = sum(float(r["amount_eur"]) for r in overdue)
        return f"{len(overdue)} overdue invoices, {total:.2f} EUR in total"

    @server.tool(annotations=read_only)
    def find_invoices(customer: str) -> str:
        """Invoices of a customer (case-insensitive substring match), one per line."""
        hits = [r for r in _rows() if customer.casefold() in r["customer"].casefold()]
        return "\n".join(",".join(r.values()) for r in hits) or "no invoices"

    server.run("stdio")


async def main(question: str = QUESTION, *, model: Model | str | None = None) -> int:
    config = MCPServerConfig(name="ledger", command=sys.executable, args=[__file__, "--serve"])
    async with MCPConnection(config) as ledger:
        print("MCP tools: " + ", ".join(t.name for t in ledger.tools), file=sys.stderr)
        agent = Agent(
            resolve_model(model),
            tools=ledger.tools,
            instructions="Answer from the ledger tools' output only.",
            requirements=[Requirement("answers from the ledger's figures")],
            budget="low",
        )
        result = await agent.run(question)
    print(f"Q: {question}\nA: {result.answer}")
    for source in result.data_sources:
        print(f"  source: {source.get('tool')} -> {str(source.get('excerpt'))[:100]}")
    print(f"report: {result.report.summary()}")
    return 0 if result.status == "completed" else 2


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--model", default=None, help="model spec (name, path, URL)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.question, model=args.model)))
