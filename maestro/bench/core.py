"""``maestro bench core``: what the orchestration itself costs, per step and in memory.

The agent runs a plan of N tool steps against :class:`~maestro.testing.ScriptedModel`, with
trivial tools, and every model and tool call is timed from the inside. Orchestration overhead
per step is ``(wall time - model time - tool time) / N``: planning checks, dependency
scheduling, argument substitution, validation, events, journal writes to the run store,
budget checks and the drafting that follows. Two plan shapes: N independent steps (one
concurrent wave) and a chain of N dependent steps (each waits for the previous).

Measured in the same process beside it: the same N tool calls made directly with
``asyncio.gather`` (a plain loop for the chain) — no validation, no events, no store, the
floor any framework sits on — and, when ``pydantic-ai`` is installed
(``pip install maestro-agents[bench]``), pydantic-ai's agent with a ``FunctionModel`` that
asks for the N calls at once (independent) or one per turn (chain), timed the same way.
Its loop differs (no plan, a model turn per chained call, no run store), so the ratio says
what each framework's bookkeeping costs per tool call, not which design is better. Peak memory of a 100-step run is measured separately with
``tracemalloc`` (Python allocations), since tracing allocations slows the timed runs.
Target: at most 2 ms of overhead per step.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

from maestro.agent import Agent
from maestro.bench import machine_info
from maestro.budget import Budget
from maestro.llm.base import Model, StreamEvent
from maestro.messages import Message, ModelRequestOptions, ModelResponse
from maestro.testing import ScriptedModel, plan, plan_step
from maestro.tool import Tool, tool

TARGET_MS_PER_STEP = 2.0


class _TimedModel(Model):
    """Wraps a model and adds up the time spent inside it."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.seconds = 0.0

    async def request(self, messages: list[Message], options: ModelRequestOptions) -> ModelResponse:
        started = time.perf_counter()
        try:
            return await self.inner.request(messages, options)
        finally:
            self.seconds += time.perf_counter() - started

    async def stream(
        self, messages: list[Message], options: ModelRequestOptions
    ) -> AsyncIterator[StreamEvent]:
        started = time.perf_counter()
        try:
            async for event in self.inner.stream(messages, options):
                yield event
        finally:
            self.seconds += time.perf_counter() - started


class _ToolClock:
    def __init__(self) -> None:
        self.seconds = 0.0


def _make_tool(clock: _ToolClock) -> Tool:
    @tool
    async def increment(x: int) -> int:
        """Add one to x."""
        started = time.perf_counter()
        value = x + 1
        clock.seconds += time.perf_counter() - started
        return value

    return increment


def _script(steps: int, chain: bool) -> list[Any]:
    if chain:
        plan_steps = [plan_step("s0", "increment", {"x": 0})] + [
            plan_step(f"s{i}", "increment", {"x": f"{{{{s{i - 1}}}}}"}) for i in range(1, steps)
        ]
    else:
        plan_steps = [plan_step(f"s{i}", "increment", {"x": i}) for i in range(steps)]
    return [plan(*plan_steps), "done"]


async def _one_run(steps: int, chain: bool) -> dict[str, float]:
    clock = _ToolClock()
    model = _TimedModel(ScriptedModel(_script(steps, chain)))
    agent = Agent(model, tools=[_make_tool(clock)], budget=Budget(max_plan_steps=steps))
    started, cpu_started = time.perf_counter(), time.process_time()
    result = await agent.run("bench")
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if result.finish_reason != "completed" or len(result.data_sources) != steps:
        raise RuntimeError(f"bench run did not complete: {result.finish_reason}")
    overhead = wall - model.seconds - clock.seconds
    return {
        "wall_ms": wall * 1000,
        "overhead_ms_per_step": overhead * 1000 / steps,
        # CPU time of the whole run per step (the scripted model and tools are trivial):
        # steadier than wall time on a shared machine.
        "cpu_ms_per_step": cpu * 1000 / steps,
    }


async def _baseline(steps: int, chain: bool) -> float:
    """ms per call of the same tool function called directly (no framework)."""

    async def increment(x: int) -> int:
        return x + 1

    started = time.perf_counter()
    if chain:
        value = 0
        for _ in range(steps):
            value = await increment(value)
    else:
        await asyncio.gather(*(increment(i) for i in range(steps)))
    return (time.perf_counter() - started) * 1000 / steps


async def _pydantic_ai_run(steps: int, chain: bool) -> float | None:
    """pydantic-ai's overhead in ms per tool call, or None when it is not installed."""
    try:
        from pydantic_ai import Agent as PaiAgent
        from pydantic_ai.messages import ModelMessage, TextPart, ToolCallPart, ToolReturnPart
        from pydantic_ai.messages import ModelResponse as PaiResponse
        from pydantic_ai.models.function import AgentInfo, FunctionModel
        from pydantic_ai.usage import UsageLimits
    except ImportError:
        return None
    inside = [0.0]

    def respond(messages: list[ModelMessage], info: AgentInfo) -> PaiResponse:
        started = time.perf_counter()
        returns = [
            p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)
        ]
        if chain and len(returns) < steps:
            last = int(str(returns[-1].content)) if returns else 0
            parts: list[Any] = [
                ToolCallPart("increment", {"x": last}, tool_call_id=f"c{len(returns)}")
            ]
        elif not chain and not returns:
            parts = [
                ToolCallPart("increment", {"x": i}, tool_call_id=f"c{i}") for i in range(steps)
            ]
        else:
            parts = [TextPart("done")]
        inside[0] += time.perf_counter() - started
        return PaiResponse(parts=parts)

    agent = PaiAgent(FunctionModel(respond))

    @agent.tool_plain
    async def increment(x: int) -> int:
        """Add one to x."""
        started = time.perf_counter()
        value = x + 1
        inside[0] += time.perf_counter() - started
        return value

    started = time.perf_counter()
    await agent.run("bench", usage_limits=UsageLimits(request_limit=steps + 2))
    return (time.perf_counter() - started - inside[0]) * 1000 / steps


async def _measure(steps: int, chain: bool, repeats: int) -> dict[str, Any]:
    await _one_run(steps, chain)  # warm-up: imports, pydantic schema caches
    runs = []
    for _ in range(repeats):
        gc.collect()
        runs.append(await _one_run(steps, chain))
    baseline = statistics.median([await _baseline(steps, chain) for _ in range(repeats)])
    overhead = statistics.median(r["overhead_ms_per_step"] for r in runs)
    competitor: float | None = None
    if await _pydantic_ai_run(steps, chain) is not None:  # warm-up, then measure
        samples = [await _pydantic_ai_run(steps, chain) for _ in range(repeats)]
        competitor = statistics.median(x for x in samples if x is not None)
    return {
        "pydantic_ai_ms_per_step": None if competitor is None else round(competitor, 4),
        "ratio_vs_pydantic_ai": None if competitor is None else round(overhead / competitor, 3),
        "steps": steps,
        "shape": "chain" if chain else "independent",
        "repeats": repeats,
        "overhead_ms_per_step": round(overhead, 4),
        "wall_ms_median": round(statistics.median(r["wall_ms"] for r in runs), 2),
        "cpu_ms_per_step": round(statistics.median(r["cpu_ms_per_step"] for r in runs), 4),
        "direct_call_ms_per_step": round(baseline, 5),
        "within_target": overhead <= TARGET_MS_PER_STEP,
    }


async def _peak_memory(steps: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        await _one_run(steps, chain=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"steps": steps, "peak_python_mib": round(peak / 2**20, 3)}


async def _run_all(quick: bool) -> dict[str, Any]:
    steps = 20 if quick else 100
    repeats = 3 if quick else 5
    return {
        "benchmark": "core",
        "machine": machine_info(),
        "settings": {
            "steps": steps,
            "repeats": repeats,
            "store": "InMemoryRunStore",
            "model": "ScriptedModel",
            "target_ms_per_step": TARGET_MS_PER_STEP,
        },
        "results": [await _measure(steps, False, repeats), await _measure(steps, True, repeats)],
        "memory": await _peak_memory(steps),
        "versions": _versions(),
    }


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in ("maestro-agents", "pydantic", "anyio", "pydantic-ai-slim"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def main(json_output: bool = False, quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; print a table unless ``json_output`` (the caller prints JSON)."""
    report = asyncio.run(_run_all(quick))
    if not json_output:
        machine = report["machine"]
        print(
            f"maestro bench core — {machine.get('cpu', machine['processor'])}, "
            f"{machine['cpu_count']} CPUs, Python {machine['python']}"
        )
        print(f"settings: {json.dumps(report['settings'])}")
        print(
            f"{'shape':<12} {'steps':>5} {'overhead ms/step':>17} {'direct ms/call':>15} "
            f"{'pydantic-ai ms/call':>20} {'ratio':>6} {'cpu ms/step':>12} {'wall ms':>9}  target"
        )
        for row in report["results"]:
            pai = row["pydantic_ai_ms_per_step"]
            pai_text = "not installed" if pai is None else f"{pai:.3f}"
            ratio = row["ratio_vs_pydantic_ai"]
            ratio_text = "-" if ratio is None else f"{ratio:.2f}"
            verdict = "ok" if row["within_target"] else "MISSED"
            print(
                f"{row['shape']:<12} {row['steps']:>5} {row['overhead_ms_per_step']:>17.3f} "
                f"{row['direct_call_ms_per_step']:>15.4f} {pai_text:>20} {ratio_text:>6} "
                f"{row['cpu_ms_per_step']:>12.3f} "
                f"{row['wall_ms_median']:>9.1f}  {verdict} (≤ {TARGET_MS_PER_STEP} ms)"
            )
        versions = report["versions"]
        print(f"versions: {json.dumps(versions)}")
        memory = report["memory"]
        print(
            f"peak Python memory of a {memory['steps']}-step run: "
            f"{memory['peak_python_mib']:.2f} MiB"
        )
    return report
