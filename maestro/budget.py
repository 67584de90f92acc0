"""Budgets: a quality dial (presets) plus hard caps, checked *before* every call.

A :class:`Budget` says how hard to try — ``candidates`` drafted per task, ``fix_rounds`` of
validate→fix, ``max_plan_steps`` and ``max_replans`` — and where to stop — model calls,
input/output tokens, tool calls, wall time, USD. Presets ``low`` / ``medium`` / ``high`` set
the first group (AI21 Maestro's quality dial); caps are off unless given::

    Budget.of("medium", max_usd=0.05, max_wall_seconds=60)

:class:`BudgetTracker` enforces the caps for one run. ``check_model_call`` and
``check_tool_call`` raise :class:`~maestro.errors.BudgetExceeded` with the finish reason
*before* the call that would cross a cap; the agent catches it and ends the run with the best
result so far. Input tokens are estimated (≈4 characters per token) for the pre-check, and the
request's ``max_tokens`` is clamped to the output tokens left, so a cap is never overshot by
more than one call's estimate error. Concurrent model calls (judges) hold a slot from the
moment they are admitted, so together they cannot exceed the call cap either.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from maestro.errors import BudgetExceeded, UserError
from maestro.messages import Usage

PresetName = Literal["low", "medium", "high"]

_PRESETS: dict[str, dict[str, int]] = {
    "low": {"candidates": 1, "fix_rounds": 1, "max_plan_steps": 4, "max_replans": 0},
    "medium": {"candidates": 2, "fix_rounds": 2, "max_plan_steps": 8, "max_replans": 1},
    "high": {"candidates": 3, "fix_rounds": 4, "max_plan_steps": 16, "max_replans": 2},
}


@dataclass(frozen=True, slots=True)
class Budget:
    """How much effort a run may spend. Defaults are the ``low`` preset with no hard caps."""

    preset: str = "low"
    candidates: int = 1
    fix_rounds: int = 1
    max_plan_steps: int = 4
    max_replans: int = 0
    target_score: float = 1.0
    max_model_calls: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    max_wall_seconds: float | None = None
    max_usd: float | None = None

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.fix_rounds < 0 or self.max_plan_steps < 0:
            raise UserError("Budget needs candidates >= 1, fix_rounds >= 0, max_plan_steps >= 0")
        if not 0.0 <= self.target_score <= 1.0:
            raise UserError(f"Budget.target_score must be within 0..1, got {self.target_score}")
        for name in ("max_model_calls", "max_input_tokens", "max_output_tokens", "max_tool_calls"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"Budget.{name} must be >= 0, got {value}")

    @classmethod
    def of(cls, name: str = "low", **overrides: Any) -> Budget:
        """The named preset (``low``/``medium``/``high``) with field overrides."""
        if name not in _PRESETS:
            raise UserError(f"unknown budget preset {name!r}; choose low, medium or high")
        return cls(preset=name, **{**_PRESETS[name], **overrides})

    @classmethod
    def coerce(cls, value: Budget | str | None) -> Budget:
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls.of(value)
        if isinstance(value, Budget):
            return value
        raise UserError(f"budget must be a Budget or a preset name, got {type(value).__name__}")

    def limits(self) -> dict[str, Any]:
        return {
            "max_model_calls": self.max_model_calls,
            "max_input_tokens": self.max_input_tokens,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": self.max_tool_calls,
            "max_wall_seconds": self.max_wall_seconds,
            "max_usd": self.max_usd,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class BudgetTracker:
    """Counts one run's spend and refuses calls that would cross a cap."""

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.usage = Usage()
        self.tool_calls = 0
        # Model calls admitted but not yet recorded: concurrent calls (judges) count against
        # the call cap before they finish, so they cannot overshoot it together.
        self.in_flight = 0
        self._clock = clock
        self._started = clock()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    def remaining_seconds(self) -> float | None:
        cap = self.budget.max_wall_seconds
        return None if cap is None else max(0.0, cap - self.elapsed)

    def _check_common(self) -> None:
        b = self.budget
        if b.max_wall_seconds is not None and self.elapsed >= b.max_wall_seconds:
            raise BudgetExceeded("max_wall_time", f"wall time cap of {b.max_wall_seconds} s hit")
        if b.max_usd is not None and self.usage.cost_usd >= b.max_usd:
            raise BudgetExceeded("max_usd", f"spent ${self.usage.cost_usd:.4f} of ${b.max_usd}")

    def check_model_call(
        self, estimated_input_tokens: int, estimated_input_usd: float = 0.0
    ) -> int | None:
        """Raise BudgetExceeded if this call may not happen; else admit it (call
        ``release_model_call`` when it ends) and return the max output tokens left.

        ``estimated_input_usd`` (the prompt's price on a priced model) makes the USD cap refuse
        a call whose prompt alone would cross it, not only calls after the cap was reached.
        """
        b = self.budget
        self._check_common()
        if b.max_usd is not None and self.usage.cost_usd + estimated_input_usd > b.max_usd:
            raise BudgetExceeded(
                "max_usd",
                f"spent ${self.usage.cost_usd:.4f}; the next prompt costs about "
                f"${estimated_input_usd:.4f}, over the cap of ${b.max_usd}",
            )
        if (
            b.max_model_calls is not None
            and self.usage.requests + self.in_flight >= b.max_model_calls
        ):
            raise BudgetExceeded("max_model_calls", f"model call cap of {b.max_model_calls} hit")
        if (
            b.max_input_tokens is not None
            and self.usage.input_tokens + estimated_input_tokens > b.max_input_tokens
        ):
            raise BudgetExceeded(
                "max_input_tokens",
                f"{self.usage.input_tokens} input tokens used; the next call needs about "
                f"{estimated_input_tokens} more, over the cap of {b.max_input_tokens}",
            )
        left: int | None = None
        if b.max_output_tokens is not None:
            left = b.max_output_tokens - self.usage.output_tokens
            if left <= 0:
                raise BudgetExceeded(
                    "max_output_tokens", f"output cap of {b.max_output_tokens} hit"
                )
        self.in_flight += 1
        return left

    def release_model_call(self) -> None:
        """The admitted call ended (recorded or failed); it no longer holds a slot."""
        self.in_flight = max(0, self.in_flight - 1)

    def check_tool_call(self) -> None:
        b = self.budget
        self._check_common()
        if b.max_tool_calls is not None and self.tool_calls >= b.max_tool_calls:
            raise BudgetExceeded("max_tool_calls", f"tool call cap of {b.max_tool_calls} hit")

    def record_model(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def record_tool_call(self) -> None:
        self.tool_calls += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.usage.to_dict(),
            "tool_calls": self.tool_calls,
            "wall_seconds": round(self.elapsed, 4),
        }


__all__ = ["Budget", "BudgetTracker", "PresetName"]
