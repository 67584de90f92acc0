"""``maestro run``: the answer, report and usage on stdout, progress on stderr, ``--json``
with stable fields, exit codes 0 (met) / 1 (not met) / 2 (error); and the model specs that
``--model`` accepts (``maestro.llm.spec``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from maestro import Agent, LocalModel, OpenAIModel, UserError
from maestro.cli import build_app
from maestro.commands.run import JSON_FIELDS
from maestro.llm.spec import resolve_model
from maestro.testing import FunctionModel, allow_real_models

ANSWER = "scripted:The answer is 204 eggs."


def maestro(*args: str, db: Path) -> Result:
    return CliRunner().invoke(build_app(), ["run", *args, "--url", f"sqlite:///{db}"])


def test_a_met_requirement_exits_0_with_answer_report_and_usage(tmp_path: Path) -> None:
    result = maestro("How many eggs in 17 boxes of 12?", "--model", ANSWER,
                     "--must-contain", "204", db=tmp_path / "m.db")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "The answer is 204 eggs."
    assert "[PASS] the answer contains '204' (mandatory)" in result.stdout
    assert "Report: overall score 1.00 (passed)" in result.stdout
    assert any(line.startswith("Usage: ") and "model calls" in line for line in lines)
    assert "run run_" in result.stderr and "round 0" in result.stderr  # progress
    assert "round 0" not in result.stdout


def test_an_unmet_requirement_exits_1_and_json_has_the_stable_fields(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    result = maestro("How many eggs?", "--model", ANSWER, "--must-contain", "205", "--json", db=db)
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert tuple(data) == JSON_FIELDS
    assert data["status"] == "completed" and data["passed"] is False
    assert data["requirements"][0]["passed"] is False and data["requirements"][0]["mandatory"]
    assert data["usage"]["requests"] >= 2  # the first draft and a fix round
    # the run is stored: `maestro runs show` finds it
    shown = CliRunner().invoke(
        build_app(), ["runs", "show", data["run_id"], "--url", f"sqlite:///{db}"]
    )
    assert shown.exit_code == 0 and "completed" in shown.stdout


def test_a_model_judged_requirement_is_mandatory(tmp_path: Path) -> None:
    # The scripted model cannot write a verdict, so the judge fails and the run says so.
    result = maestro("Say hi", "--model", "scripted:hi", "-r", "is in French", "--json",
                     db=tmp_path / "m.db")  # fmt: skip
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["requirements"][0]["mandatory"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "http://"], "has no host"),
        (["--model", "ftp://example.org/v1"], "only http:// and https://"),
        (["--model", "./missing-model.gguf"], "no such file or directory"),
        (["--model", "http://localhost:notaport/v1"], "bad port"),
    ],
)
def test_bad_model_specs_exit_2_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = maestro("task", *args, "--json", db=tmp_path / "m.db")
    assert result.exit_code == 2
    assert message in result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "error" and message in data["error"] and tuple(data) == JSON_FIELDS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tool", "teleport"], "unknown tool 'teleport'"),
        (["--budget", "infinite"], "must be one of low, medium, high"),
        (["  "], "the task is empty"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    task = [] if args == ["  "] else ["task"]
    result = maestro(*task, *args, "--model", ANSWER, db=tmp_path / "m.db")
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()).replace("│", "").replace("  ", " ")


@pytest.mark.real_model
def test_an_unknown_model_name_exits_2_before_any_work(tmp_path: Path) -> None:
    with allow_real_models():
        result = maestro("task", "--model", "no-such-model-xyz", db=tmp_path / "m.db")
    assert result.exit_code == 2
    assert "'no-such-model-xyz' is not a registered model" in result.stderr


def test_tools_can_be_enabled(tmp_path: Path) -> None:
    # scripted text is not a plan: the planner fails, the run answers without tools and says so
    result = maestro("2+2?", "--model", "scripted:4", "--tool", "calculator", "--json",
                     db=tmp_path / "m.db")  # fmt: skip
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["tools"] == ["calculator"] and data["answer"] == "4"


# --- maestro.llm.spec --------------------------------------------------------------------------


def test_specs_resolve_to_the_right_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MAESTRO_API_KEY", "k-1")
    remote = resolve_model("https://api.example.com/v1#served")
    assert isinstance(remote, OpenAIModel) and remote.model_name == "served"
    assert remote.base_url == "https://api.example.com/v1" and remote.api_key == "k-1"
    assert isinstance(resolve_model(None), LocalModel)
    assert resolve_model("default").model_name == "smollm2-135m-instruct"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    local = resolve_model(str(gguf))
    assert isinstance(local, LocalModel) and local.name_or_path == str(gguf)
    hub = resolve_model("ai21labs/AI21-Jamba-Reasoning-3B")  # a Hub id is not a path
    assert isinstance(hub, LocalModel)
    same = FunctionModel(lambda m, o: "x")
    assert resolve_model(same) is same


def test_agent_accepts_a_spec_string() -> None:
    agent = Agent("scripted:hello")
    assert agent.run_sync("greet").answer == "hello"
    with pytest.raises(UserError, match="no host"):
        Agent("https://")


# --- maestro runs resume of a `maestro run` run -----------------------------------------------


def test_runs_resume_finishes_an_interrupted_maestro_run(tmp_path: Path) -> None:
    """A `maestro run` stores its options with the run; when the process died mid-run (the
    row left `running`), `maestro runs resume` rebuilds the agent from them and finishes it."""
    import asyncio

    from maestro.memory import Database

    db_path = tmp_path / "m.db"
    url = f"sqlite:///{db_path}"
    first = maestro("How many eggs in 17 boxes of 12?", "--model", ANSWER, "--must-contain",
                    "204", "--json", db=db_path)  # fmt: skip
    assert first.exit_code == 0, first.output
    stored_id = json.loads(first.stdout)["run_id"]

    async def interrupted_copy() -> str:
        """The same run as it was before its process was killed: running, no steps."""
        from maestro.runs import RunRecord

        db = await Database.open(url)
        try:
            done = await db.runs.get_run(stored_id)
            assert done is not None and done.payload["metadata"]["maestro_run"]["model"] == ANSWER
            record = RunRecord(id="run_interrupted1", task=done.task, agent_name=done.agent_name,
                               user_id=None, payload=done.payload)  # fmt: skip
            await db.runs.create_run(record)
            return record.id
        finally:
            await db.close()

    run_id = asyncio.run(interrupted_copy())
    runs = ["runs", "resume", run_id, "--url", url, "--json"]
    resumed = CliRunner().invoke(build_app(), runs)
    assert resumed.exit_code == 0, resumed.output
    data = json.loads(resumed.stdout)
    assert data["run_id"] == run_id and data["status"] == "completed" and data["passed"] is True
    assert data["answer"] == "The answer is 204 eggs."
    assert data["requirements"][0]["description"] == "the answer contains '204'"  # rebuilt check
    shown = CliRunner().invoke(build_app(), ["runs", "show", run_id, "--url", url])
    assert "completed" in shown.stdout


def test_runs_resume_refuses_an_agent_run_it_cannot_rebuild(tmp_path: Path) -> None:
    import asyncio

    from maestro.memory import Database
    from maestro.runs import RunRecord

    url = f"sqlite:///{tmp_path / 'm.db'}"

    async def python_run() -> None:
        db = await Database.open(url)
        try:
            await db.runs.create_run(RunRecord(id="run_frompython1", task="t",
                                               agent_name="mine", user_id=None, payload={}))  # fmt: skip
        finally:
            await db.close()

    asyncio.run(python_run())
    result = CliRunner().invoke(build_app(), ["runs", "resume", "run_frompython1", "--url", url])
    assert result.exit_code == 2
    assert "was not started by `maestro run`" in result.stderr and "agent.resume" in result.stderr
    missing = CliRunner().invoke(build_app(), ["runs", "resume", "run_nope", "--url", url])
    assert missing.exit_code == 2 and "no run 'run_nope'" in missing.stderr
