"""``maestro db``: schema status, upgrades and retention for the configured database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from maestro.memory.database import Database

app = typer.Typer(no_args_is_help=True, help="Database schema management.")
UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Database URL (default: MAESTRO_DATABASE_URL or the data dir)."),
]


@app.command()
def upgrade(url: UrlOption = None) -> None:
    """Apply pending migrations (refuses a schema newer than this Maestro)."""
    from maestro.memory.cliutil import run_with_db

    async def body(db: Database) -> None:
        before = await db.ensure_schema(upgrade=True)
        after = await db.status()
        if before.current == after.current:
            typer.echo(f"{db.display_url}: already at {after.current}")
        else:
            typer.echo(f"{db.display_url}: upgraded {before.current or 'empty'} -> {after.current}")

    run_with_db(body, url, migrate=False, allow_pending=True)


@app.command()
def status(url: UrlOption = None) -> None:
    """Show the database (password masked), its schema revision and the latest known."""
    from maestro.memory.cliutil import run_with_db

    async def body(db: Database) -> None:
        st = await db.status()
        typer.echo(f"database: {db.display_url} ({db.dialect})")
        note = "up to date" if st.up_to_date else "run `maestro db upgrade`"
        typer.echo(f"schema:   {st.current or 'empty'} (latest known: {st.head}; {note})")
        if st.up_to_date:
            typer.echo(f"runs:     {await db.runs.count_runs()}")

    run_with_db(body, url, migrate=False, allow_pending=True)


@app.command()
def prune(
    url: UrlOption = None,
    step_days: Annotated[
        float, typer.Option(help="Clear step payloads of runs finished before.")
    ] = 30,
    event_days: Annotated[float, typer.Option(help="Delete events of runs finished before.")] = 30,
    state_days: Annotated[float, typer.Option(help="Delete model states unused for.")] = 90,
    max_state_mb: Annotated[int, typer.Option(help="Keep at most this many MB of states.")] = 2048,
) -> None:
    """Apply the retention policy: bound the size of old runs and model-state snapshots."""
    from maestro.memory.cliutil import run_with_db
    from maestro.memory.retention import RetentionPolicy

    policy = RetentionPolicy(step_days, event_days, state_days, max_state_mb * 1024 * 1024)

    async def body(db: Database) -> None:
        report = await db.retention.prune(policy)
        typer.echo(
            f"cleared {report.steps_cleared} step payloads, deleted {report.events_deleted} "
            f"events and {report.states_deleted} model states "
            f"({report.state_bytes_freed / 1e6:.1f} MB)"
        )

    run_with_db(body, url)
