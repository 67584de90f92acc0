"""Fixtures for the TUI tests: an app factory with injected services, a temporary SQLite
database, a polling helper, and deterministic clocks and cursors for snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from textual.pilot import Pilot
from textual.widgets import Input
from textual.worker import WorkerCancelled, WorkerFailed

from maestro.llm.base import Model, StreamEvent, TextDeltaEvent
from maestro.messages import Message, ModelRequestOptions
from maestro.requirements import Requirement
from maestro.testing import ScriptedModel
from maestro.tool import Tool
from maestro.tui.app import MaestroApp, create_app
from maestro.tui.launchers import agent_launcher
from maestro.tui.services import Ingestor, RunLauncher, Services, Store
from maestro.tui.stores import DatabaseStore

SIZE = (150, 44)


@pytest.fixture(autouse=True)
def _no_cursor_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blinking cursor makes screenshots depend on timing."""
    monkeypatch.setattr(Input, "_toggle_cursor", lambda _self: None)


@pytest.fixture
async def db_store(tmp_path: Path) -> AsyncIterator[DatabaseStore]:
    """A migrated SQLite database in a temporary directory."""
    store = await DatabaseStore.open(f"sqlite:///{tmp_path / 'maestro.db'}")
    try:
        yield store
    finally:
        with anyio.fail_after(20):  # a connection left mid-transaction would hang here
            await store.close()


class _KeepOpen:
    """Hands the test's store to the app without letting the app close it on exit (the
    test still reads the database afterwards)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def close(self) -> None:
        return None


def build_app(
    model: Model,
    store: Store,
    *,
    tools: Sequence[Tool] = (),
    requirements: Sequence[Requirement] = (),
    launcher: RunLauncher | None = None,
    ingestor: Ingestor | None = None,
    load_delay: float = 0.0,
) -> MaestroApp:
    """The app as ``maestro tui`` builds it, with the model and store injected."""

    def load() -> Model:
        if load_delay:
            time.sleep(load_delay)  # runs in the loader thread, like torch imports would
        return model

    async def open_store() -> Store:
        return _KeepOpen(store)  # type: ignore[return-value]

    return create_app(
        Services(
            model_name=model.model_name,
            load_model=load,
            open_store=open_store,
            launcher=launcher or agent_launcher(tools, requirements),
            ingestor=ingestor,
        )
    )


async def drain(app: MaestroApp) -> None:
    """Let the app's workers finish before the test leaves ``run_test``: exiting cancels
    them, and a database write cancelled halfway is not what these tests are about."""
    with contextlib.suppress(WorkerCancelled, WorkerFailed):
        await app.workers.wait_for_complete()


async def wait_until(
    pilot: Pilot[None], predicate: Callable[[], bool], timeout: float = 10.0, what: str = ""
) -> None:
    """Let the app run until ``predicate()`` holds; fail with ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)


class PacedModel(ScriptedModel):
    """A ScriptedModel that streams like a real one: ``delay`` seconds between text deltas,
    and, with ``pause_after``, a stop after that many deltas until ``resume`` is set (so a
    test can look at a half-written answer)."""

    def __init__(
        self, responses: Sequence[Any], *, delay: float = 0.0, pause_after: int | None = None
    ) -> None:
        super().__init__(responses)
        self.delay = delay
        self.pause_after = pause_after
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def stream(
        self, messages: list[Message], options: ModelRequestOptions
    ) -> AsyncIterator[StreamEvent]:
        sent = 0
        async for event in super().stream(messages, options):
            if isinstance(event, TextDeltaEvent):
                if sent == self.pause_after:
                    self.paused.set()
                    await self.resume.wait()
                sent += 1
                if self.delay:
                    await asyncio.sleep(self.delay)
            yield event
