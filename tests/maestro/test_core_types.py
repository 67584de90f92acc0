"""Messages and their OpenAI converters, usage, requirements scoring, budgets, events,
tracing, and the public API of ``maestro``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import maestro
from maestro.budget import Budget, BudgetTracker
from maestro.errors import BudgetExceeded, UnexpectedModelBehavior, UserError
from maestro.events import RequirementScored
from maestro.messages import (
    AssistantMessage,
    ModelResponse,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    from_openai,
    response_from_openai,
    to_openai,
)
from maestro.requirements import (
    Requirement,
    RequirementScore,
    normalize_check_result,
    overall_score,
    run_check,
)


def test_openai_round_trip() -> None:
    messages = [
        SystemMessage("sys"),
        UserMessage("hi"),
        AssistantMessage(None, [ToolCall("c1", "add", {"a": 1})]),
        ToolResultMessage("c1", "add", "1", is_error=False),
        AssistantMessage("done"),
    ]
    wire = to_openai(messages)
    assert wire[2]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    back = from_openai(json.loads(json.dumps(wire)))
    assert back == messages


def test_from_openai_errors_and_content_parts() -> None:
    assert from_openai([{"role": "user", "content": [{"type": "text", "text": "a"}]}]) == [
        UserMessage("a")
    ]
    with pytest.raises(UserError, match="unknown message role"):
        from_openai([{"role": "robot", "content": "x"}])
    bad_args = {
        "role": "assistant",
        "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{oops"}}],
    }
    with pytest.raises(UnexpectedModelBehavior, match="not valid JSON"):
        from_openai([bad_args])
    with pytest.raises(UnexpectedModelBehavior):
        response_from_openai({"choices": []})


def test_usage_adds_and_response_serialises() -> None:
    total = Usage(1, 2, 1, 0.5) + Usage(3, 4, 1, 0.25)
    assert total == Usage(4, 6, 2, 0.75) and total.total_tokens == 10
    response = ModelResponse(
        AssistantMessage("x", [ToolCall("i", "n", {"k": [1]})]), total, "stop", "m"
    )
    assert ModelResponse.from_dict(json.loads(json.dumps(response.to_dict()))) == response


def test_check_results_are_normalised() -> None:
    assert normalize_check_result(True) == (1.0, "met")
    assert normalize_check_result((0.5, "half")) == (0.5, "half")
    assert normalize_check_result((False, "nope")) == (0.0, "nope")
    with pytest.raises(UserError, match=r"within 0\.\.1"):
        normalize_check_result(1.5)
    with pytest.raises(UserError):
        normalize_check_result("yes")


async def test_a_check_that_raises_fails_its_requirement() -> None:
    req = Requirement("parses", check=lambda a: int(a) > 0)
    score, reason = await run_check(req, "not a number")
    assert score == 0.0 and "ValueError" in reason


def test_overall_score_weighted_and_gated_by_mandatory() -> None:
    a = Requirement("a", weight=3.0)
    b = Requirement("b", weight=1.0)
    m = Requirement("m", mandatory=True)

    def s(req: Requirement, value: float) -> RequirementScore:
        return RequirementScore(
            req.name, req.description, value, "", value >= 1.0, req.mandatory, 0
        )

    assert overall_score([s(a, 1.0), s(b, 0.0)], [a, b]) == 0.75
    assert overall_score([s(a, 1.0), s(b, 1.0), s(m, 0.9)], [a, b, m]) == 0.0
    assert overall_score([], []) == 1.0
    with pytest.raises(UserError):
        Requirement("  ")


def test_budget_presets_and_caps() -> None:
    assert Budget.of("high").candidates == 3 and Budget.of("low").fix_rounds == 1
    assert Budget.coerce("medium").max_replans == 1
    with pytest.raises(UserError, match="unknown budget preset"):
        Budget.of("extreme")
    tracker = BudgetTracker(Budget(max_model_calls=1, max_input_tokens=100, max_output_tokens=50))
    assert tracker.check_model_call(10) == 50
    with pytest.raises(BudgetExceeded) as info:  # the admitted call holds the only slot
        tracker.check_model_call(10)
    assert info.value.reason == "max_model_calls"
    tracker.release_model_call()
    with pytest.raises(BudgetExceeded) as info:
        tracker.check_model_call(200)
    assert info.value.reason == "max_input_tokens"
    tracker.record_model(Usage(10, 20, 1))
    with pytest.raises(BudgetExceeded) as info:
        tracker.check_model_call(1)
    assert info.value.reason == "max_model_calls"
    assert Budget.from_dict(Budget.of("high", max_usd=1.0).to_dict()) == Budget.of(
        "high", max_usd=1.0
    )


def test_wall_clock_cap_uses_the_injected_clock() -> None:
    now = [0.0]
    tracker = BudgetTracker(Budget(max_wall_seconds=10), clock=lambda: now[0])
    tracker.check_tool_call()
    now[0] = 11.0
    with pytest.raises(BudgetExceeded) as info:
        tracker.check_tool_call()
    assert info.value.reason == "max_wall_time"


def test_events_have_type_and_json_dict() -> None:
    event = RequirementScored(run_id="r", requirement="x", score=0.5, reason="r", round=1)
    data = event.to_dict()
    assert data["type"] == "requirement_scored" and data["run_id"] == "r"
    json.dumps(data)
    with pytest.raises(AttributeError):
        event.score = 1.0  # type: ignore[misc]


async def test_spans_follow_genai_conventions_when_enabled() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from maestro.agent import Agent
    from maestro.testing import ScriptedModel, plan, plan_step
    from maestro.tool import tool

    @tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    maestro.enable_tracing(provider)
    try:
        model = ScriptedModel([plan(plan_step("s1", "echo", {"text": "hi"})), "hi"])
        await Agent(model, tools=[echo], name="tester").run("echo hi")
    finally:
        maestro.disable_tracing()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"invoke_agent tester", "chat scripted", "execute_tool echo"} <= set(spans)
    assert spans["execute_tool echo"].attributes["gen_ai.tool.name"] == "echo"
    assert spans["chat scripted"].attributes["gen_ai.operation.name"] == "chat"
    assert spans["chat scripted"].attributes["gen_ai.usage.output_tokens"] > 0


def test_public_api_is_sorted_and_importable() -> None:
    assert maestro.__all__ == sorted(maestro.__all__)
    for name in maestro.__all__:
        assert getattr(maestro, name) is not None, name


def test_import_maestro_stays_light() -> None:
    code = (
        "import sys, maestro; heavy = [m for m in ('torch', 'textual', 'httpx', "
        "'opentelemetry', 'model') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plan_schema_routes_to_real_tools_with_their_argument_shapes() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from maestro.loop.plan import plan_schema
    from maestro.tool import tool

    @tool
    def inc(x: int) -> int:
        """Increment."""
        return x + 1

    schema = plan_schema({"inc": inc}, max_steps=2)
    chained = {
        "rationale": "r",
        "steps": [
            {"id": "s1", "tool": "inc", "args": {"x": 1}, "depends_on": []},
            {"id": "s2", "tool": "inc", "args": {"x": "{{s1}}"}, "depends_on": ["s1"]},
        ],
    }
    jsonschema.validate(chained, schema)
    for bad in (
        {
            "rationale": "r",
            "steps": [{"id": "s1", "tool": "dec", "args": {"x": 1}, "depends_on": []}],
        },
        {
            "rationale": "r",
            "steps": [{"id": "s1", "tool": "inc", "args": {"x": "one"}, "depends_on": []}],
        },
        {"rationale": "r", "steps": chained["steps"] * 2},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_duplicate_plan_steps_are_dropped_and_references_follow() -> None:
    from maestro.loop.plan import PLAN_ADAPTER, drop_duplicate_steps
    from maestro.testing import plan, plan_step

    raw = plan(
        plan_step("s1", "calc", {"e": "17*23"}),
        plan_step("s2", "calc", {"e": "17*23"}),
        plan_step("s3", "fmt", {"v": "{{s2}}"}, depends_on=["s2"]),
    )
    deduped = drop_duplicate_steps(PLAN_ADAPTER.validate_json(raw))
    assert [s.id for s in deduped.steps] == ["s1", "s3"]
    assert deduped.steps[1].args == {"v": "{{s1}}"} and deduped.steps[1].depends_on == ["s1"]


def test_usd_cap_refuses_a_prompt_that_alone_would_cross_it() -> None:
    tracker = BudgetTracker(Budget(max_usd=0.01))
    tracker.check_model_call(10, estimated_input_usd=0.001)
    with pytest.raises(BudgetExceeded) as info:
        tracker.check_model_call(10_000, estimated_input_usd=0.02)
    assert info.value.reason == "max_usd" and tracker.usage.requests == 0
