"""Using a remote OpenAI-compatible model (vLLM, llama.cpp server, `maestro serve`, OpenAI).

The same agent as on the embedded engine — a calculator tool, a requirement checked by code,
a budget — with the model behind an HTTP endpoint. The spec is the server's base URL;
``#name`` picks the served model; the API key comes from ``MAESTRO_API_KEY`` or
``OPENAI_API_KEY``. Retries (honouring ``Retry-After``), timeouts and streaming are the
client's job (:class:`maestro.OpenAIModel`).

    vllm serve ai21labs/AI21-Jamba-Reasoning-3B --port 8000 &
    python examples/remote_model.py http://localhost:8000/v1#ai21labs/AI21-Jamba-Reasoning-3B
    OPENAI_API_KEY=sk-... python examples/remote_model.py https://api.openai.com/v1#gpt-4.1-mini

Exit status: 0 when the requirement is met, 1 when not, 2 when the server cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from maestro import Agent, MaestroError, Model, Requirement
from maestro.llm.spec import resolve_model
from tools.calculator import calculator

TASK = "An invoice of 1,240 EUR gets a 15% discount. What is the discounted amount?"
EXPECTED = "1054"


def states_the_amount(answer: object) -> tuple[bool, str]:
    found = EXPECTED in str(answer).replace(",", "")
    return found, f"the answer {'states' if found else 'does not state'} {EXPECTED} EUR"


async def main(model: Model | str, task: str = TASK) -> int:
    try:
        resolved = resolve_model(model)
    except MaestroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent = Agent(
        resolved,
        tools=[calculator],
        instructions="Use the calculator for arithmetic; state the final amount in EUR.",
        requirements=[
            Requirement("states the discounted amount", check=states_the_amount, mandatory=True)
        ],
        budget="low",
    )
    result = await agent.run(task)
    if result.status != "completed":
        print(f"error: {result.error}", file=sys.stderr)
        return 2
    print(f"model: {resolved.model_name}\nanswer: {result.answer}")
    print(f"report: {result.report.summary()}")
    print(
        f"usage: {result.usage.input_tokens}+{result.usage.output_tokens} tokens in "
        f"{result.usage.requests} requests"
    )
    return 0 if result.report.passed else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL of an OpenAI-compatible server, optionally #model")
    parser.add_argument("--task", default=TASK)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.url, args.task)))
