"""An ASGI middleware in front of every route: request size limit, then authentication.

Authentication is a bearer token. With keys configured, a request without a known key is
refused (401) and the key decides the user: ``{key: user}``. Without keys (a server bound to
loopback for one person), the optional ``X-Maestro-User`` header names the user, so local
tools can still keep users apart; with keys that header is ignored — an identity comes from
a secret, never from a claim. The user lands in ``request.state.user``.

Request bodies are capped (``max_body_bytes``): a declared ``Content-Length`` over the cap is
refused before reading; a chunked body is read up to the cap and then replayed to the app.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maestro.server.errors import APIError

ANONYMOUS = "anonymous"
USER_HEADER = b"x-maestro-user"
_USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
#: Routes that answer without a key (health checks from load balancers).
PUBLIC_PATHS = frozenset({"/health"})


class Guard:
    def __init__(self, app: ASGIApp, *, keys: Mapping[str, str], max_body_bytes: int) -> None:
        self.app = app
        self.keys = dict(keys)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            user = self._authenticate(scope)
            receive = await self._limited(scope, receive)
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope) -> str:
        headers = dict(scope["headers"])
        if not self.keys:
            claimed = headers.get(USER_HEADER, b"").decode("latin-1").strip()
            if claimed and not _USER_NAME.match(claimed):
                raise APIError(
                    400,
                    "X-Maestro-User must be 1-128 characters of letters, digits, _ . @ -",
                    param="X-Maestro-User",
                )
            return claimed or ANONYMOUS
        if scope["path"] in PUBLIC_PATHS:
            return ANONYMOUS
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "missing API key: send it as 'Authorization: Bearer <key>'",
                code="missing_api_key",
            )
        given = token.strip().encode()
        # Compare against every key in constant time, so timing says nothing about which.
        user = None
        for key, owner in self.keys.items():
            if hmac.compare_digest(key.encode(), given):
                user = owner
        if user is None:
            raise APIError(401, "invalid API key", code="invalid_api_key")
        return user

    async def _limited(self, scope: Scope, receive: Receive) -> Receive:
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise APIError(400, "bad Content-Length header") from None
            if size > limit:
                raise _too_large(size, limit)
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                raise _too_large(total, limit)
            chunks.append(body)
            more = bool(message.get("more_body", False))
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return replayed


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        413,
        f"request body of {size} bytes is over the limit of {limit} bytes",
        code="request_too_large",
    )
