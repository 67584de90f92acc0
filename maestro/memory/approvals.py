"""Human approvals for tools that change the world.

A run that reaches such a tool files a *pending* approval and waits (or ends, to be resumed);
a person approves or rejects it from the CLI, TUI or server. A decision is made once: deciding
an already-decided approval is an error, so two reviewers cannot both "win".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select, update

from maestro.memory.errors import NotFoundError, UserError
from maestro.memory.orm import ApprovalRow, utcnow
from maestro.memory.records import Approval

if TYPE_CHECKING:
    from maestro.memory.database import Database


def _approval(row: ApprovalRow) -> Approval:
    return Approval(
        id=row.id,
        run_id=row.run_id,
        step_key=row.step_key,
        tool_name=row.tool_name,
        arguments=dict(row.arguments),
        status=row.status,  # type: ignore[arg-type]
        decided_by=row.decided_by,
        reason=row.reason,
        created_at=row.created_at,
        decided_at=row.decided_at,
    )


class ApprovalRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def request(
        self,
        tool_name: str,
        arguments: dict[str, Any],
        *,
        run_id: str | None = None,
        step_key: str | None = None,
    ) -> Approval:
        """File a pending approval; a repeated request for the same run step returns the first."""
        async with self._db.session(write=True) as session:
            if run_id is not None and step_key is not None:
                existing = await session.scalar(
                    select(ApprovalRow).where(
                        ApprovalRow.run_id == run_id, ApprovalRow.step_key == step_key
                    )
                )
                if existing is not None:
                    return _approval(existing)
            row = ApprovalRow(
                tool_name=tool_name, arguments=arguments, run_id=run_id, step_key=step_key
            )
            session.add(row)
            await session.flush()
            return _approval(row)

    async def decide(
        self,
        approval_id: int,
        decision: Literal["approved", "rejected"],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> Approval:
        if decision not in ("approved", "rejected"):
            raise UserError(f"decision must be 'approved' or 'rejected', not {decision!r}")
        async with self._db.session(write=True) as session:
            result = await session.execute(
                update(ApprovalRow)
                .where(ApprovalRow.id == approval_id, ApprovalRow.status == "pending")
                .values(status=decision, decided_by=by, reason=reason, decided_at=utcnow())
            )
            row = await session.get(ApprovalRow, approval_id, populate_existing=True)
            if row is None:
                raise NotFoundError(f"no approval {approval_id}")
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise UserError(f"approval {approval_id} was already {row.status}")
            return _approval(row)

    async def get(self, approval_id: int) -> Approval:
        async with self._db.session() as session:
            row = await session.get(ApprovalRow, approval_id)
            if row is None:
                raise NotFoundError(f"no approval {approval_id}")
            return _approval(row)

    async def pending(self, run_id: str | None = None) -> list[Approval]:
        stmt = select(ApprovalRow).where(ApprovalRow.status == "pending").order_by(ApprovalRow.id)
        if run_id is not None:
            stmt = stmt.where(ApprovalRow.run_id == run_id)
        async with self._db.session() as session:
            return [_approval(row) for row in await session.scalars(stmt)]
