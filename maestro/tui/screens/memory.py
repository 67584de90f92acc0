"""The memory browser: what the assistant remembers about the user, where each memory came
from (run / message provenance), and the means to correct (edit) or remove (forget) it.

Forgetting is irreversible, so it takes the key twice on the same row: the first press says
what will go, the second does it.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from maestro.errors import MaestroError
from maestro.tui.screens.edit_memory import EditMemoryScreen
from maestro.tui.services import MemoryInfo, Store


class MemoryScreen(Screen[None]):
    """Browse, edit and forget memories."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("e", "edit", "Edit"),
        Binding("f", "forget", "Forget"),
        Binding("a", "add", "Add"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.memories: list[MemoryInfo] = []
        self._armed: int | None = None

    def compose(self) -> ComposeResult:
        yield Static("Memories — what Maestro remembers about you", id="memory-heading")
        table: DataTable[str] = DataTable(id="memory-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("id", "kind", "memory", "provenance", "updated")
        yield table
        yield Static("", id="memory-status")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    @property
    def table(self) -> DataTable[str]:
        return self.query_one("#memory-table", DataTable)

    def _status(self, text: str) -> None:
        self.query_one("#memory-status", Static).update(text)

    @work(exclusive=True, group="memory")
    async def action_reload(self) -> None:
        try:
            memories = await self.store.list_memories()
        except MaestroError as exc:
            self._status(f"could not read memories: {exc}")
            return
        self._show(memories)

    def _show(self, memories: list[MemoryInfo]) -> None:
        self.memories = memories
        table = self.table
        row = table.cursor_row
        table.clear()
        for m in memories:
            updated = m.updated_at.strftime("%Y-%m-%d %H:%M") if m.updated_at else ""
            label = f"[{m.label}] " if m.label else ""
            table.add_row(str(m.id), m.kind, label + m.text, m.provenance, updated, key=str(m.id))
        if memories:
            table.move_cursor(row=min(row, len(memories) - 1))
        self._status(f"{len(memories)} memories" if memories else "no memories yet — a adds one")

    def _selected(self) -> MemoryInfo | None:
        if not self.memories:
            return None
        row = self.table.cursor_row
        return self.memories[row] if 0 <= row < len(self.memories) else None

    def action_edit(self) -> None:
        memory = self._selected()
        if memory is None:
            return
        self.app.push_screen(
            EditMemoryScreen(memory.text), lambda text: self._save_edit(memory.id, text)
        )

    def _save_edit(self, memory_id: int, text: str | None) -> None:
        if text is not None:
            self._apply(("edit", memory_id, text))

    def action_add(self) -> None:
        self.app.push_screen(EditMemoryScreen(title="Remember something new"), self._save_new)

    def _save_new(self, text: str | None) -> None:
        if text is not None:
            self._apply(("add", 0, text))

    def action_forget(self) -> None:
        memory = self._selected()
        if memory is None:
            return
        if self._armed != memory.id:
            self._armed = memory.id
            self._status(f"press f again to forget memory {memory.id}: {memory.text!r}")
            return
        self._armed = None
        self._apply(("forget", memory.id, ""))

    @on(DataTable.RowHighlighted)
    def _disarm(self) -> None:
        if self._armed is not None and (m := self._selected()) and m.id != self._armed:
            self._armed = None
            self._status(f"{len(self.memories)} memories")

    @work(exclusive=True, group="memory")
    async def _apply(self, change: tuple[str, int, str]) -> None:
        action, memory_id, text = change
        try:
            if action == "edit":
                await self.store.edit_memory(memory_id, text)
                done = f"memory {memory_id} updated"
            elif action == "add":
                item = await self.store.remember(text)
                done = f"memory {item.id} added"
            else:
                await self.store.forget_memory(memory_id)
                done = f"memory {memory_id} forgotten"
            memories = await self.store.list_memories()
        except MaestroError as exc:
            self._status(f"{action} failed: {exc}")
            return
        self._show(memories)
        self._status(done)
