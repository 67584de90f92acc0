"""``maestro worker``: claim queued runs from the database and execute them under a lease.

Several workers may share one PostgreSQL database (on SQLite, run one). Each loops: claim the
oldest claimable run, keep its lease alive from a background task, execute it, and finish it
*under the lease* (``RunQueue.complete`` only succeeds for the holder). A worker killed mid-run
simply stops heart-beating; after the lease expires another worker claims the run and, since
every finished step is in the database, continues from the last committed step. If a worker
finds it has lost its lease (it stalled longer than the lease), it abandons the run at once.

What a worker can execute: durable ``@workflow`` runs (``agent_name`` ``"workflow:<module>:
<qualname>"``), resolved only among decorated workflows. Other kinds register a handler with
``register_handler(prefix, handler)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from maestro.memory.queue import DEFAULT_LEASE_S
from maestro.runs import RunRecord

if TYPE_CHECKING:
    from maestro.memory.database import Database

log = logging.getLogger("maestro.worker")
Handler = Callable[["Database", RunRecord], Coroutine[Any, Any, dict[str, Any]]]


async def _workflow_handler(db: Database, run: RunRecord) -> dict[str, Any]:
    from maestro.workflow import resolve

    workflow = resolve(str(run.payload.get("workflow") or run.agent_name))
    value = await workflow.execute(db.runs, run, finish=False)
    return {"value": value}


_HANDLERS: dict[str, Handler] = {"workflow:": _workflow_handler}


def register_handler(prefix: str, handler: Handler) -> None:
    """Let workers execute runs whose ``agent_name`` starts with ``prefix``."""
    _HANDLERS[prefix] = handler


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerConfig:
    worker_id: str
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = 0.5
    max_runs: int | None = None  # stop after this many runs (None: forever)
    idle_exit_s: float | None = None  # stop after this long with nothing to claim


class LeaseLost(Exception):
    """Another worker owns the run now; this one must not touch it any more."""


async def run_worker(db: Database, config: WorkerConfig, stop: asyncio.Event | None = None) -> int:
    """Claim and execute runs until stopped; returns how many runs this worker finished."""
    stop = stop or asyncio.Event()
    done = 0
    idle_since = asyncio.get_running_loop().time()
    while not stop.is_set():
        run = await db.queue.claim(
            config.worker_id, lease_s=config.lease_s, agent_prefixes=list(_HANDLERS)
        )
        if run is None:
            now = asyncio.get_running_loop().time()
            if config.idle_exit_s is not None and now - idle_since >= config.idle_exit_s:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=config.poll_s)
            continue
        if await execute_claimed(db, run, config):
            done += 1
        idle_since = asyncio.get_running_loop().time()
        if config.max_runs is not None and done >= config.max_runs:
            break
    return done


async def execute_claimed(db: Database, run: RunRecord, config: WorkerConfig) -> bool:
    """Run one claimed run under its lease; ``True`` if this worker recorded its end."""
    handler = next((h for p, h in _HANDLERS.items() if run.agent_name.startswith(p)), None)
    await db.runs.append_event(run.id, {"type": "worker_claimed", "worker": config.worker_id})
    if handler is None:  # pragma: no cover - claim filters on the registered prefixes
        return await db.queue.complete(
            run.id, config.worker_id, "failed", {"error": f"no handler for {run.agent_name!r}"}
        )
    work: asyncio.Task[dict[str, Any]] = asyncio.create_task(handler(db, run))
    beat = asyncio.create_task(_keep_lease(db, run.id, config, work))
    try:
        result = await work
        status, outcome = "completed", result
    except asyncio.CancelledError:
        if beat.done() and isinstance(beat.exception(), LeaseLost):
            log.warning(
                "worker %s lost the lease of run %s; abandoned it", config.worker_id, run.id
            )
            return False
        raise
    except Exception as exc:  # the run failed: record it, keep the worker alive
        log.exception("run %s failed", run.id)
        status, outcome = "failed", {"error": repr(exc)}
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeaseLost):
            await beat
    finished = await db.queue.complete(run.id, config.worker_id, status, outcome)  # type: ignore[arg-type]
    if finished:
        await db.runs.append_event(
            run.id, {"type": "worker_completed", "worker": config.worker_id, "status": status}
        )
    return finished


async def _keep_lease(
    db: Database, run_id: str, config: WorkerConfig, work: asyncio.Task[Any]
) -> None:
    interval = max(config.lease_s / 3, 0.05)
    while not work.done():
        await asyncio.sleep(interval)
        if not await db.queue.heartbeat(run_id, config.worker_id, lease_s=config.lease_s):
            work.cancel()
            raise LeaseLost(run_id)
