"""OpenTelemetry spans for runs, model calls and tool calls — off unless you turn them on.

Spans follow the OpenTelemetry GenAI semantic conventions (``invoke_agent {name}``,
``chat {model}``, ``execute_tool {tool}`` with ``gen_ai.*`` attributes). The convention
package is published as pre-releases only, so attribute names are plain strings here.

Nothing is exported anywhere by default: until :func:`enable_tracing` is called, :func:`span`
is a no-op that never imports ``opentelemetry``. ``enable_tracing(provider)`` uses the given
``TracerProvider`` (or the global one you configured); where its spans go is your exporter's
choice. Message contents are not recorded, only sizes, names and usage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

OPERATION = "gen_ai.operation.name"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION_ID = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
ERROR_TYPE = "error.type"


class SpanLike(Protocol):
    def set_attribute(self, key: str, value: Any) -> None: ...


class _NoSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None


_NO_SPAN = _NoSpan()
_tracer: Any = None


def enable_tracing(tracer_provider: Any = None) -> None:
    """Start emitting spans through ``tracer_provider`` (default: the global provider).

    Needs ``opentelemetry-api`` (``pip install maestro-agents[otel]``).
    """
    global _tracer
    try:
        from opentelemetry import trace
    except ImportError as exc:
        from maestro.errors import UserError

        raise UserError(
            "tracing needs opentelemetry-api: pip install 'maestro-agents[otel]'"
        ) from exc
    provider = tracer_provider or trace.get_tracer_provider()
    _tracer = provider.get_tracer("maestro")


def disable_tracing() -> None:
    global _tracer
    _tracer = None


def tracing_enabled() -> bool:
    return _tracer is not None


@contextmanager
def span(name: str, attributes: dict[str, Any]) -> Iterator[SpanLike]:
    """A span when tracing is on, a no-op otherwise. Exceptions mark the span as an error."""
    if _tracer is None:
        yield _NO_SPAN
        return
    clean = {k: v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, attributes=clean) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_attribute(ERROR_TYPE, type(exc).__name__)
            raise


__all__ = ["disable_tracing", "enable_tracing", "span", "tracing_enabled"]
