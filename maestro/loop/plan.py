"""Typed plans: the model routes each sub-task to an exact tool (MRKL) instead of guessing.

The planner answers under the :class:`Plan` JSON schema (constrained decoding on the local
engine, ``json_schema`` on remote ones). A plan is then checked against the tools the agent
really has — unknown tools, duplicate ids, missing or cyclic dependencies, too many steps —
and every problem goes back to the model for another try, so a routing mistake is caught
before anything runs. A step may use an earlier step's result in its arguments by writing
``"{{step_id}}"``; the reference is added to ``depends_on`` automatically.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pydantic

from maestro.errors import UnexpectedModelBehavior
from maestro.loop.context import RunContext
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    SystemMessage,
    UserMessage,
)
from maestro.tool import Tool

REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")


class PlanStep(pydantic.BaseModel):
    """One tool call in a plan. ``tool=None`` is a note the answer covers without a tool."""

    id: str = pydantic.Field(description="short unique id such as s1")
    tool: str | None = pydantic.Field(description="exact name of one of the listed tools")
    args: dict[str, Any] = pydantic.Field(description="arguments matching the tool's schema")
    depends_on: list[str] = pydantic.Field(description="ids of steps whose results this uses")
    purpose: str = ""


class Plan(pydantic.BaseModel):
    # ``steps`` is required and comes first, so a grammar-constrained planner must write the
    # steps before any prose (with a default, "{}" would be valid and useless; with the
    # rationale first, a small model spends its token budget explaining).
    steps: list[PlanStep]
    rationale: str = ""


PLAN_ADAPTER: pydantic.TypeAdapter[Plan] = pydantic.TypeAdapter(Plan)


def references(value: Any) -> set[str]:
    """Step ids referenced as ``{{id}}`` anywhere inside ``value``."""
    if isinstance(value, str):
        return set(REFERENCE.findall(value))
    if isinstance(value, dict):
        return set().union(*(references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(references(v) for v in value)) if value else set()
    return set()


def check_plan(plan: Plan, tools: dict[str, Tool], max_steps: int) -> list[str]:
    """Problems with a plan, in words the model can act on; empty when it is runnable."""
    problems: list[str] = []
    if len(plan.steps) > max_steps:
        problems.append(f"the plan has {len(plan.steps)} steps; use at most {max_steps}")
    ids = [s.id for s in plan.steps]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"step ids must be unique; repeated: {duplicates}")
    known = set(ids)
    for step in plan.steps:
        # A step never needs its own result; small models write their own id here.
        step.depends_on = sorted((set(step.depends_on) | references(step.args)) - {step.id})
        if step.tool is not None and step.tool not in tools:
            problems.append(
                f"step {step.id!r} uses unknown tool {step.tool!r}; "
                f"available tools: {sorted(tools)}"
            )
        missing = [d for d in step.depends_on if d not in known]
        if missing:
            problems.append(f"step {step.id!r} depends on unknown step(s) {missing}")
    if not problems and _has_cycle(plan):
        problems.append("the steps' dependencies form a cycle")
    return problems


def drop_duplicate_steps(plan: Plan) -> Plan:
    """Remove steps that repeat an earlier step exactly (same tool, arguments, dependencies),
    pointing references at the kept step. Small models under a grammar tend to fill the step
    budget with copies; running a call twice buys nothing and may repeat a side effect."""
    kept: list[PlanStep] = []
    seen: dict[str, str] = {}
    alias: dict[str, str] = {}
    for step in plan.steps:
        step = _rename_references(step, alias)
        if step.tool is None:
            kept.append(step)
            continue
        signature = json.dumps([step.tool, step.args, sorted(step.depends_on)], sort_keys=True)
        if signature in seen:
            alias[step.id] = seen[signature]
            continue
        seen[signature] = step.id
        kept.append(step)
    return plan.model_copy(update={"steps": kept})


def _rename_references(step: PlanStep, alias: dict[str, str]) -> PlanStep:
    if not alias:
        return step

    def rename(value: Any) -> Any:
        if isinstance(value, str):
            return REFERENCE.sub(lambda m: "{{" + alias.get(m.group(1), m.group(1)) + "}}", value)
        if isinstance(value, dict):
            return {k: rename(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rename(v) for v in value]
        return value

    depends = sorted({alias.get(d, d) for d in step.depends_on})
    return step.model_copy(update={"args": rename(step.args), "depends_on": depends})


def _has_cycle(plan: Plan) -> bool:
    graph = {s.id: s.depends_on for s in plan.steps}
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(node: str) -> bool:
        if state.get(node) == 1:
            return True
        if state.get(node) == 2:
            return False
        state[node] = 1
        if any(visit(d) for d in graph.get(node, [])):
            return True
        state[node] = 2
        return False

    return any(visit(n) for n in graph)


def planner_prompt(tools: dict[str, Tool], max_steps: int, instructions: str) -> str:
    listing = "\n".join(
        f"- {t.name}: {t.description}\n  arguments schema: {json.dumps(t.parameters)}"
        for t in tools.values()
    )
    extra = f"\n\nInstructions from the agent's author:\n{instructions}" if instructions else ""
    return (
        "You plan the tool calls needed to answer a task. Reply with only a JSON object: "
        '{"steps": [{"id": "s1", "tool": "<tool name>", "args": {...}, "depends_on": []}], '
        '"rationale": "<one short sentence>"}.\n'
        "Rules:\n"
        "- Use only the tools listed below, by their exact names, with arguments that match "
        "their schemas.\n"
        "- When a tool computes something exactly (arithmetic, database queries, unit "
        "conversion, lookups), call it; never work such results out yourself.\n"
        "- Steps without dependencies run in parallel. To use an earlier step's result, write "
        '"{{step_id}}" inside the arguments and list that step in depends_on.\n'
        f"- At most {max_steps} steps. If no tool is needed, return an empty steps list.\n\n"
        f"Tools:\n{listing}{extra}"
    )


_REFERENCE_STRING = {"type": "string", "pattern": r"^\{\{[A-Za-z0-9_.-]+\}\}$"}


def _args_with_references(parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool's argument schema where each top-level argument may also be ``"{{step_id}}"``,
    so a constrained planner can still chain steps through numeric or structured args."""
    args = copy.deepcopy(parameters)
    for name, spec in args.get("properties", {}).items():
        args["properties"][name] = {"anyOf": [spec, _REFERENCE_STRING]}
    return args


def plan_schema(tools: dict[str, Tool], max_steps: int) -> dict[str, Any]:
    """The Plan schema narrowed to the agent's real tools, for constrained decoding.

    Each step is one variant per tool: ``tool`` is that tool's name and ``args`` its own
    argument schema, so under a grammar the planner can neither route to a tool that does not
    exist nor extract arguments of the wrong shape (MRKL's checked argument extraction).
    Tools whose schemas use ``$ref`` (nested models) keep a generic object for ``args``,
    since their references would not resolve inside the plan's schema; their arguments are
    still validated before the tool runs.
    """
    schema = copy.deepcopy(PLAN_ADAPTER.json_schema())
    base = schema["$defs"]["PlanStep"]
    variants = []
    for name in sorted(tools):
        parameters = tools[name].parameters
        self_contained = "$ref" not in json.dumps(parameters)
        variant = copy.deepcopy(base)
        variant["properties"]["tool"] = {"const": name}
        if self_contained:
            variant["properties"]["args"] = _args_with_references(parameters)
        variants.append(variant)
    note = copy.deepcopy(base)
    note["properties"]["tool"] = {"type": "null"}
    variants.append(note)
    for variant in variants:
        # Short ids and notes keep a small model from rambling inside the JSON; these bounds
        # guide decoding only, validation does not enforce them.
        props = variant["properties"]
        # Ids come from a fixed list, so a small model cannot depend on a step that does not
        # exist (it otherwise writes numbers from the task into depends_on).
        step_ids = [f"s{i}" for i in range(1, max_steps + 1)]
        props["id"] = {"enum": step_ids, "description": props["id"].get("description", "")}
        props["depends_on"]["items"] = {"enum": step_ids}
        props["purpose"]["maxLength"] = 160
    schema["$defs"]["PlanStep"] = {"anyOf": variants}
    schema["properties"]["steps"]["maxItems"] = max_steps
    schema["properties"]["rationale"]["maxLength"] = 240
    return schema


async def make_plan(
    ctx: RunContext,
    *,
    task: str,
    tools: dict[str, Tool],
    max_steps: int,
    instructions: str,
    key: str,
    context: str = "",
    retries: int = 2,
) -> Plan:
    """Ask for a plan and check it; problems go back to the model, at most ``retries`` times."""
    user = task if not context else f"{task}\n\n{context}"
    messages: list[Message] = [
        SystemMessage(planner_prompt(tools, max_steps, instructions)),
        UserMessage(user),
    ]
    # Room for every step plus a short rationale; a truncated plan is retried with double.
    options = ModelRequestOptions(temperature=0.0, max_tokens=160 + 96 * max_steps)
    schema = plan_schema(tools, max_steps)
    problems: list[str] = []
    for attempt in range(retries + 1):
        attempt_key = key if attempt == 0 else f"{key}:fix{attempt}"
        plan, response = await ctx.request_structured(
            attempt_key, "plan", messages, options, PLAN_ADAPTER, schema=schema
        )
        problems = check_plan(plan, tools, max_steps)
        if not problems:
            return drop_duplicate_steps(plan)
        messages = [
            *messages,
            AssistantMessage(response.text or plan.model_dump_json()),
            UserMessage("The plan cannot run: " + "; ".join(problems) + ". Send a corrected plan."),
        ]
    raise UnexpectedModelBehavior("no runnable plan after retries: " + "; ".join(problems))
