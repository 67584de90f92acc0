"""Agent.chat: the direct tool-calling loop used by assistants."""

from __future__ import annotations

import anyio

from maestro.agent import Agent
from maestro.budget import Budget
from maestro.events import Event, TextDelta, ToolCallFinished
from maestro.messages import AssistantMessage, ToolResultMessage, UserMessage
from maestro.testing import ScriptedModel, tool_call
from maestro.tool import tool


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_tool_calls_run_and_results_return_to_the_model() -> None:
    model = ScriptedModel([[tool_call("add", {"a": 2, "b": 3})], "2 + 3 = 5"])
    events: list[Event] = []

    async def collect(event: Event) -> None:
        events.append(event)

    result = await Agent(model, tools=[add], instructions="Be exact.").chat(
        "2+3?", on_event=collect
    )
    assert result.answer == "2 + 3 = 5" and result.finish_reason == "stop"
    second = model.requests[1].messages
    assert isinstance(second[-1], ToolResultMessage) and second[-1].content == "5"
    assert model.requests[0].options.tool_choice == "auto"
    assert [type(m).__name__ for m in result.new_messages] == [
        "UserMessage",
        "AssistantMessage",
        "ToolResultMessage",
        "AssistantMessage",
    ]
    assert any(isinstance(e, ToolCallFinished) and e.result == "5" for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "2 + 3 = 5"


async def test_bad_arguments_go_back_as_errors_and_history_continues() -> None:
    model = ScriptedModel(
        [tool_call("add", {"a": "two", "b": 3}), tool_call("add", {"a": 2, "b": 3}), "5"]
    )
    agent = Agent(model, tools=[add])
    result = await agent.chat("2+3?")
    error = model.requests[1].messages[-1]
    assert isinstance(error, ToolResultMessage) and error.is_error
    assert "a: Input should be a valid integer" in error.content
    follow = ScriptedModel(["still 5"])
    again = await Agent(follow, tools=[add]).chat("sure?", history=result.messages)
    assert again.answer == "still 5"
    assert isinstance(follow.requests[0].messages[-1], UserMessage)
    assert len(follow.requests[0].messages) == len(result.messages) + 1


async def test_parallel_calls_run_concurrently() -> None:
    first, second = anyio.Event(), anyio.Event()

    @tool
    async def wait_for(name: str) -> str:
        """Rendezvous."""
        mine, other = (first, second) if name == "first" else (second, first)
        mine.set()
        with anyio.fail_after(5):
            await other.wait()
        return name

    model = ScriptedModel(
        [
            [tool_call("wait_for", {"name": "first"}), tool_call("wait_for", {"name": "second"})],
            "ok",
        ]
    )
    result = await Agent(model, tools=[wait_for]).chat("go")
    contents = [m.content for m in model.requests[1].messages if isinstance(m, ToolResultMessage)]
    assert contents == ["first", "second"] and result.tool_calls == 2


async def test_max_turns_and_budget_end_the_chat() -> None:
    loop_forever = ScriptedModel([tool_call("add", {"a": 1, "b": 1})] * 3)
    result = await Agent(loop_forever, tools=[add]).chat("loop", max_turns=3)
    assert result.finish_reason == "max_turns"
    capped = ScriptedModel([tool_call("add", {"a": 1, "b": 1})] * 5)
    result = await Agent(capped, tools=[add], budget=Budget(max_tool_calls=2)).chat("loop")
    assert result.finish_reason == "max_tool_calls" and result.tool_calls == 2


async def test_unapproved_tool_does_not_run_in_chat() -> None:
    ran: list[str] = []

    @tool(requires_approval=True)
    def delete(path: str) -> str:
        """Delete a file."""
        ran.append(path)
        return "deleted"

    model = ScriptedModel([tool_call("delete", {"path": "/x"}), "I could not delete it."])
    result = await Agent(model, tools=[delete], approval=lambda r: False).chat("delete /x")
    assert ran == []
    denial = model.requests[1].messages[-1]
    assert isinstance(denial, ToolResultMessage) and "denied" in denial.content
    assert isinstance(result.messages[-1], AssistantMessage)
