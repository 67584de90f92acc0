"""Durability: a SIGKILLed run resumes from its last committed step, on SQLite and PostgreSQL.

The counting tool writes each call to a file outside the database; after crash + resume the
file must hold exactly n calls and the result must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from maestro.memory import Database
from maestro.workflow import WorkflowContext, workflow
from tests.maestro.memory.conftest import REPO_ROOT

N, K = 6, 3


def _job(
    tmp_path: Path, database_url: str, *args: str, crash_after: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MAESTRO_DATABASE_URL": database_url,
        "MAESTRO_TEST_COUNT_FILE": str(tmp_path / "calls.txt"),
        "MAESTRO_TEST_CRASH_MARKER": str(tmp_path / "crashed"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    if crash_after is not None:
        env["MAESTRO_TEST_CRASH_AFTER"] = str(crash_after)
    return subprocess.run(
        [sys.executable, "-m", "tests.maestro.memory.durable_jobs", *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


async def _reference(database_url: str, kind: str, count_dir: Path) -> object:
    """An uninterrupted run of the same job, in this process, under its own run id."""
    from tests.maestro.memory import durable_jobs

    old = os.environ.get("MAESTRO_TEST_COUNT_FILE")
    os.environ["MAESTRO_TEST_COUNT_FILE"] = str(count_dir / "calls.txt")
    db = await Database.open(database_url)
    try:
        if kind == "workflow":
            return await durable_jobs.squares.start(db.runs, "ref-run", N)
        agent = durable_jobs.build_agent(db.runs, N)
        return {"answer": (await agent.run("square 0..n-1 and sum them", run_id="ref-run")).answer}
    finally:
        await db.close()
        if old is None:
            del os.environ["MAESTRO_TEST_COUNT_FILE"]
        else:
            os.environ["MAESTRO_TEST_COUNT_FILE"] = old


@pytest.mark.parametrize("kind", ["workflow", "agent"])
async def test_sigkilled_run_resumes_without_repeating_finished_steps(
    database_url: str, tmp_path: Path, kind: str
) -> None:
    start, resume = (("workflow", "workflow"), ("agent", "agent-resume"))[kind == "agent"]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    reference = await _reference(database_url, kind, ref_dir)
    assert len(_calls(ref_dir)) == N

    crashed = _job(tmp_path, database_url, start, "crash-run", str(N), crash_after=K)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert len(_calls(tmp_path)) == K  # k steps were done when the process died

    db = await Database.open(database_url)
    try:
        run = await db.runs.get_run("crash-run")
        assert run is not None and run.status == "running"
        steps = await db.runs.get_steps("crash-run")
        tool_steps = [s for s in steps if "square" in s.key or s.key.startswith("tool:")]
        assert sum(s.status == "succeeded" for s in tool_steps) == K
    finally:
        await db.close()

    resumed = _job(tmp_path, database_url, resume, "crash-run", str(N), crash_after=K)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    calls = _calls(tmp_path)
    assert len(calls) == N, calls  # every step ran exactly once across both processes
    assert len({c.split()[1] for c in calls}) == N
    assert json.loads(resumed.stdout.splitlines()[-1]) == reference

    db = await Database.open(database_url)
    try:
        run = await db.runs.get_run("crash-run")
        assert run is not None and run.status == "completed"
    finally:
        await db.close()


@workflow
async def two_step(ctx: WorkflowContext, word: str) -> str:
    first = await ctx.step("upper", str.upper, word)
    again = await ctx.step("upper", str.upper, word + "!")  # same name, second call: own key
    return f"{first} {again}"


async def test_workflow_memoises_by_name_and_call_index(db: Database) -> None:
    assert await two_step.run(db.runs, "hi") == "HI HI!"
    run_id = two_step.last_run_id
    assert run_id is not None
    steps = await db.runs.get_steps(run_id)
    assert [(s.key, s.status, s.output) for s in steps] == [
        ("upper#0", "succeeded", {"value": "HI"}),
        ("upper#1", "succeeded", {"value": "HI!"}),
    ]
    assert steps[0].idempotency_key == f"{run_id}:upper#0"
    # Resuming a completed run returns the stored result and executes nothing.
    assert await two_step.resume(run_id, store=db.runs) == "HI HI!"


@workflow
async def flaky(ctx: WorkflowContext, attempts_file: str) -> int:
    def attempt() -> int:
        path = Path(attempts_file)
        n = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(n))
        if n < 2:
            raise RuntimeError("transient failure")
        return n

    first = await ctx.step("fixed", lambda: 41)
    return first + await ctx.step("flaky", attempt) - 1


async def test_failed_step_is_retried_on_resume_and_finished_steps_are_not(
    db: Database, tmp_path: Path
) -> None:
    from maestro.workflow import WorkflowFailed

    attempts = tmp_path / "attempts"
    with pytest.raises(WorkflowFailed, match="transient failure"):
        await flaky.start(db.runs, "flaky-1", str(attempts))
    run = await db.runs.get_run("flaky-1")
    assert run is not None and run.status == "failed"
    statuses = {s.key: s.status for s in await db.runs.get_steps("flaky-1")}
    assert statuses == {"fixed#0": "succeeded", "flaky#0": "failed"}
    assert await flaky.resume("flaky-1", store=db.runs) == 42
    assert flaky.last_context is not None
    assert (flaky.last_context.replayed, flaky.last_context.executed) == (1, 1)


async def test_only_decorated_workflows_resolve_and_arguments_must_be_json(db: Database) -> None:
    from maestro.errors import UserError
    from maestro.workflow import resolve, resume_run

    assert resolve("tests.maestro.memory.durable_jobs:squares").name.endswith(":squares")
    with pytest.raises(UserError, match="is not a @workflow"):
        resolve("os:system")  # a stored name cannot make a worker call arbitrary code
    with pytest.raises(UserError, match="cannot import"):
        resolve("no_such_module_xyz:f")
    with pytest.raises(UserError, match="JSON-serialisable"):
        await two_step.run(db.runs, object())  # type: ignore[arg-type]
    assert await db.runs.count_runs() == 0  # nothing half-written
    with pytest.raises(UserError, match="no run"):
        await resume_run(db.runs, "missing")
