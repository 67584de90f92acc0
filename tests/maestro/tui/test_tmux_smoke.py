"""Smoke tests: the real ``maestro tui`` command in a real terminal (tmux), driven with
send-keys and read back with capture-pane.

- ``test_scripted_answer_appears`` runs on every test run with the ``--model scripted:TEXT``
  hook (no weights, no network) against a fresh SQLite database, and checks that the answer
  appears, that the conversation was stored, and that quitting exits cleanly.
- ``test_default_model_answers`` (``slow``) runs the embedded default model
  (SmolLM2-135M-Instruct) without tools and checks that an answer appears; it is skipped when
  the model is not in the local cache (it is never downloaded by a test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MAESTRO = Path(sys.executable).with_name("maestro")

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)


class Terminal:
    """One detached tmux session running a command."""

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        result = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return result.stdout

    def alive(self) -> bool:
        return (
            subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode
            == 0
        )

    def wait_for(self, check: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if check(text):
                return text
            time.sleep(0.25)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; screen:\n{self.screen()}"
        )


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    sessions: list[str] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Terminal:
        if not MAESTRO.exists():
            pytest.skip(f"the maestro console script is not installed next to {sys.executable}")
        name = f"maestro-tui-{uuid.uuid4().hex[:8]}"
        full_env = {**os.environ, "MAESTRO_HOME": str(tmp_path / "home"), **(env or {})}
        full_env.pop("TMUX", None)
        # `; sleep` keeps the pane readable if the app crashes, so the failure shows why.
        command = " ".join([str(MAESTRO), "tui", *(f"'{a}'" for a in args)]) + "; sleep 30"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", "140", "-y", "40", command],
            check=True,
            env=full_env,
            cwd=ROOT,
        )
        sessions.append(name)
        return Terminal(name)

    yield start
    for name in sessions:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_scripted_answer_appears(terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    db = tmp_path / "smoke.db"
    term = terminal(
        "--model", "scripted:The capital of France is Paris.", "--db", f"sqlite:///{db}"
    )
    term.wait_for(lambda s: "Ask Maestro" in s and "ready" in s, 60, "the app and the model")
    term.send("What is the capital of France?", "Enter")
    screen = term.wait_for(lambda s: "The capital of France is Paris." in s, 60, "the answer")
    assert "What is the capital of France?" in screen
    term.wait_for(lambda s: "completed" in s, 30, "the run to complete")
    term.send("C-q")
    term.wait_for(lambda s: "Ask Maestro" not in s, 30, "the app to quit")

    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
    assert rows == [
        ("user", "What is the capital of France?"),
        ("assistant", "The capital of France is Paris."),
    ]


@pytest.mark.slow
def test_default_model_answers(terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    try:
        from model.registry import cache_dir, resolve
    except ImportError as exc:
        pytest.skip(f"the engine is not installed: {exc}")
    try:
        resolve("smollm2-135m-instruct", download=False)
    except Exception as exc:
        pytest.skip(f"the default model is not in the local cache: {exc}")
    # The app runs with a temporary MAESTRO_HOME; lend it the real model cache.
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "models").symlink_to(cache_dir())
    term = terminal("--no-tools")
    term.wait_for(lambda s: "smollm2-135m-instruct  ready" in s, 300, "the model to load")
    term.send("Say hello in one short sentence.", "Enter")
    # The title says "completed" a moment before the model status leaves "generating" (the
    # answer bubble is finished first), so wait for both.
    screen = term.wait_for(
        lambda s: "failed" in s or ("completed" in s and "smollm2-135m-instruct  ready" in s),
        300, "the run to finish and the model status to settle",
    )
    assert "completed" in screen, screen
    # The model status reports speed and the prefix cache the TUI turned on.
    assert re.search(r"\d+\.\d tok/s", screen), screen
    assert re.search(r"cache \d+/[1-9]\d* hits", screen), screen
