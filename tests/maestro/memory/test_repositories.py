"""Documents/chunks, model states, approvals, retention and the RunStore contract."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from maestro.memory import ChunkInput, Database, NotFoundError, RetentionPolicy
from maestro.memory.errors import UserError
from maestro.memory.orm import utcnow
from maestro.runs import InMemoryRunStore, RunRecord, RunStore, StepRecord
from tests.maestro.memory.conftest import hashing_embedder

TEXTS = [
    "The Jamba architecture interleaves attention and Mamba layers.",
    "Mamba layers keep a fixed-size state instead of a KV cache.",
    "PostgreSQL uses tsvector columns with GIN indexes for full-text search.",
    "SQLite FTS5 ranks matches with bm25.",
]


async def test_documents_and_chunks(db: Database) -> None:
    doc = await db.documents.add_document("file:///notes.md", title="Notes", content_hash="h1")
    ids = await db.documents.add_chunks(
        doc.id, [ChunkInput(t, start_char=i * 100) for i, t in enumerate(TEXTS)],
        embeddings=hashing_embedder(TEXTS),
    )  # fmt: skip
    more = await db.documents.add_chunks(doc.id, [ChunkInput("An appended chunk about Mamba.")])
    assert (await db.documents.get_chunk(more[0])).ordinal == len(TEXTS)
    chunk = await db.documents.get_chunk(ids[1])
    assert (chunk.text, chunk.source, chunk.title, chunk.start_char) == (
        TEXTS[1], "file:///notes.md", "Notes", 100,
    )  # fmt: skip
    hits = await db.documents.search_chunks_fulltext("full-text search indexes", k=2)
    assert hits[0].chunk.id == ids[2] and hits[0].score > 0
    assert {h.chunk.id for h in await db.documents.search_chunks_fulltext("mamba", k=5)} == {
        ids[0], ids[1], more[0],
    }  # fmt: skip
    vec_hits = await db.documents.search_chunks_vector(hashing_embedder([TEXTS[3]])[0], k=2)
    assert vec_hits[0].chunk.id == ids[3] and vec_hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert await db.documents.find_document(content_hash="h1") == doc
    await db.documents.delete_document(doc.id)  # chunks cascade, index follows
    assert await db.documents.search_chunks_fulltext("mamba") == []
    with pytest.raises(NotFoundError):
        await db.documents.get_chunk(ids[0])
    with pytest.raises(NotFoundError):
        await db.documents.add_chunks(doc.id, [ChunkInput("orphan")])
    with pytest.raises(UserError):
        await db.documents.add_chunks(doc.id, [ChunkInput("a")], embeddings=np.zeros((2, 4)))


async def test_chunk_search_by_collection(db: Database) -> None:
    a = await db.documents.add_document("a", collection="alpha")
    b = await db.documents.add_document("b", collection="beta")
    await db.documents.add_chunks(a.id, [ChunkInput("shared words here")], hashing_embedder(["x"]))
    await db.documents.add_chunks(b.id, [ChunkInput("shared words too")], hashing_embedder(["x"]))
    hits = await db.documents.search_chunks_fulltext("shared", collection="beta")
    assert [h.chunk.document_id for h in hits] == [b.id]
    vec = await db.documents.search_chunks_vector(hashing_embedder(["x"])[0], collection="alpha")
    assert [h.chunk.document_id for h in vec] == [a.id]


async def test_model_states_round_trip(db: Database) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB
    meta = {
        "model_id": "jamba-tiny",
        "config_hash": "abc",
        "dtype": "float32",
        "token_count": 512,
        "layer": 3,
    }
    await db.states.save_state("conv:1", blob, meta)
    state = await db.states.load_state("conv:1")
    assert state is not None and state.blob == blob
    assert (state.model_id, state.dtype, state.token_count, state.meta) == (
        "jamba-tiny",
        "float32",
        512,
        {"layer": 3},
    )
    await db.states.save_state("conv:1", b"newer", {"model_id": "jamba-tiny"})
    assert (await db.states.load_state("conv:1")).blob == b"newer"  # type: ignore[union-attr]
    assert await db.states.load_state("missing") is None


async def test_approvals_are_decided_once(db: Database) -> None:
    await db.runs.create_run(RunRecord(id="r", task="t"))
    req = await db.approvals.request("send_email", {"to": "x"}, run_id="r", step_key="tool:s1")
    assert (
        await db.approvals.request("send_email", {}, run_id="r", step_key="tool:s1")
    ).id == req.id
    assert [a.id for a in await db.approvals.pending("r")] == [req.id]
    decided = await db.approvals.decide(req.id, "approved", by="alice")
    assert (decided.status, decided.decided_by) == ("approved", "alice")
    with pytest.raises(UserError, match="already approved"):
        await db.approvals.decide(req.id, "rejected")
    assert await db.approvals.pending() == []


async def test_sql_store_behaves_like_the_in_memory_store(db: Database) -> None:
    """The same sequence of calls gives the same records on both stores."""
    stores: list[RunStore] = [InMemoryRunStore(), db.runs]
    seen = []
    for store in stores:
        assert isinstance(store, RunStore)
        await store.create_run(
            RunRecord(id="r1", task="do it", user_id="u", payload={"b": 1}, created_at=1000.5)
        )
        await store.save_step(
            StepRecord(
                "r1", "plan", "plan", "running", {"q": 1}, started_at=1001.0, idempotency_key="k"
            )
        )
        await store.save_step(
            StepRecord(
                "r1",
                "tool:a",
                "tool",
                "succeeded",
                {},
                {"v": 2},
                started_at=1002.0,
                finished_at=1003.0,
            )
        )
        await store.save_step(
            StepRecord(
                "r1",
                "plan",
                "plan",
                "succeeded",
                {"q": 1},
                {"p": [1]},
                started_at=1001.0,
                finished_at=1004.0,
                idempotency_key="k",
            )
        )
        await store.append_event("r1", {"type": "run_started"})
        await store.finish_run("r1", "completed", {"answer": "42"})
        run = await store.get_run("r1")
        assert run is not None
        seen.append(((run.id, run.task, run.status, run.created_at, run.user_id, run.payload, run.result),
                     [(s.key, s.status, s.input, s.output, s.started_at, s.finished_at, s.idempotency_key)
                      for s in await store.get_steps("r1")]))  # fmt: skip
        assert await store.get_run("nope") is None
    assert seen[0] == seen[1]
    assert [e for _, e in await db.runs.get_events("r1")] == [{"type": "run_started"}]


async def test_retention_keeps_size_bounded(db: Database, tmp_path: Path) -> None:
    policy = RetentionPolicy(
        step_payload_days=1, event_days=1, state_days=None, max_state_bytes=3_000_000
    )
    for i in range(5):
        await db.states.save_state(f"s{i}", b"x" * 1_000_000, {})
    await db.runs.create_run(RunRecord(id="old", task="t"))
    await db.runs.create_run(RunRecord(id="live", task="t"))
    for run_id in ("old", "live"):
        await db.runs.save_step(
            StepRecord(run_id, "tool:a", "tool", "succeeded", {"big": "y" * 1000}, {"v": 1})
        )
        await db.runs.append_event(run_id, {"type": "x"})
    await db.runs.finish_run("old", "completed", {"answer": 1})
    report = await db.retention.prune(policy, now=utcnow() + timedelta(days=2))
    assert (report.steps_cleared, report.events_deleted, report.states_deleted) == (1, 1, 2)
    assert (await db.runs.get_steps("old"))[0].output is None
    assert (await db.runs.get_steps("live"))[0].output == {"v": 1}  # unfinished: untouched
    assert await db.states.total_bytes() == 3_000_000
    assert await db.states.load_state("s4") is not None and await db.states.load_state("s0") is None
    if db.dialect == "sqlite":  # freed pages are reused: the file stops growing
        path = Path(str(db.url.database))
        sizes = []
        for cycle in range(3):
            for i in range(5):
                await db.states.save_state(f"c{cycle}-{i}", b"z" * 1_000_000, {})
            await db.retention.prune(policy)
            async with db.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(path.stat().st_size)
        assert sizes[2] <= sizes[0] * 1.1, sizes


async def test_document_with_chunks_is_all_or_nothing(db: Database) -> None:
    from maestro.memory import StorageError

    doc = await db.documents.add_document(
        "a.md", chunks=[ChunkInput("first chunk"), ChunkInput("second chunk")],
        embeddings=hashing_embedder(["first chunk", "second chunk"]),
    )  # fmt: skip
    assert len(await db.documents.search_chunks_fulltext("chunk")) == 2
    with pytest.raises(UserError):
        await db.documents.add_document(
            "b.md", chunks=[ChunkInput("x")], embeddings=np.ones((3, 4))
        )
    with pytest.raises(StorageError):  # the second chunk cannot be stored: nothing is
        await db.documents.add_document(
            "c.md", chunks=[ChunkInput("fine"), ChunkInput("bad", meta={"x": object()})]
        )
    assert [d.id for d in await db.documents.list_documents()] == [doc.id]
    assert await db.documents.count_chunks() == 2


async def test_step_of_an_unknown_run_is_refused(db: Database) -> None:
    with pytest.raises(NotFoundError, match="no run 'ghost'"):
        await db.runs.save_step(StepRecord("ghost", "plan", "plan", "succeeded"))
    await db.runs.create_run(RunRecord(id="real", task="t"))
    await db.runs.save_step(StepRecord("real", "plan", "plan", "succeeded"))  # session still usable
    assert [s.key for s in await db.runs.get_steps("real")] == ["plan"]
