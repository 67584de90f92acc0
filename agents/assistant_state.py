"""The assistant's stored model state: resume a conversation instead of re-reading it.

On the embedded engine (``LocalModel`` with its prefix-state cache on), after each turn the
engine state of the conversation so far — base system prompt, then every user and assistant
message — is serialised (``LanguageModel.save_state``: safetensors, no pickle) and stored in
``db.states`` under the thread's key. The next session, in a new process, loads it and seeds
the engine's prefix cache with it (``prefix_cache.insert_snapshot``), so the next prompt,
which starts with exactly that conversation, prefills only the new message. For a hybrid model
that state is small: the Mamba layers keep a fixed-size state whatever the length.

A state from another model or dtype is refused by the engine (``StateMismatchError``) and
dropped; any other model (remote, test doubles) skips all of this. The engine is reached
through the ``Model`` object the caller passed — ``agents/`` never imports the engine.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from maestro import Message, Model
from maestro.memory import Database
from maestro.messages import to_openai


class ConversationState:
    """Save and restore one conversation's engine state under ``key`` in ``db.states``."""

    def __init__(self, model: Model, db: Database, key: str) -> None:
        self.model = model
        self.db = db
        self.key = key
        self.seeded = False  # in this process the prefix cache already holds the conversation

    async def engine(self) -> Any | None:
        """The embedded engine when it can store state, else None."""
        from maestro.llm.local import LocalModel

        if not isinstance(self.model, LocalModel):
            return None
        engine = await self.model.engine()
        if getattr(engine, "prefix_cache", None) is None or not hasattr(engine, "save_state"):
            return None
        return engine

    async def restore(self) -> int:
        """Seed the prefix cache from the stored state; returns how many tokens it covers."""
        if self.seeded:
            return 0
        engine = await self.engine()
        if engine is None:
            return 0
        stored_row = await self.db.states.load_state(self.key)
        self.seeded = True
        if stored_row is None:
            return 0
        try:
            stored = await anyio.to_thread.run_sync(engine.load_state, stored_row.blob)
            engine.prefix_cache.insert_snapshot(stored.token_ids, stored.snapshot, stored.logits)
        except Exception:  # another model or dtype, or damaged: start from the text instead
            await self.db.states.delete_state(self.key)
            return 0
        return len(stored.token_ids)

    async def save(self, conversation: list[Message]) -> int:
        """Store the state after ``conversation``; returns its token count (0 when skipped)."""
        engine = await self.engine()
        if engine is None:
            return 0
        ids = engine.encode_chat(to_openai(conversation), None, add_generation_prompt=False)
        blob = await anyio.to_thread.run_sync(engine.save_state, ids)
        meta = {"model_id": self.model.model_name, "token_count": len(ids)}
        await self.db.states.save_state(self.key, blob, meta)
        return len(ids)


__all__ = ["ConversationState"]
