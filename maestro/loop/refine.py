"""Draft → validate → fix: the part of the loop that makes an answer meet its requirements.

Round 0 drafts ``budget.candidates`` answers (the first at the model's default temperature,
the others warmer for variety) and scores each against every requirement; the best one —
mandatory requirements first, then overall score — is kept. While it does not pass and fix
rounds remain, the model gets its best answer back with the failing requirements and their
reasons, rewrites it, and the rewrite is scored again. A worse rewrite never replaces a
better answer: ``best`` only improves, so when a budget cap interrupts, the run returns the
best answer seen so far.

Programmatic checks run first and cost nothing; requirements without a check are judged by
the model under the :class:`~maestro.requirements.JudgeVerdict` schema, all judges of one
answer concurrently (a remote model answers them in one round trip of latency). A judge that cannot
produce a valid verdict scores 0 with that reason — an unverifiable requirement never passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pydantic

from maestro.budget import Budget
from maestro.errors import UnexpectedModelBehavior
from maestro.events import FixRound, RequirementScored
from maestro.loop.context import RunContext
from maestro.messages import (
    AssistantMessage,
    Message,
    ModelRequestOptions,
    SystemMessage,
    UserMessage,
)
from maestro.requirements import (
    JudgeVerdict,
    Requirement,
    RequirementScore,
    RequirementsReport,
    overall_score,
    run_check,
)

JUDGE_ADAPTER: pydantic.TypeAdapter[JudgeVerdict] = pydantic.TypeAdapter(JudgeVerdict)

JUDGE_PROMPT = (
    "You check whether an answer meets one requirement. Judge only that requirement. Reply "
    'with only a JSON object {"score": <0..1>, "reason": "<one or two sentences>"}, where 1 '
    "means fully met and 0 means not met."
)


@dataclass(slots=True)
class Candidate:
    round: int
    index: int
    text: str
    output: Any = None
    error: str | None = None
    scores: list[RequirementScore] = field(default_factory=list)
    score: float = 0.0

    @property
    def mandatory_ok(self) -> bool:
        return not any(s.mandatory and not s.passed for s in self.scores)

    @property
    def rank(self) -> tuple[bool, float]:
        return (self.mandatory_ok and self.error is None, self.score)


class Refiner:
    """Runs the draft/validate/fix rounds for one task; see the module docstring."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        task: str,
        instructions: str,
        context: str,
        requirements: list[Requirement],
        budget: Budget,
        output_adapter: pydantic.TypeAdapter[Any] | None,
    ) -> None:
        self.ctx = ctx
        self.task = task
        self.requirements = requirements
        self.budget = budget
        self.output_adapter = output_adapter
        self.best: Candidate | None = None
        # The newest draft, scored or not: when a cap stops the run before the first draft is
        # validated, this is still a better partial result than nothing.
        self.latest: Candidate | None = None
        self.report = RequirementsReport(requirements, target_score=budget.target_score)
        self.finish_reason = "unfinished"
        self._system = self._system_prompt(instructions)
        self._user = task if not context else f"{task}\n\n{context}"

    def _system_prompt(self, instructions: str) -> str:
        parts = [instructions.strip()] if instructions.strip() else []
        parts.append("Answer the user's task. Use the tool results when they are given.")
        if self.requirements:
            lines = "\n".join(
                f"- {'[mandatory] ' if r.mandatory else ''}{r.description}"
                for r in self.requirements
            )
            parts.append(f"The answer must meet these requirements:\n{lines}")
        return "\n\n".join(parts)

    def passes(self, candidate: Candidate) -> bool:
        if candidate.error is not None:
            return False
        return candidate.mandatory_ok and candidate.score >= self.budget.target_score

    async def run(self) -> Candidate | None:
        round_ = 0
        for index in range(self.budget.candidates):
            candidate = await self._draft(round_, index, self._first_messages(), index > 0)
            self.latest = candidate
            await self._validate(candidate)
            self._consider(candidate, new_round=index == 0)
        while True:
            assert self.best is not None
            if self.passes(self.best):
                self.finish_reason = "requirements_met" if self.requirements else "completed"
                return self.best
            if round_ >= self.budget.fix_rounds:
                self.finish_reason = "max_fix_rounds"
                return self.best
            round_ += 1
            failing = [s for s in self.best.scores if not s.passed]
            await self.ctx.emit(
                FixRound(run_id=self.ctx.run_id, round=round_, failing=[s.name for s in failing])
            )
            candidate = await self._draft(round_, 0, self._fix_messages(self.best), False)
            self.latest = candidate
            await self._validate(candidate)
            self._consider(candidate, new_round=True)

    def _consider(self, candidate: Candidate, *, new_round: bool) -> None:
        # Candidates of one round compete for that round's slot in the report.
        if new_round:
            self.report.rounds.append(candidate.scores)
        elif self._round_best_rank(candidate.round) < candidate.rank:
            self.report.rounds[candidate.round] = candidate.scores
        if self.best is None or candidate.rank > self.best.rank:
            self.best = candidate
            self.report.chosen_round = len(self.report.rounds) - 1
        self.report.score = self.best.score

    def _round_best_rank(self, round_: int) -> tuple[bool, float]:
        scores = self.report.rounds[round_]
        ok = not any(s.mandatory and not s.passed for s in scores)
        return (ok, overall_score(scores, self.requirements))

    def _first_messages(self) -> list[Message]:
        return [SystemMessage(self._system), UserMessage(self._user)]

    def _fix_messages(self, best: Candidate) -> list[Message]:
        failing = "\n".join(
            f"- {s.description} (score {s.score:.2f}): {s.reason}"
            for s in best.scores
            if not s.passed
        )
        problem = best.error or ""
        return [
            *self._first_messages(),
            AssistantMessage(best.text),
            UserMessage(
                f"Your answer does not yet meet these requirements:\n{failing}\n{problem}\n"
                "Rewrite the complete answer so that it meets every requirement, keeping what "
                "already works. Reply with the answer only."
            ),
        ]

    async def _draft(
        self, round_: int, index: int, messages: list[Message], warm: bool
    ) -> Candidate:
        key = f"draft:{round_}:{index}"
        options = ModelRequestOptions(temperature=0.8 if warm else None)
        if self.output_adapter is None:
            response = await self.ctx.call_model(key, "draft", messages, options, stream_text=True)
            return Candidate(round_, index, response.text, response.text)
        try:
            value, response = await self.ctx.request_structured(
                key, "draft", messages, options, self.output_adapter, stream_text=True
            )
        except UnexpectedModelBehavior as exc:
            return Candidate(round_, index, "", None, error=f"no valid structured answer: {exc}")
        return Candidate(round_, index, response.text, value)

    async def _validate(self, candidate: Candidate) -> None:
        """Score every requirement: checks in order, model judges concurrently (one round
        trip of latency for all of them), results reported in requirement order."""
        verdicts: dict[str, tuple[float, str, str]] = {}
        judged: list[Requirement] = []
        for requirement in self.requirements:
            if candidate.error is not None:
                verdicts[requirement.name] = (0.0, candidate.error, "error")
            elif requirement.check is not None:
                value, reason = await run_check(requirement, candidate.output)
                verdicts[requirement.name] = (value, reason, "check")
            else:
                judged.append(requirement)
        await self._judge_all(candidate, judged, verdicts)
        for requirement in self.requirements:
            value, reason, source = verdicts[requirement.name]
            score = RequirementScore(
                name=requirement.name,
                description=requirement.description,
                score=value,
                reason=reason,
                passed=value >= requirement.threshold,
                mandatory=requirement.mandatory,
                round=candidate.round,
                candidate=candidate.index,
                source=source,
            )
            candidate.scores.append(score)
            await self.ctx.emit(
                RequirementScored(
                    run_id=self.ctx.run_id,
                    requirement=requirement.name,
                    score=value,
                    reason=reason,
                    round=candidate.round,
                    candidate=candidate.index,
                    passed=score.passed,
                )
            )
        candidate.score = overall_score(candidate.scores, self.requirements)

    async def _judge_all(
        self,
        candidate: Candidate,
        judged: list[Requirement],
        verdicts: dict[str, tuple[float, str, str]],
    ) -> None:
        failures: list[BaseException] = []

        async def judge_one(requirement: Requirement) -> None:
            key = f"validate:{candidate.round}:{candidate.index}:{requirement.name}"
            try:
                verdicts[requirement.name] = await self._judge(key, requirement, candidate.text)
            except Exception as exc:  # BudgetExceeded, provider errors: re-raised unwrapped
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for requirement in judged:
                group.start_soon(judge_one, requirement)
        if failures:
            raise failures[0]

    async def _judge(
        self, key: str, requirement: Requirement, answer: str
    ) -> tuple[float, str, str]:
        messages: list[Message] = [
            SystemMessage(JUDGE_PROMPT),
            UserMessage(
                f"Task:\n{self.task}\n\nRequirement:\n{requirement.description}\n\n"
                f"Answer:\n{answer}"
            ),
        ]
        try:
            verdict, _ = await self.ctx.request_structured(
                key, "judge", messages, ModelRequestOptions(temperature=0.0), JUDGE_ADAPTER
            )
        except UnexpectedModelBehavior as exc:
            return 0.0, f"the judge gave no valid verdict: {exc}", "error"
        return verdict.score, verdict.reason, "judge"
