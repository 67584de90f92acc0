"""The researcher: answers from ingested documents, quoting and citing them.

::

    retriever = Retriever(db)                        # documents ingested with `maestro ingest`
    agent = researcher("smollm2-135m-instruct", retriever)
    result = await agent.run("How many days of annual leave do employees get?")
    result.answer          # '... "25 days of paid annual leave" [c3] ...'
    result.report          # grounded_quotes: every quote found verbatim in the chunk it cites

The agent has the ``search_documents`` tool, so it plans a search, then drafts from the
passages found. The grounding requirement (on by default, mandatory) checks each
``"quote" [cN]`` against the stored chunk; a failing answer goes back for a fix round with
the reason, and the report says honestly whether the answer is grounded.
"""

from __future__ import annotations

from collections.abc import Sequence

from maestro import Agent, Budget, Model, Requirement, Tool
from tools.retrieval import Retriever, grounding_requirement, retrieval_tools

RESEARCHER_INSTRUCTIONS = (
    "You answer questions only from the documents found with search_documents. Quote the "
    'exact words you rely on and cite the passage right after the quote, like "exact words" '
    "[c12]. If the documents do not answer the question, say so; never invent a source."
)


def researcher(
    model: Model | str | None,
    retriever: Retriever,
    *,
    grounded: bool = True,
    requirements: Sequence[Requirement | str] = (),
    extra_tools: Sequence[Tool] = (),
    budget: Budget | str | None = "medium",
    instructions: str = RESEARCHER_INSTRUCTIONS,
) -> Agent:
    """An agent answering from ``retriever``'s documents; ``grounded`` adds the mandatory
    grounding requirement (see the module docstring)."""
    from maestro.llm.spec import resolve_model

    reqs: list[Requirement | str] = [grounding_requirement(retriever)] if grounded else []
    reqs += list(requirements)
    return Agent(
        resolve_model(model),
        tools=[*retrieval_tools(retriever), *extra_tools],
        instructions=instructions,
        requirements=reqs,
        budget=budget,
        name="researcher",
    )


__all__ = ["RESEARCHER_INSTRUCTIONS", "researcher"]
