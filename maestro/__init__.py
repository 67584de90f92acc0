"""Maestro: agents that plan, call typed tools, and check their answers against requirements.

The public API is re-exported here (``from maestro import Agent, tool, Requirement``).
Importing ``maestro`` is cheap: no torch, no HTTP client set-up, no TUI — the embedded engine
is imported only when a ``LocalModel`` is first used.
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
