"""The approval modal: a tool that changes the world waits here for the user's word.

Three answers: approve this call, deny it (the tool never runs), or approve every call of
this tool for the rest of the run. Keys mirror the buttons (a / d / A) so the decision is
one keystroke; Escape denies, because leaving a prompt must never let a side effect through.
"""

from __future__ import annotations

import json
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from maestro.tui.services import ApprovalDecision, ApprovalPrompt


class ApprovalScreen(ModalScreen[ApprovalDecision]):
    """Ask whether ``prompt.tool`` may run with ``prompt.args``."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "decide('approve')", "Approve"),
        Binding("d", "decide('deny')", "Deny"),
        Binding("A", "decide('always')", "Always (this run)"),
        Binding("escape", "decide('deny')", "Deny", show=False),
    ]

    def __init__(self, prompt: ApprovalPrompt) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        args = json.dumps(self.prompt.args, ensure_ascii=False, indent=2, default=str)
        with Vertical(id="approval-dialog"):
            yield Label(f"Allow [b]{self.prompt.tool}[/b] to run?", id="approval-title")
            yield Static(
                f"step {self.prompt.step_key} of run {self.prompt.run_id[:12]} "
                "wants to call a tool that changes things outside Maestro.",
                classes="approval-why",
            )
            yield Static(args, markup=False, id="approval-args")
            with Horizontal(id="approval-buttons"):
                yield Button("Approve (a)", id="approve", variant="success")
                yield Button("Deny (d)", id="deny", variant="error")
                yield Button("Always this run (A)", id="always", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#deny", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id:
            self.action_decide(event.button.id)

    def action_decide(self, choice: str) -> None:
        self.dismiss(ApprovalDecision(choice))
