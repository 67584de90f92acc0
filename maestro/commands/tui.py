"""``maestro tui``: open the terminal UI.

Everything heavy (Textual, the database, the engine) is imported inside the command, so
``maestro --help`` stays instant; the engine itself loads in a background thread once the
window is up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from maestro.tool import Tool

app = typer.Typer(help="Open the terminal UI.", invoke_without_command=True, add_completion=False)

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=(
            "Embedded model name or path (default: smollm2-135m-instruct), an OpenAI-compatible "
            "URL (http://host:port/v1, optionally #model-name), or scripted:TEXT (a test model "
            "that always answers TEXT)."
        ),
    ),
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database URL (default: MAESTRO_DATABASE_URL, else SQLite in the data dir)."
    ),
]
ToolsOption = Annotated[
    bool,
    typer.Option(
        "--tools/--no-tools",
        help="Give the agent the built-in tools (calculator); without them it answers directly.",
    ),
]
BudgetOption = Annotated[
    str, typer.Option("--budget", help="Effort preset for tasks: low, medium or high.")
]


@app.callback(invoke_without_command=True)
def tui(
    model: ModelOption = None,
    db: DbOption = None,
    budget: BudgetOption = "low",
    tools: ToolsOption = True,
) -> None:
    """Chat, watch runs (plan, tools, requirements, budget), approve tools, manage memory."""
    if budget not in ("low", "medium", "high"):
        typer.echo(f"error: unknown budget preset {budget!r}; choose low, medium or high", err=True)
        raise typer.Exit(2)
    from maestro.tui.app import create_app
    from maestro.tui.ingest import UNAVAILABLE_NO_TOOLS, ingestor_for
    from maestro.tui.launchers import default_launcher
    from maestro.tui.models import DEFAULT_MODEL, SCRIPTED_PREFIX, display_name, model_loader
    from maestro.tui.stores import DatabaseStore

    spec = model or DEFAULT_MODEL
    # A scripted model answers every request with the same text, so it cannot plan: it runs
    # the agent without tools (the loop then drafts directly).
    use_tools = tools and not spec.startswith(SCRIPTED_PREFIX)
    choices = list(dict.fromkeys([spec, DEFAULT_MODEL]))

    async def open_store() -> DatabaseStore:
        return await DatabaseStore.open(db)

    from maestro.tui.services import Services

    services = Services(
        model_name=display_name(spec),
        load_model=model_loader(spec),
        open_store=open_store,
        launcher=default_launcher(_builtin_tools() if use_tools else []),
        loader_for=model_loader,
        ingestor_for=ingestor_for,
        ingest_unavailable_reason=UNAVAILABLE_NO_TOOLS,
        model_choices=choices,
        budget=budget,
    )
    create_app(services).run()


def _builtin_tools() -> list[Tool]:
    """The built-in tools that need no configuration (the calculator), when installed."""
    try:
        from tools.calculator import calculator
    except ImportError:
        return []
    return [calculator]
