"""Generation numbers for the model status: tokens per second, context used, cache hits.

The app feeds a :class:`GenerationMeter` the run's text deltas; it keeps the counters and
says when the status line is worth redrawing (at most every :data:`REFRESH_S`), so a fast
model does not turn every token into a repaint. Speed counts deltas, which the embedded
engine emits one per token; remote servers may batch a few tokens per delta, so for them the
number is a lower bound. Context use is estimated (≈4 characters per token), as the budget
pre-checks do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from maestro.messages import Message
from maestro.testing import estimate_tokens
from maestro.tui.widgets.run.model_status import ModelStats

REFRESH_S = 0.25
PREFIX_CACHE_BYTES = 256 * 2**20


class GenerationMeter:
    """Counts one run's generation into ``stats``."""

    #: A class attribute so snapshot tests can freeze it.
    clock: ClassVar[Callable[[], float]] = time.monotonic

    def __init__(self, stats: ModelStats) -> None:
        self.stats = stats
        self.tokens = 0
        self.first_token: float | None = None
        self.last_refresh = 0.0
        self.context_base = 0

    def begin(self, history: Sequence[Message], task: str) -> None:
        self.tokens, self.first_token, self.last_refresh = 0, None, 0.0
        self.context_base = sum(estimate_tokens(_text(m)) for m in history)
        self.context_base += estimate_tokens(task)
        self.stats.state = "generating"
        self.stats.context_used = self.context_base

    def token(self, answer: str) -> bool:
        """Count one text delta; True when the status line should be redrawn."""
        now = type(self).clock()
        self.tokens += 1
        if self.first_token is None:
            self.first_token = now
        elif now > self.first_token:
            self.stats.tokens_per_s = (self.tokens - 1) / (now - self.first_token)
        if now - self.last_refresh < REFRESH_S:
            return False
        self.last_refresh = now
        self.stats.context_used = self.context_base + estimate_tokens(answer)
        return True

    def end(self, answer: str, *, model: Any, engine: Any) -> None:
        self.stats.state = "ready" if model is not None else "error"
        self.stats.context_used = self.context_base + estimate_tokens(answer)
        read_cache_stats(self.stats, model, engine)


def read_cache_stats(stats: ModelStats, model: Any, engine: Any) -> None:
    """Prefix-state cache hits: the embedded engine keeps ``prefix_cache.stats`` (hits,
    requests); other models may offer ``cache_stats() -> {"hits", "lookups"}``."""
    cache_stats = getattr(getattr(engine, "prefix_cache", None), "stats", None)
    if cache_stats is not None:
        stats.cache_hits = int(getattr(cache_stats, "hits", 0))
        stats.cache_lookups = int(getattr(cache_stats, "requests", 0))
        return
    reader = getattr(model, "cache_stats", None)
    if not callable(reader):
        return
    with contextlib.suppress(Exception):  # a status line must never break a run
        found = reader()
        stats.cache_hits = int(found.get("hits", 0))
        stats.cache_lookups = int(
            found.get("lookups", found.get("hits", 0) + found.get("misses", 0))
        )


def enable_prefix_cache(engine: Any) -> None:
    """Turn on the engine's prefix-state cache: each turn of a thread re-sends the whole
    conversation, and the cache restores the hybrid state of the part already read instead
    of prefilling it again. Engines without one are left alone."""
    enable = getattr(engine, "enable_prefix_cache", None)
    if callable(enable) and getattr(engine, "prefix_cache", None) is None:
        enable(PREFIX_CACHE_BYTES)


def _text(message: Message) -> str:
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""


__all__ = ["GenerationMeter", "enable_prefix_cache", "read_cache_stats"]
