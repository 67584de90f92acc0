"""Host side of the sandbox wire format: 4-byte big-endian length + UTF-8 JSON object.

The worker speaks the same format (duplicated in ``worker.py``, which must stay stdlib-only
and importable inside the sandbox). Replies come from a process running hostile code, so the
host bounds the frame size, validates the JSON shape and enforces a wall-clock deadline on
every read — a worker that stops answering cannot hang the host.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from typing import Any

MAX_REPLY_BYTES = 8 << 20
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The worker sent something that is not a valid reply frame, or closed the channel."""


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one request frame (blocking; requests are small)."""
    data = json.dumps(message).encode("utf-8")
    sock.settimeout(None)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the sandbox did not answer in time")
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            continue
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ProtocolError("the sandbox closed its channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, *, deadline: float) -> dict[str, Any]:
    """Receive one reply frame before ``deadline`` (a ``time.monotonic()`` value)."""
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if size > MAX_REPLY_BYTES:
        raise ProtocolError(f"reply of {size} bytes exceeds the {MAX_REPLY_BYTES} byte cap")
    try:
        message = json.loads(_recv_exact(sock, size, deadline).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed reply: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("reply is not a JSON object")
    return message
