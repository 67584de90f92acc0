"""``maestro bench engine|gpu|core|memory|tools``: speed and memory against competitors."""

from __future__ import annotations

import importlib
import json
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts and CI).")]
QuickOption = Annotated[bool, typer.Option("--quick", help="Small sizes: a smoke run in seconds.")]


def _run(name: str, json_output: bool, quick: bool) -> None:
    try:
        module = importlib.import_module(f"maestro.bench.{name}")
    except ModuleNotFoundError as exc:
        typer.echo(f"error: the {name} benchmark is not available ({exc})", err=True)
        raise typer.Exit(2) from exc
    result = module.main(json_output=json_output, quick=quick)
    if json_output:
        typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def engine(json_output: JsonOption = False, quick: QuickOption = False) -> None:
    """Prefill/decode speed, memory and cache size: ours vs transformers (and llama.cpp)."""
    _run("engine", json_output, quick)


@app.command()
def gpu(json_output: JsonOption = False, quick: QuickOption = False) -> None:
    """The engine on a CUDA GPU: prefill/decode speed vs transformers, with and without CUDA graphs."""
    _run("gpu", json_output, quick)


@app.command()
def core(json_output: JsonOption = False, quick: QuickOption = False) -> None:
    """Orchestration overhead per step and memory of a long run."""
    _run("core", json_output, quick)


@app.command()
def memory(json_output: JsonOption = False, quick: QuickOption = False) -> None:
    """Message write rate and recall latency on SQLite and PostgreSQL."""
    _run("memory", json_output, quick)


@app.command()
def tools(json_output: JsonOption = False, quick: QuickOption = False) -> None:
    """Sandbox start/call overhead, ingest throughput and search latency."""
    _run("tools", json_output, quick)


@app.command()
def state(json_output: JsonOption = False, quick: QuickOption = False) -> None:
    """Constrained-decoding overhead, warm-prefix time to first token, stored-state resume."""
    _run("state", json_output, quick)
