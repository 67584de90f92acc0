"""Tool calls of the current run: one collapsible per call, arguments and result inside.

Titles carry the outcome (✔ ok, ✖ error, ↻ retry asked, ⌛ waiting for approval) so the list
reads at a glance collapsed; expanding shows the full JSON arguments and the result text.
"""

from __future__ import annotations

import json

from textual.containers import VerticalScroll
from textual.widgets import Collapsible, Static

from maestro.tui.run_state import RunView, ToolCallView

RESULT_LIMIT = 2000


def call_title(call: ToolCallView) -> str:
    args = json.dumps(call.args, ensure_ascii=False, default=str)
    args = args if len(args) <= 40 else args[:39] + "…"
    if call.approval == "asked" and not call.finished:
        mark = "⌛ approval"
    elif call.approval == "denied":
        mark = "⊘ denied"
    elif not call.finished:
        mark = "◐"
    elif call.retry:
        mark = "↻ retry"
    elif call.error:
        mark = "✖"
    else:
        mark = "✔"
    attempt = f" (attempt {call.attempt + 1})" if call.attempt else ""
    return f"{mark} {call.tool}{attempt} {args}"


def call_body(call: ToolCallView) -> str:
    lines = ["args: " + json.dumps(call.args, ensure_ascii=False, default=str)]
    if call.error:
        lines.append(f"error: {call.error}")
    if call.result is not None:
        result = (
            call.result if len(call.result) <= RESULT_LIMIT else call.result[:RESULT_LIMIT] + " …"
        )
        lines.append(f"result: {result}")
    if not call.finished and call.approval != "denied":
        lines.append("(running)")
    return "\n".join(lines)


class ToolCalls(VerticalScroll):
    """Collapsible tool calls, updated in place as results arrive."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "tool calls"

    async def show(self, view: RunView) -> None:
        items = list(self.query(Collapsible))
        if len(items) > len(view.tool_calls):  # a new run: start over
            await self.remove_children()
            items = []
        for index, call in enumerate(view.tool_calls):
            if index < len(items):
                items[index].title = call_title(call)
                # ``.tool-body``: the collapsible's own title is a Static too.
                items[index].query_one(".tool-body", Static).update(call_body(call))
            else:
                body = Static(call_body(call), markup=False, classes="tool-body")
                await self.mount(Collapsible(body, title=call_title(call), collapsed=True))
        if view.tool_calls:
            self.scroll_end(animate=False)
