"""The Maestro terminal UI: the app, and :func:`create_app`, the factory that takes its services.

Start-up never blocks: the window appears at once, the model loads in a thread worker
(importing torch for the embedded engine takes seconds) and the database opens in an async
worker. A task typed before either is ready waits for it, with a note in the answer bubble.

A run is one exclusive worker consuming the launcher's event stream. Each event is folded into
a :class:`~maestro.tui.run_state.RunView` and only the regions it changed are redrawn; text
deltas go to the answer bubble's buffer, which repaints on a timer (see ``ChatMessage``).
Cancelling (Escape) cancels the worker, which cancels the run; an approval modal still open
is withdrawn as a denial. Thread loads are exclusive workers too, and a load that finishes
after the user has moved to another thread is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from maestro.errors import MaestroError
from maestro.events import TextDelta
from maestro.llm.base import Model
from maestro.messages import AssistantMessage, Message, UserMessage
from maestro.tui.commands import MaestroCommands
from maestro.tui.generation import GenerationMeter, enable_prefix_cache
from maestro.tui.ingest import UNAVAILABLE_NO_DATABASE
from maestro.tui.run_state import Region, RunView
from maestro.tui.screens.approval import ApprovalScreen
from maestro.tui.screens.documents import DocumentsScreen
from maestro.tui.screens.main import MainScreen
from maestro.tui.screens.memory import MemoryScreen
from maestro.tui.services import (
    ApprovalDecision,
    ApprovalPrompt,
    ChatEntry,
    RunInfo,
    RunRequest,
    Services,
    Store,
)
from maestro.tui.stores import InMemoryStore
from maestro.tui.widgets.chat.chat_log import ChatLog
from maestro.tui.widgets.chat.prompt_input import PromptInput
from maestro.tui.widgets.run.budget_meter import BudgetMeter
from maestro.tui.widgets.run.model_status import ModelStats, ModelStatus
from maestro.tui.widgets.run.plan_tree import PlanTree
from maestro.tui.widgets.run.scoreboard import Scoreboard
from maestro.tui.widgets.run.tool_calls import ToolCalls
from maestro.tui.widgets.sidebar.thread_list import ThreadList

BUDGET_PRESETS = ("low", "medium", "high")


class MaestroApp(App[None]):
    """Watch and steer agent runs; chat with threads kept in the database."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "Maestro"
    COMMANDS: ClassVar[set[Any]] = App.COMMANDS | {MaestroCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_run", "Cancel run"),  # ctrl+x is "cut" in the input
        Binding("ctrl+n", "new_thread", "New thread"),
        Binding("f2", "open_memory", "Memory"),
        Binding("f3", "open_documents", "Documents"),
        Binding("ctrl+r", "resume_run", "Resume"),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.model: Model | None = None
        self.model_error: str | None = None
        self.model_ready = asyncio.Event()
        self.store: Store = InMemoryStore()
        self.store_ready = asyncio.Event()
        self.screen_ready = asyncio.Event()  # the main screen's widgets exist
        self.thread_id: str | None = None
        self.run_view = RunView()
        self.budget_preset = services.budget
        self.main_screen = MainScreen(services.model_name)
        self.stats = ModelStats(services.model_name)
        self._always: set[str] = set()
        self._approval_screens: list[ApprovalScreen] = []
        self._run_worker: Worker[None] | None = None
        self.meter = GenerationMeter(self.stats)
        self._engine: Any = None  # the embedded engine behind a LocalModel, once loaded

    def get_default_screen(self) -> Screen[Any]:
        return self.main_screen

    @on(MainScreen.Ready)
    def _main_ready(self) -> None:
        self.screen_ready.set()
        self._show_stats()  # the model may have loaded before the screen was up

    def on_mount(self) -> None:
        self.sub_title = f"model {self.services.model_name} · opening the database…"
        self.load_model(self.services.load_model)
        self.open_store()

    # --- start-up workers -------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def load_model(self, loader: Callable[[], Model]) -> None:
        """Build the model off the event loop (the embedded engine imports torch)."""
        self.call_from_thread(self._model_loading)
        try:
            model = loader()
        except Exception as exc:  # any failure must reach the status line, not kill the app
            message = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, MaestroError) else str(exc)
            )
            self.call_from_thread(self._model_failed, message)
            return
        self.call_from_thread(self._model_loaded, model)

    def _model_loading(self) -> None:
        self.model_ready.clear()
        self.stats.state, self.stats.error = "loading", ""
        self._show_stats()

    def _model_loaded(self, model: Model) -> None:
        self.stats.name = getattr(model, "model_name", self.stats.name)
        self._show_stats()
        self.warm_model(model)

    @work(exclusive=True, group="model-warm", exit_on_error=False)
    async def warm_model(self, model: Model) -> None:
        """Load the weights now rather than on the first request (``LocalModel.engine()``
        reads them in a worker thread); remote models and test doubles have nothing to warm."""
        engine_of = getattr(model, "engine", None)
        engine: Any = None
        if callable(engine_of):
            try:
                engine = await engine_of()
            except Exception as exc:  # the status line must say why, whatever it was
                self._model_failed(str(exc) if isinstance(exc, MaestroError) else repr(exc))
                return
        self.model, self.model_error, self._engine = model, None, engine
        enable_prefix_cache(engine)
        self.stats.state = "ready"
        length = getattr(engine, "context_length", None) or getattr(model, "context_length", None)
        self.stats.context_length = length if isinstance(length, int) else None
        self._show_stats()
        self.model_ready.set()

    def _model_failed(self, message: str) -> None:
        self.model, self.model_error = None, message
        self.stats.state, self.stats.error = "error", message
        self._show_stats()
        self.model_ready.set()
        self.notify(f"The model could not load: {message}", severity="error", timeout=10)

    @work(exclusive=True, group="store", exit_on_error=False)
    async def open_store(self) -> None:
        try:
            self.store = await self.services.open_store()
        except MaestroError as exc:
            self.store = InMemoryStore()
            self.notify(
                f"Database unavailable ({exc}); this session is kept in memory only.",
                severity="warning",
                timeout=10,
            )
        self.sub_title = f"{self.store.description} · budget {self.budget_preset}"
        self.store_ready.set()
        await self.screen_ready.wait()
        threads = await self.store.list_threads()
        if threads and self.thread_id is None:
            self.switch_thread(threads[0].id)
        else:
            await self.refresh_threads()
            if self.thread_id is None:
                await self.main_screen.query_one(ChatLog).show_thread([])

    async def on_unmount(self) -> None:
        if self.store_ready.is_set():
            with contextlib.suppress(MaestroError):
                await self.store.close()

    # --- threads ----------------------------------------------------------------------------

    async def refresh_threads(self) -> None:
        threads = await self.store.list_threads()
        self.main_screen.query_one(ThreadList).show(threads, self.thread_id)

    def switch_thread(self, thread_id: str) -> None:
        if self.run_active:
            self.notify("A run is in progress: Escape cancels it.", severity="warning")
            return
        self.thread_id = thread_id
        self.load_thread(thread_id)

    @work(exclusive=True, group="thread")
    async def load_thread(self, thread_id: str) -> None:
        await self.store_ready.wait()
        await self.screen_ready.wait()
        entries = await self.store.thread_messages(thread_id)
        if thread_id != self.thread_id:
            return  # the user moved on while this loaded: stale
        await self.main_screen.query_one(ChatLog).show_thread(entries)
        await self.refresh_threads()

    @on(ThreadList.ThreadChosen)
    def _thread_chosen(self, event: ThreadList.ThreadChosen) -> None:
        if event.thread_id != self.thread_id:
            self.switch_thread(event.thread_id)

    @on(ThreadList.NewThreadRequested)
    def _new_thread_requested(self) -> None:
        self.action_new_thread()

    def action_new_thread(self) -> None:
        if self.run_active:
            self.notify("A run is in progress: Escape cancels it.", severity="warning")
            return
        self.thread_id = None
        self._start_fresh_thread()

    @work(exclusive=True, group="thread")
    async def _start_fresh_thread(self) -> None:
        await self.main_screen.query_one(ChatLog).show_thread([])
        await self.refresh_threads()
        self.main_screen.query_one(PromptInput).focus()

    # --- runs -------------------------------------------------------------------------------

    @property
    def run_active(self) -> bool:
        worker = self._run_worker
        return worker is not None and worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    @on(PromptInput.TaskSubmitted)
    def _task_submitted(self, event: PromptInput.TaskSubmitted) -> None:
        if self.run_active:
            self.notify("A run is in progress: wait for it or cancel it with Escape.")
            return
        self._run_worker = self.run_task(event.text)

    def action_cancel_run(self) -> None:
        if not self.run_active or self._run_worker is None:
            self.notify("No run to cancel.")
            return
        self._run_worker.cancel()

    def action_resume_run(self) -> None:
        self._find_and_resume()

    @work(exclusive=True, group="resume")
    async def _find_and_resume(self) -> None:
        await self.store_ready.wait()
        runs = [
            r for r in await self.store.list_runs(status="running") if r.id != self.run_view.run_id
        ]
        if not runs:
            self.notify("No interrupted runs to resume.")
            return
        self.resume(runs[0])

    def resume(self, run: RunInfo) -> None:
        """Continue an interrupted run (finished steps are replayed, not redone)."""
        if self.run_active:
            self.notify("A run is in progress: Escape cancels it.", severity="warning")
            return
        self._run_worker = self.run_task(run.task, resume_run_id=run.id)

    @work(exclusive=True, group="run", exit_on_error=False)
    async def run_task(self, task: str, resume_run_id: str | None = None) -> None:
        chat = self.main_screen.query_one(ChatLog)
        await self.store_ready.wait()
        if self.thread_id is None:
            thread = await self.store.create_thread(_title(task))
            self.thread_id = thread.id
            await self.refresh_threads()
        thread_id = self.thread_id
        history = _history(await self.store.thread_messages(thread_id))
        await chat.add("user", task)
        await self.store.add_message(thread_id, "user", task)
        bubble = await chat.add("assistant", "", streaming=True)
        if not self.model_ready.is_set():
            bubble.border_subtitle = "waiting for the model to load…"
            await self.model_ready.wait()
            bubble.border_subtitle = ""
        if self.model is None:
            await bubble.finish(f"**The model could not load:** {self.model_error}", note="error")
            return
        request = RunRequest(
            task=task,
            approve=self._approve,
            history=history,
            budget=self.budget_preset,
            thread_id=thread_id,
            resume_run_id=resume_run_id,
            run_store=self.store.run_store(),
        )
        self._always.clear()
        self.meter.begin(history, task)
        self._show_stats()
        try:
            async with contextlib.aclosing(self.services.launcher(self.model, request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if event.key != self.run_view.answer_key and self.run_view.answer:
                            await bubble.reset()  # a new draft replaces the previous one
                        bubble.add_text(event.text)
                        if self.meter.token(self.run_view.answer + event.text):
                            self._show_stats()
                    await self._render(self.run_view.apply(event))
        except asyncio.CancelledError:
            self._withdraw_approvals()
            self.run_view.mark_cancelled()
            await self._render({"plan", "tools", "budget", "status"})
            await bubble.finish(note="cancelled")
            self._end_generation()
            with contextlib.suppress(MaestroError):
                await self.store.add_message(
                    thread_id, "assistant", bubble.text + "\n\n*(cancelled)*", self.run_view.run_id
                )
            raise
        except Exception as exc:  # whatever broke, the user sees it in the conversation
            reason = str(exc) if isinstance(exc, MaestroError) else f"{type(exc).__name__}: {exc}"
            self.log.error("run failed", exc_info=exc)
            self.run_view.status, self.run_view.finish_reason = "failed", reason
            await self._render({"plan", "status"})
            await bubble.finish(bubble.text + f"\n\n**Run failed:** {reason}", note="failed")
            self._end_generation()
            return
        view = self.run_view
        note = view.status if view.status == "completed" else f"{view.status}: {view.outcome}"
        shown = view.answer or bubble.text or f"*No answer ({view.status}): {view.outcome}*"
        await bubble.finish(shown, note=note)
        self._end_generation()
        await self.store.add_message(thread_id, "assistant", view.answer, view.run_id or None)
        await self.refresh_threads()

    async def _render(self, regions: set[Region]) -> None:
        screen = self.main_screen
        view = self.run_view
        if "plan" in regions:
            screen.query_one(PlanTree).show(view)
        if "tools" in regions:
            await screen.query_one(ToolCalls).show(view)
        if "requirements" in regions:
            screen.query_one(Scoreboard).show(view)
        if "budget" in regions:
            screen.query_one(BudgetMeter).show(view)
        if "status" in regions:
            self.sub_title = f"run {view.run_id[:8]} {view.status} · budget {self.budget_preset}"

    # --- approvals --------------------------------------------------------------------------

    async def _approve(self, prompt: ApprovalPrompt) -> bool:
        """The approval callback handed to the run: a modal, unless "always" was chosen."""
        if prompt.tool in self._always:
            self.run_view.record_decision(prompt.step_key, prompt.tool, True)
            await self._render({"tools"})
            return True
        decided: asyncio.Future[ApprovalDecision] = asyncio.get_running_loop().create_future()

        def settle(decision: ApprovalDecision | None) -> None:
            if not decided.done():
                decided.set_result(decision or ApprovalDecision.DENY)

        screen = ApprovalScreen(prompt)
        self._approval_screens.append(screen)
        try:
            await self.push_screen(screen, callback=settle)
            decision = await decided
        finally:
            self._approval_screens.remove(screen)
        if decision is ApprovalDecision.ALWAYS:
            self._always.add(prompt.tool)
        approved = decision is not ApprovalDecision.DENY
        self.run_view.record_decision(prompt.step_key, prompt.tool, approved)
        await self._render({"tools"})
        return approved

    def _withdraw_approvals(self) -> None:
        for screen in list(self._approval_screens):
            if screen.is_current:
                screen.dismiss(ApprovalDecision.DENY)

    # --- model status -----------------------------------------------------------------------

    def _end_generation(self) -> None:
        self.meter.end(self.run_view.answer, model=self.model, engine=self._engine)
        self._show_stats()

    def _show_stats(self) -> None:
        if self.main_screen.is_mounted:
            self.main_screen.query_one(ModelStatus).show(self.stats)

    # --- palette actions --------------------------------------------------------------------

    def set_budget(self, preset: str) -> None:
        self.budget_preset = preset
        self.sub_title = f"{self.store.description} · budget {preset}"
        self.notify(f"Budget preset: {preset} (applies to the next task)")

    def switch_model(self, name: str) -> None:
        if self.services.loader_for is None:
            self.notify("This session cannot switch models.", severity="warning")
            return
        if self.run_active:
            self.notify("A run is in progress: Escape cancels it.", severity="warning")
            return
        self.stats = ModelStats(name)
        self.meter = GenerationMeter(self.stats)
        self.model, self._engine = None, None
        self.load_model(self.services.loader_for(name))

    def action_open_memory(self) -> None:
        self.push_screen(MemoryScreen(self.store))

    def action_open_documents(self) -> None:
        services = self.services
        ingestor = services.ingestor
        reason = services.ingest_unavailable_reason
        if ingestor is None and services.ingestor_for is not None and self.store_ready.is_set():
            ingestor = services.ingestor_for(self.store)
            if ingestor is None and isinstance(self.store, InMemoryStore):
                reason = UNAVAILABLE_NO_DATABASE
        self.push_screen(DocumentsScreen(self.store, ingestor, reason))

    def get_system_commands(self, screen: Screen[Any]) -> Any:
        yield from super().get_system_commands(screen)
        yield SystemCommand("New thread", "Start a fresh conversation", self.action_new_thread)
        yield SystemCommand("Cancel run", "Stop the running task", self.action_cancel_run)
        yield SystemCommand(
            "Resume interrupted run", "Continue the newest interrupted run", self.action_resume_run
        )
        yield SystemCommand("Memory", "Browse, edit and forget memories", self.action_open_memory)
        yield SystemCommand("Documents", "Ingest and list documents", self.action_open_documents)


def _title(task: str) -> str:
    words = " ".join(task.split())
    return words if len(words) <= 40 else words[:39] + "…"


def _history(entries: list[ChatEntry]) -> list[Message]:
    """The thread as model messages (errors and notes are not sent to the model)."""
    history: list[Message] = []
    for entry in entries:
        if entry.role == "user":
            history.append(UserMessage(entry.content))
        elif entry.role == "assistant" and entry.content:
            history.append(AssistantMessage(entry.content))
    return history


def create_app(services: Services) -> MaestroApp:
    """The app with its services injected (tests pass a ScriptedModel and a temp database)."""
    return MaestroApp(services)


__all__ = ["BUDGET_PRESETS", "MaestroApp", "create_app"]
