"""Documents: ingest a path into the retrieval index (with a progress bar) and list what is
indexed.

Ingest belongs to the retrieval tools; a build without them still lists the documents the
database holds and says plainly why ingest is unavailable instead of offering a button that
fails. Ingest runs in an exclusive worker, so starting a second one cancels the first and
its late progress reports are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, ProgressBar, Static

from maestro.errors import MaestroError
from maestro.tui.services import DocumentInfo, Ingestor, Store


class DocumentsScreen(Screen[None]):
    """Ingest and list documents."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    def __init__(self, store: Store, ingestor: Ingestor | None, unavailable_reason: str) -> None:
        super().__init__()
        self.store = store
        self.ingestor = ingestor
        self.unavailable_reason = unavailable_reason
        self.documents: list[DocumentInfo] = []
        self._ingest_generation = 0

    def compose(self) -> ComposeResult:
        yield Static("Documents — what retrieval can cite", id="documents-heading")
        yield Input(
            placeholder="path to a file or directory to ingest, then Enter",
            id="ingest-path",
            disabled=self.ingestor is None,
        )
        yield ProgressBar(id="ingest-progress", show_eta=False)
        yield Static("", id="ingest-status")
        table: DataTable[str] = DataTable(id="documents-table", cursor_type="row")
        table.add_columns("id", "source", "title", "collection")
        yield table
        yield Footer()

    def on_mount(self) -> None:
        if self.ingestor is None:
            self._status(f"Ingest unavailable: {self.unavailable_reason}. Listing still works.")
        self.action_reload()

    def _status(self, text: str) -> None:
        self.query_one("#ingest-status", Static).update(text)

    @work(exclusive=True, group="documents-list")
    async def action_reload(self) -> None:
        try:
            documents = await self.store.list_documents()
        except MaestroError as exc:
            self._status(f"could not list documents: {exc}")
            return
        self.documents = documents
        table = self.query_one("#documents-table", DataTable)
        table.clear()
        for d in documents:
            table.add_row(str(d.id), d.source, d.title or "", d.collection, key=str(d.id))
        if not documents and self.ingestor is not None:
            self._status("nothing indexed yet — type a path above")

    @on(Input.Submitted, "#ingest-path")
    def _ingest_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        event.input.value = ""
        if not path:
            return
        if not Path(path).expanduser().exists():
            self._status(f"{path}: no such file or directory")
            return
        self.ingest(str(Path(path).expanduser()))

    @work(exclusive=True, group="ingest")
    async def ingest(self, path: str) -> None:
        if self.ingestor is None:
            return
        self._ingest_generation += 1
        generation = self._ingest_generation
        bar = self.query_one("#ingest-progress", ProgressBar)
        bar.update(total=None, progress=0)

        def progress(done: int, total: int, current: str) -> None:
            if generation != self._ingest_generation:
                return  # a newer ingest replaced this one: its reports are stale
            bar.update(total=max(total, 1), progress=done)
            self._status(f"ingesting {current} ({done}/{total})")

        self._status(f"ingesting {path} …")
        try:
            added = await self.ingestor.ingest(path, progress)
        except MaestroError as exc:
            self._status(f"ingest of {path} failed: {exc}")
            return
        self._status(f"ingested {added} document(s) from {path}")
        self.action_reload()
