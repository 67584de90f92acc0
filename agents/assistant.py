"""A long-running, personalised assistant: one per user, remembering across sessions.

::

    db = await Database.open("sqlite+aiosqlite:///assistant.db")
    assistant = Assistant("smollm2-135m-instruct", db, user_id="ada")
    reply = await assistant.send("Remember that my locker is 42.")
    reply.answer, reply.remembered          # the stored memories, with provenance

Each turn:

1. **Recall.** The user's core facts (``db.memory.core_profile``) and the archival memories
   most relevant to the message (``db.memory.recall``) go into the system prompt.
2. **Context.** The thread's rolling summary plus the messages after it — not the whole
   history — are the conversation the model sees.
3. **Answer** through ``Agent.chat`` (tools, approval and budget as any agent).
4. **Persist.** The user message and the reply are appended to the user's thread in one
   transaction.
5. **Memory updates.** :func:`agents.memory_updates.propose_updates` proposes facts to keep;
   with ``auto_remember`` they are stored at once with the user message as provenance
   (``maestro memory list|edit|forget`` shows and changes them), otherwise returned in
   ``reply.proposed`` for the caller to :meth:`Assistant.apply`.
6. **Summary.** When more than ``history_window`` messages follow the last summary, the older
   ones are folded into a new summary, stored in the thread as a ``summary`` message.

Prompt layout, for prefix reuse: the system prompt holds the instructions, the core facts and
the summary — stable from turn to turn — then the conversation, then this turn's recalled
memories as a second system message just before the new user message. On the embedded engine
the conversation's model state is stored after each turn and restored by the next session
(:mod:`agents.assistant_state`), so a new process does not re-read the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.assistant_state import ConversationState
from agents.memory_updates import MemoryUpdate, dedupe, propose_updates
from maestro import (
    Agent,
    AssistantMessage,
    Budget,
    Message,
    Model,
    ModelError,
    ModelRequestOptions,
    SystemMessage,
    Tool,
    Usage,
    UserError,
    UserMessage,
)
from maestro.llm.spec import resolve_model
from maestro.loop.chat import EventCallback
from maestro.memory import Database, MemoryItem, NotFoundError, Provenance

DEFAULT_INSTRUCTIONS = (
    "You are a helpful personal assistant. Use what you know about the user when it helps, "
    "answer briefly and directly, and say so when you do not know something."
)
SUMMARY_PROMPT = (
    "Summarise the conversation below in at most five short sentences, keeping names, facts, "
    "decisions and open questions. Start from the previous summary if there is one."
)


@dataclass(slots=True)
class AssistantReply:
    """One turn's outcome."""

    answer: str
    recalled: list[MemoryItem]
    proposed: list[MemoryUpdate]
    remembered: list[MemoryItem]
    usage: Usage
    user_message_id: int
    summarized: bool = False
    finish_reason: str = "stop"


@dataclass(slots=True)
class _Context:
    summary: str = ""
    messages: list[Any] = field(default_factory=list)  # maestro.memory.Message rows


class Assistant:
    """The assistant of one user over one database (see the module docstring)."""

    def __init__(
        self,
        model: Model | str | None,
        db: Database,
        user_id: str,
        *,
        thread_id: str | None = None,
        tools: Sequence[Tool] = (),
        instructions: str = DEFAULT_INSTRUCTIONS,
        recall_k: int = 5,
        history_window: int = 12,
        auto_remember: bool = True,
        budget: Budget | str | None = None,
    ) -> None:
        if not user_id or not user_id.strip():
            raise UserError("an assistant needs a user id (e.g. --user ada)")
        if history_window < 2:
            raise UserError("history_window must be at least 2 messages")
        self.model = resolve_model(model)
        self.db = db
        self.user_id = user_id
        self.thread_id = thread_id or f"assistant:{user_id}"
        self.instructions = instructions
        self.recall_k = recall_k
        self.history_window = history_window
        self.auto_remember = auto_remember
        self.agent = Agent(self.model, tools=tools, budget=budget, name="assistant")
        self.state = ConversationState(self.model, db, f"{self.thread_id}:state")
        self.restored_tokens = 0
        self._thread_ready = False

    async def ensure_thread(self) -> str:
        """The user's thread, created on first use."""
        if not self._thread_ready:
            try:
                thread = await self.db.threads.get_thread(self.thread_id)
            except NotFoundError:
                thread = await self.db.threads.create_thread(
                    user_id=self.user_id,
                    agent_id="assistant",
                    title=f"Assistant for {self.user_id}",
                    thread_id=self.thread_id,
                )
            if thread.user_id not in (None, self.user_id):
                raise UserError(f"thread {self.thread_id!r} belongs to another user")
            self._thread_ready = True
        return self.thread_id

    async def send(self, message: str, *, on_event: EventCallback | None = None) -> AssistantReply:
        """One turn (see the module docstring)."""
        if not message.strip():
            raise UserError("the message is empty")
        thread_id = await self.ensure_thread()
        context = await self._context(thread_id)
        profile = await self.db.memory.core_profile(self.user_id)
        hits = await self.db.memory.recall(self.user_id, message, self.recall_k)
        recalled = [hit.item for hit in hits]
        base = SystemMessage(self.system_prompt(profile, context.summary))
        history: list[Message] = [base, *_history(context.messages)]
        notes = [m.text for m in recalled if m.kind != "core"]
        if notes:
            history.append(
                SystemMessage("Relevant memories:\n" + "\n".join(f"- {n}" for n in notes))
            )
        self.restored_tokens += await self.state.restore()
        chat = await self.agent.chat(message, history=history, on_event=on_event)
        stored = await self.db.threads.add_messages(
            thread_id,
            [
                ("user", message, {}),
                (
                    "assistant",
                    chat.answer,
                    {"recalled": [m.id for m in recalled], "usage": chat.usage.to_dict()},
                ),
            ],
        )
        known = list(profile.values()) + [m.text for m in recalled]
        proposed = dedupe(await propose_updates(self.model, message, chat.answer), known)
        remembered = await self.apply(proposed, stored[0].id) if self.auto_remember else []
        summarized = await self._maybe_summarize(thread_id, context, stored)
        if not summarized and not self.agent.tools:  # tools change the prompt; a new summary too
            await self.state.save([base, *_history([*context.messages, *stored])])
        return AssistantReply(
            answer=chat.answer,
            recalled=recalled,
            proposed=proposed,
            remembered=remembered,
            usage=chat.usage,
            user_message_id=stored[0].id,
            summarized=summarized,
            finish_reason=chat.finish_reason,
        )

    async def apply(
        self, updates: Sequence[MemoryUpdate], message_id: int | None
    ) -> list[MemoryItem]:
        """Store proposed memories with the user message they came from as provenance."""
        provenance = Provenance(message_id=message_id)
        return [
            await self.db.memory.remember(
                self.user_id,
                u.text,
                "core" if u.label else "archival",
                label=u.label,
                provenance=provenance,
            )
            for u in updates
        ]

    def system_prompt(self, profile: dict[str, str], summary: str) -> str:
        """Instructions, core facts and the summary: the stable head of every prompt."""
        parts = [self.instructions]
        if profile:
            facts = "\n".join(f"- {fact}" for fact in profile.values())
            parts.append("What you know about the user:\n" + facts)
        if summary:
            parts.append("Summary of the earlier conversation:\n" + summary)
        return "\n\n".join(parts)

    async def summary(self) -> str:
        """The thread's current rolling summary ('' before the first one)."""
        return (await self._context(await self.ensure_thread())).summary

    async def _context(self, thread_id: str) -> _Context:
        context = _Context()
        for row in await self.db.threads.list_messages(thread_id):
            if row.role == "summary":
                through = int(row.data.get("through_id", row.id))
                context.summary = row.content
                context.messages = [m for m in context.messages if m.id > through]
            elif row.role in ("user", "assistant"):
                context.messages.append(row)
        return context

    async def _maybe_summarize(self, thread_id: str, context: _Context, new: Sequence[Any]) -> bool:
        rows = context.messages + list(new)
        if len(rows) <= self.history_window:
            return False
        old = rows[: len(rows) - self.history_window // 2]
        transcript = "\n".join(f"{r.role}: {r.content}" for r in old)
        if context.summary:
            transcript = f"Previous summary: {context.summary}\n\n{transcript}"
        try:
            response = await self.model.request(
                [SystemMessage(SUMMARY_PROMPT), UserMessage(transcript)],
                ModelRequestOptions(temperature=0.0, max_tokens=200),
            )
        except ModelError:
            return False  # keep the longer context; try again next turn
        text = response.text.strip()
        if not text:
            return False
        await self.db.threads.add_message(
            thread_id, "summary", text, data={"through_id": old[-1].id}
        )
        return True


def _history(rows: Sequence[Any]) -> list[Message]:
    history: list[Message] = []
    for row in rows:
        history.append(
            UserMessage(row.content) if row.role == "user" else AssistantMessage(row.content)
        )
    return history


__all__ = ["DEFAULT_INSTRUCTIONS", "Assistant", "AssistantReply"]
