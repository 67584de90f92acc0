"""Model status: which model, whether it is loaded, how fast it generates, how full the
context is, and how often the prefix-state cache hit.

The embedded engine loads in a background thread, so this line is the user's only sign of
what is happening in the first seconds; it says "loading" until the model is ready and shows
the load error, with what to do, if it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static


@dataclass(slots=True)
class ModelStats:
    name: str
    state: str = "loading"  # loading | ready | generating | error
    error: str = ""
    tokens_per_s: float | None = None
    context_used: int | None = None
    context_length: int | None = None
    cache_hits: int | None = None
    cache_lookups: int | None = None


def render_stats(stats: ModelStats) -> Text:
    style = {"loading": "yellow", "ready": "green", "generating": "cyan", "error": "bold red"}
    text = Text.assemble((stats.name, "bold"), "  ", (stats.state, style.get(stats.state, "")))
    if stats.state == "error":
        text.append(f"\n{stats.error}", style="red")
        return text
    speed = f"{stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else "– tok/s"
    if stats.context_used is not None and stats.context_length:
        share = 100 * stats.context_used / stats.context_length
        context = f"ctx {stats.context_used}/{stats.context_length} ({share:.0f}%)"
    elif stats.context_used is not None:
        context = f"ctx {stats.context_used} tok"
    else:
        context = "ctx –"
    if stats.cache_lookups:
        cache = f"cache {stats.cache_hits or 0}/{stats.cache_lookups} hits"
    else:
        cache = "cache –"
    text.append(f"\n{speed} · {context} · {cache}", style="dim")
    return text


class ModelStatus(Static):
    """One glance at the model."""

    def __init__(self, name: str, *, id: str | None = None) -> None:
        self.stats = ModelStats(name)
        super().__init__(render_stats(self.stats), id=id)
        self.border_title = "model"

    def show(self, stats: ModelStats) -> None:
        self.stats = stats
        self.update(render_stats(stats))
