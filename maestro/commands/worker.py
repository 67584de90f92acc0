"""``maestro worker``: claim queued runs from the database and execute them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from maestro.memory.database import Database

app = typer.Typer(help="Claim and execute queued runs.")


@app.callback(invoke_without_command=True)
def worker(
    url: Annotated[str | None, typer.Option("--url", help="Database URL.")] = None,
    worker_id: Annotated[str | None, typer.Option("--id", help="Worker id (host:pid).")] = None,
    lease: Annotated[float, typer.Option(help="Lease seconds; renewed every lease/3.")] = 30.0,
    poll: Annotated[float, typer.Option(help="Seconds between claims when idle.")] = 0.5,
    max_runs: Annotated[int | None, typer.Option(help="Exit after this many runs.")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds.")
    ] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="Module(s) defining workflows, imported at start."),
    ] = None,
) -> None:
    """Run a worker until interrupted (several may share one PostgreSQL database)."""
    import asyncio
    import signal

    from maestro.memory.cliutil import run_with_db
    from maestro.memory.worker import WorkerConfig, default_worker_id, run_worker

    for module in imports or []:
        importlib.import_module(module)
    config = WorkerConfig(worker_id or default_worker_id(), lease, poll, max_runs, idle_exit)

    async def body(db: Database) -> None:
        if db.dialect == "sqlite":
            typer.echo("note: SQLite serialises writers; run one worker per SQLite file", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)  # finish the current run, then exit
        typer.echo(f"worker {config.worker_id} on {db.display_url}", err=True)
        done = await run_worker(db, config, stop)
        typer.echo(f"worker {config.worker_id}: {done} runs finished", err=True)

    run_with_db(body, url)
