"""``maestro memory``: see, add, edit, search and forget what the assistant remembers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from maestro.memory.database import Database

app = typer.Typer(no_args_is_help=True, help="List, edit and forget what the assistant remembers.")
UserOption = Annotated[str, typer.Option("--user", "-u", help="Whose memories.")]
UrlOption = Annotated[str | None, typer.Option("--url", help="Database URL.")]


@app.command("list")
def list_memories(user: UserOption, url: UrlOption = None) -> None:
    """All memories of a user: core facts (with labels) and archival memories."""
    from maestro.memory.cliutil import run_with_db

    async def body(db: Database) -> None:
        items = await db.memory.list(user)
        if not items:
            typer.echo(f"{user} has no memories")
        for m in items:
            label = f"[{m.label}] " if m.label else ""
            typer.echo(f"{m.id:>6}  {m.kind:<8} {label}{m.text}")

    run_with_db(body, url)


@app.command()
def add(
    user: UserOption,
    text: str,
    core: Annotated[
        str | None, typer.Option("--core", help="Store as a core fact under this label.")
    ] = None,
    url: UrlOption = None,
) -> None:
    """Remember something for a user."""
    from maestro.memory.cliutil import run_with_db

    async def body(db: Database) -> None:
        item = await db.memory.remember(user, text, kind="core" if core else "archival", label=core)
        typer.echo(f"remembered {item.id}")

    run_with_db(body, url)


@app.command()
def search(
    user: UserOption,
    query: str,
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 5,
    url: UrlOption = None,
) -> None:
    """Recall a user's memories matching a query (full text)."""
    from maestro.memory.cliutil import run_with_db

    async def body(db: Database) -> None:
        hits = await db.memory.recall(user, query, k)
        if not hits:
            typer.echo("nothing found")
        for hit in hits:
            typer.echo(f"{hit.item.id:>6}  {hit.score:.4f}  {hit.item.text}")

    run_with_db(body, url)


@app.command()
def edit(user: UserOption, memory_id: int, text: str, url: UrlOption = None) -> None:
    """Replace the text of one memory."""
    from maestro.memory.cliutil import run_with_db

    async def body(db: Database) -> None:
        await db.memory.edit(user, memory_id, text)
        typer.echo(f"edited {memory_id}")

    run_with_db(body, url)


@app.command()
def forget(
    user: UserOption,
    memory_id: Annotated[int | None, typer.Argument(help="The memory to delete.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Forget everything about the user.")] = False,
    url: UrlOption = None,
) -> None:
    """Delete one memory (or, with --all, every memory of the user)."""
    from maestro.memory.cliutil import run_with_db

    if memory_id is None and not all_:
        raise typer.BadParameter("give a MEMORY_ID or --all")

    async def body(db: Database) -> None:
        if all_:
            typer.echo(f"forgot {await db.memory.forget_all(user)} memories of {user}")
        else:
            assert memory_id is not None
            await db.memory.forget(user, memory_id)
            typer.echo(f"forgot {memory_id}")

    run_with_db(body, url)
