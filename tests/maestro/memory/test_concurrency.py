"""Many concurrent writers: no "database is locked", no lost or duplicated rows.

SQLite: 8 concurrent runs in one process (the in-process writer lock) and 4 writer processes
on one file (BEGIN IMMEDIATE + busy_timeout). PostgreSQL: 32 concurrent runs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maestro.memory import Database
from maestro.runs import RunRecord, StepRecord
from tests.maestro.memory.conftest import REPO_ROOT

# SQLite: 8 runs x 200 messages; PostgreSQL: 32 runs x 100 (one commit per message each).
MESSAGES = {"sqlite": (8, 200), "postgresql": (32, 100)}
STEP_EVERY = 20


async def _one_run(db: Database, index: int, count: int) -> str:
    """A run that writes its steps, events and hundreds of messages, one commit each."""
    run_id = f"run-{index}"
    await db.runs.create_run(RunRecord(id=run_id, task=f"task {index}", user_id=f"user{index}"))
    thread = await db.threads.create_thread(user_id=f"user{index}", title=run_id)
    for i in range(count):
        await db.threads.add_message(thread.id, "assistant", f"{run_id} message {i}", run_id=run_id)
        if i % STEP_EVERY == 0:
            await db.runs.save_step(
                StepRecord(
                    run_id=run_id, key=f"tool:{i}", kind="tool", status="succeeded", output={"i": i}
                )
            )
            await db.runs.append_event(run_id, {"type": "step_finished", "i": i})
    await db.runs.finish_run(run_id, "completed", {"answer": index})
    return thread.id


async def test_concurrent_runs_lose_nothing(db: Database) -> None:
    writers, count = MESSAGES[db.dialect]
    threads = await asyncio.gather(*(_one_run(db, i, count) for i in range(writers)))
    assert await db.threads.count_messages() == writers * count
    for i, thread_id in enumerate(threads):
        messages = await db.threads.list_messages(thread_id)
        assert [m.content for m in messages] == [f"run-{i} message {j}" for j in range(count)]
        assert len(await db.runs.get_steps(f"run-{i}")) == count // STEP_EVERY
        assert len(await db.runs.get_events(f"run-{i}")) == count // STEP_EVERY
    assert await db.runs.count_runs("completed") == writers


async def test_writer_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    db = await Database.open(url)
    thread = await db.threads.create_thread(title="shared")
    processes, per_process = 4, 40
    env = {**os.environ, "MAESTRO_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.maestro.memory.durable_jobs",
                "messages",
                thread.id,
                str(per_process),
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        outcomes = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, outcomes, strict=True):
            assert p.returncode == 0, err[-2000:]
            assert "locked" not in err
        messages = await db.threads.list_messages(thread.id)
        assert len(messages) == processes * per_process
        assert len({m.content for m in messages}) == processes * per_process  # no duplicates
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        await db.close()


async def test_failed_transaction_writes_nothing(db: Database) -> None:
    from maestro.memory.errors import NotFoundError

    thread = await db.threads.create_thread()
    with pytest.raises(NotFoundError):
        await db.threads.add_messages("no-such-thread", [("user", "lost?", {})])
    await db.threads.add_messages(thread.id, [("user", "a", {}), ("assistant", "b", {})])
    assert await db.threads.count_messages() == 2
