"""The analyst runs model-written code over the data files in the sandbox and keeps each
cell; the researcher is grounded by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agents.analyst import Analyst
from agents.researcher import researcher
from maestro import Message, ModelRequestOptions, UserError
from maestro.memory import Database
from maestro.testing import FunctionModel, judge, plan, plan_step
from tools.python.sandbox import bwrap_available
from tools.retrieval import Retriever

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "invoices.csv"
CODE = (
    "import csv\n"
    "rows = list(csv.DictReader(open('invoices.csv')))\n"
    "print(round(sum(float(r['amount_eur']) for r in rows if r['status'] == 'overdue'), 2))"
)


def analyst_model(code: str) -> FunctionModel:
    def reply(messages: list[Message], options: ModelRequestOptions) -> str:
        schema = json.dumps(options.response_format or {})
        if '"steps"' in schema:
            assert "invoice_id,customer,region" in (messages[0].content or "")  # file preview
            return plan(plan_step("s1", "python", {"code": code}))
        if '"score"' in schema:
            return judge(1.0)
        text = "\n".join(m.content or "" for m in messages)
        total = re.search(r"python\(.*?\) -> ([\d.]+)", text, re.S)
        return f"Overdue total: {total.group(1)} EUR." if total else "The code failed."

    return FunctionModel(reply)


@pytest.mark.sandbox
@pytest.mark.skipif(bwrap_available() is not None, reason="needs bubblewrap")
async def test_the_analyst_answers_from_code_it_ran_on_the_file() -> None:
    with Analyst(analyst_model(CODE), [DATA]) as analyst:
        analysis = await analyst.run("What is the total of overdue invoices?")
    assert analysis.answer == "Overdue total: 3080.0 EUR."
    assert [(c.code, c.output.splitlines()[0], c.ok) for c in analysis.cells] == [
        (CODE, "3080.0", True)
    ]
    assert "--- cell 1\nimport csv" in analysis.render()


@pytest.mark.sandbox
@pytest.mark.skipif(bwrap_available() is not None, reason="needs bubblewrap")
async def test_a_failing_cell_is_kept_with_its_error() -> None:
    with Analyst(analyst_model("open('missing.csv')"), [DATA]) as analyst:
        analysis = await analyst.run("What is the total of overdue invoices?")
    assert analysis.cells and not analysis.cells[0].ok
    assert "FileNotFoundError" in analysis.cells[0].output
    assert "(failed)" in analysis.render()


def test_the_analyst_refuses_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        Analyst(analyst_model(CODE), [tmp_path / "nope.csv"])
    with pytest.raises(UserError, match="at least one"):
        Analyst(analyst_model(CODE), [])


async def test_the_researcher_is_grounded_by_default(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path}/r.db")
    try:
        retriever = Retriever(db)
        grounded = researcher(FunctionModel(lambda m, o: ""), retriever)
        assert [r.name for r in grounded.requirements if r.mandatory] == ["grounded_quotes"]
        assert "search_documents" in grounded.tools
        loose = researcher(FunctionModel(lambda m, o: ""), retriever, grounded=False)
        assert loose.requirements == []
    finally:
        await db.close()
