"""The list of conversation threads, newest first; choosing one restores it from the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from maestro.tui.services import ThreadInfo


class ThreadList(OptionList):
    """Threads of the current user. Posts :class:`ThreadList.ThreadChosen`."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("n", "new_thread", "New thread")]

    class ThreadChosen(Message):
        def __init__(self, thread_id: str) -> None:
            super().__init__()
            self.thread_id = thread_id

    class NewThreadRequested(Message):
        """The user asked for a fresh thread (the app creates it)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "threads"
        self.threads: list[ThreadInfo] = []
        self.current: str | None = None

    def show(self, threads: Sequence[ThreadInfo], current: str | None) -> None:
        """Redraw the list, marking ``current``."""
        self.threads, self.current = list(threads), current
        self.clear_options()
        for thread in self.threads:
            marker = "▸ " if thread.id == current else "  "
            self.add_option(Option(f"{marker}{_short(thread.title)}", id=thread.id))
        if current is not None:
            index = next((i for i, t in enumerate(self.threads) if t.id == current), None)
            if index is not None:
                self.highlighted = index

    def action_new_thread(self) -> None:
        self.post_message(self.NewThreadRequested())

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.ThreadChosen(event.option.id))


def _short(title: str, width: int = 22) -> str:
    title = " ".join(title.split())
    return title if len(title) <= width else title[: width - 1] + "…"
