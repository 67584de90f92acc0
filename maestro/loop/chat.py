"""Direct tool-calling chat: the ReAct-style loop without planning, for assistants.

The model sees the conversation and the tools; when it answers with tool calls, they run
(concurrently when it asks for several at once), their results go back as tool messages, and
the model is asked again, until it answers in plain text or ``max_turns`` is reached.
Arguments are validated exactly as in planned runs: a bad call or a ``ToolRetry`` returns to
the model as an error result (at most ``max_retries`` times per tool), tools that require
approval ask the approval callback first, and the budget is checked before every model and
tool call. This costs one model call per turn and no validation rounds; use ``Agent.run``
when requirements must be checked.
"""

from __future__ import annotations

import inspect
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from maestro import tracing
from maestro.budget import Budget, BudgetTracker
from maestro.errors import BudgetExceeded, ToolError, ToolRetry
from maestro.events import ApprovalRequested, Event, ToolCallFinished, ToolCallStarted
from maestro.llm.base import Model
from maestro.loop.context import RunContext
from maestro.loop.execute import ApprovalCallback, ApprovalRequest
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from maestro.runs import InMemoryRunStore
from maestro.tool import Tool, ToolContext, result_to_text

EventCallback = Callable[[Event], Awaitable[None]]


@dataclass(slots=True)
class ChatResult:
    """The reply and the whole conversation (pass ``messages`` back as the next history)."""

    answer: str
    messages: list[Message]
    usage: Usage
    tool_calls: int
    finish_reason: str  # "stop" | "max_turns" | a budget finish reason
    new_messages: list[Message] = field(default_factory=list)


async def _ignore(event: Event) -> None:
    return None


class ChatLoop:
    def __init__(
        self,
        *,
        model: Model,
        tools: dict[str, Tool],
        instructions: str,
        budget: Budget,
        approval: ApprovalCallback | None,
        on_event: EventCallback | None,
        agent_name: str,
    ) -> None:
        self.tools = tools
        self.approval = approval
        self.instructions = instructions
        self.ctx = RunContext(
            run_id=f"chat_{uuid.uuid4().hex[:16]}",
            agent_name=agent_name,
            model=model,
            store=InMemoryRunStore(),
            tracker=BudgetTracker(budget),
            sink=on_event or _ignore,
            finished_steps={},
        )
        self.retries: Counter[str] = Counter()

    async def run(self, message: str | None, history: list[Message], max_turns: int) -> ChatResult:
        messages: list[Message] = list(history)
        if self.instructions and not any(isinstance(m, SystemMessage) for m in messages):
            messages.insert(0, SystemMessage(self.instructions))
        start = len(messages)
        if message is not None:
            messages.append(UserMessage(message))
        options = ModelRequestOptions(
            tools=[t.definition for t in self.tools.values()],
            tool_choice="auto" if self.tools else None,
        )
        attributes = {
            tracing.OPERATION: "invoke_agent",
            tracing.AGENT_NAME: self.ctx.agent_name,
            tracing.REQUEST_MODEL: self.ctx.model.model_name,
            tracing.CONVERSATION_ID: self.ctx.run_id,
        }
        with tracing.span(f"invoke_agent {self.ctx.agent_name}", attributes):
            finish, answer = await self._turns(messages, options, max_turns)
        return ChatResult(
            answer=answer,
            messages=messages,
            usage=self.ctx.tracker.usage,
            tool_calls=self.ctx.tracker.tool_calls,
            finish_reason=finish,
            new_messages=messages[start:],
        )

    async def _turns(
        self, messages: list[Message], options: ModelRequestOptions, max_turns: int
    ) -> tuple[str, str]:
        """Model turns until a plain answer; returns (finish reason, answer)."""
        finish, answer = "max_turns", ""
        try:
            for turn in range(max_turns):
                response = await self.ctx.call_model(
                    f"chat:{turn}", "draft", messages, options, stream_text=True
                )
                messages.append(response.message)
                if not response.message.tool_calls:
                    finish, answer = "stop", response.text
                    break
                messages.extend(await self._run_calls(turn, response.message.tool_calls))
        except BudgetExceeded as exc:
            finish = exc.reason
            answer = next(
                (m.content or "" for m in reversed(messages) if isinstance(m, AssistantMessage)),
                "",
            )
        return finish, answer

    async def _run_calls(self, turn: int, calls: list[ToolCall]) -> list[ToolResultMessage]:
        results: list[ToolResultMessage | None] = [None] * len(calls)
        budget_stop: list[BudgetExceeded] = []

        async def one(index: int, call: ToolCall) -> None:
            try:
                results[index] = await self._run_call(turn, call)
            except BudgetExceeded as exc:
                budget_stop.append(exc)

        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                group.start_soon(one, index, call)
        if budget_stop:
            raise budget_stop[0]
        return [r for r in results if r is not None]

    async def _run_call(self, turn: int, call: ToolCall) -> ToolResultMessage:
        tool = self.tools.get(call.name)
        if tool is None:
            known = sorted(self.tools)
            text = f"Unknown tool {call.name!r}. Available tools: {known}."
            return ToolResultMessage(call.id, call.name, text, is_error=True)
        key = f"chat:{turn}:{call.id}"
        approved = False
        if tool.requires_approval:
            approved = await self._approve(key, tool, call)
            if not approved:
                return ToolResultMessage(
                    call.id,
                    tool.name,
                    "The user denied this tool call; it did not run.",
                    is_error=True,
                )
        self.ctx.tracker.check_tool_call()
        self.ctx.tracker.record_tool_call()
        await self.ctx.emit(
            ToolCallStarted(
                run_id=self.ctx.run_id, step_key=key, tool=tool.name, args=call.arguments
            )
        )
        tool_ctx = ToolContext(
            run_id=self.ctx.run_id,
            step_id=key,
            idempotency_key=self.ctx.idempotency_key(key),
            tool_call_id=call.id,
            attempt=self.retries[tool.name],
            approved=approved,
        )
        attributes = {
            tracing.OPERATION: "execute_tool",
            tracing.TOOL_NAME: tool.name,
            tracing.TOOL_CALL_ID: call.id,
        }
        try:
            with tracing.span(f"execute_tool {tool.name}", attributes):
                value = await tool.call(call.arguments, tool_ctx)
            text, is_error, retry = result_to_text(value), False, False
        except ToolRetry as exc:
            self.retries[tool.name] += 1
            retry = self.retries[tool.name] <= tool.max_retries
            suffix = "" if retry else " Do not call this tool again; answer without it."
            text, is_error = exc.message + suffix, True
        except ToolError as exc:
            text, is_error, retry = str(exc), True, False
        await self.ctx.emit(
            ToolCallFinished(
                run_id=self.ctx.run_id,
                step_key=key,
                tool=tool.name,
                result=None if is_error else text[:2000],
                error=text if is_error else None,
                retry=retry,
            )
        )
        return ToolResultMessage(call.id, tool.name, text, is_error=is_error)

    async def _approve(self, key: str, tool: Tool, call: ToolCall) -> bool:
        await self.ctx.emit(
            ApprovalRequested(
                run_id=self.ctx.run_id, step_key=key, tool=tool.name, args=call.arguments
            )
        )
        if self.approval is None:
            return False
        decision = self.approval(
            ApprovalRequest(self.ctx.run_id, key, tool.name, call.arguments, tool.description)
        )
        if inspect.isawaitable(decision):
            decision = await decision
        return bool(decision)
