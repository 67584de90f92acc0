"""A personal assistant that remembers you across sessions (separate processes, one database).

Session 1 tells it something; session 2 — a new process, days later — asks about it:

    python examples/personal_assistant.py --db sqlite:///me.db --user ada "My favourite colour is teal."
    python examples/personal_assistant.py --db sqlite:///me.db --user ada "What is my favourite colour?"

Each message is one turn of :class:`agents.Assistant`: it recalls the memories relevant to the
message, answers, stores the conversation in the user's thread, and stores what it learned
as memories with provenance (the id of the message they came from). Review or change them:

    maestro memory list --user ada --url sqlite:///me.db
    maestro memory forget --user ada 1 --url sqlite:///me.db

``--model`` takes any model spec (default: the embedded SmolLM2).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from agents.assistant import Assistant
from maestro import Model
from maestro.memory import Database


async def main(
    messages: Sequence[str], *, user: str, db_url: str, model: Model | str | None = None
) -> int:
    db = await Database.open(db_url)
    try:
        assistant = Assistant(model, db, user)
        for message in messages:
            reply = await assistant.send(message)
            print(f"{user}: {message}\nassistant: {reply.answer}")
            for item in reply.recalled:
                print(f"  (recalled #{item.id}: {item.text})", file=sys.stderr)
            for item in reply.remembered:
                print(
                    f"  (remembered #{item.id}: {item.text} — from message "
                    f"{item.provenance.message_id})",
                    file=sys.stderr,
                )
    finally:
        await db.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("messages", nargs="+", help="one turn per message")
    parser.add_argument("--user", default="ada")
    parser.add_argument("--db", default="sqlite:///assistant.db", help="database URL")
    parser.add_argument("--model", default=None, help="model spec (name, path, URL)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.messages, user=args.user, db_url=args.db, model=args.model)))
