"""``maestro serve``: the OpenAI-compatible API and the runs API under uvicorn.

Bound to 127.0.0.1 unless ``--host`` says otherwise. Authentication: ``MAESTRO_API_KEY``
(one key, user ``default``) and/or ``MAESTRO_API_KEYS`` (``user=key,user=key``, one user per
key); with neither set, anyone who can reach the port may call it, and a warning says so when
the host is not loopback. Runs are stored in the database (``--db`` / ``MAESTRO_DATABASE_URL``,
else the embedded SQLite file); ``--no-store`` keeps them in memory. Heavy imports happen
inside the command so ``maestro --help`` stays fast.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

app = typer.Typer(help="Serve the OpenAI-compatible API and the runs API.")

LOOPBACK_NAMES = ("localhost",)


def keys_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``{key: user}`` from ``MAESTRO_API_KEY`` and ``MAESTRO_API_KEYS``."""
    env = os.environ if environ is None else environ
    keys: dict[str, str] = {}
    single = env.get("MAESTRO_API_KEY", "").strip()
    if single:
        keys[single] = "default"
    for item in filter(None, (p.strip() for p in env.get("MAESTRO_API_KEYS", "").split(","))):
        user, sep, key = item.partition("=")
        if not sep or not user.strip() or not key.strip():
            raise typer.BadParameter(
                f"MAESTRO_API_KEYS entry {item.split('=')[0]!r}... must look like user=key"
            )
        keys[key.strip()] = user.strip()
    return keys


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.callback(invoke_without_command=True)
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Registry name, local path or URL[#name].")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL for runs.")] = None,
    store: Annotated[bool, typer.Option(help="Store runs in the database.")] = True,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest accepted request body.", min=1024)
    ] = 4 * 1024 * 1024,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve until interrupted."""
    import uvicorn

    from maestro import settings
    from maestro.errors import MaestroError
    from maestro.llm.local import LocalModel
    from maestro.llm.spec import resolve_model
    from maestro.server import create_app

    keys = keys_from_env()
    if not keys and not is_loopback(host):
        typer.echo(
            f"warning: serving on {host} without authentication; set MAESTRO_API_KEY", err=True
        )
    try:
        served = resolve_model(model)
        if isinstance(served, LocalModel):  # a bad name or file fails now, not at a request
            typer.echo(f"loading model {served.model_name} ...", err=True)
            served.load_now()
        if store and db is None and "MAESTRO_DATABASE_URL" not in os.environ:
            settings.data_dir().mkdir(parents=True, exist_ok=True)
        database = (db or settings.database_url()) if store else None
        application = create_app(
            served, database=database, api_key=keys or None, max_body_bytes=max_body_bytes
        )
    except MaestroError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    auth = f"{len(keys)} API key(s)" if keys else "no auth"
    typer.echo(f"maestro serve: {served.model_name} on http://{host}:{port}/v1 ({auth})", err=True)
    uvicorn.run(application, host=host, port=port, log_level=log_level)
