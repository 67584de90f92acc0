"""The main screen: threads on the left, the conversation in the middle, the live run on the
right, key bindings in the footer.

The screen only lays the regions out; the app (``maestro.tui.app``) owns the services and
drives the widgets from the run's events.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header

from maestro.tui.widgets.chat.chat_log import ChatLog
from maestro.tui.widgets.chat.prompt_input import PromptInput
from maestro.tui.widgets.run.budget_meter import BudgetMeter
from maestro.tui.widgets.run.model_status import ModelStatus
from maestro.tui.widgets.run.plan_tree import PlanTree
from maestro.tui.widgets.run.scoreboard import Scoreboard
from maestro.tui.widgets.run.tool_calls import ToolCalls
from maestro.tui.widgets.sidebar.thread_list import ThreadList


class MainScreen(Screen[None]):
    """Chat and run view side by side."""

    def __init__(self, model_name: str) -> None:
        super().__init__(id="main")
        self.model_name = model_name

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="body"):
            yield ThreadList(id="threads")
            with Vertical(id="chat-column"):
                yield ChatLog(id="chat")
                yield PromptInput(id="prompt")
            with VerticalScroll(id="run-column"):
                yield PlanTree(id="plan")
                yield ToolCalls(id="tool-calls")
                yield Scoreboard(id="scoreboard")
                yield BudgetMeter(id="budget")
                yield ModelStatus(self.model_name, id="model-status")
        yield Footer()

    class Ready(Message):
        """The regions exist: the app can draw what it learnt before they did."""

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        self.post_message(self.Ready())
