"""The ``maestro`` command: a thin typer root that mounts the sub-commands.

Each ``maestro/commands/<name>.py`` module exposes ``app`` (a ``typer.Typer``) and keeps its
own imports light: torch, the engine and the database load inside the command functions,
so ``maestro --help`` answers at once. This file is a composition root (it may import
everything), but it imports nothing heavy itself.
"""

from __future__ import annotations

import importlib
import importlib.util

import typer

# (command name, module under maestro.commands, one-line help). Modules not yet present are skipped,
# so the CLI grows with the project without this list lying about what exists.
SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run", "Run a task with the plan -> execute -> validate -> fix loop."),
    ("chat", "chat", "Chat with the personal assistant in the terminal."),
    ("model", "model", "Pull, list and run embedded models."),
    ("ingest", "ingest", "Ingest documents for retrieval."),
    ("memory", "memory", "List, edit and forget what the assistant remembers."),
    ("runs", "runs", "List, show and resume runs."),
    ("worker", "worker", "Claim and execute queued runs."),
    ("serve", "serve", "Serve the OpenAI-compatible API and the runs API."),
    ("tui", "tui", "Open the terminal UI."),
    ("bench", "bench", "Benchmarks: engine, gpu, core, memory, tools, state."),
    ("db", "db", "Database schema management."),
)


def build_app() -> typer.Typer:
    """Assemble the root command from the sub-command modules that exist."""
    app = typer.Typer(
        name="maestro",
        help="Maestro: agents that plan, call tools and check their work, on an embedded hybrid LM.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name, module, help_text in SUBCOMMANDS:
        qualified = f"maestro.commands.{module}"
        if importlib.util.find_spec(qualified) is None:
            continue
        sub = importlib.import_module(qualified).app
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=name, help=help_text)
    return app


def main() -> None:
    """Console-script entry point."""
    build_app()()


if __name__ == "__main__":
    main()
