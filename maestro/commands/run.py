"""``maestro run TASK``: one task through plan -> execute -> validate -> fix, for scripts.

stdout carries the result only — the answer, the requirements report and usage, or with
``--json`` one JSON object with stable fields (:data:`JSON_FIELDS`) — and stderr the
progress, so ``maestro run ... --json | jq .answer`` works. Exit status:

- 0: the run completed and every mandatory requirement is met (or there were none);
- 1: the run completed but a mandatory requirement is not met;
- 2: an error — bad input (unknown model or tool, bad URL, missing file), a model that
  cannot load or answer, or a failed run. The message names what was wrong.

``--requirement TEXT`` adds a mandatory requirement judged by the model; ``--must-contain
TEXT`` a mandatory programmatic one (the answer contains TEXT, case-insensitively). Runs are
stored in the database (``--url`` / ``MAESTRO_DATABASE_URL``) so ``maestro runs show`` finds
them; ``--no-store`` keeps them in memory. Heavy imports happen inside the command.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from maestro import Event, Model, Requirement, RunStore, Tool

app = typer.Typer(
    help="Run a task with the plan -> execute -> validate -> fix loop.",
    no_args_is_help=True,
    context_settings={"allow_interspersed_args": True},
    subcommand_metavar="",
)

EXIT_MET, EXIT_NOT_MET, EXIT_ERROR = 0, 1, 2
TOOL_NAMES = ("calculator", "files", "python", "search")
BUDGETS = ("low", "medium", "high")
#: The keys of ``--json`` output; scripts may rely on them.
JSON_FIELDS = (
    "run_id", "status", "passed", "answer", "finish_reason", "requirements", "usage", "model",
    "tools", "error",
)  # fmt: skip


class CommandError(Exception):
    """Bad input or an unusable setting: reported as one line, exit status 2."""


@app.callback(invoke_without_command=True)
def run(
    task: Annotated[str, typer.Argument(help="What to do, in words.")],
    requirement: Annotated[
        list[str] | None,
        typer.Option("--requirement", "-r", help="A mandatory requirement (model-judged)."),
    ] = None,
    must_contain: Annotated[
        list[str] | None,
        typer.Option(help="Mandatory: the answer contains this text (checked by code)."),
    ] = None,
    budget: Annotated[str, typer.Option(help="low | medium | high")] = "low",
    max_seconds: Annotated[
        float | None,
        typer.Option(help="Stop the run after this many seconds (best answer so far)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Registry name, local path or URL[#name].")
    ] = None,
    tool: Annotated[
        list[str] | None,
        typer.Option("--tool", "-t", help=f"Enable a tool: {', '.join(TOOL_NAMES)}."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    url: Annotated[str | None, typer.Option("--url", help="Database URL.")] = None,
    store: Annotated[bool, typer.Option(help="Store the run in the database.")] = True,
    workspace: Annotated[
        Path, typer.Option(help="Root for the files tool.", file_okay=False)
    ] = Path("."),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Run TASK and print the answer, the requirements report and usage."""

    options = _Options(
        task, requirement or [], must_contain or [], budget, model, tool or [], url, store,
        workspace, quiet,
    )  # fmt: skip
    if max_seconds is not None and max_seconds <= 0:
        raise typer.BadParameter("must be positive", param_hint="--max-seconds")
    options.max_seconds = max_seconds
    _run_and_exit(options, None, as_json)


def _run_and_exit(options: _Options, resume_id: str | None, as_json: bool) -> NoReturn:
    """Run (or resume) and exit with the documented status, printing the result."""
    from maestro.errors import MaestroError

    try:
        summary = asyncio.run(_run(options, resume_id=resume_id))
    except (CommandError, MaestroError) as exc:
        _fail(str(exc), as_json, options.model)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    _print(summary, as_json)
    if summary["status"] != "completed":
        raise SystemExit(EXIT_ERROR)
    raise SystemExit(EXIT_MET if summary["passed"] else EXIT_NOT_MET)


class _Options:
    def __init__(
        self, task: str, requirements: list[str], must_contain: list[str], budget: str,
        model: str | None, tools: list[str], url: str | None, store: bool, workspace: Path,
        quiet: bool,
    ) -> None:  # fmt: skip
        if not task.strip():
            raise typer.BadParameter("the task is empty", param_hint="TASK")
        if budget not in BUDGETS:
            raise typer.BadParameter(f"must be one of {', '.join(BUDGETS)}", param_hint="--budget")
        unknown = [t for t in tools if t not in TOOL_NAMES]
        if unknown:
            raise typer.BadParameter(
                f"unknown tool {unknown[0]!r}; available: {', '.join(TOOL_NAMES)}",
                param_hint="--tool",
            )
        self.task, self.requirements, self.must_contain = task, requirements, must_contain
        self.budget, self.model, self.tools, self.url = (
            budget,
            model,
            list(dict.fromkeys(tools)),
            url,
        )
        self.store, self.workspace, self.quiet = store, workspace, quiet
        self.max_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """What ``maestro runs resume`` needs to rebuild the agent (stored with the run)."""
        return {
            "requirements": self.requirements, "must_contain": self.must_contain,
            "budget": self.budget, "model": self.model, "tools": self.tools,
            "workspace": str(self.workspace.resolve()), "max_seconds": self.max_seconds,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, task: str, data: dict[str, Any], url: str | None, quiet: bool) -> _Options:
        opts = cls(
            task, list(data.get("requirements", [])), list(data.get("must_contain", [])),
            data.get("budget", "low"), data.get("model"), list(data.get("tools", [])), url, True,
            Path(data.get("workspace", ".")), quiet,
        )  # fmt: skip
        opts.max_seconds = data.get("max_seconds")
        return opts


#: The run payload key holding a ``maestro run``'s options (see ``_Options.to_dict``).
METADATA_KEY = "maestro_run"


def resume_stored(run_id: str, task: str, payload: dict[str, Any], url: str | None,
                  as_json: bool) -> NoReturn:  # fmt: skip
    """Finish a stored ``maestro run`` run (for ``maestro runs resume``); exits like ``run``."""

    data = (payload.get("metadata") or {}).get(METADATA_KEY)
    if not isinstance(data, dict):
        _fail(
            f"run {run_id!r} was not started by `maestro run`, so its model and tools are not "
            "known here: resume it from the program that owns them with `await agent.resume(run_id)`",
            as_json, None,
        )  # fmt: skip
    try:
        opts = _Options.from_dict(task, data, url, quiet=False)
    except typer.BadParameter as exc:
        _fail(f"the stored options of run {run_id!r} are not usable: {exc}", as_json, None)
    _run_and_exit(opts, run_id, as_json)


async def _run(opts: _Options, resume_id: str | None = None) -> dict[str, Any]:
    """Run opts.task (or, with ``resume_id``, finish that stored run) and summarise it."""
    from maestro import Agent, Budget, RunFinished
    from maestro.llm.spec import display_name, resolve_model

    model = resolve_model(opts.model)
    progress = _Progress(opts.quiet)
    async with AsyncExitStack() as stack:
        await _load(model, display_name(opts.model or "smollm2-135m-instruct"), progress)
        db = await _database(opts, stack) if opts.store or "search" in opts.tools else None
        tools = await _tools(opts, db, stack)
        run_store: RunStore | None = db.runs if (db is not None and opts.store) else None
        budget = Budget.of(opts.budget, max_wall_seconds=opts.max_seconds)
        agent = Agent(model, tools=tools, budget=budget, store=run_store, name="maestro-run",
                      metadata={METADATA_KEY: opts.to_dict()})  # fmt: skip
        summary: dict[str, Any] | None = None
        if resume_id is not None:
            progress.line(f"resuming run {resume_id} ...")
            result = await agent.resume(resume_id, requirements=_requirements(opts))
            summary = {**result.to_dict(), "status": result.status}
        else:
            async for event in agent.run_stream(opts.task, requirements=_requirements(opts)):
                progress.show(event)
                if isinstance(event, RunFinished):
                    summary = {**event.result, "status": event.status}
    if summary is None:
        raise CommandError("the run ended without a result")
    return _result(summary, model.model_name, opts.tools)


async def _load(model: Model, name: str, progress: _Progress) -> None:
    """Load an embedded model now, so a bad name fails before any work is done."""
    from maestro.llm.local import LocalModel

    if isinstance(model, LocalModel):
        progress.line(f"loading model {name} ...")
        await model.engine()


async def _database(opts: _Options, stack: AsyncExitStack) -> Any:
    from maestro.memory import Database

    db = await Database.open(opts.url)
    stack.push_async_callback(db.close)
    return db


async def _tools(opts: _Options, db: Any, stack: AsyncExitStack) -> list[Tool]:
    tools: list[Tool] = []
    for name in opts.tools:
        if name == "calculator":
            from tools.calculator import calculator

            tools.append(calculator)
        elif name == "python":
            from tools.python.tool import PythonSessions

            sessions = PythonSessions()
            stack.callback(sessions.close_all)
            tools.append(sessions.tool)
        elif name == "files":
            from tools.files import Workspace, files_tools

            if not opts.workspace.is_dir():
                raise CommandError(f"workspace {str(opts.workspace)!r} is not a directory")
            ws = Workspace(opts.workspace)
            stack.callback(ws.close)
            tools.extend(files_tools(ws))
        elif name == "search":
            from tools.retrieval import Retriever, retrieval_tools

            tools.extend(retrieval_tools(Retriever(db)))
    return tools


def _requirements(opts: _Options) -> list[Requirement]:
    from maestro import Requirement

    reqs = [Requirement(text, mandatory=True) for text in opts.requirements]
    for needle in opts.must_contain:

        def contains(answer: Any, needle: str = needle) -> tuple[bool, str]:
            found = needle.casefold() in str(answer).casefold()
            return found, f"{'contains' if found else 'does not contain'} {needle!r}"

        reqs.append(Requirement(f"the answer contains {needle!r}", check=contains, mandatory=True))
    return reqs


def _result(summary: dict[str, Any], model_name: str, tools: list[str]) -> dict[str, Any]:
    report = summary.get("report") or {}
    return {
        "run_id": summary.get("run_id"),
        "status": summary.get("status", "completed"),
        "passed": bool(report.get("passed")),
        "answer": summary.get("answer", ""),
        "finish_reason": summary.get("finish_reason"),
        "requirements": [
            {k: r.get(k) for k in ("name", "description", "mandatory", "passed", "score", "reason")}
            for r in report.get("requirements", [])
        ],
        "usage": summary.get("usage") or {},
        "model": model_name,
        "tools": tools,
        "error": summary.get("error"),
        "report_summary": report.get("summary", ""),
    }


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({k: result[k] for k in JSON_FIELDS}, default=str))
        return
    typer.echo(result["answer"])
    typer.echo("")
    if result["requirements"]:
        typer.echo("Requirements:")
        for r in result["requirements"]:
            mark = "PASS" if r["passed"] else "FAIL"
            must = " (mandatory)" if r["mandatory"] else ""
            typer.echo(f"  [{mark}] {r['description']}{must}: {r['score']:.2f} {r['reason']}")
    typer.echo(f"Report: {result['report_summary']}")
    usage = result["usage"]
    typer.echo(
        f"Usage: {usage.get('input_tokens', 0)} input + {usage.get('output_tokens', 0)} output "
        f"tokens, {usage.get('requests', 0)} model calls, ${usage.get('cost_usd', 0.0):.4f}; "
        f"run {result['run_id']} ({result['status']}, {result['finish_reason']})"
    )
    if result["error"]:
        typer.echo(f"Error: {result['error']}")


def _fail(message: str, as_json: bool, model: str | None) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    if as_json:
        empty: dict[str, Any] = {k: None for k in JSON_FIELDS}
        typer.echo(json.dumps({**empty, "status": "error", "passed": False, "error": message,
                               "model": model, "requirements": [], "tools": []}))  # fmt: skip
    raise SystemExit(EXIT_ERROR)


class _Progress:
    """Events as short lines on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def show(self, event: Event) -> None:
        from maestro import FixRound, PlanMade, RequirementScored, RunStarted, ToolCallFinished

        if isinstance(event, RunStarted):
            self.line(f"run {event.run_id}: {event.task[:80]}")
        elif isinstance(event, PlanMade):
            steps = ", ".join(str(s.get("tool")) for s in event.plan.get("steps", []))
            self.line(f"  plan: {steps or '(answer directly)'}")
        elif isinstance(event, ToolCallFinished):
            outcome = f"error: {event.error}" if event.error else (event.result or "")[:120]
            self.line(f"  tool {event.tool}: {outcome}")
        elif isinstance(event, RequirementScored):
            mark = "pass" if event.passed else "fail"
            self.line(f"  round {event.round}: {event.requirement} {event.score:.2f} ({mark})")
        elif isinstance(event, FixRound):
            self.line(f"  fix round {event.round}: {', '.join(event.failing)}")
