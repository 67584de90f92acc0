"""The ``maestro db|memory|runs`` commands end to end through typer's runner."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maestro.commands import db as db_cmd
from maestro.commands import memory as memory_cmd
from maestro.commands import runs as runs_cmd


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAESTRO_HOME", str(tmp_path))
    monkeypatch.delenv("MAESTRO_DATABASE_URL", raising=False)
    monkeypatch.setenv("MAESTRO_TEST_COUNT_FILE", str(tmp_path / "calls.txt"))
    return tmp_path


def test_db_status_and_upgrade(home: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(db_cmd.app, ["status"])
    assert out.exit_code == 0 and "empty" in out.output and "maestro db upgrade" in out.output
    out = runner.invoke(db_cmd.app, ["upgrade"])
    assert out.exit_code == 0 and "upgraded empty -> 0001" in out.output
    out = runner.invoke(db_cmd.app, ["upgrade"])
    assert "already at 0001" in out.output


def test_bad_url_is_one_clear_line(home: Path) -> None:
    out = CliRunner().invoke(
        db_cmd.app, ["status", "--url", "postgresql://me:topsecret@127.0.0.1:1/x"]
    )
    assert out.exit_code == 1
    assert "cannot connect to" in out.output and "topsecret" not in out.output
    assert "Traceback" not in out.output


def test_memory_commands(home: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(memory_cmd.app, ["add", "-u", "alice", "likes green tea"]).exit_code == 0
    assert (
        runner.invoke(memory_cmd.app, ["add", "-u", "alice", "--core", "name", "Alice"]).exit_code
        == 0
    )
    listed = runner.invoke(memory_cmd.app, ["list", "-u", "alice"]).output
    assert "likes green tea" in listed and "[name] Alice" in listed
    assert (
        "likes green tea" in runner.invoke(memory_cmd.app, ["search", "-u", "alice", "tea"]).output
    )
    assert "no memories" in runner.invoke(memory_cmd.app, ["list", "-u", "bob"]).output
    memory_id = re.search(r"(\d+)\s+archival", listed).group(1)  # type: ignore[union-attr]
    denied = runner.invoke(memory_cmd.app, ["forget", "-u", "bob", memory_id])
    assert denied.exit_code == 1 and "has no memory" in denied.output
    assert (
        runner.invoke(memory_cmd.app, ["edit", "-u", "alice", memory_id, "likes oolong"]).exit_code
        == 0
    )
    assert runner.invoke(memory_cmd.app, ["forget", "-u", "alice", memory_id]).exit_code == 0
    assert "tea" not in runner.invoke(memory_cmd.app, ["list", "-u", "alice"]).output


def test_runs_enqueue_resume_show(home: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(
        runs_cmd.app, ["enqueue", "tests.maestro.memory.durable_jobs:squares", "[3]"]
    )
    assert out.exit_code == 0, out.output
    run_id = out.output.strip().splitlines()[-1]
    assert "queued" in runner.invoke(runs_cmd.app, ["list"]).output
    out = runner.invoke(runs_cmd.app, ["resume", run_id])
    assert out.exit_code == 0 and '"total": 5' in out.output
    shown = runner.invoke(runs_cmd.app, ["show", run_id]).output
    assert "completed" in shown and "square#2" in shown
    missing = runner.invoke(runs_cmd.app, ["show", "nope"])
    assert missing.exit_code == 1 and "no run 'nope'" in missing.output
