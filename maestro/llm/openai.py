"""``OpenAIModel``: any OpenAI-compatible chat-completions endpoint over httpx.

Works with vLLM (which serves Jamba), the llama.cpp server, Ollama and hosted APIs. Requests
carry tools / ``tool_choice`` and ``response_format`` (``json_schema``); streaming uses SSE
with ``stream_options.include_usage`` so usage arrives with the last chunk.

Failures are retried with tenacity — transport errors, timeouts, 429 and 5xx — waiting what
``Retry-After`` / ``retry-after-ms`` asks (else exponential backoff with jitter), and never
beyond ``max_total_seconds`` for the whole call: a server that asks us to wait longer than the
time left is answered with an error at once instead of a sleep that cannot succeed. What is
left after the retries becomes a typed error: ``ModelHTTPError(status, body)``,
``ModelTimeoutError`` or ``ModelConnectionError``; other 4xx fail immediately. A stream is
retried only until its first byte; after that an error ends it.

Real network calls are refused while ``maestro.testing.block_real_models`` is on, unless an
``httpx`` transport or client is passed in (how tests use a fake server).
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import tenacity

from maestro.errors import (
    ModelConnectionError,
    ModelHTTPError,
    ModelTimeoutError,
    UnexpectedModelBehavior,
)
from maestro.llm.base import (
    Model,
    Pricing,
    ResponseDoneEvent,
    StreamEvent,
    TextDeltaEvent,
    ToolCallDeltaEvent,
    ensure_real_models_allowed,
)
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    ModelResponse,
    ToolCall,
    Usage,
    parse_tool_arguments,
    response_from_openai,
    to_openai,
)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class _RetryableStatus(Exception):
    """Internal: a status worth retrying; becomes ModelHTTPError when retries run out."""

    def __init__(self, status: int, body: str, retry_after: float | None) -> None:
        self.status, self.body, self.retry_after = status, body, retry_after
        super().__init__(f"HTTP {status}")


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def build_request_body(
    model_name: str, messages: list[Message], options: ModelRequestOptions, *, stream: bool
) -> dict[str, Any]:
    """The chat-completions request body for these messages and options."""
    body: dict[str, Any] = {"model": model_name, "messages": to_openai(messages)}
    if options.tools:
        body["tools"] = [t.to_openai() for t in options.tools]
    if options.tool_choice is not None:
        choice = options.tool_choice
        body["tool_choice"] = (
            choice
            if choice in ("auto", "none", "required")
            else {"type": "function", "function": {"name": choice}}
        )
    if options.response_format is not None:
        schema = options.response_format
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": str(schema.get("title", "response"))[:64], "schema": schema},
        }
    for name in ("temperature", "max_tokens", "seed"):
        value = getattr(options, name)
        if value is not None:
            body[name] = value
    if options.stop:
        body["stop"] = list(options.stop)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class _StreamState:
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    finish_reason: str = "stop"
    usage: dict[str, Any] | None = None
    model: str = ""


class OpenAIModel(Model):
    """A chat model behind an OpenAI-compatible HTTP API (see the module docstring)."""

    def __init__(
        self,
        model_name: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        pricing: Pricing | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        max_total_seconds: float = 180.0,
        max_backoff_seconds: float = 20.0,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.model_name = model_name
        self.pricing = pricing
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_total_seconds = max_total_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._fake = http_client is not None or transport is not None
        self._client = http_client
        self._transport = transport
        self._headers = dict(headers or {})

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=httpx.Timeout(self.timeout)
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> OpenAIModel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _request(self, body: dict[str, Any]) -> httpx.Request:
        headers = {"content-type": "application/json", **self._headers}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return self.client.build_request(
            "POST", f"{self.base_url}/chat/completions", json=body, headers=headers
        )

    def _wait(self, deadline: float) -> Any:
        cap = self.max_backoff_seconds
        backoff = tenacity.wait_exponential_jitter(multiplier=0.5, max=cap, jitter=min(1.0, cap))

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            delay = backoff(state)
            if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
                delay = exc.retry_after
            left = deadline - time.monotonic()
            if delay > left:
                # Waiting would overrun the total time bound: stop now, surface the error.
                raise _GiveUp() from exc
            return delay

        return wait

    async def _send(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        """POST with retries; returns a 200 response (open, for streams) or raises typed."""
        if not self._fake:
            ensure_real_models_allowed(f"OpenAIModel({self.model_name!r}) at {self.base_url}")
        deadline = time.monotonic() + self.max_total_seconds
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1)
            | tenacity.stop_after_delay(self.max_total_seconds),
            wait=self._wait(deadline),
            retry=tenacity.retry_if_exception_type((_RetryableStatus, httpx.TransportError)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send_once(body, stream=stream)
        except _GiveUp as give_up:
            raise self._translate(give_up.__cause__) from give_up.__cause__
        except (_RetryableStatus, httpx.TransportError) as exc:
            raise self._translate(exc) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _send_once(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        response = await self.client.send(self._request(body), stream=stream)
        if response.status_code == 200:
            return response
        text = (await response.aread()).decode(errors="replace")
        await response.aclose()
        if response.status_code in RETRYABLE_STATUS:
            raise _RetryableStatus(response.status_code, text, parse_retry_after(response.headers))
        raise ModelHTTPError(response.status_code, text, model_name=self.model_name)

    def _translate(self, exc: BaseException | None) -> Exception:
        if isinstance(exc, _RetryableStatus):
            return ModelHTTPError(exc.status, exc.body, model_name=self.model_name)
        if isinstance(exc, httpx.TimeoutException):
            return ModelTimeoutError(f"{self.model_name} at {self.base_url} timed out: {exc!r}")
        return ModelConnectionError(f"cannot reach {self.base_url}: {exc!r}")

    async def request(self, messages: list[Message], options: ModelRequestOptions) -> ModelResponse:
        body = build_request_body(self.model_name, messages, options, stream=False)
        response = await self._send(body, stream=False)
        try:
            data = response.json()
        except json.JSONDecodeError as exc:
            raise UnexpectedModelBehavior(
                "the endpoint answered with invalid JSON", body=response.text[:2000]
            ) from exc
        result = response_from_openai(data)
        result.usage.cost_usd = self.cost(result.usage)
        return result

    async def stream(
        self, messages: list[Message], options: ModelRequestOptions
    ) -> AsyncIterator[StreamEvent]:
        body = build_request_body(self.model_name, messages, options, stream=True)
        response = await self._send(body, stream=True)
        state = _StreamState(model=self.model_name)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                for event in self._chunk_events(data, state):
                    yield event
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(f"{self.model_name} stream stalled: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise ModelConnectionError(f"{self.model_name} stream broke: {exc!r}") from exc
        finally:
            await response.aclose()
        yield ResponseDoneEvent(self._final(state))

    def _chunk_events(self, data: str, state: _StreamState) -> list[StreamEvent]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise UnexpectedModelBehavior("invalid JSON in an SSE chunk", body=data) from exc
        if chunk.get("usage"):
            state.usage = chunk["usage"]
        state.model = chunk.get("model") or state.model
        events: list[StreamEvent] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                state.text.append(delta["content"])
                events.append(TextDeltaEvent(delta["content"]))
            for raw in delta.get("tool_calls") or []:
                index = int(raw.get("index", 0))
                fn = raw.get("function") or {}
                slot = state.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = raw.get("id") or slot["id"]
                slot["name"] = fn.get("name") or slot["name"]
                slot["arguments"] += fn.get("arguments") or ""
                events.append(
                    ToolCallDeltaEvent(
                        index, raw.get("id"), fn.get("name"), fn.get("arguments") or ""
                    )
                )
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]
        return events

    def _final(self, state: _StreamState) -> ModelResponse:
        calls = [
            ToolCall(
                slot["id"] or f"call_{index}",
                slot["name"],
                parse_tool_arguments(slot["arguments"], slot["name"]),
            )
            for index, slot in sorted(state.calls.items())
        ]
        text = "".join(state.text)
        raw = state.usage or {}
        usage = Usage(int(raw.get("prompt_tokens", 0)), int(raw.get("completion_tokens", 0)), 1)
        usage.cost_usd = self.cost(usage)
        message = AssistantMessage(text if text or not calls else None, calls)
        return ModelResponse(message, usage, state.finish_reason, state.model)


class _GiveUp(Exception):
    """Internal: stop retrying because the wait would overrun the total time bound."""
