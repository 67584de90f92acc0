"""A small modal to edit (or add) one memory's text; Enter saves, Escape cancels."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class EditMemoryScreen(ModalScreen[str | None]):
    """Returns the new text, or ``None`` when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, text: str = "", *, title: str = "Edit memory") -> None:
        super().__init__()
        self.initial = text
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(id="edit-memory-dialog"):
            yield Label(self.title_text)
            yield Input(self.initial, id="memory-text")
            yield Label("Enter saves · Escape cancels", classes="hint")

    @on(Input.Submitted)
    def _save(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if text:
            self.dismiss(text)
        else:
            self.notify("A memory cannot be empty; Escape cancels.", severity="warning")

    def action_cancel(self) -> None:
        self.dismiss(None)
