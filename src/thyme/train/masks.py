"""Which tokens of a training sequence carry loss: one pure function, the reference's rules as options.

Every token of an encoded sample has a role: the prompt (system and user turn), a model-written piece of the
assistant turn, or a sandbox piece (`<sandbox_output>`, what it holds, `</sandbox_output>`). The rules
(REFERENCE.md, section 5; the paper's SFT ablation shows each matters):

- the prompt never carries loss, nor does any vision placeholder token (image pads, vision start/end);
- `mask_sandbox` (default on): sandbox output carries no loss, its tags included. Off, its text is trained
  like the model's (the paper's "naive SFT"); its images never are;
- `only_last_round` (default on): in a turn with two or more sandbox outputs, model tokens up to the
  second-to-last `</sandbox_output>` carry no loss. In T0 C0 S0 T1 C1 S1 T2 A the model trains on T1 C1 T2 A;
  with one sandbox output or none, on every model token.

    keep = loss_mask(roles, vision, MaskConfig())      # one bool per token
    labels = [t if k else -100 for t, k in zip(ids, keep)]

GRPO reads the same roles: its `tool_mask` is "not sandbox" over the completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROMPT, MODEL, SANDBOX = 0, 1, 2
IGNORE_INDEX = -100


@dataclass(frozen=True)
class MaskConfig:
    """The loss-mask rules; the defaults are the reference's."""

    mask_sandbox: bool = True
    only_last_round: bool = True


DEFAULT_MASKS = MaskConfig()


def rounds(roles: Sequence[int]) -> list[int]:
    """Per token, how many sandbox outputs end before it (a run of sandbox tokens is one output)."""
    out, done, previous = [], 0, PROMPT
    for role in roles:
        if previous == SANDBOX and role != SANDBOX:
            done += 1
        out.append(done)
        previous = role
    return out


def loss_mask(roles: Sequence[int], vision: Sequence[bool], config: MaskConfig = DEFAULT_MASKS) -> list[bool]:
    """True where a token carries loss.

    roles:  PROMPT, MODEL or SANDBOX per token.
    vision: True per vision placeholder token (never trained).
    """
    if len(roles) != len(vision):
        raise ValueError(f"{len(roles)} roles but {len(vision)} vision flags")
    per_token = rounds(roles)
    outputs = per_token[-1] + (1 if roles and roles[-1] == SANDBOX else 0) if roles else 0
    first_trained = outputs - 1 if config.only_last_round and outputs >= 2 else 0
    keep = []
    for role, is_vision, done in zip(roles, vision, per_token, strict=True):
        if is_vision or role == PROMPT:
            keep.append(False)
        elif role == SANDBOX:
            keep.append(not config.mask_sandbox and done >= first_trained)
        else:
            keep.append(done >= first_trained)
    return keep


def apply_mask(ids: Sequence[int], keep: Sequence[bool]) -> list[int]:
    """Labels: the id where the token carries loss, IGNORE_INDEX elsewhere."""
    return [t if k else IGNORE_INDEX for t, k in zip(ids, keep, strict=True)]
