"""GRPO rewards: plain, registered functions of one rollout, and their combination as a TRL reward.

REFERENCE.md section 4, without the released code's holes (no negative reward for a wrong answer, nothing
for an empty, missing or repeated answer):

    r = Result x (1 + 0.5 x Consistency) + 0.5 x Format

Rooms: `inputs` (`RewardInput`, TRL's columns -> typed rows), `parts` (format, accuracy, consistency,
code_success), `judge` (the optional LLM judge on an OpenAI-compatible endpoint), `combine` (`RewardConfig`,
`ThymeReward`), `registry` (names -> parts).

    from thyme.rewards import ThymeReward, RewardConfig, get_reward, reward_function
    reward = ThymeReward(RewardConfig())          # rule-based; add judge=JudgeSettings(...) for the judge
    reward(prompts=p, completions=c, answer=gold, rollout=facts, log_metric=...)  # list of floats, as TRL
    get_reward("format")(RewardInput(completion=turn, answer="12"))              # one part, one row
    reward_function("accuracy")                   # one part as a TRL reward function

Registered names: format, accuracy, consistency, code_success, thyme (the default combination); add yours
with `@register_reward("name")`.
"""

from thyme.rewards.combine import (
    PartReward,
    RewardConfig,
    RewardParts,
    ThymeReward,
    reward_function,
    score_parts,
    thyme_reward,
    total,
)
from thyme.rewards.inputs import RewardInput, completion_text, reward_inputs
from thyme.rewards.judge import JudgeSettings, RewardJudge
from thyme.rewards.parts import (
    accuracy_reward,
    code_success_reward,
    consistency_reward,
    final_answer,
    format_reward,
    reasoning_tail,
)
from thyme.rewards.registry import RewardPart, get_reward, register_reward, reward_names

__all__ = [
    "JudgeSettings",
    "PartReward",
    "RewardConfig",
    "RewardInput",
    "RewardJudge",
    "RewardPart",
    "RewardParts",
    "ThymeReward",
    "accuracy_reward",
    "code_success_reward",
    "completion_text",
    "consistency_reward",
    "final_answer",
    "format_reward",
    "get_reward",
    "reasoning_tail",
    "register_reward",
    "reward_function",
    "reward_inputs",
    "reward_names",
    "score_parts",
    "thyme_reward",
    "total",
]
