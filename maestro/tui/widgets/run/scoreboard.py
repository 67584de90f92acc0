"""The requirements scoreboard: score and reason per requirement, and the fix rounds.

A requirement scored in several rounds shows its history (``0.40 → 1.00``) so a reader sees
what the fix rounds changed, not only where they ended.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from maestro.tui.run_state import RunView


def render_scores(view: RunView) -> RenderableType:
    """Two lines per requirement: mark, name and score history; then the reason, dimmed.

    (A three-column table wrapped names and reasons into slivers in a 50-column panel.)
    """
    if not view.requirements:
        return Text("no requirements scored yet", style="dim")
    table = Table.grid(expand=True, padding=(0, 1))
    table.add_column("requirement", ratio=1, overflow="fold")
    table.add_column("score", justify="right", no_wrap=True)
    for req in view.requirements.values():
        history = " → ".join(f"{s:.2f}" for s in req.history[-3:])
        mark = Text("✔ " if req.passed else "✖ ", style="green" if req.passed else "red")
        table.add_row(Text.assemble(mark, (req.name, "bold")), history)
        if req.reason:
            table.add_row(Text(f"  {req.reason}", style="dim"), "")
    parts: list[RenderableType] = [table]
    if view.fix_rounds:
        rounds = ", ".join(
            f"round {r.round}: fixing {', '.join(r.failing)}" for r in view.fix_rounds
        )
        parts.append(Text(f"fix rounds: {rounds}", style="magenta"))
    return Group(*parts)


class Scoreboard(Static):
    """Requirement scores of the current run."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(Text("no requirements scored yet", style="dim"), id=id)
        self.border_title = "requirements"

    def show(self, view: RunView) -> None:
        self.update(render_scores(view))
