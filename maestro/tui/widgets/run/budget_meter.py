"""The budget meter: tokens, model calls, tool calls, time and cost against the run's caps.

A capped quantity gets a bar that turns yellow past 75 % and red past 90 %, so a run about
to be stopped by its budget is visible before it happens. While a run is active the elapsed
time ticks once a second; the clock is a class attribute so snapshot tests can freeze it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.timer import Timer
from textual.widgets import Static

from maestro.tui.run_state import RunView

BAR_WIDTH = 10


def _bar(used: float, cap: float | None) -> Text:
    if not cap:
        return Text("")
    ratio = min(1.0, used / cap)
    style = "red" if ratio > 0.9 else "yellow" if ratio > 0.75 else "green"
    filled = round(ratio * BAR_WIDTH)
    return Text("█" * filled + "░" * (BAR_WIDTH - filled), style=style)


def _fmt(value: float, cap: Any, unit: str = "") -> str:
    shown = f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"
    if cap is None:
        return shown
    cap_shown = f"{cap:.2f}{unit}" if isinstance(cap, float) else f"{cap}{unit}"
    return f"{shown} / {cap_shown}"


def render_budget(view: RunView, now: float) -> Table:
    usage, limits = view.usage, view.limits
    seconds = view.elapsed(now) if view.started_at is not None else 0.0
    rows: list[tuple[str, float, Any, str]] = [
        ("input tok", int(usage.get("input_tokens", 0)), limits.get("max_input_tokens"), ""),
        ("output tok", int(usage.get("output_tokens", 0)), limits.get("max_output_tokens"), ""),
        ("model calls", int(usage.get("requests", 0)), limits.get("max_model_calls"), ""),
        ("tool calls", int(usage.get("tool_calls", 0)), limits.get("max_tool_calls"), ""),
        ("time", round(seconds, 1), limits.get("max_wall_seconds"), "s"),
        ("cost", float(usage.get("cost_usd", 0.0)), limits.get("max_usd"), "$"),
    ]
    table = Table(box=None, show_header=False, expand=True, pad_edge=False)
    table.add_column("what", style="dim", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("bar", no_wrap=True)
    for name, value, cap, unit in rows:
        if unit == "$":
            text = f"${value:.4f}" + (f" / ${cap:.2f}" if cap is not None else "")
        else:
            text = _fmt(value, cap, unit)
        table.add_row(name, text, _bar(float(value), cap))
    return table


class BudgetMeter(Static):
    """What the current run has spent."""

    clock: ClassVar[Callable[[], float]] = time.time

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "budget"
        self.view = RunView()
        self._ticker: Timer | None = None

    def on_mount(self) -> None:
        self.show(self.view)

    def show(self, view: RunView) -> None:
        self.view = view
        self.update(render_budget(view, type(self).clock()))
        if view.active and self._ticker is None:
            self._ticker = self.set_interval(1.0, self._tick)
        elif not view.active and self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    def _tick(self) -> None:
        self.update(render_budget(self.view, type(self).clock()))
