"""What the assistant proposes to remember after a turn.

Two sources, merged and deduplicated:

- **explicit requests** found by rules: "remember that my locker is 42", "my name is Ada",
  "I live in Lyon", "call me Ada" — deterministic, so a user who asks to be remembered is
  remembered even when the model is small or fails;
- **model proposals**: the model is asked, under a JSON schema (constrained decoding on the
  embedded engine), for durable facts from the user's message.

A proposal must share a content word with the user's message: a model that invents a fact
the user never said does not get it stored. Every stored memory carries the id of the user
message it came from (its provenance), so ``maestro memory list`` shows it and ``maestro
memory edit|forget`` change it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from maestro import Model, ModelError, ModelRequestOptions, SystemMessage, UserMessage

MAX_PROPOSALS = 3
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        "a an and are as at be but by for from has have i i'm is it its me my of on or our so "
        "that the their them they this to was we were what when where which who will with you "
        "your user user's remember please note",
    )
)

PROPOSAL_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "memories": {
            "type": "array",
            "maxItems": MAX_PROPOSALS,
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "maxLength": 200},
                    "label": {"type": ["string", "null"], "maxLength": 40},
                },
                "required": ["text", "label"],
            },
        }
    },
    "required": ["memories"],
}

PROPOSAL_PROMPT = (
    "You maintain the long-term memory of a personal assistant. Read the user's message and "
    "list durable facts about the user worth remembering in future conversations: names, "
    "preferences, plans, people, places. Write each as a short sentence about the user, e.g. "
    '"The user\'s favourite colour is teal." Give a one-word label (name, city, job, ...) for '
    'a fact that has a single current value, else null. Answer {"memories": []} when the '
    "message holds nothing worth remembering. Answer with JSON only."
)

# (pattern on the user's message, label, template for the memory text)
_RULES: tuple[tuple[re.Pattern[str], str | None, str], ...] = (
    (
        re.compile(r"\b(?i:my name is)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)"),
        "name",
        "The user's name is {0}.",
    ),
    (re.compile(r"\b(?i:call me)\s+([A-Z][\w'-]*)"), "name", "The user's name is {0}."),
    (re.compile(r"\bI live in\s+([A-Z][\w' -]*?)(?:[.,!]|$)"), "city", "The user lives in {0}."),
    (
        re.compile(r"\bmy favou?rite (\w+) is\s+([\w' -]+?)(?:[.,!]|$)", re.I),
        None,
        "The user's favourite {0} is {1}.",
    ),
    (re.compile(r"\bremember(?: that)?\s+(.+?)[.!]?$", re.I), None, "{0}"),
)


@dataclass(frozen=True, slots=True)
class MemoryUpdate:
    """A proposed memory: ``label`` set means a core fact (one value per label)."""

    text: str
    label: str | None = None
    source: str = "model"  # "rule" | "model"


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def rule_updates(message: str) -> list[MemoryUpdate]:
    """Explicit memory requests in the user's message (see the module docstring)."""
    found: list[MemoryUpdate] = []
    for pattern, label, template in _RULES:
        match = pattern.search(message.strip())
        if match:
            text = template.format(*(g.strip() for g in match.groups()))
            found.append(MemoryUpdate(_sentence(_third_person(text)), label, "rule"))
    return found


def _third_person(text: str) -> str:
    # "remember that my locker is 42" -> "The user's locker is 42."
    text = re.sub(r"^my\b", "The user's", text.strip(), flags=re.I)
    text = re.sub(r"^I\b", "The user", text)
    text = re.sub(r"\bmy\b", "the user's", text, flags=re.I)
    return text


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def parse_proposals(raw: str, message: str) -> list[MemoryUpdate]:
    """Model proposals from its JSON answer, keeping only facts grounded in ``message``."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return []
    items = data.get("memories") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    said = content_words(message)
    updates: list[MemoryUpdate] = []
    for item in items[:MAX_PROPOSALS]:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            continue
        text = item["text"].strip()
        label = item.get("label") if isinstance(item.get("label"), str) else None
        if text and content_words(text) & said:
            updates.append(MemoryUpdate(_sentence(text), (label or "").strip().lower() or None))
    return updates


async def propose_updates(model: Model, message: str, answer: str) -> list[MemoryUpdate]:
    """Rule-found requests first, then the model's proposals; duplicates dropped."""
    updates = rule_updates(message)
    if content_words(message):
        options = ModelRequestOptions(
            temperature=0.0, max_tokens=160, response_format=PROPOSAL_SCHEMA
        )
        prompt = f"User message:\n{message}\n\nAssistant reply:\n{answer}"
        try:
            response = await model.request(
                [SystemMessage(PROPOSAL_PROMPT), UserMessage(prompt)], options
            )
            updates += parse_proposals(response.text, message)
        except ModelError:
            pass  # proposals are best effort; the rule-found ones still count
    return dedupe(updates)


def dedupe(updates: list[MemoryUpdate], known: Sequence[str] = ()) -> list[MemoryUpdate]:
    """Drop updates whose text (case- and space-insensitively) is already known or repeated."""
    seen = {" ".join(k.casefold().split()).rstrip(".") for k in known}
    labels: set[str] = set()
    out: list[MemoryUpdate] = []
    for update in updates:
        key = " ".join(update.text.casefold().split()).rstrip(".")
        if key in seen or (update.label is not None and update.label in labels):
            continue
        seen.add(key)
        if update.label is not None:
            labels.add(update.label)
        out.append(update)
    return out


__all__ = [
    "PROPOSAL_SCHEMA",
    "MemoryUpdate",
    "content_words",
    "parse_proposals",
    "propose_updates",
    "rule_updates",
]
