"""The real default model (SmolLM2-135M on the embedded engine) behind the server, through
the real ``openai`` client. Slow: it loads the weights and decodes on the CPU."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pydantic
import pytest

from maestro.llm.local import LocalModel
from maestro.server import create_app
from maestro.testing import allow_real_models
from tests.maestro.server.conftest import LiveServer


def _default_model_missing() -> str | None:
    try:
        from model.registry import list_cached
    except ImportError as exc:
        return f"the engine is not importable: {exc}"
    if not any(c.name == "smollm2-135m-instruct" for c in list_cached()):
        return "the default model is not pulled (maestro model pull smollm2-135m-instruct)"
    return None


class City(pydantic.BaseModel):
    name: str
    country: str


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(600)
def test_default_model_through_the_openai_client(serve: Callable[..., LiveServer]) -> None:
    reason = _default_model_missing()
    if reason:
        pytest.skip(reason)
    with allow_real_models():
        local = LocalModel()
        live = serve(create_app(local))
        client = openai.OpenAI(base_url=live.base_url, api_key="x", max_retries=0, timeout=300)
        chat = client.chat.completions.create(
            model=local.model_name,
            messages=[{"role": "user", "content": "Say hello in one short sentence."}],
            max_tokens=16,
        )
        text = chat.choices[0].message.content or ""
        assert text.strip()
        assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 16

        streamed = list(
            client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": "Count to three."}],
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip()
        assert streamed[-1].usage is not None

        parsed = client.chat.completions.parse(
            model="default",
            messages=[{"role": "user", "content": "Name a city in France as JSON."}],
            response_format=City,
            max_tokens=48,
        )
        message = parsed.choices[0].message
        # Constrained decoding: the text is JSON of the schema (unless cut off by max_tokens).
        if parsed.choices[0].finish_reason == "stop":
            assert isinstance(message.parsed, City), message.content
            assert json.loads(message.content or "") == message.parsed.model_dump()
        print("\nchat:", text[:80], "| parsed:", message.content)
