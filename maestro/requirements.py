"""Requirements: explicit, scored conditions an answer must meet (AI21 Maestro's "validated output").

A :class:`Requirement` is a sentence plus, optionally, a Python ``check``. A check receives the
answer (the parsed structured output when the agent has an ``output_type``, else the text)
and returns a ``bool``, a score in 0..1, or ``(score_or_bool, reason)``; it may be async.
Programmatic checks are preferred because they are exact and free; without one the model
judges the answer under a constrained ``{score, reason}`` JSON schema.

A requirement *passes* when its score reaches its ``threshold`` (1.0 by default: "fully met").
The overall score is the weighted mean of the scores, **except that it is 0 when any mandatory
requirement fails** — a report never hides a broken must-have behind a good average.
:class:`RequirementsReport` keeps every round's scores so a reader sees what the fix rounds
changed, and says in words why the run stopped.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from maestro.errors import UserError

CheckResult = bool | float | int | tuple[bool | float | int, str]
Check = Callable[[Any], CheckResult | Awaitable[CheckResult]]


def _slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "_".join(words[:6]) or "requirement"


@dataclass(slots=True)
class Requirement:
    """A condition on the answer; ``mandatory`` ones gate the overall score."""

    description: str
    check: Check | None = None
    mandatory: bool = False
    weight: float = 1.0
    name: str = ""
    threshold: float = 1.0

    def __post_init__(self) -> None:
        if not self.description.strip():
            raise UserError("a Requirement needs a non-empty description")
        if self.weight < 0 or not 0.0 < self.threshold <= 1.0:
            raise UserError("Requirement needs weight >= 0 and 0 < threshold <= 1")
        if not self.name:
            self.name = _slug(self.description)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "mandatory": self.mandatory,
            "weight": self.weight,
            "threshold": self.threshold,
            "has_check": self.check is not None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Requirement:
        """Rebuild from ``to_dict`` (a stored run). Python checks cannot be stored: a
        requirement that had one comes back judged by the model unless it is passed again."""
        return cls(
            description=data["description"],
            mandatory=bool(data.get("mandatory", False)),
            weight=float(data.get("weight", 1.0)),
            name=str(data.get("name", "")),
            threshold=float(data.get("threshold", 1.0)),
        )


class JudgeVerdict(pydantic.BaseModel):
    """The schema the model judge must answer in (decoded under it where supported)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    score: float = pydantic.Field(ge=0.0, le=1.0, description="0 = not met, 1 = fully met")
    reason: str = pydantic.Field(description="one or two sentences of evidence")


@dataclass(slots=True)
class RequirementScore:
    name: str
    description: str
    score: float
    reason: str
    passed: bool
    mandatory: bool
    round: int
    candidate: int = 0
    source: str = "check"  # "check" | "judge" | "error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "score": self.score,
            "reason": self.reason,
            "passed": self.passed,
            "mandatory": self.mandatory,
            "round": self.round,
            "candidate": self.candidate,
            "source": self.source,
        }


def normalize_check_result(value: Any) -> tuple[float, str]:
    """A check's return value as ``(score in 0..1, reason)``; UserError on anything else."""
    reason = ""
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[1], str):
            raise UserError("a requirement check may return (score, reason) with a str reason")
        value, reason = value
    if isinstance(value, bool):
        return (1.0 if value else 0.0), reason or ("met" if value else "not met")
    if isinstance(value, int | float):
        if not 0.0 <= float(value) <= 1.0:
            raise UserError(f"a requirement check returned {value}; scores must be within 0..1")
        return float(value), reason
    raise UserError(
        f"a requirement check returned {type(value).__name__}; return bool, a 0..1 float, "
        "or (score, reason)"
    )


async def run_check(requirement: Requirement, answer: Any) -> tuple[float, str]:
    """Run a programmatic check. A check that raises scores 0 with the error as the reason:
    a broken check must fail the requirement visibly, never pass it."""
    assert requirement.check is not None
    try:
        value = requirement.check(answer)
        if inspect.isawaitable(value):
            value = await value
    except UserError:
        raise
    except Exception as exc:
        return 0.0, f"check raised {type(exc).__name__}: {exc}"
    return normalize_check_result(value)


def overall_score(scores: list[RequirementScore], requirements: list[Requirement]) -> float:
    """Weighted mean of scores; 0.0 when a mandatory requirement fails; 1.0 with none."""
    if not scores:
        return 1.0
    if any(s.mandatory and not s.passed for s in scores):
        return 0.0
    weights = {r.name: r.weight for r in requirements}
    total = sum(weights.get(s.name, 1.0) for s in scores)
    if total == 0:
        return 1.0 if all(s.passed for s in scores) else 0.0
    return sum(s.score * weights.get(s.name, 1.0) for s in scores) / total


@dataclass(slots=True)
class RequirementsReport:
    """Per-requirement scores for every round, the overall score and why the run stopped.

    ``rounds[r]`` holds the scores of the candidate chosen in round ``r`` (round 0 is the
    first draft, then one per fix round); ``final`` is the round whose answer the run
    returned (``chosen_round``: the best one, which a worse fix round does not replace).
    """

    requirements: list[Requirement] = field(default_factory=list)
    rounds: list[list[RequirementScore]] = field(default_factory=list)
    score: float = 0.0
    finish_reason: str = "unfinished"
    target_score: float = 1.0
    chosen_round: int | None = None

    @property
    def final(self) -> list[RequirementScore]:
        if not self.rounds:
            return []
        return self.rounds[-1 if self.chosen_round is None else self.chosen_round]

    @property
    def mandatory_failed(self) -> list[RequirementScore]:
        return [s for s in self.final if s.mandatory and not s.passed]

    @property
    def passed(self) -> bool:
        """All mandatory requirements met and the overall score reaches the target."""
        if not self.requirements:
            return True
        return bool(self.rounds) and not self.mandatory_failed and self.score >= self.target_score

    def history(self, name: str) -> list[float]:
        """One requirement's score in each round, e.g. ``[0.0, 1.0]`` after one fix."""
        return [s.score for round_ in self.rounds for s in round_ if s.name == name]

    def summary(self) -> str:
        if not self.requirements:
            return f"no requirements; finished: {self.finish_reason}"
        if not self.rounds:
            return f"requirements never scored; finished: {self.finish_reason}"
        head = f"overall score {self.score:.2f} ({'passed' if self.passed else 'not passed'})"
        if self.mandatory_failed:
            names = ", ".join(repr(s.description) for s in self.mandatory_failed)
            head += f"; score is 0 because mandatory requirement(s) failed: {names}"
        return f"{head}; finished: {self.finish_reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "passed": self.passed,
            "finish_reason": self.finish_reason,
            "chosen_round": self.chosen_round,
            "summary": self.summary(),
            "requirements": [{**s.to_dict(), "history": self.history(s.name)} for s in self.final],
            "rounds": [[s.to_dict() for s in round_] for round_ in self.rounds],
        }


__all__ = [
    "Check",
    "CheckResult",
    "JudgeVerdict",
    "Requirement",
    "RequirementScore",
    "RequirementsReport",
    "normalize_check_result",
    "overall_score",
    "run_check",
]
