"""Jobs the crash tests run in a child process: ``python -m tests.maestro.memory.durable_jobs``.

Both jobs do ``n`` steps, each calling a *counting tool* that appends one line to
``$MAESTRO_TEST_COUNT_FILE`` (outside the database, so a rolled-back or lost write cannot
hide a repeated call). With ``$MAESTRO_TEST_CRASH_AFTER=k`` the process SIGKILLs itself as
step k+1 begins — after k steps were committed — unless the marker file
``$MAESTRO_TEST_CRASH_MARKER`` exists, so exactly one process of a test crashes.

Commands (database from ``$MAESTRO_DATABASE_URL``):

    workflow RUN_ID N     start or resume the @workflow ``squares`` under RUN_ID
    agent RUN_ID N        run the Agent job under RUN_ID
    agent-resume RUN_ID N Agent.resume(RUN_ID)
    messages THREAD_ID N  append N messages to a thread, one transaction each

The result is printed as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from maestro.tool import ToolContext, tool
from maestro.workflow import WorkflowContext, current_step, workflow

_calls_started = 0


def _count(label: str) -> None:
    global _calls_started
    _calls_started += 1
    crash_after = os.environ.get("MAESTRO_TEST_CRASH_AFTER")
    marker = os.environ.get("MAESTRO_TEST_CRASH_MARKER")
    if crash_after and marker and _calls_started == int(crash_after) + 1:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass  # another process already crashed for this test
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    with open(os.environ["MAESTRO_TEST_COUNT_FILE"], "a") as f:
        f.write(label + "\n")
        f.flush()
        os.fsync(f.fileno())


def square(x: int) -> int:
    step = current_step()
    _count(f"square {x} {step.idempotency_key if step else '-'}")
    return x * x


@workflow
async def squares(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    values = [await ctx.step("square", square, i) for i in range(n)]
    delay = float(os.environ.get("MAESTRO_TEST_STEP_DELAY", "0"))
    if delay:
        await ctx.step("pause", asyncio.sleep, delay)
    return {"squares": values, "total": sum(values)}


@tool
def counted_square(ctx: ToolContext, x: int) -> int:
    """Square x (each call is counted outside the database)."""
    _count(f"counted_square {x} {ctx.idempotency_key}")
    return x * x


def build_agent(store: Any, n: int) -> Any:
    from maestro.agent import Agent
    from maestro.testing import FunctionModel, judge, plan, plan_step

    def answer(messages: list[Any], options: Any) -> str:
        props = (options.response_format or {}).get("properties", {})
        if "steps" in props:
            steps = [
                plan_step(
                    f"s{i}", "counted_square", {"x": i}, depends_on=[f"s{i - 1}"] if i else []
                )
                for i in range(n)
            ]
            return plan(*steps, rationale="square each number in turn")
        if "score" in props:
            return judge(1.0, "complete")
        return f"The squares of 0..{n - 1} sum to {sum(i * i for i in range(n))}."

    return Agent(
        FunctionModel(answer), tools=[counted_square], store=store, name="squares", budget="medium"
    )


async def main(argv: list[str]) -> None:
    from maestro.memory import Database

    command, run_id, n = argv[0], argv[1], int(argv[2])
    db = await Database.open()
    try:
        if command == "workflow":
            result: Any = await squares.start(db.runs, run_id, n)
        elif command == "agent":
            res = await build_agent(db.runs, n).run("square 0..n-1 and sum them", run_id=run_id)
            result = {"answer": res.answer}
        elif command == "messages":  # run_id is a thread id here; n messages, one per commit
            for i in range(n):
                await db.threads.add_message(run_id, "user", f"message {i} from {os.getpid()}")
            result = {"written": n}
        elif command == "agent-resume":
            res = await build_agent(db.runs, n).resume(run_id)
            result = {"answer": res.answer}
        else:
            raise SystemExit(f"unknown command {command!r}")
    finally:
        await db.close()
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    asyncio.run(main(sys.argv[1:]))
