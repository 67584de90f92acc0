"""Pilot tests of what lives in the database: switching threads restores them, the prompt
history, the memory browser (edit and forget, with provenance), documents and the palette."""

from __future__ import annotations

from textual.widgets import Input

from maestro.memory.records import Provenance
from maestro.runs import RunRecord
from maestro.testing import FunctionModel
from maestro.tui.ingest import RetrievalIngestor
from maestro.tui.stores import DatabaseStore
from maestro.tui.widgets.chat.chat_log import ChatLog
from maestro.tui.widgets.chat.prompt_input import PromptInput
from maestro.tui.widgets.sidebar.thread_list import ThreadList

from .conftest import SIZE, build_app, drain, wait_until


def _echo() -> FunctionModel:
    return FunctionModel(lambda messages, _o: f"echo: {messages[-1].content}")


def _log(app: object) -> list[tuple[str, str]]:
    log = app.main_screen.query_one(ChatLog)  # type: ignore[attr-defined]
    return [(m.role, m.text) for m in log.messages]


async def test_switching_threads_restores_them_from_the_database(db_store: DatabaseStore) -> None:
    older = await db_store.create_thread("trip planning")
    await db_store.add_message(older.id, "user", "plan a trip to Lisbon")
    await db_store.add_message(older.id, "assistant", "Day 1: Alfama.")
    newer = await db_store.create_thread("tax questions")
    await db_store.add_message(newer.id, "user", "is rent deductible?")
    await db_store.add_message(newer.id, "assistant", "Sometimes.")

    app = build_app(_echo(), db_store)
    async with app.run_test(size=SIZE) as pilot:
        # The newest thread opens on start.
        await wait_until(pilot, lambda: app.thread_id == newer.id and len(_log(app)) == 2)
        assert _log(app) == [("user", "is rent deductible?"), ("assistant", "Sometimes.")]
        threads = app.main_screen.query_one(ThreadList)
        await wait_until(pilot, lambda: len(threads.threads) == 2, what="thread list")
        assert [t.title for t in threads.threads] == ["tax questions", "trip planning"]

        threads.focus()
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: _log(app)[:1] == [("user", "plan a trip to Lisbon")])
        assert app.thread_id == older.id
        assert _log(app) == [("user", "plan a trip to Lisbon"), ("assistant", "Day 1: Alfama.")]

        # A new turn in the older thread is sent with its history and stored in it.
        app.main_screen.query_one(PromptInput).focus()
        await pilot.press(*"and day 2?", "enter")
        await wait_until(pilot, lambda: app.run_view.status == "completed")
        await app.workers.wait_for_complete()
        assert _log(app)[-1] == ("assistant", "echo: and day 2?")

        # A fresh thread starts empty; the message goes into a new thread.
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.thread_id is None and len(_log(app)) == 1)
        await pilot.press(*"new topic", "enter")
        await wait_until(pilot, lambda: app.run_view.status == "completed" and len(_log(app)) == 2)
        await app.workers.wait_for_complete()
        await drain(app)

    stored = await db_store.thread_messages(older.id)
    assert [m.content for m in stored][-2:] == ["and day 2?", "echo: and day 2?"]
    titles = [t.title for t in await db_store.list_threads()]
    assert titles[0] == "new topic" and len(titles) == 3


async def test_stale_thread_loads_are_dropped(db_store: DatabaseStore) -> None:
    first = await db_store.create_thread("first")
    await db_store.add_message(first.id, "user", "first thread message")
    second = await db_store.create_thread("second")
    await db_store.add_message(second.id, "user", "second thread message")
    app = build_app(_echo(), db_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.store_ready.is_set() and len(_log(app)) == 1)
        app.switch_thread(first.id)
        app.switch_thread(second.id)  # the user clicks on before the first load lands
        await wait_until(pilot, lambda: _log(app) == [("user", "second thread message")])
        await pilot.pause(0.3)  # nothing from the first load may land afterwards
        assert app.thread_id == second.id
        assert _log(app) == [("user", "second thread message")]
        await drain(app)


async def test_prompt_history_recalls_earlier_prompts(db_store: DatabaseStore) -> None:
    app = build_app(_echo(), db_store)
    async with app.run_test(size=SIZE) as pilot:
        prompt = app.main_screen.query_one(PromptInput)
        for text in ("first", "second"):
            await pilot.press(*text, "enter")
            await wait_until(
                pilot, lambda: app.run_view.status == "completed" and not app.run_active
            )
        await pilot.press(*"draft")
        await pilot.press("up")
        assert prompt.value == "second"
        await pilot.press("up", "up")
        assert prompt.value == "first"
        await pilot.press("down", "down")
        assert prompt.value == "draft"
        await drain(app)


async def test_memory_browser_edits_and_forgets(db_store: DatabaseStore) -> None:
    memory = db_store.db.memory
    await db_store.run_store().create_run(RunRecord("run-abc123", "plan my week"))
    thread = await db_store.create_thread("week")
    said = await db_store.db.threads.add_message(thread.id, "user", "I drink green tea daily")
    tea = await memory.remember(
        db_store.user_id,
        "likes green tea",
        provenance=Provenance(run_id="run-abc123", message_id=said.id),
    )
    metric = await memory.remember(db_store.user_id, "uses metric units")
    app = build_app(_echo(), db_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, app.store_ready.is_set)
        await pilot.press("f2")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "MemoryScreen")
        screen = app.screen
        await wait_until(pilot, lambda: len(screen.memories) == 2, what="memories listed")  # type: ignore[attr-defined]
        table = screen.query_one("#memory-table")
        row = [str(c) for c in table.get_row(str(tea.id))]  # type: ignore[attr-defined]
        assert "likes green tea" in row[2] and row[3] == f"run run-abc123, message #{said.id}"

        # Edit the first memory.
        await pilot.press("e")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "EditMemoryScreen")
        await pilot.press("ctrl+u", *"likes oolong tea", "enter")
        await wait_until(pilot, lambda: app.screen is screen)
        await wait_until(
            pilot,
            lambda: screen.memories[0].text == "likes oolong tea",
            what="edit shown",  # type: ignore[attr-defined]
        )

        # Forget the second: the first press only arms.
        await pilot.press("down", "f")
        await pilot.pause(0.1)
        assert len(await memory.list(db_store.user_id)) == 2
        await pilot.press("f")
        await wait_until(pilot, lambda: len(screen.memories) == 1, what="forgotten")  # type: ignore[attr-defined]
        await pilot.press("escape")
        assert app.screen is app.main_screen
        await drain(app)

    items = await memory.list(db_store.user_id)
    assert [(m.id, m.text) for m in items] == [(tea.id, "likes oolong tea")]
    assert metric.id not in {m.id for m in items}


async def test_documents_without_ingest_say_why(db_store: DatabaseStore) -> None:
    await db_store.db.documents.add_document("handbook.pdf", title="Employee handbook")
    app = build_app(_echo(), db_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, app.store_ready.is_set)
        await pilot.press("f3")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "DocumentsScreen")
        screen = app.screen
        await wait_until(pilot, lambda: len(screen.documents) == 1)  # type: ignore[attr-defined]
        status = str(screen.query_one("#ingest-status").render())
        assert "Ingest unavailable" in status and "tools.retrieval" in status
        assert screen.query_one("#ingest-path").disabled
        await drain(app)


async def test_documents_ingest_shows_progress_and_lists_them(
    db_store: DatabaseStore, tmp_path: object
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path)) / "docs"
    folder.mkdir()
    for name, fact in (("a.md", "alpacas hum"), ("b.md", "badgers dig"), ("c.txt", "cats nap")):
        (folder / name).write_text(f"# {name}\n\nField note: {fact} at dawn.\n")
    app = build_app(_echo(), db_store, ingestor=RetrievalIngestor(db_store))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, app.store_ready.is_set)
        await pilot.press("f3")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "DocumentsScreen")
        screen = app.screen
        path_input = screen.query_one("#ingest-path", Input)
        path_input.focus()
        path_input.value = str(folder)  # typing a long temp path key by key only costs time
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(screen.documents) == 3, what="3 documents")  # type: ignore[attr-defined]
        bar = screen.query_one("#ingest-progress")
        assert bar.progress == 3 and bar.total == 3  # type: ignore[attr-defined]
        assert "ingested 3 document(s)" in str(screen.query_one("#ingest-status").render())
        # Ingesting the same folder again skips the unchanged files.
        path_input.value = str(folder)
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: "ingested 0 document(s)" in str(screen.query_one("#ingest-status").render()),
            what="re-ingest skipped",
        )
        await drain(app)

    from tools.retrieval import Retriever

    hits = await Retriever(db_store.db).search("badgers", k=3)
    assert [Path(h.source).name for h in hits][:1] == ["b.md"]


async def test_palette_sets_the_budget_preset_and_switches_threads(db_store: DatabaseStore) -> None:
    target = await db_store.create_thread("quarterly report")
    await db_store.add_message(target.id, "user", "summarise Q3")
    await db_store.create_thread("newest")
    app = build_app(_echo(), db_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.store_ready.is_set() and app.thread_id is not None)
        await pilot.press("ctrl+p")
        await pilot.press(*"budget high")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.budget_preset == "high", what="budget high")

        await pilot.press("ctrl+p")
        await pilot.press(*"quarterly")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: _log(app) == [("user", "summarise Q3")], what="thread")
        assert app.thread_id == target.id

        await pilot.press("ctrl+p")
        await pilot.press(*"nord")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.theme == "nord", what="theme nord")
        await drain(app)
