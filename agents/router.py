"""A MRKL router: send each request to the expert (an agent or a function) that fits it.

::

    router = Router(model, [
        Route("math", "arithmetic and unit conversions", math_agent, keywords=("sum", "%")),
        Route("policy", "questions about company policies", researcher_agent,
              keywords=("leave", "expenses", "policy")),
    ], default="policy")
    decision = await router.choose("How many days of leave do I get?")   # route, method, reason
    routed = await router.run("What is 17% of 2,340?")                  # decision + answer

**The model decides first**, under a choice constraint: its answer must be JSON
``{"route": <one of the route names>}`` (the embedded engine decodes it under that schema, so
it cannot name a route that does not exist). **A deterministic fallback** takes over when the
model fails or its answer is unusable: the route whose keywords (whole words or symbols,
case-insensitive) occur most often in the request, else the default route. The decision
records which of the two made it, so a caller can audit the routing.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from maestro import (
    Agent,
    Model,
    ModelError,
    ModelRequestOptions,
    RunResult,
    SystemMessage,
    UserError,
    UserMessage,
)

Handler = Agent | Callable[[str], str | Awaitable[str]]
Method = Literal["model", "keywords", "default"]


@dataclass(frozen=True, slots=True)
class Route:
    """An expert: a name the model picks, a description it reads, and the handler."""

    name: str
    description: str
    handler: Handler
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: str
    method: Method
    reason: str


@dataclass(slots=True)
class RoutedAnswer:
    decision: RouteDecision
    answer: str
    result: RunResult | None  # set when the handler is an Agent


class Router:
    """Routes requests among ``routes`` (see the module docstring)."""

    def __init__(
        self, model: Model | str | None, routes: Sequence[Route], *, default: str | None = None
    ) -> None:
        from maestro.llm.spec import resolve_model

        if not routes:
            raise UserError("a router needs at least one route")
        self.routes = {r.name: r for r in routes}
        if len(self.routes) != len(routes):
            raise UserError("route names must be unique")
        if default is not None and default not in self.routes:
            raise UserError(f"default route {default!r} is not one of {sorted(self.routes)}")
        self.default = default or routes[0].name
        self.model = resolve_model(model)

    def schema(self) -> dict[str, object]:
        return {
            "type": "object",
            "properties": {"route": {"type": "string", "enum": list(self.routes)}},
            "required": ["route"],
        }

    async def choose(self, request: str) -> RouteDecision:
        """The route for ``request``: the model's choice, else the keyword fallback."""
        menu = "\n".join(f"- {r.name}: {r.description}" for r in self.routes.values())
        prompt = (
            "Pick the one expert best suited to the user's request. Experts:\n"
            f'{menu}\nAnswer with JSON only: {{"route": "<expert name>"}}.'
        )
        options = ModelRequestOptions(temperature=0.0, max_tokens=40, response_format=self.schema())
        try:
            response = await self.model.request(
                [SystemMessage(prompt), UserMessage(request)], options
            )
            choice = _parse_choice(response.text)
        except ModelError as exc:
            choice, why = None, f"model failed ({exc})"
        else:
            why = f"model answered {response.text.strip()[:80]!r}"
        if choice in self.routes:
            return RouteDecision(choice, "model", f"chosen by {self.model.model_name}")
        return self.fallback(request, why)

    def fallback(self, request: str, why: str = "") -> RouteDecision:
        """The deterministic choice: most keyword hits, ties to the earlier route; else default."""
        text = request.lower()
        best, best_hits = None, 0
        for route in self.routes.values():
            hits = sum(_count(text, k.lower()) for k in route.keywords)
            if hits > best_hits:
                best, best_hits = route.name, hits
        prefix = f"{why}; " if why else ""
        if best is not None:
            return RouteDecision(best, "keywords", f"{prefix}{best_hits} keyword hit(s)")
        return RouteDecision(self.default, "default", f"{prefix}no keyword matched")

    async def run(self, request: str) -> RoutedAnswer:
        decision = await self.choose(request)
        handler = self.routes[decision.route].handler
        if isinstance(handler, Agent):
            result = await handler.run(request)
            return RoutedAnswer(decision, result.answer, result)
        value = handler(request)
        answer = await value if inspect.isawaitable(value) else value
        return RoutedAnswer(decision, str(answer), None)


def _parse_choice(text: str) -> str | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    route = data.get("route") if isinstance(data, dict) else None
    return route if isinstance(route, str) else None


def _count(text: str, keyword: str) -> int:
    if not keyword:
        return 0
    if re.fullmatch(r"\w[\w\s-]*", keyword):  # a word or phrase: whole words only
        return len(re.findall(rf"\b{re.escape(keyword)}\b", text))
    return text.count(keyword)  # a symbol such as "%" or "+"


__all__ = ["Handler", "Route", "RouteDecision", "RoutedAnswer", "Router"]
