"""``maestro chat``: the personal assistant (``agents.Assistant``) in the terminal.

Each line typed is one turn; the reply streams to stdout. What the assistant recalled and
what it decided to remember go to stderr, with the memory ids that ``maestro memory
edit|forget`` take. The conversation, the memories and the rolling summary live in the
database (``--url`` / ``MAESTRO_DATABASE_URL``), per user (``--user``), so the next
``maestro chat --user NAME`` — a new process — picks up where this one stopped.

In-chat commands: ``/memories`` lists what the assistant remembers, ``/forget ID`` deletes
one memory, ``/summary`` shows the rolling summary, ``/quit`` (or end of input) leaves.
Works with piped input too (``echo "hello" | maestro chat --user ada``).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from agents.assistant import Assistant
    from maestro import Event

app = typer.Typer(
    help="Chat with the personal assistant in the terminal.",
    context_settings={"allow_interspersed_args": True},
    subcommand_metavar="",
)


def default_user() -> str:
    return os.environ.get("MAESTRO_USER") or getpass.getuser() or "default"


@app.callback(invoke_without_command=True)
def chat(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Whose assistant.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Registry name, local path or URL[#name].")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="Database URL.")] = None,
    thread: Annotated[
        str | None, typer.Option(help="Conversation thread id [default: one per user].")
    ] = None,
    remember: Annotated[bool, typer.Option(help="Store proposed memories automatically.")] = True,
) -> None:
    """Talk to your assistant; it remembers you across sessions."""
    from maestro.errors import MaestroError

    name = user or default_user()
    try:
        asyncio.run(_session(name, model, url, thread, remember))
    except MaestroError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc
    except KeyboardInterrupt:
        typer.echo("", err=True)


async def _session(
    user: str, model_spec: str | None, url: str | None, thread: str | None, remember: bool
) -> None:
    from agents.assistant import Assistant
    from maestro.llm.local import LocalModel
    from maestro.llm.spec import resolve_model
    from maestro.memory import Database

    model = resolve_model(model_spec)
    if isinstance(model, LocalModel):
        _note(f"loading model {model.model_name} ...")
        await model.engine()
    db = await Database.open(url)
    try:
        assistant = Assistant(model, db, user, thread_id=thread, auto_remember=remember)
        await assistant.ensure_thread()
        interactive = sys.stdin.isatty()
        _note(f"chatting as {user} (thread {assistant.thread_id}); /quit to leave")
        while True:
            if interactive:
                typer.echo("you> ", nl=False)
            line = sys.stdin.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not await _command(assistant, text):
                    break
                continue
            await _turn(assistant, text)
    finally:
        await db.close()


async def _turn(assistant: Assistant, text: str) -> None:
    from maestro import TextDelta

    streamed: list[str] = []

    async def on_event(event: Event) -> None:
        if isinstance(event, TextDelta):
            streamed.append(event.text)
            sys.stdout.write(event.text)
            sys.stdout.flush()

    reply = await assistant.send(text, on_event=on_event)
    if not streamed:
        sys.stdout.write(reply.answer)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if reply.recalled:
        _note("recalled: " + "; ".join(f"#{m.id} {m.text}" for m in reply.recalled))
    for item in reply.remembered:
        _note(f"remembered #{item.id}: {item.text}  (maestro memory forget --user "
              f"{assistant.user_id} {item.id})")  # fmt: skip
    if not assistant.auto_remember:
        for update in reply.proposed:
            _note(f"proposed (not stored): {update.text}")
    if reply.summarized:
        _note("conversation summary updated")


async def _command(assistant: Assistant, text: str) -> bool:
    """Run an in-chat command; False means leave."""
    from maestro.memory import NotFoundError

    name, _, arg = text.partition(" ")
    if name in ("/quit", "/exit"):
        return False
    if name == "/memories":
        items = await assistant.db.memory.list(assistant.user_id)
        typer.echo("\n".join(f"#{m.id} [{m.kind}] {m.text}" for m in items) or "(no memories)")
    elif name == "/forget":
        if not arg.strip().isdigit():
            _note("usage: /forget MEMORY_ID")
            return True
        try:
            await assistant.db.memory.forget(assistant.user_id, int(arg))
            _note(f"forgot #{arg.strip()}")
        except NotFoundError as exc:
            _note(f"error: {exc}")
    elif name == "/summary":
        typer.echo(await assistant.summary() or "(no summary yet)")
    else:
        _note("commands: /memories, /forget ID, /summary, /quit")
    return True


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
