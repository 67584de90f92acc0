"""The work queue: runs waiting for a worker, claimed under a lease.

A queued run is a row in ``runs`` with status ``"queued"``. A worker *claims* it (status
``"running"``, ``claimed_by`` = worker id, ``lease_expires_at`` = now + lease) and keeps the
lease alive with ``heartbeat``. A worker that dies stops heart-beating; once its lease has
expired, any worker may claim the run again and — because finished steps are in the database —
continue where the dead one stopped.

PostgreSQL: the claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE`` in one
transaction, so concurrent workers never block on or double-claim the same row. SQLite has one
writer at a time (``BEGIN IMMEDIATE``), which serialises claims by construction; the same
statement runs there with the locking clause compiled away.

Runs an in-process ``Agent`` created itself (``claimed_by`` NULL) are never claimed.
``complete`` is guarded by the lease holder, so a worker that lost its lease (it was presumed
dead but was only slow) cannot finish a run a second time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select, update

from maestro.memory.orm import RunRow, utcnow
from maestro.memory.runstore import to_run
from maestro.runs import RunRecord, RunStatus

if TYPE_CHECKING:
    from maestro.memory.database import Database

DEFAULT_LEASE_S = 30.0


class RunQueue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def enqueue(
        self,
        task: str,
        *,
        agent_name: str,
        payload: dict[str, Any] | None = None,
        user_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Add a run for a worker to execute; returns its id."""
        run_id = run_id or uuid.uuid4().hex
        async with self._db.session(write=True) as session:
            session.add(
                RunRow(
                    id=run_id,
                    task=task,
                    status="queued",
                    agent_name=agent_name,
                    user_id=user_id,
                    payload=payload or {},
                )
            )
        return run_id

    async def claim(
        self,
        worker_id: str,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        agent_prefixes: Sequence[str] | None = None,
    ) -> RunRecord | None:
        """Claim the oldest queued run, or one whose worker's lease expired; ``None`` if idle.

        ``agent_prefixes`` limits the claim to runs this worker knows how to execute.
        """
        now = utcnow()
        claimable = or_(
            RunRow.status == "queued",
            and_(
                RunRow.status == "running",
                RunRow.claimed_by.is_not(None),
                RunRow.lease_expires_at < now,
            ),
        )
        if agent_prefixes:
            claimable = and_(
                claimable, or_(*(RunRow.agent_name.startswith(p) for p in agent_prefixes))
            )
        pick = (
            select(RunRow.id)
            .where(claimable)
            .order_by(RunRow.created_at, RunRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        async with self._db.session(write=True) as session:
            run_id = await session.scalar(pick)
            if run_id is None:
                return None
            await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(
                    status="running",
                    claimed_by=worker_id,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    heartbeat_at=now,
                    updated_at=now,
                    attempts=RunRow.attempts + 1,
                )
            )
            row = await session.get(RunRow, run_id, populate_existing=True)
            return to_run(row) if row else None

    async def heartbeat(
        self, run_id: str, worker_id: str, *, lease_s: float = DEFAULT_LEASE_S
    ) -> bool:
        """Extend the lease; ``False`` means this worker no longer holds the run: stop."""
        now = utcnow()
        async with self._db.session(write=True) as session:
            result = await session.execute(
                update(RunRow)
                .where(
                    RunRow.id == run_id,
                    RunRow.claimed_by == worker_id,
                    RunRow.status == "running",
                )
                .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def complete(
        self, run_id: str, worker_id: str, status: RunStatus, result: dict[str, Any] | None
    ) -> bool:
        """Finish a claimed run, only if ``worker_id`` still holds it. ``True`` if it did."""
        now = utcnow()
        async with self._db.session(write=True) as session:
            done = await session.execute(
                update(RunRow)
                .where(
                    RunRow.id == run_id,
                    RunRow.claimed_by == worker_id,
                    RunRow.status == "running",
                )
                .values(
                    status=status,
                    result=result,
                    finished_at=now,
                    updated_at=now,
                    lease_expires_at=None,
                )
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    async def release(self, run_id: str, worker_id: str) -> bool:
        """Give a claimed run back to the queue (e.g. on graceful shutdown)."""
        async with self._db.session(write=True) as session:
            result = await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.claimed_by == worker_id)
                .values(
                    status="queued", claimed_by=None, lease_expires_at=None, updated_at=utcnow()
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def claim_info(self, run_id: str) -> dict[str, Any] | None:
        """Queue bookkeeping of a run: claimed_by, attempts, lease expiry (for `runs show`)."""
        async with self._db.session() as session:
            row = await session.get(RunRow, run_id)
            if row is None:
                return None
            return {
                "claimed_by": row.claimed_by,
                "attempts": row.attempts,
                "lease_expires_at": row.lease_expires_at,
                "heartbeat_at": row.heartbeat_at,
            }
