"""Workers and leases: a dead worker's run is finished by another, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from maestro.memory import Database
from maestro.memory.orm import utcnow
from maestro.memory.worker import WorkerConfig, run_worker
from tests.maestro.memory.conftest import REPO_ROOT
from tests.maestro.memory.durable_jobs import squares

N, K = 6, 2


@pytest.mark.postgres
async def test_two_workers_one_killed_mid_run_the_other_finishes_once(
    pg_server: object, tmp_path: Path
) -> None:
    from maestro.memory.pgtemp import PgServer

    assert isinstance(pg_server, PgServer)
    url = pg_server.create_database()
    db = await Database.open(url)
    run_id = await squares.enqueue(db.queue, N)
    env = {
        **os.environ,
        "MAESTRO_DATABASE_URL": url,
        "MAESTRO_TEST_COUNT_FILE": str(tmp_path / "calls.txt"),
        "MAESTRO_TEST_CRASH_MARKER": str(tmp_path / "crashed"),
        "MAESTRO_TEST_CRASH_AFTER": str(K),  # whichever worker gets the run dies after step K
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [
        sys.executable, "-m", "maestro.cli", "worker", "--lease", "1.5", "--poll", "0.2",
        "--import", "tests.maestro.memory.durable_jobs",
    ]  # fmt: skip
    workers = [
        subprocess.Popen([*command, "--id", f"w{i}"], env=env, cwd=REPO_ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        run = await db.runs.get_run(run_id)
        while time.monotonic() < deadline:
            run = await db.runs.get_run(run_id)
            if run is not None and run.status == "completed":
                break
            await asyncio.sleep(0.2)
        assert run is not None and run.status == "completed", [w.poll() for w in workers]
        assert run.result == {"value": {"squares": [i * i for i in range(N)], "total": 55}}
        dead = [w for w in workers if w.poll() == -signal.SIGKILL]
        assert len(dead) == 1  # one worker really was SIGKILLed mid-run
        calls = (tmp_path / "calls.txt").read_text().splitlines()
        assert len(calls) == N  # no step executed twice across the two workers
        events = [e for _, e in await db.runs.get_events(run_id)]
        claims = [e["worker"] for e in events if e["type"] == "worker_claimed"]
        completions = [e["worker"] for e in events if e["type"] == "worker_completed"]
        assert len(claims) == 2 and claims[0] != claims[1]
        assert completions == [claims[1]]  # exactly once, by the survivor
        assert (await db.queue.claim_info(run_id) or {})["attempts"] == 2
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
        await db.close()


async def test_expired_lease_moves_the_run_and_fences_the_old_worker(db: Database) -> None:
    run_id = await db.queue.enqueue("t", agent_name="workflow:x:y", payload={})
    first = await db.queue.claim("A", lease_s=30)
    assert first is not None and first.id == run_id
    assert await db.queue.claim("B", lease_s=30) is None  # leased: nobody else gets it
    # A stalls past its lease (simulated by moving the expiry into the past).
    async with db.session(write=True) as session:
        from sqlalchemy import update

        from maestro.memory.orm import RunRow

        await session.execute(
            update(RunRow).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    second = await db.queue.claim("B", lease_s=30)
    assert second is not None and second.id == run_id
    assert not await db.queue.heartbeat(run_id, "A")  # A learns it lost the run
    assert not await db.queue.complete(run_id, "A", "completed", {"by": "A"})
    assert await db.queue.complete(run_id, "B", "completed", {"by": "B"})
    run = await db.runs.get_run(run_id)
    assert run is not None and run.result == {"by": "B"}


async def test_in_process_worker_runs_queued_workflows(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAESTRO_TEST_COUNT_FILE", str(tmp_path / "calls.txt"))
    ids = [await squares.enqueue(db.queue, n) for n in (2, 3)]
    # A run created directly by an in-process agent (not queued) is never claimed.
    from maestro.runs import RunRecord

    await db.runs.create_run(RunRecord(id="owned", task="t", agent_name="workflow:x:y"))
    done = await run_worker(db, WorkerConfig("w", lease_s=5, poll_s=0.05, idle_exit_s=0.2))
    assert done == 2
    results = [(await db.runs.get_run(i)) for i in ids]
    assert [r.result for r in results if r] == [
        {"value": {"squares": [0, 1], "total": 1}},
        {"value": {"squares": [0, 1, 4], "total": 5}},
    ]
    owned = await db.runs.get_run("owned")
    assert owned is not None and owned.status == "running"
