"""The engine's error classes.

Every failure a user can cause (a bad checkpoint, an unknown architecture, a prompt that does
not fit) is raised as one of these, so callers can catch ``ModelError`` once::

    ModelError                      base of everything the engine raises on purpose
    ├── UnsupportedArchitectureError  config names an architecture we cannot run
    ├── CheckpointError               a checkpoint file is missing, truncated or inconsistent
    └── ContextLengthError            more tokens than the cache / model context can hold

Programming errors inside the engine stay ``AssertionError`` (tensor-shape preconditions).
"""

from __future__ import annotations

from collections.abc import Iterable


class ModelError(Exception):
    """Base class of all errors the engine raises deliberately."""


class UnsupportedArchitectureError(ModelError):
    """The checkpoint describes an architecture the engine does not implement."""

    def __init__(self, architecture: str, supported: Iterable[str], detail: str = "") -> None:
        self.architecture = architecture
        self.supported = tuple(sorted(supported))
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"unsupported architecture {architecture!r}{extra}; "
            f"supported: {', '.join(self.supported)}"
        )


class CheckpointError(ModelError):
    """A checkpoint is missing, truncated or does not match its config.

    ``file`` and ``tensor`` name what was wrong (either may be None when it does not apply);
    both appear in the message so a user can find the broken piece.
    """

    def __init__(self, message: str, *, file: str | None = None, tensor: str | None = None) -> None:
        self.file = file
        self.tensor = tensor
        where = []
        if file is not None:
            where.append(f"file {file}")
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.detail = message


class ContextLengthError(ModelError, ValueError):
    """The tokens of a call do not fit into the cache or the model's context window."""

    def __init__(self, needed: int, limit: int, what: str) -> None:
        self.needed = needed
        self.limit = limit
        super().__init__(
            f"{needed} tokens do not fit into {what} of {limit} tokens; "
            "shorten the prompt, lower max_new_tokens or create a larger cache"
        )
