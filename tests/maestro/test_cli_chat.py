"""``maestro chat``: per-user memory across sessions (the first one in a separate process),
in-chat commands, and clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner, Result

from maestro.cli import build_app

ROOT = Path(__file__).resolve().parents[2]


def chat(db: str, user: str, text: str, model: str = "scripted:Noted.") -> Result:
    return CliRunner().invoke(
        build_app(), ["chat", "--user", user, "--model", model, "--url", db], input=text
    )


def test_a_fact_from_one_session_is_recalled_in_the_next_and_forgotten_on_request(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path}/chat.db"
    first = subprocess.run(
        [sys.executable, "-m", "maestro.cli", "chat", "--user", "ada", "--model",
         "scripted:Noted.", "--url", db],
        input="My favourite colour is teal.\n", capture_output=True, text=True, cwd=ROOT,
        timeout=60,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "Noted."
    stored = re.search(r"remembered #(\d+): The user's favourite colour is teal\.", first.stderr)
    assert stored, first.stderr

    second = chat(db, "ada", "What is my favourite colour?\n/memories\n")
    assert second.exit_code == 0, second.output
    assert f"recalled: #{stored.group(1)} The user's favourite colour is teal." in second.stderr
    assert f"#{stored.group(1)} [archival] The user's favourite colour is teal." in second.stdout

    assert "recalled" not in chat(db, "bob", "What is my favourite colour?\n").stderr

    forgot = CliRunner().invoke(
        build_app(), ["memory", "forget", "--user", "ada", stored.group(1), "--url", db]
    )
    assert forgot.exit_code == 0, forgot.output
    third = chat(db, "ada", "What is my favourite colour?\n/memories\n")
    assert "recalled" not in third.stderr and "(no memories)" in third.stdout


def test_in_chat_commands_and_the_thread(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/chat.db"
    result = chat(
        db, "ada", "Remember that my locker is 42.\n/forget x\n/forget 999\n/nope\n/quit\nignored\n"
    )
    assert result.exit_code == 0, result.output
    assert "remembered #1: The user's locker is 42." in result.stderr
    assert "usage: /forget MEMORY_ID" in result.stderr
    assert "has no memory 999" in result.stderr
    assert "commands: /memories" in result.stderr
    assert result.stdout.count("Noted.") == 1  # nothing after /quit


def test_bad_model_spec_exits_2(tmp_path: Path) -> None:
    result = chat(f"sqlite:///{tmp_path}/chat.db", "ada", "hi\n", model="http://")
    assert result.exit_code == 2
    assert "has no host" in result.stderr
