"""The assistant: recall into the prompt, memory proposals with provenance, the rolling
summary, per-user isolation — on a FunctionModel and a temporary SQLite database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.assistant import Assistant
from agents.memory_updates import parse_proposals, rule_updates
from maestro import Message, ModelRequestOptions, SystemMessage, UserError
from maestro.memory import Database
from maestro.testing import FunctionModel


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite:///{tmp_path}/a.db")
    yield database
    await database.close()


def context_model(proposals: list[dict[str, object]] | None = None) -> FunctionModel:
    """Answers with the facts its system prompt lists; proposes ``proposals`` as memories."""

    def reply(messages: list[Message], options: ModelRequestOptions) -> str:
        if options.response_format:
            return json.dumps({"memories": proposals or []})
        if "Summarise" in (messages[0].content or ""):
            return "They talked about hobbies."
        prompt = "\n".join(m.content or "" for m in messages if isinstance(m, SystemMessage))
        known = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        return "Known: " + " | ".join(known) if known else "I don't know."

    return FunctionModel(reply)


async def test_a_fact_told_once_is_recalled_in_a_later_turn_with_provenance(db: Database) -> None:
    model = context_model([{"text": "The user plays the cello.", "label": None}])
    first = await Assistant(model, db, "ada").send("I play the cello on Sundays.")
    assert [m.text for m in first.remembered] == ["The user plays the cello."]
    assert first.remembered[0].provenance.message_id == first.user_message_id

    later = await Assistant(context_model(), db, "ada").send("Which instrument do I play?")
    assert "cello" in later.answer
    assert [m.text for m in later.recalled] == ["The user plays the cello."]
    messages = await db.threads.list_messages("assistant:ada")
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]


async def test_memories_are_per_user(db: Database) -> None:
    await Assistant(context_model(), db, "ada").send("My name is Ada Lovelace.")
    bob = await Assistant(context_model(), db, "bob").send("What is my name?")
    assert bob.recalled == [] and "Ada" not in bob.answer
    profile = await db.memory.core_profile("ada")
    assert profile == {"name": "The user's name is Ada Lovelace."}


async def test_invented_facts_are_not_stored(db: Database) -> None:
    model = context_model([{"text": "The user lives on Mars.", "label": "city"}])
    reply = await Assistant(model, db, "ada").send("Good morning!")
    assert reply.proposed == [] and reply.remembered == []
    assert await db.memory.list("ada") == []


async def test_without_auto_remember_proposals_wait_for_apply(db: Database) -> None:
    assistant = Assistant(context_model(), db, "ada", auto_remember=False)
    reply = await assistant.send("Remember that my locker is 42.")
    assert [u.text for u in reply.proposed] == ["The user's locker is 42."]
    assert await db.memory.list("ada") == []
    stored = await assistant.apply(reply.proposed, reply.user_message_id)
    assert [m.text for m in await db.memory.list("ada")] == [s.text for s in stored]


async def test_old_turns_are_folded_into_a_summary(db: Database) -> None:
    assistant = Assistant(context_model(), db, "ada", history_window=4)
    flags = [(await assistant.send(f"Tell me about hobby {i}.")).summarized for i in range(4)]
    assert flags == [False, False, True, False]
    assert await assistant.summary() == "They talked about hobbies."
    # the model now sees the summary and only the messages after it
    model = context_model()
    await Assistant(model, db, "ada", history_window=4).send("And now?")
    seen = model.requests[0].messages
    assert "They talked about hobbies." in (seen[0].content or "")
    assert len(seen) == 1 + 4 + 1  # system, the turns after the summary, the new message


async def test_bad_input_is_refused(db: Database) -> None:
    with pytest.raises(UserError, match="user id"):
        Assistant(context_model(), db, " ")
    with pytest.raises(UserError, match="empty"):
        await Assistant(context_model(), db, "ada").send("   ")


def test_rule_updates_find_explicit_requests() -> None:
    found = {u.text: u.label for u in rule_updates("Hi, my name is Ada. I live in Lyon, France.")}
    assert found == {"The user's name is Ada.": "name", "The user lives in Lyon.": "city"}
    assert rule_updates("How are you today?") == []


def test_model_proposals_must_be_grounded_in_the_message() -> None:
    raw = json.dumps(
        {
            "memories": [
                {"text": "The user owns a red bike", "label": None},
                {"text": "The user is 90 years old", "label": "age"},
            ]
        }
    )
    kept = parse_proposals(raw, "I just bought a red bike!")
    assert [u.text for u in kept] == ["The user owns a red bike."]
    assert parse_proposals("not json", "anything") == []
