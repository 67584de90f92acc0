"""Maestro: agents that plan, call typed tools, and check their answers against requirements.

The public API is re-exported here (``from maestro import Agent, tool, Requirement``).
Importing ``maestro`` is cheap: no torch, no HTTP client set-up, no TUI — the embedded engine
is imported only when a ``LocalModel`` is first used.
"""

from __future__ import annotations

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
from maestro.runs import InMemoryRunStore, RunRecord, RunStore, StepRecord
from maestro.tool import Tool, ToolContext, tool

__all__ = [
    "ApprovalDenied",
    "ApprovalRequested",
    "AssistantMessage",
    "BudgetExceeded",
    "BudgetUpdate",
    "Event",
    "FixRound",
    "InMemoryRunStore",
    "MaestroError",
    "Message",
    "Model",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelRequestOptions",
    "ModelResponse",
    "ModelTimeoutError",
    "PlanMade",
    "Pricing",
    "RequirementScored",
    "RunFinished",
    "RunRecord",
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
    "tool",
]
