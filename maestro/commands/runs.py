"""``maestro runs``: list, show, resume and enqueue durable runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from maestro.memory.database import Database

app = typer.Typer(no_args_is_help=True, help="List, show and resume runs.")
UrlOption = Annotated[str | None, typer.Option("--url", help="Database URL.")]


@app.command("list")
def list_runs(
    url: UrlOption = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
) -> None:
    """Recent runs, newest first."""
    from maestro.memory.cliutil import fmt_ts, run_with_db

    async def body(db: Database) -> None:
        runs = await db.runs.list_runs(status=status, limit=limit)
        if not runs:
            typer.echo("no runs")
        for run in runs:
            typer.echo(f"{run.id}  {run.status:<10} {fmt_ts(run.created_at)}  {run.task[:60]}")

    run_with_db(body, url)


@app.command()
def show(run_id: str, url: UrlOption = None) -> None:
    """A run with its steps (status, timing, idempotency key) and result."""
    from maestro.memory.cliutil import fmt_ts, run_with_db
    from maestro.memory.errors import NotFoundError

    async def body(db: Database) -> None:
        run = await db.runs.get_run(run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}")
        claim = await db.queue.claim_info(run_id) or {}
        typer.echo(f"run {run.id}: {run.status}  agent={run.agent_name}  user={run.user_id}")
        typer.echo(f"  task: {run.task}")
        typer.echo(f"  created {fmt_ts(run.created_at)}  finished {fmt_ts(run.finished_at)}")
        if claim.get("claimed_by"):
            typer.echo(f"  worker {claim['claimed_by']}  attempts {claim['attempts']}")
        for step in await db.runs.get_steps(run_id):
            took = (step.finished_at - step.started_at) if step.finished_at else None
            timing = f"{took * 1000:.0f} ms" if took is not None else "unfinished"
            typer.echo(f"  - {step.key:<28} {step.kind:<14} {step.status:<10} {timing}")
            if step.error:
                typer.echo(f"      error: {step.error[:200]}")
        if run.result is not None:
            typer.echo("  result: " + json.dumps(run.result, default=str)[:2000])

    run_with_db(body, url)


@app.command()
def resume(
    run_id: str,
    url: UrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Finish an interrupted run from its last committed step: a @workflow run, or an agent
    run started by `maestro run` (its model, tools and requirements were stored with it).
    Exit status as for `maestro run`: 0 met, 1 a mandatory requirement not met, 2 error."""
    from maestro.memory.cliutil import run_with_db
    from maestro.memory.errors import UserError
    from maestro.runs import RunRecord
    from maestro.workflow import resume_run

    agent_run: list[RunRecord] = []

    async def body(db: Database) -> None:
        run = await db.runs.get_run(run_id)
        if run is None:
            raise UserError(f"no run {run_id!r}")
        if "workflow" in run.payload:
            value = await resume_run(db.runs, run_id)
            typer.echo(json.dumps({"run_id": run_id, "value": value}, default=str))
        else:
            agent_run.append(run)

    try:
        run_with_db(body, url)
    except SystemExit as exc:  # errors exit 2 here, as in `maestro run` (run_with_db says 1)
        raise SystemExit(2 if exc.code == 1 else exc.code) from exc
    if agent_run:  # outside the database loop above: the agent run opens its own
        from maestro.commands.run import resume_stored

        resume_stored(run_id, agent_run[0].task, agent_run[0].payload, url, as_json)


@app.command()
def enqueue(
    workflow: Annotated[str, typer.Argument(help="module:function of a @workflow")],
    args: Annotated[str, typer.Argument(help="JSON list of arguments")] = "[]",
    url: UrlOption = None,
) -> None:
    """Queue a workflow run for `maestro worker`; prints the run id."""
    from maestro.memory.cliutil import run_with_db
    from maestro.workflow import resolve

    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"ARGS must be a JSON list: {exc}") from exc
    if not isinstance(parsed, list):
        raise typer.BadParameter("ARGS must be a JSON list")

    async def body(db: Database) -> None:
        typer.echo(await resolve(workflow).enqueue(db.queue, *parsed))

    run_with_db(body, url)
