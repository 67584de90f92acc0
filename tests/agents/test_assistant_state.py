"""On the embedded default model, the assistant stores the conversation's engine state after a
turn and the next session restores it into an empty prefix cache instead of re-reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.assistant import Assistant
from maestro import LocalModel
from maestro.memory import Database
from maestro.testing import allow_real_models


@pytest.mark.slow
@pytest.mark.real_model
async def test_a_new_session_resumes_from_the_stored_state(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path}/s.db")
    try:
        with allow_real_models():
            model = LocalModel(max_new_tokens=4)
            engine = await model.engine()
            first = Assistant(model, db, "ada")
            await first.send("Hello, I play the cello.")
            stored = await db.states.load_state(first.state.key)
            assert stored is not None and stored.token_count and stored.token_count > 20
            assert stored.model_id == "smollm2-135m-instruct"

            engine.prefix_cache.clear()  # what a new process starts with
            engine.prefix_cache.reset_stats()
            second = Assistant(model, db, "ada")
            await second.send("What do I play?")
            assert second.restored_tokens == stored.token_count
            # the turn's prompt reused the restored conversation instead of prefilling it
            assert engine.prefix_cache.stats.cached_tokens >= stored.token_count
    finally:
        await db.close()
