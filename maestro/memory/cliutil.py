"""Glue for the ``maestro db|runs|memory|worker`` commands: open the database, run a coroutine,
turn Maestro errors into one clear line on stderr and exit status 1 (no traceback)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from maestro.errors import MaestroError

T = TypeVar("T")


def run_with_db(
    body: Callable[..., Awaitable[T]],
    url: str | None = None,
    *,
    migrate: bool = True,
    allow_pending: bool = False,
) -> T:
    """``body(db)`` on an opened database; closes it; exits 1 with the message on errors."""
    from maestro.memory.database import Database

    async def main() -> T:
        db = await Database.open(url, migrate=migrate, allow_pending=allow_pending)
        try:
            return await body(db)
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except MaestroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
