"""Retention: keep the database from growing without bound.

What grows with use is bulk that loses its value once a run is over: step inputs/outputs
(needed only to *resume* an unfinished run), event streams (needed while someone watches),
and model-state snapshots (a cache: any can be rebuilt by re-reading the conversation).
``prune`` drops those past their age and trims snapshots to a byte budget, least recently used
first. It never touches unfinished runs, memories, messages or documents: those are the
user's data, removed only on request.

Freed pages are reused by later writes (SQLite's free list, PostgreSQL's vacuum), so a
database pruned regularly stays near a steady size instead of shrinking on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, delete, select, update

from maestro.memory.orm import EventRow, ModelStateRow, RunRow, StepRow, utcnow

if TYPE_CHECKING:
    from maestro.memory.database import Database

FINISHED = ("completed", "failed", "cancelled")
PRUNED_MARKER = {"pruned": True}


@dataclass(frozen=True)
class RetentionPolicy:
    step_payload_days: float | None = 30.0  # clear inputs/outputs of finished runs' steps
    event_days: float | None = 30.0  # delete events of finished runs
    state_days: float | None = 90.0  # delete snapshots unused for this long
    max_state_bytes: int | None = 2 * 1024**3  # then trim snapshots, least recently used first


@dataclass(frozen=True)
class PruneReport:
    steps_cleared: int
    events_deleted: int
    states_deleted: int
    state_bytes_freed: int


class Retention:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def prune(
        self, policy: RetentionPolicy | None = None, *, now: datetime | None = None
    ) -> PruneReport:
        policy = policy or RetentionPolicy()
        now = now or utcnow()
        steps = events = states = freed = 0
        async with self._db.session(write=True) as session:
            if policy.step_payload_days is not None:
                old_runs = self._finished_before(now - timedelta(days=policy.step_payload_days))
                result = await session.execute(
                    update(StepRow)
                    .where(StepRow.run_id.in_(old_runs), StepRow.output.is_not(None))
                    .values(input=PRUNED_MARKER, output=None)
                )
                steps = int(result.rowcount)  # type: ignore[attr-defined]
            if policy.event_days is not None:
                old_runs = self._finished_before(now - timedelta(days=policy.event_days))
                result = await session.execute(
                    delete(EventRow).where(EventRow.run_id.in_(old_runs))
                )
                events = int(result.rowcount)  # type: ignore[attr-defined]
            snapshots = (
                await session.execute(
                    select(
                        ModelStateRow.key, ModelStateRow.size_bytes, ModelStateRow.last_used_at
                    ).order_by(ModelStateRow.last_used_at.desc())
                )
            ).all()
            doomed: list[str] = []
            kept_bytes = 0
            state_cutoff = now - timedelta(days=policy.state_days) if policy.state_days else None
            for key, size, last_used in snapshots:  # newest first: keep until budget is spent
                too_old = state_cutoff is not None and last_used < state_cutoff
                over = (
                    policy.max_state_bytes is not None
                    and kept_bytes + size > policy.max_state_bytes
                )
                if too_old or over:
                    doomed.append(key)
                    freed += size
                else:
                    kept_bytes += size
            if doomed:
                await session.execute(delete(ModelStateRow).where(ModelStateRow.key.in_(doomed)))
                states = len(doomed)
        return PruneReport(steps, events, states, freed)

    @staticmethod
    def _finished_before(cutoff: datetime) -> Select[str]:
        return select(RunRow.id).where(RunRow.status.in_(FINISHED), RunRow.finished_at < cutoff)
