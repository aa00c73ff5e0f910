"""The vLLM backend: the offline engine (`vllm.LLM`) on GPUs, every request of a round in one batched call.

How a step runs. Each request's conversation is rendered with the checkpoint's chat template, exactly as the
transformers backend renders a fresh prompt (`add_generation_prompt` for an empty assistant turn,
`continue_final_message` to continue one), its images are loaded with PIL in order, and all requests go to one
`LLM.generate` call, each with its own `vllm.SamplingParams`. Nothing is kept between steps but vLLM's prefix
cache (on by default in the V1 engine), which serves the re-rendered prefix of a trajectory's next step.

The answer is put in the canonical form of `thyme.agent.backends.base`: the text is decoded from the generated
token ids (as the transformers backend decodes it), without the end-of-sequence token, and ends with the stop
string that ended it (`include_stop_str_in_output=True`; `stop_reason` names it).

What an offline request cannot do (no per-token control without a custom logits processor), and what we do:
- ATS is segment-wise (`thyme.agent.ats.segment_stops`): a text leg at the text temperature that also stops at
  `<code>`, then a code leg at the code temperature (0: greedy) from the prompt plus the text so far, until
  `</code>`; legs alternate until a stop the caller asked for, EOS or the token budget. Each round of legs is
  one batched `LLM.generate`.
- The repetition guard runs over the output token ids after generation. Where it fires the text is cut and
  the step reports "repetition"; the tokens the engine generated past that point are thrown away.
- A prompt that does not fit `max_model_len` is never submitted (vLLM would fail the whole batch): that
  request ends with "context". Its length is the tokenizer's count plus each image's vision tokens, from the
  image processor's own size rule.
- Vision placeholder tokens are banned with `bad_words`: each is a single special token, so vLLM masks it at
  every step.

API followed: the V1 engine's offline API as of vLLM 0.10-0.11, unchanged since; the `vllm` extra asks for
vLLM 0.22.0 to 0.31.0, the range TRL 1.16 supports (GRPO rollouts run on TRL's engine; 0.19.1 is the first
release that accepts transformers 5, which `thyme.models` needs):
- `LLM(model=..., tensor_parallel_size=..., gpu_memory_utilization=..., max_model_len=..., seed=...,
  limit_mm_per_prompt={"image": N}, mm_processor_kwargs={"min_pixels": ..., "max_pixels": ...})`;
- `LLM.generate(prompts, [SamplingParams, ...], use_tqdm=False)`, prompts as
  `{"prompt": text, "multi_modal_data": {"image": [PIL images]}}`;
- `SamplingParams(temperature, top_p, top_k, repetition_penalty, max_tokens, stop, include_stop_str_in_output,
  seed, skip_special_tokens, spaces_between_special_tokens, bad_words)`, top_k -1 = off (releases since
  mid-2025 also read 0 as off; earlier ones reject 0);
- `RequestOutput.prompt_token_ids`, `.outputs[0].token_ids / .text / .finish_reason ("stop" | "length") /
  .stop_reason` (the matched stop string, a stop token id, or None at end-of-sequence).

    backend = VLLMBackend.from_pretrained("Kwai-Keye/Thyme-RL", max_model_len=32768)
    agent = Agent(backend)        # or Agent.from_pretrained(model, backend="vllm", max_model_len=32768)
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from thyme.agent.ats import Leg, plan_leg
from thyme.agent.backends.base import (
    BackendError,
    Generation,
    GenerationRequest,
    ModelNotFoundError,
    model_preset,
)
from thyme.agent.config import SamplingParams
from thyme.agent.conversation import Conversation
from thyme.agent.repetition import RepetitionConfig, RepetitionDetector
from thyme.models.generation import vision_token_ids
from thyme.protocol import CODE_OPEN, cut_at_first_stop, is_code_open, restore_stop_string

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: pip install 'thyme-vl[vllm]' (Linux with a CUDA GPU)"


# -- pure parts: prompts, sampling parameters, legs, outputs ----------------------------------------------
def render_prompt(processor, conversation: Conversation) -> str:
    """The chat-template text of a conversation: a new assistant turn, or the open one continued."""
    continuing = bool(conversation.assistant)
    return processor.apply_chat_template(
        conversation.messages(),
        tokenize=False,
        add_generation_prompt=not continuing,
        continue_final_message=continuing,
    )


def engine_prompt(text: str, images: Sequence[Image.Image]) -> dict[str, Any]:
    """A vLLM prompt: its text holds one `<|vision_start|><|image_pad|><|vision_end|>` per image."""
    prompt: dict[str, Any] = {"prompt": text}
    if images:
        prompt["multi_modal_data"] = {"image": list(images)}
    return prompt


def count_prompt_tokens(
    processor, text: str, image_sizes: Sequence[tuple[int, int]], image_kwargs: dict[str, int]
) -> int:
    """Tokens the engine will see: the text's, with each image placeholder expanded to its vision tokens.

    image_sizes: (width, height) per image, in order (PIL's `size`). image_kwargs: min_pixels / max_pixels.
    """
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    pads = ids.count(processor.tokenizer.convert_tokens_to_ids(processor.image_token))
    if pads != len(image_sizes):
        raise BackendError(
            f"the rendered prompt has {pads} image placeholders for {len(image_sizes)} images "
            f"(does the question contain {processor.image_token!r}?)"
        )
    images = processor.image_processor
    per_token = images.merge_size**2  # patches merged into one vision token
    vision = sum(
        images.get_number_of_image_patches(h, w, dict(image_kwargs)) // per_token for w, h in image_sizes
    )
    return len(ids) - pads + vision


def vision_bad_words(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """The vision placeholder tokens as vLLM `bad_words`; each must encode to exactly its one id."""
    words = tokenizer.convert_ids_to_tokens(list(token_ids))
    for word, token_id in zip(words, token_ids, strict=True):
        if tokenizer.encode(word, add_special_tokens=False) != [token_id]:
            raise BackendError(
                f"vision token {word!r} (id {token_id}) is not a single special token of this tokenizer, "
                "so vLLM's bad_words cannot ban it; is this a Qwen2-VL-family checkpoint?"
            )
    return words


def engine_sampling_kwargs(
    params: SamplingParams, *, stops: Sequence[str], max_tokens: int, bad_words: Sequence[str]
) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one leg sampled with `params` (code_temperature unused).

    Special tokens stay in the text (Thyme tags may be special tokens), the stop string stays at its end.
    """
    kwargs: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "repetition_penalty": params.repetition_penalty,
        "max_tokens": max_tokens,
        "stop": list(stops),
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "bad_words": list(bad_words),
    }
    if params.seed is not None:
        kwargs["seed"] = params.seed
    return kwargs


@dataclasses.dataclass(frozen=True)
class LegOutput:
    """One leg's result in canonical form.

    token_ids: ids of `text` (no end-of-sequence token). generated: ids the step keeps, EOS included.
    reason: "stop" (`stop` says which), "eos", "length" or "repetition".
    """

    text: str
    token_ids: tuple[int, ...]
    reason: str
    stop: str | None
    generated: int


def read_output(completion, *, stops: Sequence[str], eos_ids: Collection[int], tokenizer) -> LegOutput:
    """Canonical text, ids and reason of a vLLM `CompletionOutput` generated with `stops`."""
    if completion.finish_reason not in ("stop", "length"):
        raise BackendError(
            f"vLLM ended a request with finish_reason={completion.finish_reason!r} (aborted?); "
            "see the engine's log above"
        )
    ids = list(completion.token_ids)
    stop_reason = completion.stop_reason
    eos = completion.finish_reason == "stop" and not isinstance(stop_reason, str)
    if eos and ids and (ids[-1] in eos_ids or ids[-1] == stop_reason):
        ids.pop()
    raw = tokenizer.decode(ids, skip_special_tokens=False)
    text, stop = cut_at_first_stop(raw, stops)
    if stop is None and isinstance(stop_reason, str):
        # Our decoding and the engine's detokenizer disagree (rare): the engine saw its stop string.
        text, stop = restore_stop_string(completion.text, "stop", stop_reason), stop_reason
    if text != raw:  # the token that completed the stop carried text after it
        ids = tokenizer.encode(text, add_special_tokens=False)
    reason = "stop" if stop is not None else "eos" if eos else "length"
    return LegOutput(text, tuple(ids), reason, stop, len(ids) + (reason == "eos"))


def repetition_cut(detector: RepetitionDetector, token_ids: Sequence[int]) -> int | None:
    """Feed `token_ids` to the guard; the number of ids up to and including the one it fired at, or None."""
    for i, token_id in enumerate(token_ids):
        if detector.feed(token_id):
            return i + 1
    return None


def apply_repetition_guard(out: LegOutput, detector: RepetitionDetector, tokenizer) -> LegOutput:
    """`out` cut where the guard fired, reason "repetition"; unchanged when it did not fire.

    As in the transformers backend, where the guard stops generation at the token it fires on: a guard that
    fires on the token completing the stop string leaves the stop; one that fires on the last text token
    before an EOS wins (generation would have ended before the EOS).
    """
    cut = repetition_cut(detector, out.token_ids)
    if cut is None or (cut == len(out.token_ids) and out.reason == "stop"):
        return out
    ids = out.token_ids[:cut]
    return LegOutput(tokenizer.decode(list(ids), skip_special_tokens=False), ids, "repetition", None, cut)


# -- the backend --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Row:
    """One request while its legs run."""

    request: GenerationRequest
    prompt: str
    images: list[Image.Image]
    prompt_tokens: int  # counted before the first leg, then the engine's count
    inside_code: bool
    detector: RepetitionDetector | None
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    generated: int = 0
    legs: int = 0
    code_greedy: bool = False
    reason: str | None = None  # set when the step is over
    stop: str | None = None


class VLLMBackend:
    """Generation with vLLM's offline engine.

    llm:           a `vllm.LLM` (or an object with its `generate(prompts, sampling_params, use_tqdm=...)`).
    processor:     the checkpoint's processor (`thyme.models.load_processor`): chat template, tokenizer, image
                   token counts.
    model_config:  the checkpoint's transformers config (its vision placeholder ids are banned).
    max_model_len: the engine's context length (`LLM.llm_engine.model_config.max_model_len`).
    max_images:    images per prompt the engine accepts (`limit_mm_per_prompt`); more ends with "context".
                   The default 11 is the user's image plus `AgentConfig.max_images` (10) fed back.
    eos_token_ids: ids that end a sequence (the tokenizer's and the generation config's).
    sampling_params_cls: `vllm.SamplingParams` (imported when None).
    """

    name = "vllm"
    batched = True

    def __init__(
        self,
        llm,
        processor,
        *,
        model_config,
        max_model_len: int,
        model_id: str = "",
        default_preset: str = "default",
        max_images: int = 11,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        eos_token_ids: Collection[int] | None = None,
        sampling_params_cls=None,
    ) -> None:
        self.llm = llm
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_id = model_id
        self.default_preset = default_preset
        self.context_length = max_model_len
        self.max_images = max_images
        self._image_kwargs = {
            k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None
        }
        self.bad_words = vision_bad_words(self.tokenizer, vision_token_ids(model_config))
        self.eos_ids = set(eos_token_ids or ()) | {self.tokenizer.eos_token_id}
        if sampling_params_cls is None:
            sampling_params_cls = _import_vllm().SamplingParams
        self._sampling_params_cls = sampling_params_cls
        self._lock = threading.Lock()  # one engine call at a time (agenerate runs in threads)

    # -- construction -----------------------------------------------------------------------------------
    @property
    def pixel_bounds(self) -> dict[str, int | None]:
        """The pixel range images are resized into: the overrides given, else the processor's defaults."""
        size = dict(getattr(self.processor.image_processor, "size", None) or {})
        return {
            "min_pixels": self._image_kwargs.get("min_pixels", size.get("shortest_edge")),
            "max_pixels": self._image_kwargs.get("max_pixels", size.get("longest_edge")),
        }

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        max_images: int = 11,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        seed: int = 0,
        default_preset: str | None = None,
        **engine_kwargs: Any,
    ) -> VLLMBackend:
        """Start a vLLM engine on `model` (a local directory or a cached hub id); `engine_kwargs` go to
        `vllm.LLM` (e.g. dtype, enforce_eager). max_model_len None = the checkpoint's."""
        vllm = _import_vllm()
        from transformers import AutoConfig, GenerationConfig

        from thyme.models.processor import load_processor

        try:
            config = AutoConfig.from_pretrained(model)
            processor = load_processor(model)
        except (OSError, ValueError) as exc:  # ValueError: a path that is no directory and no hub id
            raise ModelNotFoundError(
                f"cannot load model {model!r}: {str(exc).splitlines()[0]} "
                "(give a local checkpoint directory or a hub id in the local cache)"
            ) from exc
        try:
            eos = GenerationConfig.from_pretrained(model).eos_token_id
        except OSError:
            eos = None
        image_kwargs = {
            k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None
        }
        options: dict[str, Any] = {
            "model": model,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            "limit_mm_per_prompt": {"image": max_images},
            **({"max_model_len": max_model_len} if max_model_len is not None else {}),
            **({"mm_processor_kwargs": image_kwargs} if image_kwargs else {}),
            **engine_kwargs,
        }
        llm = vllm.LLM(**options)
        return cls(
            llm,
            processor,
            model_config=config,
            max_model_len=llm.llm_engine.model_config.max_model_len,
            model_id=model,
            default_preset=default_preset or model_preset(model),
            max_images=max_images,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            eos_token_ids=[eos] if isinstance(eos, int) else eos,
            sampling_params_cls=vllm.SamplingParams,
        )

    def close(self) -> None:
        """Drop the engine: vLLM stops its engine-core process and frees the GPU once `LLM` is collected."""
        self.llm = None
        gc.collect()

    # -- generation -------------------------------------------------------------------------------------
    async def agenerate(self, request: GenerationRequest) -> Generation:
        return (await asyncio.to_thread(self.generate, [request]))[0]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One step for every request: each round of legs is one batched `LLM.generate` call."""
        if self.llm is None:
            raise BackendError("this vLLM backend was closed; create a new one")
        with self._lock:
            start = time.perf_counter()
            rows = [self._open(r) for r in requests]
            while active := [row for row in rows if row.reason is None]:
                self._round(active)
            duration = time.perf_counter() - start
        return [
            Generation(
                text=row.text,
                finish_reason=row.reason,  # type: ignore[arg-type]
                stop=row.stop,
                token_ids=tuple(row.token_ids),
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.generated,
                duration_s=duration,
                code_greedy=row.code_greedy,
            )
            for row in rows
        ]

    def _open(self, request: GenerationRequest) -> _Row:
        conv = request.conversation
        prompt = render_prompt(self.processor, conv)
        images = [_load_image(p) for p in conv.images]
        count = count_prompt_tokens(self.processor, prompt, [im.size for im in images], self._image_kwargs)
        detector = None
        if request.repetition_threshold is not None:
            detector = RepetitionDetector(RepetitionConfig(threshold=request.repetition_threshold))
        row = _Row(request, prompt, images, count, is_code_open(conv.assistant_text), detector)
        if len(images) > self.max_images:
            log.warning(
                "%d images exceed the engine's limit of %d per prompt (raise max_images)",
                len(images),
                self.max_images,
            )
            row.reason = "context"
        elif count >= self.context_length:
            log.info("prompt of %d tokens fills the %d-token context", count, self.context_length)
            row.reason = "context"
        return row

    def _round(self, rows: list[_Row]) -> None:
        """Plan every row's next leg, run them all in one engine call, fold the outputs in."""
        submitted: list[tuple[_Row, Leg, int]] = []
        for row in rows:
            params = row.request.params
            budget = params.max_new_tokens - row.generated
            room = self.context_length - (row.prompt_tokens + row.generated)
            if budget <= 0:
                row.reason = "length"
            elif room <= 0:
                row.reason = "context"
            else:
                leg = plan_leg(params, row.request.stops, row.inside_code)
                submitted.append((row, leg, min(budget, room)))
        if not submitted:
            return
        prompts = [engine_prompt(row.prompt + row.text, row.images) for row, _, _ in submitted]
        sampling = [
            self._sampling_params_cls(
                **engine_sampling_kwargs(leg.params, stops=leg.stops, max_tokens=n, bad_words=self.bad_words)
            )
            for _, leg, n in submitted
        ]
        try:
            outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        except ValueError as exc:  # vLLM validates every request before it runs any (VLLMValidationError too)
            raise BackendError(f"vLLM refused the batch: {exc}") from exc
        for (row, leg, max_tokens), output in zip(submitted, outputs, strict=True):
            self._absorb(row, leg, max_tokens, output)

    def _absorb(self, row: _Row, leg: Leg, max_tokens: int, output) -> None:
        if row.legs == 0:
            row.prompt_tokens = len(output.prompt_token_ids)
        row.legs += 1
        out = read_output(output.outputs[0], stops=leg.stops, eos_ids=self.eos_ids, tokenizer=self.tokenizer)
        if row.detector is not None:
            out = apply_repetition_guard(out, row.detector, self.tokenizer)
        budget = row.request.params.max_new_tokens - row.generated
        row.text += out.text
        row.token_ids += out.token_ids
        row.generated += out.generated
        row.code_greedy |= leg.code and leg.params.greedy and bool(out.token_ids)
        if out.reason == "stop" and out.stop not in row.request.stops:
            row.inside_code = out.stop == CODE_OPEN  # an ATS segment ended: the next leg continues the step
        elif out.reason == "length" and max_tokens < budget:
            row.reason = "context"  # cut short by the context window, not by max_new_tokens
        else:
            row.reason, row.stop = out.reason, out.stop


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise BackendError(f"the vllm backend needs vLLM, which is not installed; {INSTALL_HINT}") from exc
    return vllm


def _load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read image {path}: {exc}") from exc
