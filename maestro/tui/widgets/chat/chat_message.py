"""One message of the conversation, rendered as Markdown; assistant answers stream into it.

Tokens arrive far faster than a terminal should repaint: re-parsing the Markdown on every
token starves keyboard input (the deepagents TUI learned this the hard way). So
:meth:`ChatMessage.add_text` only buffers, and a timer appends the buffer to the Markdown
document (``Markdown.append`` re-parses only from the last block) every
:attr:`FLUSH_INTERVAL` seconds. :meth:`finish` re-renders the full source once, which also
clears the stale fenced-code state incremental appends can leave behind (Textual issue
#6518). Textual's own ``MarkdownStream`` is not used: with Textual 8.2.8 its background
task failed here on ``stop()`` with "An asyncio.Future, a coroutine or an awaitable is
required" (seen on a database-backed run), losing the end of the answer.
"""

from __future__ import annotations

import time

from textual.message import Message
from textual.timer import Timer
from textual.widgets import Markdown

ROLE_TITLES = {"user": "you", "assistant": "maestro", "system": "system", "error": "error"}


class ChatMessage(Markdown):
    """A user, assistant or error message."""

    FLUSH_INTERVAL = 0.05
    BACKOFF = 4.0

    def __init__(self, role: str, content: str = "", *, streaming: bool = False) -> None:
        super().__init__(content, classes=f"message {role}")
        self.role = role
        self.streaming = streaming
        self._text = content
        self._pending: list[str] = []
        self._timer: Timer | None = None
        self._next_flush = 0.0
        self.border_title = ROLE_TITLES.get(role, role)

    def on_mount(self) -> None:
        if self.streaming:
            self._timer = self.set_interval(self.FLUSH_INTERVAL, self._flush)

    @property
    def text(self) -> str:
        """Everything received so far, flushed or not."""
        return self._text + "".join(self._pending)

    def add_text(self, fragment: str) -> None:
        """Buffer a streamed fragment; it is shown at the next flush."""
        self._pending.append(fragment)

    async def _flush(self) -> None:
        if not self._pending or time.monotonic() < self._next_flush:
            return
        chunk = "".join(self._pending)
        self._pending.clear()
        self._text += chunk
        started = time.monotonic()
        await self.append(chunk)
        cost = time.monotonic() - started
        # Re-parsing grows with the answer; never spend more than ~1/(1+BACKOFF) of the
        # loop's time repainting, whatever the flush interval says.
        self._next_flush = started + cost * (1 + self.BACKOFF)
        self.post_message(self.Flushed(self))

    async def reset(self) -> None:
        """Drop what was streamed so far: a later draft replaces an earlier one."""
        self._pending.clear()
        self._text = ""
        await self.update("")

    async def finish(self, final_text: str | None = None, *, note: str | None = None) -> None:
        """End streaming: show ``final_text`` (or what was streamed), plus an optional note."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._text = self.text if final_text is None else final_text
        self._pending.clear()
        self.streaming = False
        if note:
            self.border_subtitle = note
        await self.update(self._text)

    class Flushed(Message):
        """Posted after buffered text reached the screen (the log scrolls to follow it)."""

        def __init__(self, chat_message: ChatMessage) -> None:
            super().__init__()
            self.chat_message = chat_message
