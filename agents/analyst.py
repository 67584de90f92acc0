"""The analyst: answers questions about data files by writing and running Python.

::

    with Analyst("smollm2-135m-instruct", ["sales.csv"]) as analyst:
        analysis = analyst.run_sync("Which region sold the most?")
    print(analysis.render())        # the answer, then every cell: code and its output

The data files are copied into the run's sandboxed Python session (``tools.python``:
bubblewrap, seccomp, no network) before its first cell, so the model's code reads them by
name from the current directory. The system prompt names the files and shows the first
lines of each, so the model writes code for the real columns. Every cell the model ran —
code, output, whether it failed — is kept in :attr:`Analysis.cells`: the answer comes with
the evidence for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from maestro import (
    Agent,
    Budget,
    Model,
    Requirement,
    RunResult,
    Tool,
    ToolContext,
    ToolRetry,
    UserError,
    tool,
)
from tools.python.tool import PythonSessions

ANALYST_INSTRUCTIONS = (
    "You are a data analyst. Answer by writing Python code and running it with the python "
    "tool; the data files are in the current directory (pandas and numpy may be available; "
    "the csv module always is). Print the numbers you need. Base the answer only on the "
    "output of your code and state the figures it printed."
)
PREVIEW_LINES = 4


@dataclass(slots=True)
class Cell:
    """One executed cell: the code and what it printed or raised."""

    code: str
    output: str
    ok: bool


@dataclass(slots=True)
class Analysis:
    """The run's result plus the cells that produced it."""

    result: RunResult
    cells: list[Cell] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.result.answer

    def render(self) -> str:
        parts = [self.answer]
        for i, cell in enumerate(self.cells, 1):
            status = "" if cell.ok else " (failed)"
            parts.append(
                f"--- cell {i}{status}\n{cell.code.rstrip()}\n--- output\n{cell.output.rstrip()}"
            )
        return "\n\n".join(parts)


class Analyst:
    """An agent over ``files`` with a sandboxed Python tool (see the module docstring)."""

    def __init__(
        self,
        model: Model | str | None,
        files: Sequence[str | Path],
        *,
        sessions: PythonSessions | None = None,
        requirements: Sequence[Requirement | str] = (),
        budget: Budget | str | None = "medium",
        instructions: str = ANALYST_INSTRUCTIONS,
    ) -> None:
        from maestro.llm.spec import resolve_model

        self.files = _checked_files(files)
        self.sessions = sessions or PythonSessions()
        self._owns_sessions = sessions is None
        self._staged: set[str] = set()
        self._cells: dict[str, list[Cell]] = {}
        self.agent = Agent(
            resolve_model(model),
            tools=[self._python_tool()],
            instructions=instructions + "\n\n" + describe_files(self.files),
            requirements=requirements,
            budget=budget,
            name="analyst",
        )

    async def run(self, question: str, **kwargs: object) -> Analysis:
        result = await self.agent.run(question, **kwargs)  # type: ignore[arg-type]
        cells = self._cells.pop(result.run_id, [])
        self.sessions.close(result.run_id)
        self._staged.discard(result.run_id)
        return Analysis(result, cells)

    def run_sync(self, question: str) -> Analysis:
        return asyncio.run(self.run(question))

    def close(self) -> None:
        if self._owns_sessions:
            self.sessions.close_all()

    def __enter__(self) -> Analyst:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _stage(self, run_id: str) -> None:
        if run_id in self._staged:
            return
        sandbox, lock = self.sessions.session(run_id)
        with lock:
            for path in self.files:
                sandbox.write_file(path.name, path.read_bytes())
        self._staged.add(run_id)

    def _python_tool(self) -> Tool:
        analyst = self

        @tool(name="python", timeout=70.0)
        def python(ctx: ToolContext, code: str) -> str:
            """Run Python code in a sandboxed, stateful session; the data files are in the
            current directory. Print what you need to see.

            Args:
                code: Python source to execute.
            """
            analyst._stage(ctx.run_id)
            cells = analyst._cells.setdefault(ctx.run_id, [])
            try:
                output = analyst.sessions.run(ctx.run_id, code)
            except ToolRetry as exc:
                cells.append(Cell(code, str(exc), ok=False))
                raise
            cells.append(Cell(code, output, ok=True))
            return output

        return python


def _checked_files(files: Sequence[str | Path]) -> list[Path]:
    if not files:
        raise UserError("the analyst needs at least one data file")
    paths: list[Path] = []
    for item in files:
        path = Path(item).expanduser()
        if not path.is_file():
            raise UserError(f"data file {str(item)!r} does not exist or is not a file")
        if any(p.name == path.name for p in paths):
            raise UserError(f"two data files are named {path.name!r}; rename one")
        paths.append(path)
    return paths


def describe_files(files: Sequence[Path]) -> str:
    """The files as the model sees them: name, size and first lines."""
    lines = ["Data files in the current directory:"]
    for path in files:
        lines.append(f"- {path.name} ({path.stat().st_size} bytes); first lines:")
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = [next(fh, "").rstrip("\n") for _ in range(PREVIEW_LINES)]
        lines.extend(f"    {line}" for line in head if line)
    return "\n".join(lines)


__all__ = ["ANALYST_INSTRUCTIONS", "Analysis", "Analyst", "Cell", "describe_files"]
