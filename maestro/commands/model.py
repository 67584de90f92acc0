"""``maestro model pull|list|generate|chat``: the embedded engine from the terminal.

The engine (and torch) are imported inside the command functions, so ``maestro --help`` stays
fast. Progress (downloads, loading) goes to stderr; generated text streams to stdout, so
``maestro model generate "..." > out.txt`` captures only the text.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from model.api import LanguageModel

app = typer.Typer(no_args_is_help=True, help="Pull, list and run embedded models.")

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Registry name, .gguf file, HF directory or HF repo id."),
]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", min=0, help="Most tokens to generate.")]
Temperature = Annotated[
    float, typer.Option("--temperature", "-t", min=0.0, help="0 = greedy; higher = more random.")
]
TopP = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed for reproducible sampling.")]
Dtype = Annotated[str, typer.Option("--dtype", help="Weights dtype: float32 or bfloat16.")]


class Quantization(StrEnum):
    none = "none"
    int8 = "int8"
    int4 = "int4"
    bf16 = "bf16"


Quantize = Annotated[
    Quantization,
    typer.Option(
        "--quantize", "-q",
        help="Store linear weights as int8 or int4 (faster CPU decode, small accuracy cost), "
        "or bf16 (half the bytes of fp32, exact for a bf16 checkpoint; arithmetic stays fp32).",
    ),
]


class CacheDtype(StrEnum):
    model = "model"
    float16 = "float16"


KVDtype = Annotated[
    CacheDtype,
    typer.Option(
        "--kv-dtype",
        help="The attention layers' K/V cache dtype: float16 halves its memory per token and "
        "speeds up long-context decode (default: the model's dtype).",
    ),
]


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def _status(message: str) -> Iterator[Any]:
    """A spinner on stderr whose text follows the engine's progress callbacks."""
    console = _stderr_console()
    with console.status(message) as status:
        yield lambda text: status.update(text)


def _fail(exc: Exception) -> typer.Exit:
    _stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(1)


def _load(model: str | None, dtype: str, quantize: str = "none",
          kv_dtype: CacheDtype = CacheDtype.model) -> LanguageModel:
    from model import ModelError, load

    kv = None if kv_dtype is CacheDtype.model else kv_dtype.value
    try:
        with _status("resolving model") as progress:
            return load(model, dtype=dtype, quantize=quantize, kv_dtype=kv, progress=progress)
    except (ModelError, ValueError) as exc:
        raise _fail(exc) from exc


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Registry name.")] = "smollm2-135m-instruct",
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
) -> None:
    """Download a registered model into the model cache (verified by sha256)."""
    from model.errors import ModelError
    from model.registry import pull as pull_model

    try:
        with _status(f"pulling {name}") as progress:
            path = pull_model(name, progress=progress, force=force)
    except ModelError as exc:
        raise _fail(exc) from exc
    typer.echo(str(path))


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@app.command("list")
def list_models() -> None:
    """Show the registered models and what the cache holds, with sizes."""
    from rich.console import Console
    from rich.table import Table

    from model.registry import REGISTRY, cache_dir, list_cached

    cached = {m.name: m for m in list_cached()}
    table = Table(title=f"models in {cache_dir()}")
    table.add_column("name")
    table.add_column("cached")
    table.add_column("size", justify="right")
    table.add_column("description / path")
    for name, source in sorted(REGISTRY.items()):
        entry = cached.pop(name, None)
        table.add_row(
            name, "yes" if entry else "no", _human(entry.size_bytes) if entry else "-",
            source.description,
        )
    for name, entry in sorted(cached.items()):
        table.add_row(name, "yes", _human(entry.size_bytes), str(entry.path))
    Console(width=max(100, Console().width)).print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    model: ModelOption = None,
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
    dtype: Dtype = "float32",
    quantize: Quantize = Quantization.none,
    kv_dtype: KVDtype = CacheDtype.model,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt as one user message.")] = False,
) -> None:
    """Continue PROMPT, streaming the text to stdout."""
    from model import ModelError

    lm = _load(model, dtype, quantize.value, kv_dtype)
    sampling = dict(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    try:
        if chat:
            pieces = lm.chat_stream([{"role": "user", "content": prompt}], **sampling)
        else:
            pieces = lm.stream(prompt, **sampling)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except (ModelError, ValueError) as exc:
        raise _fail(exc) from exc
    sys.stdout.write("\n")


@app.command()
def chat(
    model: ModelOption = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.0,
    seed: Seed = None,
    dtype: Dtype = "float32",
    quantize: Quantize = Quantization.none,
    kv_dtype: KVDtype = CacheDtype.model,
) -> None:
    """A plain terminal chat. Commands: /reset (forget the conversation), /exit."""
    from model import ModelError

    lm = _load(model, dtype, quantize.value, kv_dtype)
    base = [{"role": "system", "content": system}] if system else []
    messages: list[dict[str, str]] = list(base)
    typer.echo(f"chatting with {lm.name} (/reset to forget, /exit or Ctrl-D to quit)", err=True)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo("", err=True)
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            messages = list(base)
            typer.echo("(conversation cleared)", err=True)
            continue
        messages.append({"role": "user", "content": text})
        reply: list[str] = []
        try:
            for piece in lm.chat_stream(messages, max_new_tokens=max_tokens,
                                        temperature=temperature, seed=seed):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ModelError as exc:  # e.g. the conversation outgrew the context
            messages.pop()
            _stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
            continue
        except KeyboardInterrupt:
            typer.echo("\n(interrupted)", err=True)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
