"""``LocalModel``: the embedded hybrid engine (``model/``) behind Maestro's Model interface.

The engine (and torch) is imported lazily, on the first request, so ``import maestro`` stays
fast. Loading and generation run in a worker thread, never on the event loop; generation
streams token by token inside that thread and checks a cancellation flag after every token,
so cancelling a run stops the engine within one token instead of letting it run to
``max_tokens``. One generation runs at a time per model (the engine's cache is per model).

Structure is decoded, not hoped for: when a request carries a ``response_format`` JSON schema,
or forces a tool (``tool_choice`` naming one tool, or ``"required"``), the output is
constrained by the engine's grammar mask (llguidance) to that schema. If the grammar support
is not available the model falls back to free generation, and the loop's parse-and-validate
retries catch what it gets wrong. With ``tool_choice="auto"`` the model writes freely and tool
calls are parsed from ``<tool_call>{...}</tool_call>`` blocks or a bare ``{"name",
"arguments"}`` object, as the common open-model chat templates produce them; with the real
engine, a call the model opens is decoded under the grammar of the declared tools
(``model.tool_calls``), and tools reach the model even when the checkpoint's template ignores
them (they are described in the system message). The engine's prefix-state cache is on
(``prefix_cache_bytes``), so the system prompt and tools are not re-read every turn.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.to_thread

from maestro.errors import ModelError, UnexpectedModelBehavior, UserError
from maestro.llm.base import (
    Model,
    ResponseDoneEvent,
    StreamEvent,
    TextDeltaEvent,
    ensure_real_models_allowed,
)
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    ModelResponse,
    ToolCall,
    ToolDefinition,
    Usage,
    to_openai,
)

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


class _Cancelled(Exception):
    """Internal: generation stopped because the awaiting task was cancelled."""


class _GrammarProcessor:
    """Adapts the engine's GrammarMatcher to its LogitsProcessor hook (advance, then mask)."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.seen = 0

    def __call__(self, generated: Sequence[int], logits: Any) -> Any:
        for token in generated[self.seen :]:
            self.matcher.advance(token)
        self.seen = len(generated)
        return self.matcher.mask_(logits)


def forced_schema(options: ModelRequestOptions) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON schema the output must follow and, for a forced tool, the tool's name.

    A named ``tool_choice`` constrains to that tool's arguments; ``"required"`` to a
    ``{"name", "arguments"}`` envelope over all tools (``name`` None: parse the envelope).
    """
    tools = {t.name: t for t in options.tools}
    choice = options.tool_choice
    if choice and choice not in ("auto", "none", "required"):
        if choice not in tools:
            raise UserError(f"tool_choice {choice!r} names no tool in the request")
        return tools[choice].parameters, choice
    if choice == "required" and tools:
        variants = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
            }
            for t in tools.values()
        ]
        return {"anyOf": variants}, None
    return options.response_format, None


def parse_tool_calls(text: str, tools: Sequence[ToolDefinition]) -> list[ToolCall]:
    """Tool calls written as text by an open model (see the module docstring)."""
    names = {t.name for t in tools}
    candidates = _TOOL_CALL_BLOCK.findall(text)
    stripped = text.strip()
    if not candidates and stripped.startswith("{") and stripped.endswith("}"):
        candidates = [stripped]
    calls: list[ToolCall] = []
    for raw in candidates:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("name") in names:
            args = data.get("arguments", data.get("parameters", {}))
            if isinstance(args, dict):
                calls.append(ToolCall(f"call_{uuid.uuid4().hex[:12]}", data["name"], args))
    return calls


def _template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    # Chat templates (transformers' convention) expect tool-call arguments as objects.
    out = to_openai(messages)
    for message in out:
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return out


class LocalModel(Model):
    """The embedded engine. ``LocalModel()`` is the default model (SmolLM2-135M-Instruct)."""

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_new_tokens: int = 512,
        constrained: bool = True,
        engine: Any = None,
        prefix_cache_bytes: int = 256 * 2**20,
        quantize: str = "none",
        kv_dtype: str | None = None,
    ) -> None:
        self.name_or_path = name_or_path
        self.quantize = quantize  # "none" | "int8" | "int4" | "bf16": weights stored quantised
        self.kv_dtype = kv_dtype  # e.g. "float16": the attention K/V cache's dtype (None: dtype)
        self.model_name = name_or_path or "smollm2-135m-instruct"
        self.dtype = dtype
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.constrained = constrained
        self.prefix_cache_bytes = prefix_cache_bytes
        self._engine = engine
        self._injected = engine is not None
        self._load_lock = asyncio.Lock()
        self._generate_lock = asyncio.Lock()

    async def engine(self) -> Any:
        """The loaded ``model.LanguageModel`` (loaded once, in a worker thread)."""
        if self._engine is None:
            if not self._injected:
                ensure_real_models_allowed(f"LocalModel({self.model_name!r})")
            async with self._load_lock:
                if self._engine is None:
                    self._engine = await anyio.to_thread.run_sync(self._load_blocking)
        return self._engine

    def load_now(self) -> Any:
        """Load the engine now, synchronously: for a command that should fail on a bad model
        before it starts serving (no event loop needed). Returns the ``LanguageModel``."""
        if self._engine is None:
            if not self._injected:
                ensure_real_models_allowed(f"LocalModel({self.model_name!r})")
            self._engine = self._load_blocking()
        return self._engine

    def _load_blocking(self) -> Any:
        try:
            from model import load
        except ImportError as exc:
            raise UserError(f"the embedded engine is not available: {exc}") from exc
        try:
            return load(
                self.name_or_path, dtype=self.dtype, device=self.device,
                prefix_cache_bytes=self.prefix_cache_bytes, quantize=self.quantize,
                kv_dtype=self.kv_dtype,
            )
        except Exception as exc:
            raise ModelError(f"cannot load {self.model_name!r}: {exc}") from exc

    def _grammar(self, engine: Any, schema: dict[str, Any] | None) -> _GrammarProcessor | None:
        if schema is None or not self.constrained:
            return None
        try:
            from model.grammar import Grammar, GrammarMatcher, GrammarTokenizer
        except ImportError:
            return None  # no grammar support: parse-and-validate retries take over
        try:
            bridge = GrammarTokenizer.for_tokenizer(engine.tokenizer)
            return _GrammarProcessor(GrammarMatcher(bridge, Grammar.json_schema(schema)))
        except Exception as exc:
            raise UnexpectedModelBehavior(f"cannot constrain output to the schema: {exc}") from exc

    def _tool_rendering(
        self, engine: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
        options: ModelRequestOptions, processor: Any,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, Any]:
        """With the real engine: tools in the checkpoint's own format and, under
        ``tool_choice="auto"``, a grammar that constrains any call the model opens."""
        if not tools or options.tool_choice == "none" or not hasattr(engine, "tool_call_format"):
            return messages, tools, processor
        from model.tool_calls import prepare_messages, tool_call_grammar

        native = engine.tool_call_format() == "native"
        rendered, template_tools = prepare_messages(messages, tools, native=native)
        if processor is None and self.constrained and options.tool_choice in (None, "auto"):
            from model.grammar import GrammarProcessor

            grammar = tool_call_grammar(tools, "auto")
            processor = GrammarProcessor.for_tokenizer(engine.tokenizer, grammar, engine.config.vocab_size)
        return rendered, template_tools, processor

    async def request(self, messages: list[Message], options: ModelRequestOptions) -> ModelResponse:
        response: ModelResponse | None = None
        async for event in self.stream(messages, options):
            if isinstance(event, ResponseDoneEvent):
                response = event.response
        assert response is not None
        return response

    async def stream(
        self, messages: list[Message], options: ModelRequestOptions
    ) -> AsyncIterator[StreamEvent]:
        engine = await self.engine()
        schema, forced_tool = forced_schema(options)
        processor = self._grammar(engine, schema)
        sampling: dict[str, Any] = {
            "max_new_tokens": options.max_tokens or self.max_new_tokens,
            "temperature": options.temperature or 0.0,
            "seed": options.seed,
            "stop": list(options.stop),
        }
        tools = [t.to_openai() for t in options.tools] or None
        template_messages, tools, processor = self._tool_rendering(
            engine, _template_messages(messages), tools, options, processor
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        cancel = threading.Event()
        results: list[Any] = []

        def on_piece(piece: str | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def work() -> None:
            try:
                stream = engine.chat_stream(
                    template_messages,
                    tools,
                    logits_processor=processor,
                    result=results,
                    **sampling,
                )
                for piece in stream:
                    if cancel.is_set():
                        raise _Cancelled()
                    on_piece(piece)
            finally:
                on_piece(None)

        async with self._generate_lock:
            worker = asyncio.ensure_future(anyio.to_thread.run_sync(work, abandon_on_cancel=True))
            try:
                while (piece := await queue.get()) is not None:
                    if piece and forced_tool is None and schema is None:
                        yield TextDeltaEvent(piece)
                await worker
            except _Cancelled as exc:
                raise ModelError("generation was cancelled") from exc
            except (ModelError, UserError):
                raise
            except Exception as exc:
                if isinstance(exc, _engine_errors()):
                    raise ModelError(f"{self.model_name}: {exc}") from exc
                raise
            finally:
                cancel.set()
        yield ResponseDoneEvent(self._response(results, options, forced_tool))

    def _response(
        self, results: list[Any], options: ModelRequestOptions, forced_tool: str | None
    ) -> ModelResponse:
        if not results:
            raise UnexpectedModelBehavior(f"{self.model_name} returned no generation result")
        result = results[-1]
        text: str = result.text
        usage = Usage(result.usage.prompt_tokens, result.usage.completion_tokens, 1)
        finish = "length" if result.finish_reason == "length" else "stop"
        calls: list[ToolCall] = []
        if forced_tool is not None:
            try:
                args = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UnexpectedModelBehavior(
                    f"{self.model_name} wrote invalid arguments for {forced_tool!r}", body=text
                ) from exc
            calls = [ToolCall(f"call_{uuid.uuid4().hex[:12]}", forced_tool, args)]
        elif options.tools and options.tool_choice != "none":
            calls = parse_tool_calls(text, options.tools)
        if calls:
            return ModelResponse(
                AssistantMessage(None, calls), usage, "tool_calls", self.model_name
            )
        return ModelResponse(AssistantMessage(text), usage, finish, self.model_name)


def _engine_errors() -> tuple[type[BaseException], ...]:
    """The engine's own error base, translated to ModelError at this boundary."""
    try:
        from model.errors import ModelError as EngineError
    except ImportError:
        return ()
    return (EngineError,)


__all__ = ["LocalModel", "forced_schema", "parse_tool_calls"]
