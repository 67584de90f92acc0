"""An enterprise task: answer an HR policy question from the company's documents, with a report.

The policies in ``examples/data/policies/`` are ingested (chunked and indexed for full-text
search; unchanged files are skipped on later runs), then the researcher agent answers: it
searches, quotes the passages it relies on as ``"exact words" [cN]``, and is held to
requirements — every quote must be found verbatim in the chunk it cites (mandatory, checked
by code), the answer must state the expected figure when one is given (mandatory, checked by
code), and it should answer the question asked (judged by the model). The report lists each
requirement with its score, and the cited passages with their file and lines.

    python examples/enterprise_policy.py
    python examples/enterprise_policy.py "Who approves an expense claim of 800 EUR?" --expect "finance director"
    python examples/enterprise_policy.py --model http://localhost:8000/v1#served-model

Exit status: 0 when every mandatory requirement is met, 1 when one is not.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

from agents.researcher import researcher
from maestro import Model, Requirement
from maestro.memory import Database, NotFoundError
from tools.retrieval import Retriever

POLICIES = Path(__file__).parent / "data" / "policies"
QUESTION = "How many days of paid annual leave do full-time employees get per year?"
EXPECT = "25"


def must_state(expected: str) -> Requirement:
    def check(answer: Any) -> tuple[bool, str]:
        found = expected.casefold() in str(answer).casefold()
        return found, f"the answer {'states' if found else 'does not state'} {expected!r}"

    return Requirement(f"states {expected!r}", check=check, mandatory=True, name="expected_fact")


async def main(
    question: str = QUESTION,
    *,
    model: Model | str | None = None,
    db_url: str = "sqlite:///policies.db",
    expect: str | None = EXPECT,
    budget: str = "low",
) -> int:
    db = await Database.open(db_url)
    try:
        retriever = Retriever(db, collection="policies", chunk_tokens=120, overlap_tokens=20)
        ingested = await retriever.ingest_paths([POLICIES])
        print(
            f"ingested {ingested.documents} new document(s), {ingested.skipped} unchanged",
            file=sys.stderr,
        )
        requirements: list[Requirement | str] = ["answers the question that was asked"]
        if expect:
            requirements.insert(0, must_state(expect))
        agent = researcher(model, retriever, requirements=requirements, budget=budget)
        result = await agent.run(question)
        print(f"Q: {question}\nA: {result.answer}\n")
        print("Requirements:")
        for score in result.report.final:
            mark = "PASS" if score.passed else "FAIL"
            must = "mandatory" if score.mandatory else "optional"
            print(f"  [{mark}] {score.description} ({must}): {score.score:.2f} — {score.reason}")
        print(f"Report: {result.report.summary()}")
        print("Sources:")
        for chunk_id in sorted({int(n) for n in re.findall(r"\[c(\d+)\]", result.answer)}):
            try:
                chunk = await db.documents.get_chunk(chunk_id)
            except NotFoundError:
                print(f"  [c{chunk_id}] (no such passage)")
                continue
            lines = chunk.meta.get("line_start"), chunk.meta.get("line_end")
            print(f"  [c{chunk_id}] {Path(chunk.source).name}, lines {lines[0]}-{lines[1]}")
        usage = result.usage
        print(
            f"Usage: {usage.input_tokens}+{usage.output_tokens} tokens, "
            f"{usage.requests} model calls"
        )
        return 0 if result.report.passed else 1
    finally:
        await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--expect", default=None, help="text the answer must state")
    parser.add_argument("--model", default=None, help="model spec (name, path, URL)")
    parser.add_argument("--db", default="sqlite:///policies.db", help="database URL")
    parser.add_argument("--budget", default="low", choices=["low", "medium", "high"])
    args = parser.parse_args()
    expect = (
        args.expect if args.expect is not None else (EXPECT if args.question == QUESTION else None)
    )
    sys.exit(
        asyncio.run(
            main(args.question, model=args.model, db_url=args.db, expect=expect, budget=args.budget)
        )
    )
