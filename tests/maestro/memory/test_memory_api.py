"""The memory API on SQLite and PostgreSQL: per-user scope, hybrid recall, editing."""

from __future__ import annotations

import pytest

from maestro.memory import Database, NotFoundError, Provenance, reciprocal_rank_fusion
from maestro.memory.errors import UserError
from tests.maestro.memory.conftest import hashing_embedder

FACTS_A = [
    "Alice is allergic to peanuts",
    "Alice's daughter plays the violin",
    "Alice prefers metric units in reports",
    "Alice works on the payments team",
]
FACTS_B = ["Bob is allergic to shellfish", "Bob prefers imperial units", "Bob plays the violin"]


async def _seed(db: Database, embed: bool = False) -> None:
    for fact in FACTS_A:
        await db.memory.remember("alice", fact, embed=hashing_embedder if embed else None)
    for fact in FACTS_B:
        await db.memory.remember("bob", fact, embed=hashing_embedder if embed else None)


async def test_recall_finds_own_memories_by_keyword(db: Database) -> None:
    await _seed(db)
    hits = await db.memory.recall("alice", "which allergies? peanuts", k=3)
    assert hits[0].item.text == "Alice is allergic to peanuts"
    assert hits[0].fulltext_rank == 1 and hits[0].vector_rank is None


@pytest.mark.parametrize("embed", [False, True])
async def test_recall_never_crosses_users(db: Database, embed: bool) -> None:
    await _seed(db, embed=embed)
    embedder = hashing_embedder if embed else None
    for query in ["violin", "allergic", "units", "Alice peanuts payments"]:
        for user, mine in (("alice", FACTS_A), ("bob", FACTS_B)):
            hits = await db.memory.recall(user, query, k=10, embed=embedder)
            assert hits or (user == "bob" and "Alice" in query), (user, query)
            assert all(h.item.user_id == user and h.item.text in mine for h in hits)
    assert await db.memory.recall("carol", "violin", k=5, embed=embedder) == []


async def test_hybrid_recall_uses_vectors_when_words_differ(db: Database) -> None:
    await _seed(db, embed=True)
    # "violin daughter" shares words with one fact: both rankings agree, it must come first.
    hits = await db.memory.recall("alice", "daughter violin", k=2, embed=hashing_embedder)
    assert hits[0].item.text == "Alice's daughter plays the violin"
    assert hits[0].fulltext_rank == 1 and hits[0].vector_rank == 1
    # A query with no indexed word ("plays" is stemmed by FTS but "playing" is not a token in
    # any memory with the same vector bucket) still returns vector hits.
    vec_only = await db.memory.recall("alice", "xyzzy daughter's", k=2, embed=hashing_embedder)
    assert vec_only and all(h.vector_rank is not None for h in vec_only)


async def test_query_syntax_is_not_interpreted(db: Database) -> None:
    await _seed(db)
    for query in ['"unbalanced', "C++ AND (", "NEAR(a b)", "*", "a:b OR -c", "'; DROP TABLE x"]:
        await db.memory.recall("alice", query, k=3)  # must not raise
    assert await db.memory.recall("alice", "!!! ???", k=3) == []


async def test_core_facts_are_replaced_by_label(db: Database) -> None:
    await db.memory.remember("alice", "Alice", kind="core", label="name")
    await db.memory.remember("alice", "Alicia", kind="core", label="name")
    await db.memory.remember("alice", "metric", kind="core", label="units")
    assert await db.memory.core_profile("alice") == {"name": "Alicia", "units": "metric"}
    assert len(await db.memory.list("alice", kind="core")) == 2


async def test_forget_edit_and_list_are_per_user(db: Database) -> None:
    await _seed(db)
    alice = await db.memory.list("alice")
    bob = await db.memory.list("bob")
    assert [m.text for m in alice] == FACTS_A
    with pytest.raises(NotFoundError):
        await db.memory.forget("bob", alice[0].id)  # someone else's id looks missing
    with pytest.raises(NotFoundError):
        await db.memory.edit("bob", alice[0].id, "hijacked")
    await db.memory.forget("alice", alice[0].id)
    edited = await db.memory.edit("alice", alice[1].id, "Alice's son plays the cello")
    assert edited.text == "Alice's son plays the cello"
    assert [m.text for m in await db.memory.list("alice")] == [
        "Alice's son plays the cello",
        *FACTS_A[2:],
    ]
    # The full-text index followed the edit and the delete.
    assert [h.item.id for h in await db.memory.recall("alice", "cello")] == [alice[1].id]
    assert await db.memory.recall("alice", "peanuts") == []
    assert len(await db.memory.list("bob")) == len(bob)


async def test_provenance_is_kept(db: Database) -> None:
    thread = await db.threads.create_thread(user_id="alice")
    msg = await db.threads.add_message(thread.id, "user", "I moved to Porto")
    item = await db.memory.remember(
        "alice", "Alice lives in Porto", provenance=Provenance(message_id=msg.id)
    )
    assert (await db.memory.get("alice", item.id)).provenance == Provenance(message_id=msg.id)


async def test_bad_input_is_a_user_error(db: Database) -> None:
    with pytest.raises(UserError):
        await db.memory.remember("alice", "   ")
    with pytest.raises(UserError):
        await db.memory.remember("", "text")
    with pytest.raises(UserError):
        await db.memory.remember("alice", "x", kind="episodic")  # type: ignore[arg-type]
    assert await db.memory.list("alice") == []  # nothing half-written


def test_reciprocal_rank_fusion_matches_the_worked_example() -> None:
    fused = reciprocal_rank_fusion([[1, 4], [4, 5, 1, 3, 2]])
    assert [i for i, _ in fused][:3] == [4, 1, 5]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


async def test_isolation_holds_for_look_alike_user_ids(db: Database) -> None:
    users = ["a b", "a b c", "a", "alice@example.com", "alice example com", "Zoë", "zoe", "ed", "e"]
    for user in users:
        await db.memory.remember(user, f"the shared secret word is pineapple for {user}")
    for user in users:
        hits = await db.memory.recall(user, "pineapple secret", k=20)
        assert [h.item.user_id for h in hits] == [user]
