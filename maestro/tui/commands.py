"""The command palette (Ctrl+P): threads, runs, models, budget presets and themes.

Threads and runs come from the store, read once when the palette opens (``startup``), so
typing filters without a database round-trip per keystroke. Choosing a run resumes it when
it was interrupted (still "running" in the store but not running here) and otherwise shows
its outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from maestro.errors import MaestroError
from maestro.tui.services import RunInfo, ThreadInfo

if TYPE_CHECKING:
    from maestro.tui.app import MaestroApp

Entry = tuple[str, str, Callable[[], Any]]  # (title, help, callback)


class MaestroCommands(Provider):
    """Palette entries for Maestro's own objects."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[ThreadInfo] = []
        self.runs: list[RunInfo] = []

    @property
    def maestro(self) -> MaestroApp:
        from maestro.tui.app import MaestroApp

        app = self.app
        assert isinstance(app, MaestroApp)  # this provider is only registered on MaestroApp
        return app

    async def startup(self) -> None:
        app = self.maestro
        if not app.store_ready.is_set():
            return
        try:
            self.threads = await app.store.list_threads()
            self.runs = await app.store.list_runs()
        except MaestroError as exc:
            app.notify(f"could not read threads and runs: {exc}", severity="warning")

    def entries(self) -> list[Entry]:
        from maestro.tui.app import BUDGET_PRESETS

        app = self.maestro
        found: list[Entry] = []
        for thread in self.threads:
            found.append(
                (
                    f"Thread: {thread.title}",
                    "switch to this thread",
                    partial(app.switch_thread, thread.id),
                )
            )
        current = app.run_view.run_id
        for run in self.runs:
            interrupted = run.status == "running" and not (run.id == current and app.run_active)
            status = "interrupted" if interrupted else run.status
            action = partial(app.resume, run) if interrupted else partial(self._describe, run)
            what = "resume it" if interrupted else "show its outcome"
            found.append((f"Run: {run.task[:50]} [{status}]", what, action))
        for name in app.services.model_choices:
            found.append((f"Model: {name}", "load this model", partial(app.switch_model, name)))
        for preset in BUDGET_PRESETS:
            found.append(
                (
                    f"Budget: {preset}",
                    "effort preset for the next task",
                    partial(app.set_budget, preset),
                )
            )
        for theme in sorted(app.available_themes):
            found.append(
                (f"Theme: {theme}", "change the colours", partial(setattr, app, "theme", theme))
            )
        return found

    def _describe(self, run: RunInfo) -> None:
        self.maestro.notify(f"run {run.id[:12]}: {run.status} — {run.task}", timeout=8)

    async def discover(self) -> Hits:
        for title, help_text, callback in self.entries():
            if not title.startswith("Theme:"):
                yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self.entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
