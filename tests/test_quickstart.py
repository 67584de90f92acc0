"""`make demo`'s main job: the quickstart agent task on the real default model, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_the_agent_task_on_the_default_model() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "plan: calculator(" in out.stderr, out.stderr  # the model routed to the exact tool
    assert "tool calculator:" in out.stderr
    assert "requirement met:" in out.stdout and "finished:" in out.stderr
