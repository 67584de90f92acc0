"""The plan as a tree: one node per step, relabelled as the step changes state.

Tool steps from the plan appear as soon as the plan is made (``pending``); loop steps (plan,
draft, checks) appear when they start. A step that had to call its tool again shows
``retried`` until it settles, and keeps a "retried N×" note after.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree

from maestro.tui.run_state import RunView, StepState, StepView

STATE_STYLE: dict[StepState, tuple[str, str]] = {
    "pending": ("○", "dim"),
    "running": ("◐", "bold yellow"),
    "retried": ("↻", "bold magenta"),
    "done": ("✔", "green"),
    "failed": ("✖", "bold red"),
    "skipped": ("–", "dim"),
    "denied": ("⊘", "red"),
    "cancelled": ("■", "yellow"),
}


def step_label(step: StepView) -> Text:
    icon, style = STATE_STYLE[step.state]
    label = Text.assemble((f"{icon} ", style), step.label, (f"  {step.state}", style))
    notes = []
    if step.retries:
        notes.append(f"retried {step.retries}×")
    if step.duration_s is not None and step.state not in ("pending", "running"):
        notes.append(f"{step.duration_s:.1f}s")
    if step.depends_on and step.state == "pending":
        notes.append("after " + ", ".join(step.depends_on))
    if notes:
        label.append("  " + " · ".join(notes), style="dim")
    return label


class PlanTree(Tree[str]):
    """The steps of the current run (the node data is the step key)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("no run yet", id=id)
        self.border_title = "plan"
        self.show_root = True
        self.guide_depth = 2

    def show(self, view: RunView) -> None:
        """Rebuild from ``view`` (plans are a handful of nodes: rebuilding is cheap)."""
        self.clear()
        if not view.run_id:
            self.root.set_label("no run yet")
            return
        task = " ".join(view.task.split())
        title = task if len(task) <= 48 else task[:47] + "…"
        self.root.set_label(Text.assemble((f"[{view.status}] ", "bold"), title))
        for step in view.steps.values():
            self.root.add_leaf(step_label(step), data=step.key)
        self.root.expand()

    def state_of(self, key: str) -> str | None:
        """The state word shown for step ``key`` (for tests and screen readers)."""
        for node in self.root.children:
            if node.data == key:
                return str(node.label).split("  ")[1].strip()
        return None
