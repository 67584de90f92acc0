"""``--model`` specs for the TUI: the shared resolver (:mod:`maestro.llm.spec`) run off the UI.

A spec is a registry name or path (the embedded engine; the weights load in a worker thread,
so the window is usable before they are in memory), an ``http(s)://`` URL (``URL#name`` picks
the served model), or ``scripted:TEXT`` (a test hook that answers ``TEXT``; it cannot write
plans, so ``maestro tui`` runs it without tools). See :mod:`maestro.llm.spec` for the rules.
"""

from __future__ import annotations

from maestro.llm.base import Model
from maestro.llm.spec import (
    DEFAULT_MODEL,
    SCRIPTED_PREFIX,
    display_name,
    resolve_model,
    scripted_model,
)
from maestro.tui.services import ModelLoader


def model_loader(spec: str) -> ModelLoader:
    """A zero-argument function that builds the model for ``spec`` (call it in a thread)."""

    def load() -> Model:
        return resolve_model(spec)

    return load


__all__ = ["DEFAULT_MODEL", "SCRIPTED_PREFIX", "display_name", "model_loader", "scripted_model"]
