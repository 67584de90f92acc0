"""``maestro bench core``: what the orchestration itself costs, per step and in memory.

The agent runs a plan of N tool steps against :class:`~maestro.testing.ScriptedModel`, with
trivial tools, and every model and tool call is timed from the inside. Orchestration overhead
per step is ``(wall time - model time - tool time) / N``: planning checks, dependency
scheduling, argument substitution, validation, events, journal writes to the run store,
budget checks and the drafting that follows. Two plan shapes: N independent steps (one
concurrent wave) and a chain of N dependent steps (each waits for the previous).

The baseline measured in the same process is the same N tool calls made directly with
``asyncio.gather`` (and in a plain loop for the chain): no validation, no events, no store —
the floor any framework sits on. Peak memory of a 100-step run is measured separately with
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
    started = time.perf_counter()
    result = await agent.run("bench")
    wall = time.perf_counter() - started
    if result.finish_reason != "completed" or len(result.data_sources) != steps:
        raise RuntimeError(f"bench run did not complete: {result.finish_reason}")
    overhead = wall - model.seconds - clock.seconds
    return {"wall_ms": wall * 1000, "overhead_ms_per_step": overhead * 1000 / steps}


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


async def _measure(steps: int, chain: bool, repeats: int) -> dict[str, Any]:
    await _one_run(steps, chain)  # warm-up: imports, pydantic schema caches
    runs = []
    for _ in range(repeats):
        gc.collect()
        runs.append(await _one_run(steps, chain))
    baseline = statistics.median([await _baseline(steps, chain) for _ in range(repeats)])
    overhead = statistics.median(r["overhead_ms_per_step"] for r in runs)
    return {
        "steps": steps,
        "shape": "chain" if chain else "independent",
        "repeats": repeats,
        "overhead_ms_per_step": round(overhead, 4),
        "wall_ms_median": round(statistics.median(r["wall_ms"] for r in runs), 2),
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
    }


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
            f"{'wall ms':>9}  target"
        )
        for row in report["results"]:
            print(
                f"{row['shape']:<12} {row['steps']:>5} {row['overhead_ms_per_step']:>17.3f} "
                f"{row['direct_call_ms_per_step']:>15.4f} {row['wall_ms_median']:>9.1f}  "
                f"{'ok' if row['within_target'] else 'MISSED'} (≤ {TARGET_MS_PER_STEP} ms)"
            )
        memory = report["memory"]
        print(
            f"peak Python memory of a {memory['steps']}-step run: "
            f"{memory['peak_python_mib']:.2f} MiB"
        )
    return report
