"""``create_app``: the Starlette application behind ``maestro serve``.

::

    app = create_app(model=LocalModel(), database="sqlite+aiosqlite:///runs.db",
                     api_key={"sk-alice": "alice", "sk-bob": "bob"})
    uvicorn.run(app, host="127.0.0.1", port=8000)

This package is a composition root: it may import everything (``tools`` for the runs API's
tool registry), and nothing in ``maestro``'s core imports it.

``database`` is a URL (opened in the app's lifespan, on the server's own event loop, and
closed at shutdown), an open :class:`~maestro.memory.Database` (owned by the caller; it must
belong to the loop the server runs on), or ``None`` (runs kept in memory). ``api_key`` is one
key (its user is ``"default"``), a ``{key: user}`` mapping, or ``None`` for no auth.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from maestro.errors import UserError
from maestro.llm.base import Model
from maestro.runs import InMemoryRunStore, RunStore
from maestro.server.chat import ChatService
from maestro.server.errors import (
    APIError,
    handle_api_error,
    handle_http_exception,
    handle_unexpected,
)
from maestro.server.guard import Guard
from maestro.server.runs import SAFE_TOOLS, RunService, ToolFactory

if TYPE_CHECKING:
    from maestro.memory.database import Database

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_USER = "default"


def api_keys(api_key: str | Mapping[str, str] | None) -> dict[str, str]:
    """``{key: user}`` from one key, a mapping, or None."""
    if api_key is None:
        return {}
    if isinstance(api_key, str):
        if not api_key.strip():
            raise UserError("api_key is empty; pass None to turn authentication off")
        return {api_key.strip(): DEFAULT_USER}
    keys = {k.strip(): u for k, u in api_key.items()}
    if any(not k for k in keys) or any(not u for u in keys.values()):
        raise UserError("api_key mapping has an empty key or user")
    return keys


def create_app(
    model: Model | str | None = None,
    *,
    database: Database | str | None = None,
    api_key: str | Mapping[str, str] | None = None,
    tools: Mapping[str, ToolFactory] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_active_runs: int = 16,
) -> Starlette:
    """The OpenAI-compatible chat API and the runs API over ``model`` (see the module doc)."""
    if not isinstance(model, Model):
        from maestro.llm.spec import resolve_model

        model = resolve_model(model)
    if max_body_bytes < 1024:
        raise UserError(f"max_body_bytes must be at least 1024, got {max_body_bytes}")
    keys = api_keys(api_key)
    holder: dict[str, Any] = {"store": InMemoryRunStore()}
    if database is not None and not isinstance(database, str):
        holder["store"] = database.runs

    def store_of() -> RunStore:
        store: RunStore = holder["store"]
        return store

    chat = ChatService(model)
    runs = RunService(
        model, store_of, SAFE_TOOLS if tools is None else tools, max_active=max_active_runs
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        opened: Database | None = None
        if isinstance(database, str):
            from maestro.memory.database import Database as _Database

            opened = await _Database.open(database)
            holder["store"] = opened.runs
        try:
            yield
        finally:
            await runs.shutdown()
            if opened is not None:
                await opened.close()

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": model.model_name})

    async def whoami(request: Request) -> Response:
        return JSONResponse({"user": request.state.user, "auth": bool(keys)})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", chat.list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/runs", runs.create, methods=["POST"]),
        Route("/v1/runs", runs.list_runs, methods=["GET"]),
        Route("/v1/runs/{run_id}", runs.get, methods=["GET"]),
        Route("/v1/runs/{run_id}/events", runs.events, methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", runs.cancel, methods=["POST"]),
        Route("/v1/me", whoami, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, keys=keys, max_body_bytes=max_body_bytes)],
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.runs = runs
    return app
