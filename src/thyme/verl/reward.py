"""The Thyme reward as a verl reward function, so verl runs score rollouts exactly as `thyme train grpo` does.

verl's reward managers call `compute_score(data_source, solution_str, ground_truth, extra_info)` per rollout;
this one builds a `thyme.rewards.RewardInput` from those and returns the default combination (REFERENCE.md
section 4, `thyme.rewards.combine`) with its parts, which verl logs as `reward_extra_info`:

    reward.custom_reward_function.path=pkg://thyme.verl.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.judge_url=http://judge-host:8000/v1     # optional
    +reward.custom_reward_function.reward_kwargs.judge_model=Qwen2.5-72B-Instruct

What it reads:
- `solution_str`: the response as verl decodes it (model text and sandbox output; image tokens dropped);
- `ground_truth`: the gold answer (`reward_model.ground_truth` of the row);
- `extra_info`: the row's `question` and `choices` (MCQ options) when present, and the rollout facts the
  `thyme` agent loop reports (`thyme_code_calls`, `thyme_code_errors`, `thyme_repetition_stopped`,
  `thyme_truncated`, `thyme_response_cut`; verl merges them into `extra_info`). Rows from other agent loops
  have no facts: no code calls, nothing cut.
reward_kwargs: `judge_url`, `judge_model`, `judge_api_key_file` (a judge for free-form answers and the
consistency bonus; without one the rule-based path runs and consistency is off), and the weights
`result_weight`, `consistency_bonus`, `format_weight`, `code_success_weight`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from thyme.rewards import JudgeSettings, RewardConfig, RewardInput, ThymeReward
from thyme.rewards.combine import total

_REWARDS: dict[tuple, ThymeReward] = {}
_LOCK = threading.Lock()


def compute_score(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = "",
    extra_info: Mapping[str, Any] | None = None,
    *,
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key_file: str | None = None,
    result_weight: float = 1.0,
    consistency_bonus: float = 0.5,
    format_weight: float = 0.5,
    code_success_weight: float = 0.0,
    **_verl: Any,  # verl's own keywords (reward_router_address...) are not used
) -> dict[str, float]:
    """`score` (the combined reward) and each part (`format`, `accuracy`, `consistency`, `code_success`; a
    part that could not be scored counts 0) for one rollout."""
    info = dict(extra_info or {})
    row = RewardInput(
        completion=str(solution_str),
        answer=_gold(ground_truth),
        question=str(info.get("question") or ""),
        choices=info.get("choices") or None,
        code_calls=int(info.get("thyme_code_calls") or 0),
        code_errors=int(info.get("thyme_code_errors") or 0),
        repetition_stopped=bool(info.get("thyme_repetition_stopped")),
        truncated=bool(info.get("thyme_truncated") or info.get("thyme_response_cut")),
    )
    judge = None
    if judge_url or judge_model:
        if not (judge_url and judge_model):
            raise ValueError("give both judge_url and judge_model in reward_kwargs, or neither")
        judge = JudgeSettings(url=judge_url, model=judge_model, api_key_file=judge_api_key_file)
    config = RewardConfig(
        result_weight=result_weight,
        consistency_bonus=consistency_bonus,
        format_weight=format_weight,
        code_success_weight=code_success_weight,
        judge=judge,
    )
    reward = _reward(config)
    [parts] = reward.score([row])
    return {
        "score": total(parts, config),
        "format": parts.format,
        "accuracy": parts.result or 0.0,
        "consistency": parts.consistency or 0.0,
        "code_success": parts.code_success,
    }


def _gold(ground_truth: Any) -> str:
    """verl rows hold the gold as text, a number, or a one-element list."""
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    return "" if ground_truth is None else str(ground_truth)


def _reward(config: RewardConfig) -> ThymeReward:
    """One `ThymeReward` per configuration, shared by verl's threads (its judge keeps its connections and
    verdict cache)."""
    key = (
        config.result_weight,
        config.consistency_bonus,
        config.format_weight,
        config.code_success_weight,
        config.judge,
    )
    with _LOCK:
        if key not in _REWARDS:
            _REWARDS[key] = ThymeReward(config)
        return _REWARDS[key]
