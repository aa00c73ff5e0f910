"""Teach a tiny random model a handful of fixed trajectories by heart (tests and smoke runs).

Why: a random model never closes a `<code>` block, so the agent loop's tool path (run the code, feed the
output back, continue, answer) would go untested with a real model. A 1M-parameter Qwen2.5-VL memorises a few
short trajectories in a few hundred CPU steps; afterwards it writes the code, stops at `</code>`, reads the
real sandbox output we feed back, and answers — every step through the real processor, `generate()` and
sandbox. The loss covers only the model-written pieces, as SFT does (sandbox output is context, not target).

    memorize("models/tiny", [conversation_1, conversation_2], steps=300)   # updates the weights in place
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from thyme.agent.conversation import Conversation


def memorize(
    model_dir: str | os.PathLike[str],
    conversations: Sequence[Conversation],
    *,
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    target_loss: float = 0.02,
) -> float:
    """Train the checkpoint at `model_dir` on `conversations` until the loss is below `target_loss` (or for
    `steps` steps), save it back, and return the final loss."""
    from thyme.agent.backends.transformers import TransformersBackend
    from thyme.train.collate import collate
    from thyme.train.masks import MaskConfig

    torch.manual_seed(seed)
    backend = TransformersBackend.from_pretrained(str(model_dir), device="cpu", dtype="float32")
    # Every model piece is a target (no "only last round"): the scripts must be reproduced whole.
    every_round = MaskConfig(only_last_round=False)
    examples = [
        collate([backend.encoder.example(c, every_round, end_of_turn=False)], backend.pad_id)
        for c in conversations
    ]
    model = backend.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss_value = float("inf")
    for _ in range(steps):
        total = 0.0
        optimizer.zero_grad()
        for example in examples:
            loss = model(**example).loss / len(examples)
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = total
        if loss_value < target_loss:
            break
    model.eval()
    model.save_pretrained(model_dir)
    return loss_value
