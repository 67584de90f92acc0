"""Models behind one small interface; see :mod:`maestro.llm.base`.

``OpenAIModel`` (httpx) and ``LocalModel`` (the embedded engine, imported lazily) are loaded
on first attribute access so ``import maestro.llm`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maestro.llm.base import (
    Model,
    Pricing,
    ResponseDoneEvent,
    StreamEvent,
    TextDeltaEvent,
    ToolCallDeltaEvent,
)

if TYPE_CHECKING:
    from maestro.llm.local import LocalModel
    from maestro.llm.openai import OpenAIModel


def __getattr__(name: str) -> Any:
    if name == "OpenAIModel":
        from maestro.llm.openai import OpenAIModel

        return OpenAIModel
    if name == "LocalModel":
        from maestro.llm.local import LocalModel

        return LocalModel
    raise AttributeError(f"module 'maestro.llm' has no attribute {name!r}")


__all__ = [
    "LocalModel",
    "Model",
    "OpenAIModel",
    "Pricing",
    "ResponseDoneEvent",
    "StreamEvent",
    "TextDeltaEvent",
    "ToolCallDeltaEvent",
]
