"""Ready-made Maestro agents, each a thin layer over ``maestro.Agent``:

- :class:`Assistant` — a long-running personal assistant per user: recalls memories each
  turn, proposes and stores memory updates with provenance, keeps a rolling summary;
- :func:`researcher` — answers from ingested documents with verified quotes and citations;
- :class:`Analyst` — answers questions about data files by running code in the sandbox;
- :class:`Router` — MRKL routing of a request to the right expert (model choice, keyword
  fallback).

Heavy pieces (the sandbox, retrieval) load with the module that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.analyst import Analysis, Analyst, Cell
    from agents.assistant import Assistant, AssistantReply
    from agents.memory_updates import MemoryUpdate
    from agents.researcher import researcher
    from agents.router import Route, RoutedAnswer, RouteDecision, Router

_HOMES = {
    "Analysis": "agents.analyst",
    "Analyst": "agents.analyst",
    "Assistant": "agents.assistant",
    "AssistantReply": "agents.assistant",
    "Cell": "agents.analyst",
    "MemoryUpdate": "agents.memory_updates",
    "Route": "agents.router",
    "RouteDecision": "agents.router",
    "RoutedAnswer": "agents.router",
    "Router": "agents.router",
    "researcher": "agents.researcher",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


__all__ = [
    "Analysis",
    "Analyst",
    "Assistant",
    "AssistantReply",
    "Cell",
    "MemoryUpdate",
    "Route",
    "RouteDecision",
    "RoutedAnswer",
    "Router",
    "researcher",
]
