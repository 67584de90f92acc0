"""Every example in examples/ runs here, on test doubles (FunctionModel, scripted:, an
httpx.MockTransport OpenAI server) — as subprocesses where the point is a new process.

examples/quickstart.py (the lead's) runs on the default model in ``make demo``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from maestro import Message, ModelRequestOptions
from maestro.cli import build_app
from maestro.testing import FunctionModel, judge, plan, plan_step

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_py(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def schema_of(options: ModelRequestOptions) -> str:
    return json.dumps(options.response_format or {})


def transcript(messages: list[Message]) -> str:
    return "\n".join(getattr(m, "content", None) or "" for m in messages)


# --- durable workflow ------------------------------------------------------------------------


def test_durable_workflow_resumes_after_a_crash_without_resending(tmp_path: Path) -> None:
    db, outbox = f"sqlite:///{tmp_path}/r.db", tmp_path / "outbox.txt"
    script = str(EXAMPLES / "durable_workflow.py")
    common = ["--db", db, "--outbox", str(outbox)]
    crashed = run_py(script, *common, "--model", "scripted:Please pay.", "--crash-after", "1")
    assert crashed.returncode == 3, crashed.stderr
    assert outbox.read_text().count("\n") == 1  # one reminder went out before the crash

    resumed = run_py(script, *common, "--model", "scripted:Second draft.")
    assert resumed.returncode == 0, resumed.stderr
    lines = outbox.read_text().splitlines()
    assert [line.split("] ")[1].split(":")[0] for line in lines] == ["INV-1003", "INV-1006"]
    # the first reminder was replayed from the database, not drafted or sent again
    assert "Please pay." in lines[0] and "Second draft." in lines[1]
    assert "3080.00 EUR overdue" in resumed.stdout


# --- enterprise policy -----------------------------------------------------------------------


def policy_model(*, honest: bool) -> FunctionModel:
    def reply(messages: list[Message], options: ModelRequestOptions) -> str:
        schema = schema_of(options)
        if '"steps"' in schema:
            return plan(plan_step("s1", "search_documents", {"query": "paid annual leave days"}))
        if '"score"' in schema:
            return judge(1.0, "it answers the question")
        found = re.search(r"\[c(\d+)\][^\[]*?25 days of paid annual leave", transcript(messages))
        assert found, "the search result reached the draft"
        quote = "25 days of paid annual leave" if honest else "30 days of paid leave"
        return f'Full-time employees get "{quote}" [c{found.group(1)}] per year (25 days).'

    return FunctionModel(reply)


@pytest.mark.parametrize(("honest", "status"), [(True, 0), (False, 1)])
def test_enterprise_policy_answer_is_grounded_or_reported_as_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], honest: bool, status: int
) -> None:
    example = load_example("enterprise_policy")
    code = asyncio.run(
        example.main(model=policy_model(honest=honest), db_url=f"sqlite:///{tmp_path}/p.db")
    )
    out = capsys.readouterr().out
    assert code == status
    assert re.search(r"\[c\d+\] annual_leave\.md, lines \d+-\d+", out)
    grounded = next(line for line in out.splitlines() if "copied verbatim" in line)
    assert grounded.strip().startswith("[PASS]" if honest else "[FAIL]")
    assert "[PASS] states '25'" in out


# --- personal assistant across processes -------------------------------------------------------

ASSISTANT_SESSION = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys
    from maestro.testing import FunctionModel

    spec = importlib.util.spec_from_file_location("pa", sys.argv[1])
    pa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pa)

    def reply(messages, options):
        if options.response_format:  # memory proposals: what a model would extract
            said = messages[-1].content
            found = "cat called Miso" in said
            text = "The user has a cat called Miso."
            return json.dumps({"memories": [{"text": text, "label": None}] if found else []})
        prompt = "\\n".join(m.content for m in messages if type(m).__name__ == "SystemMessage")
        known = [l[2:] for l in prompt.splitlines() if l.startswith("- ")]
        return "From memory: " + " ".join(known) if known else "I do not know that yet."

    model = FunctionModel(reply)
    sys.exit(asyncio.run(pa.main([sys.argv[4]], user=sys.argv[3], db_url=sys.argv[2], model=model)))
    """
)


def test_personal_assistant_remembers_across_processes_and_forgets(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/me.db"
    script = str(EXAMPLES / "personal_assistant.py")

    def session(message: str) -> subprocess.CompletedProcess[str]:
        done = run_py("-c", ASSISTANT_SESSION, script, db, "ada", message)
        assert done.returncode == 0, done.stderr
        return done

    first = session("I adopted a cat called Miso last week.")
    stored = re.search(r"remembered #(\d+): The user has a cat called Miso\.", first.stderr)
    assert stored, first.stderr

    second = session("What is my cat called?")
    assert "Miso" in second.stdout.split("assistant:")[1]

    forget = CliRunner().invoke(
        build_app(), ["memory", "forget", "--user", "ada", stored.group(1), "--url", db]
    )
    assert forget.exit_code == 0, forget.output
    third = session("What is my cat called?")
    assert "Miso" not in third.stdout.split("assistant:")[1]


# --- remote OpenAI-compatible model ------------------------------------------------------------


def fake_openai_server(requests: list[dict[str, Any]]) -> httpx.MockTransport:
    """Chat completions as an OpenAI-compatible server answers them (non-streaming)."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        assert request.headers.get("authorization") == "Bearer test-key"
        body = json.loads(request.content)
        requests.append(body)
        fmt = json.dumps(body.get("response_format") or {})
        said = transcript_json(body["messages"])
        if '"steps"' in fmt:
            content = plan(plan_step("s1", "calculator", {"expression": "1240 * (1 - 0.15)"}))
        elif '"score"' in fmt:
            content = judge(1.0)
        else:
            value = re.search(r"calculator\(.*?\) -> ([\d.]+)", said)
            content = f"The discounted amount is {value.group(1) if value else '?'} EUR."
        usage = {"prompt_tokens": len(said) // 4, "completion_tokens": 12, "total_tokens": 0}
        if body.get("stream"):  # server-sent events: a content delta, the finish, usage, DONE
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": content}}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {"choices": [], "usage": usage},
            ]
            events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(
                200, content=events.encode(), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": usage,
        })  # fmt: skip

    return httpx.MockTransport(handle)


def transcript_json(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages)


def test_remote_model_example_runs_against_an_openai_compatible_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from maestro import OpenAIModel

    requests: list[dict[str, Any]] = []
    model = OpenAIModel(
        "served-model", base_url="http://fake/v1", api_key="test-key",
        transport=fake_openai_server(requests),
    )  # fmt: skip
    code = asyncio.run(load_example("remote_model").main(model))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1054" in out and "model: served-model" in out and "passed" in out
    assert all(r["model"] == "served-model" for r in requests) and len(requests) >= 2


def test_remote_model_example_rejects_a_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert asyncio.run(load_example("remote_model").main("http://")) == 2
    assert "has no host" in capsys.readouterr().err


# --- MCP ----------------------------------------------------------------------------------------


def test_mcp_example_answers_with_the_servers_tool(capsys: pytest.CaptureFixture[str]) -> None:
    def reply(messages: list[Message], options: ModelRequestOptions) -> str:
        schema = schema_of(options)
        if '"steps"' in schema:
            return plan(plan_step("s1", "ledger__overdue_total", {}))
        if '"score"' in schema:
            return judge(1.0)
        total = re.search(r"([\d.]+) EUR in total", transcript(messages))
        return f"Overdue invoices total {total.group(1) if total else 'unknown'} EUR."

    code = asyncio.run(load_example("mcp_tools").main(model=FunctionModel(reply)))
    captured = capsys.readouterr()
    assert code == 0, captured
    assert "ledger__overdue_total, ledger__find_invoices" in captured.err
    assert "A: Overdue invoices total 3080.00 EUR." in captured.out
