"""The reward registry: reward parts by name, so configs can name them and users can add their own.

A reward part is a plain function of one rollout, `part(inp: RewardInput, judge: RewardJudge | None)
-> float | None` (None: this row cannot be scored by this part). The built-in parts register themselves
when `thyme.rewards` is imported; a user adds one the same way and can then name it in
`RewardConfig.extra_terms` or wrap it for TRL with `thyme.rewards.reward_function(name)`:

    @register_reward("short_code")
    def short_code(inp: RewardInput, judge: RewardJudge | None = None) -> float:
        return 1.0 if inp.code_calls <= 2 else 0.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from thyme.rewards.judge import RewardJudge
    from thyme.rewards.parts import RewardInput

RewardPart: TypeAlias = "Callable[[RewardInput, RewardJudge | None], float | None]"

_REWARDS: dict[str, RewardPart] = {}


def register_reward(name: str) -> Callable[[RewardPart], RewardPart]:
    """Decorator: register `part` under `name` (a name can be registered once)."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"reward name {name!r} must be letters, digits and underscores")

    def add(part: RewardPart) -> RewardPart:
        if name in _REWARDS and _REWARDS[name] is not part:
            raise ValueError(f"a reward named {name!r} is already registered; choose another name")
        _REWARDS[name] = part
        return part

    return add


def get_reward(name: str) -> RewardPart:
    """The reward part registered under `name`; a one-line error listing the valid names otherwise."""
    try:
        return _REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(reward_names())}") from None


def reward_names() -> tuple[str, ...]:
    """Registered reward names, sorted."""
    return tuple(sorted(_REWARDS))
