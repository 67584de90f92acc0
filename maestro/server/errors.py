"""OpenAI-style error objects: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the server reports — bad input, auth, unknown route, a model that failed — goes
through :class:`APIError`, so clients (the ``openai`` SDK maps the status to its exception
classes: 400 ``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``, ...)
always see the same shape. Maestro's own exceptions are translated here, at the boundary.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from maestro.errors import BudgetExceeded, MaestroError, ModelError, UserError

log = logging.getLogger("maestro.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """An error answered as an OpenAI-style error object with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def from_maestro(exc: MaestroError) -> APIError:
    """A Maestro exception as the API error a client should see."""
    if isinstance(exc, UserError):
        return APIError(400, str(exc), code="invalid_request")
    if isinstance(exc, BudgetExceeded):
        return APIError(429, str(exc), type="budget_exceeded", code=exc.reason)
    if isinstance(exc, ModelError):
        # The model behind the server failed: the server is a gateway to it.
        return APIError(502, f"the model failed: {exc}", type="model_error", code="model_error")
    return APIError(500, str(exc), code="internal_error")


async def handle_api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def handle_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, MaestroError):
        return from_maestro(exc).response()
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return APIError(
        500, "internal server error; see the server log", code="internal_error"
    ).response()
