"""Server-sent events framing: ``data: <json>\\n\\n`` frames, ``data: [DONE]`` at the end."""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def frame(data: dict[str, Any], *, event: str | None = None, id: int | None = None) -> str:
    """One SSE frame. JSON never contains a raw newline, so one ``data:`` line suffices."""
    head = ""
    if id is not None:
        head += f"id: {id}\n"
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"
