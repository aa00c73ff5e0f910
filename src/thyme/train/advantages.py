"""Group-relative advantages of GRPO: one pure function, TRL's options and the reference's formula.

    A_i = (r_i - mean of its group) / (std of its group + 1e-4)        (scale="group", the default)

`rewards` holds the rollouts of `group` consecutive copies of each prompt (TRL's sampler order). `scale`:
"group" divides by the group's standard deviation (Bessel-corrected, as TRL's `nanstd`), "batch" by the
whole batch's, "none" only centres. A reward of NaN (no reward function could score the rollout) is left
out of the mean and std, and its advantage is 0. This is what TRL's own `_generate_and_score_completions`
computes (`multi_objective_aggregation="sum_then_normalize"`), which our rollout override replaces; the tests
check it against hand-computed values.
"""

from __future__ import annotations

from typing import Literal

import torch

Scale = Literal["group", "batch", "none"]
EPS = 1e-4


def _nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaN (TRL's `nanstd`)."""
    mean = torch.nanmean(values, dim=dim, keepdim=dim is not None)
    count = (~torch.isnan(values)).sum(dim=dim) if dim is not None else (~torch.isnan(values)).sum()
    squares = (
        torch.nansum((values - mean) ** 2, dim=dim) if dim is not None else torch.nansum((values - mean) ** 2)
    )
    return torch.sqrt(squares / (count - 1).clamp(min=1))


def group_advantages(rewards: torch.Tensor, group: int, scale: Scale = "group") -> torch.Tensor:
    """[N] rewards, N a multiple of `group` -> [N] advantages (see the module docstring)."""
    if rewards.dim() != 1 or rewards.numel() % group:
        raise ValueError(f"{tuple(rewards.shape)} rewards do not split into groups of {group}")
    grouped = rewards.view(-1, group)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group)
    centred = rewards - mean
    if scale == "group":
        centred = centred / (_nanstd(grouped, dim=1).repeat_interleave(group) + EPS)
    elif scale == "batch":
        centred = centred / (_nanstd(rewards) + EPS)
    elif scale != "none":
        raise ValueError(f"scale={scale!r}: choose group, batch or none")
    return torch.nan_to_num(centred, nan=0.0)
