"""Rollouts of the agent loop as the tensors TRL's GRPO loss reads, and the facts rewards and logs need.

A rollout is a `Trajectory` of `thyme.agent` (one question, the model's turn with the sandbox's output
inside it). It is encoded by the one encoder generation used (`thyme.models.encoding.Encoder.example`), so
the ids are exactly those the model produced and was fed (its generated token ids for model pieces, sandbox
feedback tokenised as the loop appended it). The prompt is everything before the assistant turn; the
completion is the assistant turn: model tokens and sandbox tokens (tags, text, images) alike, since they all
condition what follows. Only model-written tokens carry loss (`tool_mask`), as REFERENCE.md section 3 says:
image tokens and everything between `<sandbox_output>` and `</sandbox_output>`, tags included, get none.

    batch = encode_rollouts(trajectories, encoder, pad_id=tokenizer.pad_token_id)
    batch.tensors()     # prompt_ids [B, P] (left-padded), prompt_mask, completion_ids [B, C] (right-padded),
                        # completion_mask (attention: 1 on every real token), tool_mask (loss: model tokens),
                        # mm_token_type_ids [B, P + C], pixel_values, image_grid_thw, num_images (list[int])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from thyme.agent.events import Final, ModelText, Observation
from thyme.models.encoding import Encoder, Example
from thyme.train.masks import MODEL


@dataclass(frozen=True)
class RolloutFacts:
    """What happened in one rollout, for rewards and logs.

    reason: how the trajectory ended (`Final.reason`: answer, eos, max_steps, length, repetition, context,
            error).
    """

    code_calls: int
    code_errors: int
    steps: int
    reason: str
    answer: str | None
    repetition_stopped: bool
    truncated: bool

    @classmethod
    def of(cls, traj) -> RolloutFacts:
        observations = [e for e in traj.events if isinstance(e, Observation) and e.fed_back]
        texts = [e for e in traj.events if isinstance(e, ModelText)]
        final = next((e for e in reversed(traj.events) if isinstance(e, Final)), None)
        reason = final.reason if final is not None else "error"
        return cls(
            code_calls=len(observations),
            code_errors=sum(1 for o in observations if not o.ok),
            steps=len(texts),
            reason=reason,
            answer=final.answer if final is not None else None,
            repetition_stopped=any(t.finish_reason == "repetition" for t in texts),
            truncated=reason in ("length", "context", "max_steps"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "code_calls": self.code_calls,
            "code_errors": self.code_errors,
            "steps": self.steps,
            "reason": self.reason,
            "repetition_stopped": self.repetition_stopped,
            "truncated": self.truncated,
        }


@dataclass
class RolloutBatch:
    """Encoded rollouts, one row each, in the order given."""

    examples: list[Example]
    loss: list[list[int]]  # per row, 1 on completion tokens that carry loss
    pad_id: int

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        """The keys of TRL's GRPO loss, `prompt_ids` first (TRL's batch split reads the first key)."""
        prompts = [e.ids[: e.prompt_len] for e in self.examples]
        completions = [e.ids[e.prompt_len :] for e in self.examples]
        longest_p, longest_c = max(map(len, prompts)), max(map(len, completions))
        rows = len(self.examples)
        prompt_ids = torch.full((rows, longest_p), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((rows, longest_p), dtype=torch.long)
        completion_ids = torch.full((rows, longest_c), self.pad_id, dtype=torch.long)
        completion_mask = torch.zeros((rows, longest_c), dtype=torch.long)
        tool_mask = torch.zeros((rows, longest_c), dtype=torch.long)
        types = torch.zeros((rows, longest_p + longest_c), dtype=torch.long)
        for row, (e, p, c, loss) in enumerate(
            zip(self.examples, prompts, completions, self.loss, strict=True)
        ):
            prompt_ids[row, longest_p - len(p) :] = torch.tensor(p, dtype=torch.long)
            prompt_mask[row, longest_p - len(p) :] = 1
            completion_ids[row, : len(c)] = torch.tensor(c, dtype=torch.long)
            completion_mask[row, : len(c)] = 1
            tool_mask[row, : len(c)] = torch.tensor(loss, dtype=torch.long)
            types[row, longest_p - len(p) : longest_p] = torch.tensor(e.mm_types[: e.prompt_len])
            types[row, longest_p : longest_p + len(c)] = torch.tensor(e.mm_types[e.prompt_len :])
        out: dict[str, Any] = {
            "prompt_ids": prompt_ids.to(device),
            "prompt_mask": prompt_mask.to(device),
            "completion_ids": completion_ids.to(device),
            "completion_mask": completion_mask.to(device),
            "tool_mask": tool_mask.to(device),
            "mm_token_type_ids": types.to(device),
        }
        pixels = [p for e in self.examples for p in e.pixels]
        if pixels:
            out["pixel_values"] = torch.cat(pixels).to(device)
            out["image_grid_thw"] = torch.stack([g for e in self.examples for g in e.grids]).to(device)
            out["num_images"] = [len(e.pixels) for e in self.examples]
        return out

    @property
    def completion_ids(self) -> list[list[int]]:
        return [e.ids[e.prompt_len :] for e in self.examples]

    @property
    def loss_tokens(self) -> list[int]:
        return [sum(loss) for loss in self.loss]


def encode_rollouts(trajectories: Sequence, encoder: Encoder, *, pad_id: int) -> RolloutBatch:
    """Encode each trajectory's prompt and assistant turn; loss on model-written, non-vision tokens only.

    A trajectory that ended in an error (the backend or the sandbox failed, not the model's code) keeps its
    tokens but carries no loss.
    """
    examples, losses = [], []
    for traj in trajectories:
        example = encoder.example(traj.conversation, end_of_turn=False)
        failed = RolloutFacts.of(traj).reason == "error"
        completion = range(example.prompt_len, len(example.ids))
        losses.append(
            [
                int(not failed and example.roles[i] == MODEL and example.ids[i] not in encoder.vision_ids)
                for i in completion
            ]
        )
        examples.append(example)
    if any(len(e.ids) == e.prompt_len for e in examples):
        # TRL needs at least one completion position per row; an empty turn gets one pad token, no loss.
        for e, loss in zip(examples, losses, strict=True):
            if len(e.ids) == e.prompt_len:
                e.ids.append(pad_id)
                e.mm_types.append(0)
                e.roles.append(MODEL)
                loss.append(0)
    return RolloutBatch(examples, losses, pad_id)
