"""The GRPO reward: the parts combined by the paper's formula, as a TRL reward function.

    r = result_weight * Result * (1 + consistency_bonus * Consistency) + format_weight * Format
        + code_success_weight * CodeSuccess + sum(weight * part for the config's extra_terms)

With the defaults (1, 0.5, 0.5, 0) that is REFERENCE.md section 4's `Result x (1 + 0.5 x Consistency) +
0.5 x Format`: 2.0 for a right, consistent, well-formed turn; 1.5 right but inconsistent; 0.5 wrong but
well-formed; 0 for a missing, blank or repeated answer (no part pays for those, see `thyme.rewards.parts`).
Consistency is asked only when Result is 1, so it can only add to a right answer; a verdict the judge could
not give adds nothing. Without a judge the rule-based accuracy runs alone and the log says once that
consistency is off.

    reward = ThymeReward(RewardConfig(judge=JudgeSettings(url=..., model=...)))
    GRPOTrainer(..., reward_funcs=[reward])       # or thyme's GRPO trainer, which builds it from its config

TRL calls `reward(prompts=..., completions=..., completion_ids=..., answer=[...], question=[...],
choices=[...], rollout=[...], log_metric=..., log_extra=...)` (the columns: `thyme.rewards.inputs`). Each
part's batch mean goes to `log_metric` as `thyme/<part>` (plus `thyme/answered`, the share of rows with a
usable answer, and `thyme/judge_failures`), and each row's parts to `log_extra` for TRL's completions table.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from thyme.rewards.inputs import RewardInput, reward_inputs
from thyme.rewards.judge import JudgeSettings, RewardJudge
from thyme.rewards.parts import (
    AnswerCheck,
    accuracy_from,
    check_answer,
    code_success_reward,
    consistency_from,
    format_reward,
)
from thyme.rewards.registry import get_reward, register_reward

log = logging.getLogger(__name__)

_BUILT_IN = ("format", "accuracy", "consistency", "code_success", "thyme")


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward formula (module docstring) and the optional judge.

    extra_terms: {registered reward name: weight} added linearly (your own parts; see `register_reward`).
    judge:       None runs the rule-based accuracy only and switches consistency off.
    """

    result_weight: float = 1.0
    consistency_bonus: float = 0.5
    format_weight: float = 0.5
    code_success_weight: float = 0.0
    extra_terms: dict[str, float] = field(default_factory=dict)
    judge: JudgeSettings | None = None

    def __post_init__(self) -> None:
        for name in ("result_weight", "consistency_bonus", "format_weight", "code_success_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"rewards.{name}={value!r} must be a finite number >= 0")
        for name, weight in self.extra_terms.items():
            if name in _BUILT_IN:
                raise ValueError(f"rewards.extra_terms.{name}: a built-in part; set its weight field instead")
            get_reward(name)  # an unknown name raises, listing the valid ones
            if not (isinstance(weight, int | float) and math.isfinite(weight)):
                raise ValueError(f"rewards.extra_terms.{name}={weight!r} must be a finite number")


@dataclass(frozen=True)
class RewardParts:
    """One row's parts. result None: the gold is blank (not scorable); consistency None: not asked or the
    judge could not say; answered: the completion holds one non-blank answer."""

    format: float
    result: float | None
    consistency: float | None
    code_success: float
    answered: bool
    extra: dict[str, float | None] = field(default_factory=dict)


def score_parts(inp: RewardInput, judge: RewardJudge | None, config: RewardConfig) -> RewardParts:
    """Every part of one row (the judge is asked only where a part needs it)."""
    check = check_answer(inp)
    result = accuracy_from(check, inp, judge)
    consistency = consistency_from(check, inp, judge, result) if config.consistency_bonus else None
    return _assemble(inp, judge, config, check, result, consistency)


def _assemble(
    inp: RewardInput,
    judge: RewardJudge | None,
    config: RewardConfig,
    check: AnswerCheck,
    result: float | None,
    consistency: float | None,
) -> RewardParts:
    return RewardParts(
        format=format_reward(inp),
        result=result,
        consistency=consistency,
        code_success=code_success_reward(inp),
        answered=check.prediction is not None,
        extra={name: get_reward(name)(inp, judge) for name in config.extra_terms},
    )


def total(parts: RewardParts, config: RewardConfig) -> float:
    """The formula of the module docstring; a None part counts as 0."""
    result = parts.result or 0.0
    bonus = config.consistency_bonus * (parts.consistency or 0.0)  # times Result: only a right answer
    reward = config.result_weight * result * (1.0 + bonus)
    reward += config.format_weight * parts.format + config.code_success_weight * parts.code_success
    reward += sum(weight * (parts.extra[name] or 0.0) for name, weight in config.extra_terms.items())
    return reward


_DEFAULT = RewardConfig()


@register_reward("thyme")
def thyme_reward(inp: RewardInput, judge: RewardJudge | None = None) -> float:
    """The default combination (`RewardConfig()` weights) for one row."""
    return total(score_parts(inp, judge, _DEFAULT), _DEFAULT)


class ThymeReward:
    """The combined reward as a TRL reward function (`__call__` as TRL calls it, `__name__` = "thyme").

    judge: a `RewardJudge` to use (the caller closes it); otherwise one is built from `config.judge` and
    closed by `close()`.
    """

    def __init__(self, config: RewardConfig | None = None, judge: RewardJudge | None = None) -> None:
        self.config = config or RewardConfig()
        self.__name__ = "thyme"
        self._owns_judge = judge is None and self.config.judge is not None
        self.judge = RewardJudge.from_settings(self.config.judge) if self._owns_judge else judge
        if self.config.consistency_bonus and (self.judge is None or not self.judge.consistency):
            why = "no judge is configured" if self.judge is None else "the judge is set not to ask it"
            how = "rules, then the judge" if self.judge is not None and self.judge.accuracy else "rules only"
            log.warning("consistency is off (%s): the reward is accuracy (%s) and format", why, how)

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        completion_ids: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        rows = reward_inputs(completions, kwargs)
        failures_before = self.judge.failures if self.judge is not None else 0
        parts = self.score(rows)
        blank_golds = sum(p.result is None for p in parts)
        if blank_golds:
            log.warning("%d row(s) have a blank gold answer: their accuracy is not scored", blank_golds)
        failures = self.judge.failures - failures_before if self.judge is not None else None
        self._report(parts, kwargs.get("log_metric"), kwargs.get("log_extra"), failures)
        return [total(p, self.config) for p in parts]

    def score(self, rows: Sequence[RewardInput]) -> list[RewardParts]:
        """The parts of every row, as `score_parts` gives them. The rules run on the calling thread
        (math-verify bounds its time only on the main thread, and a model can write an answer like
        9^{9^{9^9}}); the judge's questions, correctness first and then consistency, run `judge.workers` at a
        time."""
        judge = self.judge
        checks = [check_answer(row) for row in rows]
        with contextlib.ExitStack() as stack:
            run = map
            if judge is not None and len(rows) > 1:
                run = stack.enter_context(ThreadPoolExecutor(judge.workers, "thyme-judge")).map
            results = list(run(accuracy_from, checks, rows, repeat(judge)))
            bonuses: list[float | None] = [None] * len(rows)
            if self.config.consistency_bonus:
                bonuses = list(run(consistency_from, checks, rows, repeat(judge), results))
        return [
            _assemble(row, judge, self.config, check, result, bonus)
            for row, check, result, bonus in zip(rows, checks, results, bonuses, strict=True)
        ]

    def _report(
        self,
        parts: Sequence[RewardParts],
        log_metric: Callable[[str, float], None] | None,
        log_extra: Callable[[str, list], None] | None,
        judge_failures: int | None,
    ) -> None:
        if not parts:
            return
        columns: dict[str, list] = {
            "format": [p.format for p in parts],
            "result": [p.result for p in parts],
            "consistency": [p.consistency for p in parts],
            "code_success": [p.code_success for p in parts],
            "answered": [float(p.answered) for p in parts],
        }
        for name in self.config.extra_terms:
            columns[name] = [p.extra[name] for p in parts]
        if log_metric is not None:
            # Consistency is a rate among right answers that the judge rated; the others are batch means.
            rated = [
                c for p, c in zip(parts, columns["consistency"], strict=True) if p.result and c is not None
            ]
            means = {name: _mean(values) for name, values in columns.items() if name != "consistency"}
            means["consistency"] = _mean(rated)
            for name, value in means.items():
                if value is not None:
                    log_metric(f"{self.__name__}/{name}", value)
            if judge_failures is not None:
                log_metric(f"{self.__name__}/judge_failures", float(judge_failures))
        if log_extra is not None:
            for name in ("format", "result", "consistency"):
                log_extra(f"{self.__name__}/{name}", columns[name])

    def close(self) -> None:
        if self._owns_judge and self.judge is not None:
            self.judge.close()

    def __enter__(self) -> ThymeReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PartReward:
    """One registered part as a TRL reward function (`__name__` = the part's name)."""

    def __init__(self, name: str, judge: RewardJudge | None = None) -> None:
        self.part = get_reward(name)
        self.judge = judge
        self.__name__ = name

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        completion_ids: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        return [self.part(row, self.judge) for row in reward_inputs(completions, kwargs)]


def reward_function(
    name: str, config: RewardConfig | None = None, judge: RewardJudge | None = None
) -> ThymeReward | PartReward:
    """A TRL reward function by registered name: "thyme" is `ThymeReward(config)`, any other name that
    part alone (with `judge`, which the caller owns)."""
    if name == "thyme":
        return ThymeReward(config, judge)
    return PartReward(name, judge)  # an unknown name raises, listing the valid ones


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
