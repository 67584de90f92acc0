"""The scrolling conversation: user messages, streamed answers, and errors.

It follows the newest message while the user is at the bottom, and stops following as soon
as they scroll up to read, so a long answer never yanks the view away from them.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import on
from textual.containers import VerticalScroll

from maestro.tui.services import ChatEntry
from maestro.tui.widgets.chat.chat_message import ChatMessage

EMPTY_HINT = "Ask Maestro to do something. Enter sends; Up/Down recall earlier prompts."


class ChatLog(VerticalScroll):
    """The messages of the current thread."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.can_focus = False
        self.border_title = "conversation"

    async def show_thread(self, entries: Iterable[ChatEntry]) -> None:
        """Replace the log with a stored thread."""
        await self.remove_children()
        messages = [ChatMessage(e.role, e.content) for e in entries]
        if messages:
            await self.mount_all(messages)
        else:
            await self.mount(ChatMessage("system", EMPTY_HINT))
        self.scroll_end(animate=False)

    async def add(self, role: str, content: str, *, streaming: bool = False) -> ChatMessage:
        """Append a message (``streaming`` ones take text through ``append``)."""
        for hint in self.query(".message.system"):
            if isinstance(hint, ChatMessage) and hint.text == EMPTY_HINT:
                await hint.remove()
        follow = self.is_vertical_scroll_end
        message = ChatMessage(role, content, streaming=streaming)
        await self.mount(message)
        if follow or role == "user":
            self.scroll_end(animate=False)
        return message

    @on(ChatMessage.Flushed)
    def _follow(self) -> None:
        if self.max_scroll_y - self.scroll_y <= 3:
            self.scroll_end(animate=False)

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self.query(ChatMessage))
