"""`ThymeSFTTrainer`: TRL's `SFTTrainer` with two seams filled, nothing else changed.

TRL keeps the loss (token-summed NLL over `labels != -100`, normalised by the tokens of the whole
accumulated batch), logging, checkpointing, resume and distribution. We extend two documented seams:

- `create_optimizer` (transformers: "subclass and override this method"): the same AdamW parameter groups
  with and without weight decay, split once more so the vision tower learns at `vision_lr_scale` times the
  learning rate (the schedule scales every group alike). The optimizer class and its settings stay TRL's.
- `compute_loss`: TRL's loss, plus the optional per-patch auxiliary vision loss (`train.config.AuxLoss`):
  a forward hook keeps the vision tower's merged tokens of the same forward pass, a linear head
  (`model.thyme_aux_head`) predicts each token's class, and a weighted cross-entropy against the batch's
  `patch_labels` is added, divided by the accumulation steps as TRL does for its own auxiliary losses.

Two repairs, each a transformers behaviour that would make the numbers wrong:
- Qwen2.5-VL declares `accepts_loss_kwargs = False` (its own loss takes no token count), so the Trainer
  skips counting the label tokens of the accumulated, all-device batch, and TRL's loss falls back to a mean
  per micro-batch and per process. TRL computes the loss itself (its fused head), so we let the Trainer
  count: the loss is the token mean over the whole optimizer batch, and 2 processes with batch b train
  exactly as 1 process with batch 2b (or b with 2 accumulation steps).
- transformers writes checkpoints of Qwen2.5-VL in the hub's key layout (`save_original_format`) but
  resumes them with a plain `load_state_dict`, so a resumed run silently starts from the base weights
  (huggingface/transformers#43701, open). Checkpoints are therefore written in the model's own layout,
  which both `from_pretrained` and the resume path read; the final model is saved in the hub layout.

    trainer = ThymeSFTTrainer(model=model, args=trl_args, train_dataset=ds, data_collator=collator,
                              processing_class=processor, vision_lr_scale=3.0, aux=AuxLoss(classes=9))
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from trl import SFTTrainer

from thyme.train.config import AuxLoss
from thyme.train.masks import IGNORE_INDEX

AUX_HEAD = "thyme_aux_head"


def vision_module(model: nn.Module) -> nn.Module:
    """The vision tower (`...visual`) of a Qwen2.5-VL-family model, wrapped by PEFT or not."""
    for name, module in model.named_modules():
        if name == "visual" or name.endswith(".visual"):
            return module
    raise ValueError(
        f"{type(model).__name__} has no vision tower named 'visual'; is it a Qwen2-VL-family model?"
    )


def attach_aux_head(model: nn.Module, aux: AuxLoss) -> nn.Linear:
    """Add the auxiliary head to `model` (saved in checkpoints, so a resumed run restores it)."""
    config = model.config
    width = getattr(config.vision_config, "out_hidden_size", None) or config.get_text_config().hidden_size
    head = nn.Linear(width, aux.classes)
    setattr(model, AUX_HEAD, head)
    return head


def is_vision_parameter(name: str) -> bool:
    return ".visual." in f".{name}"


class ThymeSFTTrainer(SFTTrainer):
    """`SFTTrainer` plus a vision learning-rate scale and the optional per-patch auxiliary loss."""

    def __init__(self, *args: Any, vision_lr_scale: float = 1.0, aux: AuxLoss | None = None, **kwargs: Any):
        self.vision_lr_scale = vision_lr_scale
        self.aux = aux
        self._vision_tokens: torch.Tensor | None = None
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # TRL's loss takes the token count (see the docstring)
        checkpoints_in_model_layout(self.model)
        if aux is not None:
            vision_module(self.model).register_forward_hook(self._keep_vision_tokens)

    # -- optimizer --------------------------------------------------------------------------------------
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None and self.vision_lr_scale != 1.0:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    groups.setdefault((name in decay, is_vision_parameter(name)), []).append(param)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            base_lr = kwargs.get("lr", self.args.learning_rate)
            params = [
                {
                    "params": ps,
                    "weight_decay": self.args.weight_decay if decayed else 0.0,
                    "lr": base_lr * (self.vision_lr_scale if vision else 1.0),
                }
                for (decayed, vision), ps in sorted(groups.items())
            ]
            self.optimizer = optimizer_cls(params, **kwargs)
            return self.optimizer
        return super().create_optimizer(model)

    # -- loss -------------------------------------------------------------------------------------------
    def _keep_vision_tokens(self, module, args, output) -> None:
        self._vision_tokens = output.pooler_output  # [merged tokens of every image in the batch, hidden]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        patch_labels = inputs.pop("patch_labels", None)
        self._vision_tokens = None
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.aux is None or patch_labels is None or self._vision_tokens is None:
            return result
        loss, outputs = result if return_outputs else (result, None)
        aux_loss, accuracy = self._aux_loss(model, self._vision_tokens, patch_labels)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["aux_vision_loss"].append(float(aux_loss.detach()))
        if accuracy is not None:
            self._metrics[mode]["aux_vision_accuracy"].append(accuracy)
        steps = (
            self.current_gradient_accumulation_steps
            if (num_items_in_batch is not None and mode == "train")
            else 1
        )
        loss = loss + self.aux.weight * aux_loss / steps
        return (loss, outputs) if return_outputs else loss

    def _aux_loss(
        self, model, tokens: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, float | None]:
        head = _unwrap_attr(model, AUX_HEAD)
        logits = head(tokens.to(head.weight.dtype))  # [N, classes]
        labels = labels.to(logits.device)
        if logits.shape[0] != labels.shape[0]:
            raise ValueError(f"{logits.shape[0]} vision tokens but {labels.shape[0]} patch labels")
        weight = torch.ones(self.aux.classes, device=logits.device, dtype=logits.dtype)
        weight[0] = self.aux.background_weight
        if not (labels != IGNORE_INDEX).any():
            return logits.sum() * 0.0, None
        loss = nn.functional.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)
        found = labels > 0
        accuracy = float((logits.argmax(-1)[found] == labels[found]).float().mean()) if found.any() else None
        return loss, accuracy


def checkpoints_in_model_layout(model: nn.Module) -> None:
    """Make the trainer's `save_pretrained` calls keep the model's own key layout (see the docstring)."""
    if isinstance(model, PreTrainedModel):
        model.save_pretrained = functools.partial(
            type(model).save_pretrained, model, save_original_format=False
        )


def release_checkpoint_layout(model: nn.Module) -> None:
    """Undo `checkpoints_in_model_layout` before the final save (the hub layout vLLM and others read)."""
    model.__dict__.pop("save_pretrained", None)


def _unwrap_attr(model: nn.Module, name: str) -> nn.Module:
    """`model.<name>` through DDP (`.module`) and PEFT (`.base_model.model`) wrappers."""
    queue, seen = [model], set()
    while queue:
        candidate = queue.pop(0)
        if candidate is None or id(candidate) in seen:
            continue
        seen.add(id(candidate))
        found = candidate._modules.get(name) if isinstance(candidate, nn.Module) else None
        if found is not None:
            return found
        queue += [getattr(candidate, attr, None) for attr in ("module", "base_model", "model")]
    raise AttributeError(f"the model has no {name}")
