"""A stand-in for verl's server manager that really generates: a tiny Qwen2.5-VL behind verl's API.

verl's own CPU tests drive agent loops with a fake server manager (an object with `async generate(request_id,
*, prompt_ids, sampling_params, image_data, ...) -> TokenOutput`). Ours answers with a real model, so a
rollout through it is a real trajectory: the ids it receives must hold every image's vision tokens (as
vLLM needs: it checks them against `image_data`), it stops at the stop strings after the token that
completed one (as vLLM does, that token stays in `token_ids`), an EOS that ended generation is included,
and log-probs are those of the raw logits (vLLM's `raw_logprobs` mode). Every call is recorded for the tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class TokenOutput:
    """The fields of verl's `TokenOutput` an agent loop reads (verl's own class is used where installed)."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    stop_reason: str | None = "completed"
    num_preempted: int | None = None
    extra_fields: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Call:
    request_id: str
    prompt_ids: list[int]
    sampling_params: dict[str, Any]
    images: int
    token_ids: list[int]


class ModelServerManager:
    """`generate` with verl's signature over a transformers Qwen2.5-VL checkpoint (CPU, one call at a time).

    output_cls: what `generate` returns (`verl.workers.rollout.replica.TokenOutput` in the verl test).
    """

    def __init__(self, model_dir, output_cls=TokenOutput) -> None:
        from transformers import AutoModelForImageTextToText

        from thyme.models.generation import suppress_vision_tokens
        from thyme.models.processor import load_processor

        self.model = AutoModelForImageTextToText.from_pretrained(str(model_dir)).eval()
        self.processor = load_processor(str(model_dir))
        self.tokenizer = self.processor.tokenizer
        self.image_pad = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.suppress = suppress_vision_tokens(self.model.config)
        self.output_cls = output_cls
        self.calls: list[Call] = []

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        params = dict(sampling_params)
        ids = torch.tensor([list(prompt_ids)])
        types = (ids == self.image_pad).int()
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": types,
        }
        images = list(image_data or [])
        if images:
            pixels = self.processor.image_processor(
                images=images, return_tensors="pt", **(mm_processor_kwargs or {})
            )
            grids = pixels["image_grid_thw"]
            expected = int(sum(int(g.prod()) for g in grids)) // self.processor.image_processor.merge_size**2
            if int(types.sum()) != expected:  # vLLM rejects such a prompt too
                raise ValueError(
                    f"{int(types.sum())} image tokens in the prompt for {expected} image features"
                )
            inputs["pixel_values"], inputs["image_grid_thw"] = pixels["pixel_values"], grids
        temperature = float(params.get("temperature", 1.0))
        sampling = {"do_sample": False}
        if temperature > 0:
            top_k = int(params.get("top_k", -1))
            sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k if top_k > 0 else None}
            sampling["top_p"] = float(params.get("top_p", 1.0))
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=int(params["max_tokens"]),
                stop_strings=list(params.get("stop") or []) or None,
                tokenizer=self.tokenizer,
                logits_processor=self.suppress,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        new = out.sequences[0, len(prompt_ids) :].tolist()
        log_probs = None
        if params.get("logprobs"):
            log_probs = [
                float(torch.log_softmax(logits[0].float(), dim=-1)[token])
                for logits, token in zip(out.logits, new, strict=False)
            ]
        self.calls.append(Call(request_id, list(prompt_ids), params, len(images), new))
        return self.output_cls(token_ids=new, log_probs=log_probs, stop_reason="completed")
