"""``SqlRunStore``: the core's ``RunStore`` protocol on the database.

Every method is one transaction that is committed before it returns, which is the whole
durability contract: once ``save_step`` has returned, a SIGKILL cannot lose that step, so
``Agent.resume`` / a re-run ``@workflow`` will replay it instead of executing it again.

Timestamps are Unix seconds (floats) in the records, as the core defines them, and timezone-
aware UTC in the database. Runs waiting in the work queue have status ``"queued"`` in the
database (see ``queue.py``); ``get_run`` reports that status as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from maestro.memory.errors import NotFoundError
from maestro.memory.orm import EventRow, RunRow, StepRow, utcnow
from maestro.runs import RunRecord, RunStatus, StepRecord

if TYPE_CHECKING:
    from maestro.memory.database import Database


def to_dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def to_run(row: RunRow) -> RunRecord:
    return RunRecord(
        id=row.id,
        task=row.task,
        status=row.status,  # type: ignore[arg-type]  # may be "queued" (work queue)
        created_at=row.created_at.timestamp(),
        agent_name=row.agent_name or "agent",
        user_id=row.user_id,
        payload=dict(row.payload),
        result=None if row.result is None else dict(row.result),
        finished_at=to_ts(row.finished_at),
    )


def to_step(row: StepRow) -> StepRecord:
    return StepRecord(
        run_id=row.run_id,
        key=row.key,
        kind=row.kind,
        status=row.status,  # type: ignore[arg-type]
        input=dict(row.input),
        output=None if row.output is None else dict(row.output),
        error=row.error,
        started_at=to_ts(row.started_at) or 0.0,
        finished_at=to_ts(row.finished_at),
        idempotency_key=row.idempotency_key,
    )


class SqlRunStore:
    """Runs, steps and events in SQL. Implements ``maestro.runs.RunStore``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_run(self, run: RunRecord) -> None:
        """Insert the run (an existing run with the same id is overwritten, like the core's
        in-memory store; its steps are kept)."""
        async with self._db.session(write=True) as session:
            row = await session.get(RunRow, run.id)
            if row is None:
                row = RunRow(id=run.id)
                session.add(row)
            row.task, row.status, row.agent_name = run.task, run.status, run.agent_name
            row.user_id, row.payload, row.result = run.user_id, dict(run.payload), run.result
            row.created_at = to_dt(run.created_at) or utcnow()
            row.updated_at = utcnow()
            row.finished_at = to_dt(run.finished_at)

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self._db.session() as session:
            row = await session.get(RunRow, run_id)
            return to_run(row) if row else None

    async def save_step(self, step: StepRecord) -> None:
        """Insert or replace the step ``(run_id, key)``; committed when this returns."""
        values: dict[str, Any] = {
            "run_id": step.run_id,
            "key": step.key,
            "kind": step.kind,
            "status": step.status,
            "input": step.input,
            "output": step.output,
            "error": step.error,
            "started_at": to_dt(step.started_at),
            "finished_at": to_dt(step.finished_at),
            "idempotency_key": step.idempotency_key,
        }
        insert = pg_insert if self._db.dialect == "postgresql" else sqlite_insert
        stmt = insert(StepRow).values(**values)
        changed = {k: stmt.excluded[k] for k in values if k not in ("run_id", "key")}
        stmt = stmt.on_conflict_do_update(index_elements=["run_id", "key"], set_=changed)
        async with self._db.session(write=True) as session:
            try:  # one statement: the foreign key, not a lookup, catches an unknown run
                await session.execute(stmt)
            except IntegrityError as exc:
                raise NotFoundError(
                    f"cannot save step {step.key!r}: no run {step.run_id!r}"
                ) from exc

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        """The run's steps in the order they were first saved."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(StepRow).where(StepRow.run_id == run_id).order_by(StepRow.id)
            )
            return [to_step(row) for row in rows]

    async def finish_run(
        self, run_id: str, status: RunStatus, result: dict[str, Any] | None
    ) -> None:
        now = utcnow()
        async with self._db.session(write=True) as session:
            done = await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(
                    status=status,
                    result=result,
                    finished_at=now,
                    updated_at=now,
                    lease_expires_at=None,
                )
            )
            if done.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"no run {run_id!r}")

    async def append_event(self, run_id: str, event: dict[str, Any]) -> None:
        async with self._db.session(write=True) as session:
            session.add(EventRow(run_id=run_id, type=str(event.get("type", "event")), data=event))

    # Beyond the protocol: what the CLI, TUI and server read.
    async def get_events(
        self, run_id: str, *, after_id: int = 0, limit: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """``(event id, event)`` pairs after ``after_id``: a cursor for streaming."""
        stmt = (
            select(EventRow.id, EventRow.data)
            .where(EventRow.run_id == run_id, EventRow.id > after_id)
            .order_by(EventRow.id)
            .limit(limit)
        )
        async with self._db.session() as session:
            return [(i, dict(d)) for i, d in (await session.execute(stmt))]

    async def list_runs(
        self, *, status: str | None = None, user_id: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Most recent first."""
        stmt = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id).limit(limit)
        if status is not None:
            stmt = stmt.where(RunRow.status == status)
        if user_id is not None:
            stmt = stmt.where(RunRow.user_id == user_id)
        async with self._db.session() as session:
            return [to_run(row) for row in await session.scalars(stmt)]

    async def count_runs(self, status: str | None = None) -> int:
        stmt = select(func.count()).select_from(RunRow)
        if status is not None:
            stmt = stmt.where(RunRow.status == status)
        async with self._db.session() as session:
            return int(await session.scalar(stmt) or 0)

    async def delete_run(self, run_id: str) -> None:
        """Delete a run with its steps, events and approvals (cascade)."""
        async with self._db.session(write=True) as session:
            gone = await session.execute(delete(RunRow).where(RunRow.id == run_id))
            if gone.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"no run {run_id!r}")
