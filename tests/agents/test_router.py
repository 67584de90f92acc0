"""The MRKL router: the model's constrained choice first, keywords and the default after."""

from __future__ import annotations

import json

import pytest

from agents.router import Route, Router
from maestro import Agent, Message, ModelConnectionError, ModelRequestOptions, UserError
from maestro.testing import FunctionModel, ScriptedModel


def routes() -> list[Route]:
    return [
        Route("math", "arithmetic and percentages", lambda q: "math answer", ("sum", "%", "percent")),
        Route("policy", "company HR and expense policies", lambda q: "policy answer",
              ("leave", "expense", "policy")),
        Route("chat", "small talk and anything else", lambda q: "chat answer"),
    ]  # fmt: skip


def keyword_model(messages: list[Message], options: ModelRequestOptions) -> str:
    """A stand-in classifier that reads the route menu and the request like a model would."""
    assert options.response_format is not None
    allowed = options.response_format["properties"]["route"]["enum"]
    request = (messages[-1].content or "").lower()
    pick = (
        "math" if any(c.isdigit() for c in request) else "policy" if "leave" in request else "chat"
    )
    assert pick in allowed
    return json.dumps({"route": pick})


@pytest.mark.parametrize(
    ("request_text", "route"),
    [("What is 17% of 2340?", "math"), ("How much annual leave do I get?", "policy"),
     ("Hello there!", "chat")],
)  # fmt: skip
async def test_the_model_picks_the_route(request_text: str, route: str) -> None:
    router = Router(FunctionModel(keyword_model), routes())
    decision = await router.choose(request_text)
    assert (decision.route, decision.method) == (route, "model")
    routed = await router.run(request_text)
    assert routed.answer == f"{route} answer"


async def test_an_unusable_model_answer_falls_back_to_keywords() -> None:
    router = Router(ScriptedModel(['{"route": "weather"}', "no json"]), routes())
    first = await router.choose("Can I claim this expense under the policy?")
    assert (first.route, first.method) == ("policy", "keywords")
    assert "2 keyword hit(s)" in first.reason and "weather" in first.reason
    second = await router.choose("what is 5 percent of 80")
    assert (second.route, second.method) == ("math", "keywords")


async def test_a_failing_model_falls_back_and_unmatched_requests_go_to_the_default() -> None:
    def down(messages: list[Message], options: ModelRequestOptions) -> str:
        raise ModelConnectionError("connection refused")

    router = Router(FunctionModel(down), routes(), default="chat")
    decision = await router.choose("Tell me a story")
    assert (decision.route, decision.method) == ("chat", "default")
    assert "connection refused" in decision.reason


async def test_an_agent_route_runs_the_agent() -> None:
    expert = Agent(ScriptedModel(["The policy allows 25 days."]), name="policy-expert")
    router = Router(ScriptedModel(['{"route": "policy"}']),
                    [Route("policy", "policies", expert), *routes()[:1]])  # fmt: skip
    routed = await router.run("How many leave days?")
    assert routed.answer == "The policy allows 25 days." and routed.result is not None


def test_bad_routes_are_refused() -> None:
    with pytest.raises(UserError, match="at least one"):
        Router(ScriptedModel([]), [])
    with pytest.raises(UserError, match="unique"):
        Router(ScriptedModel([]), [routes()[0], routes()[0]])
    with pytest.raises(UserError, match="default route 'x'"):
        Router(ScriptedModel([]), routes(), default="x")
