"""One exception tree for the whole framework.

Callers catch by *meaning*, never by the library that happened to fail underneath. Foreign
exceptions (httpx, pydantic, the engine, SQLAlchemy) are translated where they cross into
Maestro, always with ``raise ... from exc`` so the original traceback survives::

    MaestroError                      base of everything raised on purpose
    ├── UserError                     developer misuse or bad input: fix your code or arguments
    ├── ModelError                    the model or its provider misbehaved
    │   ├── ModelHTTPError            non-success HTTP status (after retries): .status, .body
    │   ├── ModelTimeoutError         no answer within the configured time
    │   ├── ModelConnectionError      transport failure (DNS, refused, reset) after retries
    │   └── UnexpectedModelBehavior   an answer we cannot use (bad JSON, unknown tool, ...)
    ├── ToolError                     a tool failed (its own exception is the __cause__)
    │   └── ApprovalDenied            a tool needing approval was refused; it never ran
    ├── BudgetExceeded                control flow: a hard cap would be crossed; .reason
    └── ToolRetry                     control flow: a tool asks the model to try again

``ToolRetry`` and ``BudgetExceeded`` are control flow, not failures: the agent loop catches
them. ``ToolRetry`` goes back to the model as an error tool result; ``BudgetExceeded`` ends a
run with a finish reason and the best result so far. Neither should escape ``Agent.run``.
"""

from __future__ import annotations


class MaestroError(Exception):
    """Base class of every exception Maestro raises on purpose."""


class UserError(MaestroError):
    """The framework was used wrongly: a bad argument, a bad tool signature, a missing model."""


class ModelError(MaestroError):
    """The model or its provider failed or answered with something unusable."""


class ModelHTTPError(ModelError):
    """An HTTP endpoint answered with a non-success status (retries already spent)."""

    def __init__(self, status: int, body: str, *, model_name: str | None = None) -> None:
        self.status = status
        self.body = body
        self.model_name = model_name
        where = f" from {model_name}" if model_name else ""
        super().__init__(f"HTTP {status}{where}: {body[:500]}")


class ModelTimeoutError(ModelError):
    """The model did not answer within the configured timeout or total time bound."""


class ModelConnectionError(ModelError):
    """The endpoint could not be reached (connection refused, reset, DNS) after retries."""


class UnexpectedModelBehavior(ModelError):
    """The model answered, but not in a form we can use (invalid JSON, unknown tool, ...)."""

    def __init__(self, message: str, *, body: str | None = None) -> None:
        self.body = body
        super().__init__(message)


class ToolError(MaestroError):
    """A tool failed. The tool's own exception is chained as ``__cause__``."""

    def __init__(self, message: str, *, tool_name: str | None = None) -> None:
        self.tool_name = tool_name
        super().__init__(message)


class ApprovalDenied(ToolError):
    """A tool that requires approval was refused (or nobody could approve it); it never ran."""


class BudgetExceeded(MaestroError):
    """Control flow: the next call would cross a hard budget cap.

    ``reason`` is the finish reason the run ends with (e.g. ``"max_model_calls"``).
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"budget exhausted: {reason}")


class ToolRetry(MaestroError):
    """Control flow: raised by a tool to ask the model to call it again, differently.

    The message is sent back to the model verbatim as an error tool result, so write it for
    the model: say what was wrong and what a good call looks like.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


__all__ = [
    "ApprovalDenied",
    "BudgetExceeded",
    "MaestroError",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelTimeoutError",
    "ToolError",
    "ToolRetry",
    "UnexpectedModelBehavior",
    "UserError",
]
