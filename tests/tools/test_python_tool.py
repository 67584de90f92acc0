"""The ``python`` Maestro tool and the refusal to run without isolation."""

from __future__ import annotations

import pytest

from maestro import ToolContext, ToolError, ToolRetry, UserError
from tools.python import PythonSandbox, SandboxUnavailable
from tools.python import sandbox as sandbox_module
from tools.python.tool import PythonSessions


def ctx(run_id: str) -> ToolContext:
    return ToolContext(run_id=run_id, step_id="s1", idempotency_key=f"{run_id}:s1")


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = sandbox_module.shutil.which
    monkeypatch.setattr(
        sandbox_module.shutil, "which", lambda name: None if name == "bwrap" else real_which(name)
    )


def test_refuses_without_bubblewrap_unless_opted_in(no_bwrap: None) -> None:
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap.*allow_unsandboxed=True"):
        PythonSandbox().start()
    with PythonSandbox(allow_unsandboxed=True) as unsandboxed:
        assert unsandboxed.isolation == "unsandboxed"
        assert unsandboxed.run("x = 41").status == "ok"
        assert unsandboxed.run("x + 1").result == "42"
        # Even unsandboxed, the seccomp layer still refuses new processes.
        assert "PermissionError" in (unsandboxed.run("import os\nos.fork()").error or "")


async def test_tool_reports_missing_sandbox_clearly(no_bwrap: None) -> None:
    sessions = PythonSessions()
    try:
        with pytest.raises(UserError, match="bubblewrap"):
            sessions.run("r0", "1")
        # Inside a run the core turns the UserError into a failed call, message intact.
        with pytest.raises((UserError, ToolError), match="bubblewrap"):
            await sessions.tool.call({"code": "1"}, ctx("r1"))
    finally:
        sessions.close_all()


@pytest.mark.sandbox
async def test_tool_keeps_one_session_per_run() -> None:
    sessions = PythonSessions(default_timeout=10)
    python = sessions.tool
    try:
        assert python.name == "python"
        assert set(python.parameters["properties"]) == {"code", "timeout"}
        assert await python.call({"code": "x = 41"}, ctx("run-a")) == "(no output)"
        assert await python.call({"code": "print('hi')\nx + 1"}, ctx("run-a")) == "hi\n42"
        with pytest.raises(ToolRetry, match="NameError"):
            await python.call({"code": "x"}, ctx("run-b"))
        with pytest.raises(ToolRetry, match="CellTimeout"):
            await python.call({"code": "while True: pass", "timeout": 0.3}, ctx("run-a"))
        assert await python.call({"code": "x"}, ctx("run-a")) == "41"
    finally:
        sessions.close_all()
