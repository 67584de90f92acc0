"""Typed tools: a Python function becomes something a model can call safely.

``@tool`` reads the function's signature and docstring: the name, the description (first
docstring paragraph), a JSON schema of the arguments (pydantic ``create_model``, with per-
argument descriptions from a Google-style ``Args:`` section) and a validator. Model-supplied
arguments are validated before the function runs; a validation error — or a ``ToolRetry``
the tool raises itself — goes back to the model as an error result so it can try again
(bounded by ``max_retries``). Sync functions run in a worker thread so they never block the
event loop; ``timeout`` bounds each call.

Tools that change the world declare ``side_effects=True``; they receive a stable
``ToolContext.idempotency_key`` (the same across a crash and resume) so they can make the
effect happen exactly once, and ``requires_approval=True`` makes the agent ask its approval
callback first — a denied call never runs. A tool opts into the context by declaring a first
parameter annotated ``ToolContext``.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, overload

import anyio
import anyio.to_thread
import pydantic
import pydantic_core

from maestro.errors import ToolError, ToolRetry, UserError
from maestro.messages import ToolDefinition

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(slots=True)
class ToolContext:
    """What a tool knows about the call it serves.

    ``idempotency_key`` is derived from the run id and the step key, so it is identical when a
    crashed run is resumed and the step re-executed: side-effecting tools should pass it on
    (e.g. as an ``Idempotency-Key`` header or a unique column) to avoid doing things twice.
    """

    run_id: str
    step_id: str
    idempotency_key: str
    tool_call_id: str = ""
    attempt: int = 0
    approved: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


ArgsValidator = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(slots=True)
class Tool:
    """A callable the model may use. Build with ``@tool`` or :meth:`Tool.from_schema`."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any]
    validate_args: ArgsValidator
    takes_ctx: bool = False
    is_async: bool = True
    side_effects: bool = False
    requires_approval: bool = False
    timeout: float | None = None
    max_retries: int = 2

    @property
    def definition(self) -> ToolDefinition:
        return ToolDefinition(self.name, self.description, self.parameters)

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate ``args`` and run the tool.

        Raises ``ToolRetry`` (bad arguments, or the tool asked for a retry) and ``ToolError``
        (the tool failed or timed out). Cancellation propagates promptly; an abandoned sync
        tool keeps running in its thread but its result is dropped.
        """
        kwargs = self.validate_args(args)
        positional = (ctx,) if self.takes_ctx else ()
        try:
            with anyio.fail_after(self.timeout):
                if self.is_async:
                    return await self.function(*positional, **kwargs)
                bound = functools.partial(self.function, *positional, **kwargs)
                return await anyio.to_thread.run_sync(bound, abandon_on_cancel=True)
        except ToolRetry:
            raise
        except TimeoutError as exc:
            raise ToolError(
                f"tool {self.name!r} timed out after {self.timeout} s", tool_name=self.name
            ) from exc
        except ToolError:
            raise
        except UserError as exc:
            # Misconfiguration surfaced inside a tool (a missing optional package, a bad
            # setting) fails this call with its message; it must not crash the whole run.
            raise ToolError(f"tool {self.name!r}: {exc}", tool_name=self.name) from exc
        except Exception as exc:
            raise ToolError(
                f"tool {self.name!r} failed: {type(exc).__name__}: {exc}", tool_name=self.name
            ) from exc

    @classmethod
    def from_schema(
        cls,
        name: str,
        description: str,
        json_schema: dict[str, Any],
        function: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        side_effects: bool = False,
        requires_approval: bool = False,
        timeout: float | None = None,
        max_retries: int = 2,
    ) -> Tool:
        """A tool defined at run time (MCP servers, HTTP tools): ``function(arguments_dict)``.

        Arguments are checked against the schema's object shape (required keys, no unknown
        keys when ``additionalProperties`` is false, primitive types of top-level values);
        deeper validation is the remote side's job.
        """
        _check_name(name)

        async def call_with_dict(**kwargs: Any) -> Any:
            return await function(kwargs)

        return cls(
            name=name,
            description=description,
            parameters=json_schema,
            function=call_with_dict,
            validate_args=functools.partial(_validate_against_schema, json_schema),
            side_effects=side_effects,
            requires_approval=requires_approval,
            timeout=timeout,
            max_retries=max_retries,
        )


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _validate_against_schema(schema: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    problems: list[str] = []
    properties: dict[str, Any] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in args:
            problems.append(f"missing required argument {key!r}")
    for key, value in args.items():
        spec = properties.get(key)
        if spec is None:
            if schema.get("additionalProperties") is False:
                problems.append(f"unknown argument {key!r}")
            continue
        declared = spec.get("type")
        names = declared if isinstance(declared, list) else [declared] if declared else []
        allowed = tuple(t for n in names for t in _JSON_TYPES.get(n, ()))
        is_bool_as_number = isinstance(value, bool) and "boolean" not in names
        if allowed and (not isinstance(value, allowed) or is_bool_as_number):
            problems.append(f"argument {key!r} must be of type {declared}")
    if problems:
        raise ToolRetry("Invalid arguments: " + "; ".join(problems) + ". Fix them and retry.")
    return args


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise UserError(f"tool name {name!r} must match {_NAME_RE.pattern} (OpenAI's rule)")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Description (text before any section) and ``Args:`` descriptions from a docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.rstrip(":").lower() in {"args", "arguments", "parameters", "params"}:
            section, current = "args", None
            continue
        if stripped.endswith(":") and stripped[:-1].lower() in {"returns", "raises", "example"}:
            section, current = "other", None
            continue
        if section is None:
            description.append(line)
        elif section == "args" and stripped:
            match = re.match(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", stripped)
            if match and line[: len(line) - len(line.lstrip())] in ("", "    ", "  ", "\t"):
                current = match.group(1).lstrip("*")
                params[current] = match.group(3)
            elif current:
                params[current] = (params[current] + " " + stripped).strip()
    return "\n".join(description).strip(), params


def _format_validation_error(name: str, exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{loc}: {err['msg']}")
    return f"Invalid arguments for tool {name!r}: " + "; ".join(parts) + ". Fix them and retry."


def _build_tool(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    side_effects: bool,
    requires_approval: bool,
    timeout: float | None,
    max_retries: int,
) -> Tool:
    tool_name = name or fn.__name__
    _check_name(tool_name)
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward references
        raise UserError(f"cannot resolve type hints of tool {tool_name!r}: {exc}") from exc
    doc_description, doc_params = _parse_docstring(fn.__doc__)
    params = list(signature.parameters.values())
    takes_ctx = bool(params) and hints.get(params[0].name) is ToolContext
    fields: dict[str, Any] = {}
    for index, param in enumerate(params):
        if index == 0 and takes_ctx:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise UserError(
                f"tool {tool_name!r}: parameter {param.name!r} must be a named parameter "
                "(no *args, **kwargs or positional-only parameters)"
            )
        if hints.get(param.name) is ToolContext:
            raise UserError(f"tool {tool_name!r}: a ToolContext parameter must come first")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (
            annotation,
            pydantic.Field(default, description=doc_params.get(param.name)),
        )
    args_model = pydantic.create_model(
        f"{tool_name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    schema = args_model.model_json_schema()
    schema.pop("title", None)

    def validate(args: dict[str, Any]) -> dict[str, Any]:
        try:
            instance = args_model.model_validate(args)
        except pydantic.ValidationError as exc:
            raise ToolRetry(_format_validation_error(tool_name, exc)) from exc
        return {key: getattr(instance, key) for key in fields}

    return Tool(
        name=tool_name,
        description=description or doc_description or tool_name,
        parameters=schema,
        function=fn,
        validate_args=validate,
        takes_ctx=takes_ctx,
        is_async=inspect.iscoroutinefunction(fn),
        side_effects=side_effects,
        requires_approval=requires_approval,
        timeout=timeout,
        max_retries=max_retries,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: bool = False,
    requires_approval: bool = False,
    timeout: float | None = None,
    max_retries: int = 2,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: bool = False,
    requires_approval: bool = False,
    timeout: float | None = None,
    max_retries: int = 2,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function into a :class:`Tool`; use bare (``@tool``) or with options."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return _build_tool(
            f,
            name=name,
            description=description,
            side_effects=side_effects,
            requires_approval=requires_approval or False,
            timeout=timeout,
            max_retries=max_retries,
        )

    return wrap(fn) if fn is not None else wrap


def result_to_text(value: Any) -> str:
    """A tool's return value as the text the model sees (JSON for anything but str)."""
    if isinstance(value, str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError:
        return str(value)


def result_to_jsonable(value: Any) -> Any:
    """A tool's return value in a JSON-safe form for the run store."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError:
        return str(value)
