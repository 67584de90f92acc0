"""A durable Python workflow: payment reminders for overdue invoices, sent exactly once.

The workflow reads ``examples/data/invoices.csv``, has the model draft a reminder for each
overdue invoice, and "sends" it by appending to an outbox file. Every step's result is
committed to the database before the next step starts, so if the process dies half-way,
running the same command again resumes the run: finished steps are replayed from the
database — drafts are not regenerated, reminders are not sent twice.

    python examples/durable_workflow.py --db sqlite:///reminders.db --outbox outbox.txt
    python examples/durable_workflow.py ... --crash-after 1   # dies after the first reminder
    python examples/durable_workflow.py ...                   # same run id: resumes, sends the rest
    maestro runs show reminders-2026-03 --url sqlite:///reminders.db

``--model`` takes any model spec (default: the embedded SmolLM2; ``scripted:TEXT`` for a
model-free dry run). Exit status 0 when done, 3 when the simulated crash fired.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
from pathlib import Path
from typing import Any

from maestro import Model, ModelRequestOptions, SystemMessage, UserMessage
from maestro.llm.spec import resolve_model
from maestro.memory import Database
from maestro.workflow import WorkflowContext, current_step, workflow

DATA = Path(__file__).parent / "data" / "invoices.csv"
CRASHED = 3

# Set by main(): steps reach the world through these, so the step arguments stay JSON.
_model: Model | None = None
_settings: dict[str, Any] = {}


def load_overdue(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row["status"] == "overdue"]


async def draft_reminder(invoice: dict[str, str]) -> str:
    assert _model is not None
    prompt = (
        f"Write a short, polite payment reminder to {invoice['customer']} for invoice "
        f"{invoice['invoice_id']} of {invoice['amount_eur']} EUR issued on {invoice['issued']}, "
        "now overdue. Three sentences at most."
    )
    response = await _model.request(
        [SystemMessage("You write business emails."), UserMessage(prompt)],
        ModelRequestOptions(temperature=0.0, max_tokens=120),
    )
    return response.text.strip()


def send_reminder(invoice_id: str, text: str) -> str:
    """The side effect: one outbox line per reminder, tagged with the step's idempotency key."""
    step = current_step()
    key = step.idempotency_key if step else "-"
    outbox = Path(_settings["outbox"])
    if outbox.exists() and f"[{key}]" in outbox.read_text(encoding="utf-8"):
        return "already sent"  # the step started before a crash and sent before dying
    with outbox.open("a", encoding="utf-8") as fh:
        fh.write(f"[{key}] {invoice_id}: {' '.join(text.split())}\n")
    return "sent"


@workflow
async def remind_overdue(ctx: WorkflowContext, csv_path: str) -> dict[str, Any]:
    overdue = await ctx.step("load_overdue", load_overdue, csv_path)
    sent = []
    for invoice in overdue:
        text = await ctx.step("draft_reminder", draft_reminder, invoice)
        await ctx.step("send_reminder", send_reminder, invoice["invoice_id"], text)
        sent.append(invoice["invoice_id"])
        if len(sent) == _settings.get("crash_after"):
            print(f"simulated crash after {len(sent)} reminder(s)", file=sys.stderr, flush=True)
            os._exit(CRASHED)  # no cleanup, like a killed process
    return {"reminded": sent, "total_overdue_eur": sum(float(i["amount_eur"]) for i in overdue)}


async def main(
    model: Model | str | None,
    db_url: str,
    outbox: str,
    run_id: str = "reminders-2026-03",
    crash_after: int | None = None,
) -> int:
    global _model
    _model = resolve_model(model)
    _settings.update(outbox=outbox, crash_after=crash_after)
    db = await Database.open(db_url)
    try:
        result = await remind_overdue.start(db.runs, run_id, str(DATA))
        steps = await db.runs.get_steps(run_id)
    finally:
        await db.close()
    print(
        f"run {run_id}: reminded {', '.join(result['reminded'])} "
        f"({result['total_overdue_eur']:.2f} EUR overdue); {len(steps)} steps stored"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (name, path, URL, scripted:TEXT)")
    parser.add_argument("--db", default="sqlite:///reminders.db", help="database URL")
    parser.add_argument("--outbox", default="outbox.txt", help="where reminders are 'sent'")
    parser.add_argument("--run-id", default="reminders-2026-03")
    parser.add_argument("--crash-after", type=int, default=None, help="simulate a crash")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.model, args.db, args.outbox, args.run_id, args.crash_after)))
