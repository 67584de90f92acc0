"""Every command's bad-input path: one clear line on stderr, no traceback, a non-zero exit.

Exit codes: ``run``, ``chat`` and ``runs resume`` use 2 for errors (``run``: 1 means a
mandatory requirement was not met); the database commands (``ingest``, ``memory``, ``runs``,
``worker``, ``db``) and ``model`` use 1; usage errors caught by the argument parser (a missing
option, a value out of range, an unknown subcommand) are 2. Nothing here loads a model or
leaves the machine: unknown names fail before any download. (An unreachable model URL is
retried with backoff for several seconds; tests/maestro/test_openai_model.py covers that.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from maestro.cli import build_app


def cases(db: str) -> list[tuple[list[str], int, str]]:
    return [
        (["run", "hi", "--model", "./missing.gguf", "--url", db], 2, "no such file or directory"),
        (["run", "hi", "--model", "ftp://example.com/v1", "--url", db], 2, "ftp://example.com/v1"),
        (["chat", "--model", "ftp://example.com/v1", "--url", db], 2, "ftp://example.com/v1"),
        (["ingest", "/nonexistent/notes.txt", "--url", db], 1, "/nonexistent/notes.txt: no such file"),
        (["memory", "forget", "424242", "-u", "bob", "--url", db], 1, "user 'bob' has no memory 424242"),
        (["memory", "edit", "424242", "new text", "-u", "bob", "--url", db], 1, "has no memory 424242"),
        (["memory", "forget", "not-a-number", "-u", "bob"], 2, "memory_id"),
        (["runs", "show", "run_nope", "--url", db], 1, "no run 'run_nope'"),
        (["runs", "resume", "run_nope", "--url", db], 2, "no run 'run_nope'"),
        (["runs", "enqueue", "nomodule:nofunc", "[1]", "--url", db], 1, "nomodule"),
        (["worker", "--url", "sqlite:////nonexistent/dir/x.db"], 1, "/nonexistent/dir does not exist"),
        (["db", "upgrade", "--url", "sqlite:////nonexistent/dir/x.db"], 1, "does not exist"),
        (["serve", "--port", "99999"], 2, "--port"),
        (["serve", "--model", "ftp://example.com/v1", "--no-store"], 2, "ftp://example.com/v1"),
        (["bench", "nosuch"], 2, "No such command 'nosuch'"),
        (["model", "pull", "no-such-model"], 1, "unknown model 'no-such-model'"),
        (["model", "generate", "--model", "/nonexistent/m.gguf", "hi"], 1, "/nonexistent/m.gguf"),
        (["model", "generate", "-q", "int3", "hi"], 2, "--quantize"),
        (["model", "generate", "--kv-dtype", "int8", "hi"], 2, "--kv-dtype"),
    ]


@pytest.mark.real_model  # real model calls allowed: they must fail on the bad input alone
@pytest.mark.parametrize("index", range(len(cases(""))))
def test_bad_input_gives_one_clear_line(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAESTRO_HOME", str(tmp_path / "home"))
    args, code, message = cases(f"sqlite:///{tmp_path / 'm.db'}")[index]
    result = CliRunner().invoke(build_app(), args, input="hello\n")
    assert result.exit_code == code, (args, result.output)
    assert message in " ".join(result.stderr.split()), (args, result.stderr)
    assert "Traceback" not in result.output, (args, result.output)
