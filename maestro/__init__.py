"""Maestro: agents that plan, call typed tools, and check their answers against requirements.

::

    from maestro import Agent, Budget, LocalModel, Requirement, tool

    @tool
    def calculator(expression: str) -> str:
        # the docstring becomes the tool's description; the signature its JSON schema
        ...

    agent = Agent(
        LocalModel(),                      # or OpenAIModel("gpt-4.1", api_key=...)
        tools=[calculator],
        requirements=[Requirement("states the number", check=lambda a: "391" in a)],
        budget=Budget.of("medium", max_wall_seconds=120),
    )
    result = agent.run_sync("What is 17 * 23?")
    print(result.answer, result.report.summary(), result.usage)

The loop: plan (a typed plan under a JSON-schema grammar) → execute (independent steps
concurrently) → draft → validate (programmatic checks, else a model judge) → fix, until the
requirements pass or the budget is spent; every step is an event (``agent.run_stream``) and a
stored step (``agent.resume(run_id)`` after a crash). ``agent.chat`` is the plain
tool-calling loop for assistants. Tests drive all of it with ``maestro.testing.ScriptedModel``.

The public API is re-exported here with a sorted ``__all__``. Importing ``maestro`` is cheap:
no torch, no HTTP client, no TUI — ``OpenAIModel`` and ``LocalModel`` are imported on first
use, and the embedded engine only when a ``LocalModel`` first generates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maestro.agent import Agent, RunResult
from maestro.budget import Budget
from maestro.errors import (
    ApprovalDenied,
    BudgetExceeded,
    MaestroError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelTimeoutError,
    ToolError,
    ToolRetry,
    UnexpectedModelBehavior,
    UserError,
)
from maestro.events import (
    ApprovalRequested,
    BudgetUpdate,
    Event,
    FixRound,
    PlanMade,
    RequirementScored,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from maestro.llm.base import Model, Pricing
from maestro.loop.chat import ChatResult
from maestro.loop.execute import ApprovalRequest
from maestro.loop.plan import Plan, PlanStep
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    ModelResponse,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from maestro.requirements import Requirement, RequirementScore, RequirementsReport
from maestro.runs import InMemoryRunStore, RunRecord, RunStore, StepRecord
from maestro.tool import Tool, ToolContext, tool
from maestro.tracing import disable_tracing, enable_tracing

if TYPE_CHECKING:
    from maestro.llm.local import LocalModel
    from maestro.llm.openai import OpenAIModel


def __getattr__(name: str) -> Any:
    # The two real models are imported on first use: OpenAIModel pulls in httpx and tenacity,
    # LocalModel (later) the engine; neither belongs on the `import maestro` path.
    if name in ("OpenAIModel", "LocalModel"):
        import maestro.llm

        return getattr(maestro.llm, name)
    raise AttributeError(f"module 'maestro' has no attribute {name!r}")


__all__ = [
    "Agent",
    "ApprovalDenied",
    "ApprovalRequest",
    "ApprovalRequested",
    "AssistantMessage",
    "Budget",
    "BudgetExceeded",
    "BudgetUpdate",
    "ChatResult",
    "Event",
    "FixRound",
    "InMemoryRunStore",
    "LocalModel",
    "MaestroError",
    "Message",
    "Model",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelRequestOptions",
    "ModelResponse",
    "ModelTimeoutError",
    "OpenAIModel",
    "Plan",
    "PlanMade",
    "PlanStep",
    "Pricing",
    "Requirement",
    "RequirementScore",
    "RequirementScored",
    "RequirementsReport",
    "RunFinished",
    "RunRecord",
    "RunResult",
    "RunStarted",
    "RunStore",
    "StepFinished",
    "StepRecord",
    "StepStarted",
    "SystemMessage",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolContext",
    "ToolDefinition",
    "ToolError",
    "ToolResultMessage",
    "ToolRetry",
    "UnexpectedModelBehavior",
    "Usage",
    "UserError",
    "UserMessage",
    "disable_tracing",
    "enable_tracing",
    "tool",
]
