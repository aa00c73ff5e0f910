"""The transformers backend: any Qwen2.5-VL-family checkpoint on CPU or GPU, batched, with KV reuse.

How a step is encoded. The first step renders the chat template and runs the processor over all images.
After that the backend continues at the token level: the ids it fed plus the ids the model generated, then
only the new pieces (sandbox feedback, images expanded to their vision tokens by the processor). Nothing is
re-tokenised, so the model sees exactly the tokens it produced, and the KV cache of a single trajectory
stays valid across steps.

KV reuse across an inserted image is correct because the mRoPE positions are recomputed for the whole
sequence (`get_rope_index` over every image's grid) and handed to `generate()` explicitly, while only the
new images' pixels go through the vision tower. A test compares the logits with and without reuse.
Batched steps (several trajectories in one `generate()`) re-encode every row's prompt: left padding
changes with every round, so the rows' caches would not line up; the encoded pixels are kept, though.

Per step: vision placeholder tokens are suppressed (`thyme.models.generation`), stop strings end rows
independently, the repetition guard runs per row as a stopping criterion, and ATS (`ats_logits`) decodes
code greedily inside the same `generate()` call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LogitsProcessorList, StoppingCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from thyme.agent.backends.ats_logits import CodeGreedyLogitsProcessor
from thyme.agent.backends.base import (
    BackendError,
    Generation,
    GenerationRequest,
    ModelNotFoundError,
    check_device,
    model_preset,
)
from thyme.agent.config import SamplingParams
from thyme.agent.conversation import Conversation, Piece
from thyme.agent.repetition import RepetitionConfig, RepetitionDetector
from thyme.models.encoding import Encoded, Encoder, EncodingError
from thyme.models.generation import SuppressVisionTokens
from thyme.models.processor import load_processor
from thyme.models.quiet import no_progress_bars
from thyme.protocol import TextPart, cut_at_first_stop, is_code_open

log = logging.getLogger(__name__)

# What this transformers release calls the KV cache, in `generate()`'s keyword arguments and in its output:
# `past_key_values` up to 5.2x, `cache` from 5.25 (which still accepts the old keyword, deprecated). Reading
# the wrong attribute finds nothing, so KV reuse would silently stop; the name is read from the release.
_CACHE_FIELDS = [f.name for f in dataclasses.fields(GenerateDecoderOnlyOutput)]
CACHE_KEY = next((n for n in ("cache", "past_key_values") if n in _CACHE_FIELDS), None)


@dataclasses.dataclass
class _Encoded:
    """One trajectory as token ids, plus its images' processor outputs and (optionally) its KV cache.

    covers: the assistant pieces these ids encode (the loop appends, so a prefix check validates reuse).
    """

    ids: list[int]
    mm_types: list[int]
    pixels: list[torch.Tensor]  # one [patches, dim] tensor per image, in order
    grids: list[torch.Tensor]  # one [3] (t, h, w) tensor per image
    covers: tuple[Piece, ...]
    cache: Any = None
    cached_images: int = 0  # images whose features are in `cache`
    cache_valid: int = 0  # leading ids the cache is known to hold (it may hold more: a later step grew it)


class _RepetitionStop(StoppingCriteria):
    """Per-row repetition guard over the generated token ids."""

    def __init__(self, rows: int, config: RepetitionConfig) -> None:
        self.detectors = [RepetitionDetector(config) for _ in range(rows)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        hit = [d.triggered or d.feed(t) for d, t in zip(self.detectors, last, strict=True)]
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


class _TokenSink(StoppingCriteria):
    """Hands the new token ids of a one-row generation to `on_tokens` after every step (a server streams
    them); the generation stops when it returns False (the client went away)."""

    def __init__(self, prompt_len: int, on_tokens: Callable[[list[int]], bool]) -> None:
        self.prompt_len = prompt_len
        self.on_tokens = on_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        keep = self.on_tokens(input_ids[0, self.prompt_len :].tolist())
        return torch.full((input_ids.shape[0],), not keep, dtype=torch.bool, device=input_ids.device)


class TransformersBackend:
    """Local generation with `AutoModelForImageTextToText` and the checkpoint's processor.

    min_pixels / max_pixels: the processor's resize bounds for every image (None = the checkpoint's).
    """

    name = "transformers"
    batched = True

    def __init__(
        self,
        model,
        processor,
        *,
        model_id: str = "",
        default_preset: str = "default",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_id = model_id
        self.default_preset = default_preset
        self.encoder = Encoder(processor, min_pixels=min_pixels, max_pixels=max_pixels)
        config = model.config
        text_config = getattr(config, "text_config", config)
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        self.image_token_id = int(config.image_token_id)
        self._suppress = SuppressVisionTokens(config, device=str(model.device))
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self._lock = threading.Lock()  # one generate() at a time: the model and tokenizer are not thread safe
        # Since load: prompt tokens run through the model (prefill) and those served from a kept KV cache,
        # generate() calls and their decoding steps (one per new token of the longest row).
        self.stats = {"prefill_tokens": 0, "cached_tokens": 0, "generate_calls": 0, "decode_steps": 0}
        self._said_no_cache = False

    @property
    def pixel_bounds(self) -> dict[str, int | None]:
        """The pixel range every image is resized into: {"min_pixels", "max_pixels"} (the protocol card)."""
        return self.encoder.pixel_bounds

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        default_preset: str | None = None,
    ) -> TransformersBackend:
        """Load a local directory or a cached hub id. device: auto | cpu | cuda[:N]; dtype: auto | float32 |
        bfloat16 | float16 (auto = bfloat16 on GPU, float32 on CPU)."""
        local = Path(model).expanduser()
        if (local.is_absolute() or model.startswith(".") or local.exists()) and not (
            local / "config.json"
        ).is_file():
            raise ModelNotFoundError(
                f"cannot load model {model!r}: no config.json there; give a checkpoint directory "
                "(`thyme models tiny --out DIR` builds a test model)"
            )
        check_device(device)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = _dtype(dtype, device)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            with no_progress_bars():  # the caller says "loading"; a weights bar on every run is noise
                net = AutoModelForImageTextToText.from_pretrained(model, **kwargs).to(device)
            processor = load_processor(model)
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load model {model!r}: {str(exc).splitlines()[0]} "
                "(give a local checkpoint directory; `thyme models tiny --out DIR` builds a test model)"
            ) from exc
        preset = default_preset or model_preset(model)
        return cls(
            net,
            processor,
            model_id=model,
            default_preset=preset,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""

    # -- generation -------------------------------------------------------------------------------------
    async def agenerate(self, request: GenerationRequest) -> Generation:
        import asyncio

        return (await asyncio.to_thread(self.generate, [request]))[0]

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_tokens: Callable[[list[int]], bool] | None = None,
    ) -> list[Generation]:
        """Generate one step for each request; requests with equal sampling settings share a batch.

        on_tokens: stream a one-request step: called after every token with the ids generated so far;
        returning False ends the step there (see `TokenStreaming`).
        """
        if on_tokens is not None and len(requests) != 1:
            raise ValueError("on_tokens streams one request; generate the others without it")
        with self._lock:
            if on_tokens is not None:
                return self._generate_group(list(requests), on_tokens)
            return self._generate(requests)

    def _generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            key = (request.params, request.stops, request.repetition_threshold)
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            for i, generation in zip(
                indices, self._generate_group([requests[i] for i in indices]), strict=True
            ):
                results[i] = generation
        return [r for r in results if r is not None]

    def _generate_group(
        self, requests: list[GenerationRequest], on_tokens: Callable[[list[int]], bool] | None = None
    ) -> list[Generation]:
        start = time.perf_counter()
        encoded = [self._encode(r.conversation, r.state) for r in requests]
        return self._generate_encoded(requests, encoded, start, on_tokens)

    def _generate_encoded(
        self,
        requests: list[GenerationRequest],
        encoded: list[_Encoded],
        start: float,
        on_tokens: Callable[[list[int]], bool] | None = None,
    ) -> list[Generation]:
        """Generate the encoded rows; rows whose prompt fills the context end with finish_reason "context"."""
        results: list[Generation | None] = [None] * len(requests)
        fitting = []
        for i, enc in enumerate(encoded):
            if self.context_length is not None and len(enc.ids) >= self.context_length:
                log.info("prompt of %d tokens fills the %d-token context", len(enc.ids), self.context_length)
                results[i] = Generation(text="", finish_reason="context", prompt_tokens=len(enc.ids))
            else:
                fitting.append(i)
        if fitting:
            generated = self._run_generate(
                [requests[i] for i in fitting], [encoded[i] for i in fitting], start, on_tokens
            )
            for i, generation in zip(fitting, generated, strict=True):
                results[i] = generation
        return [r for r in results if r is not None]

    def generate_rendered(
        self,
        prompt: str,
        images: Sequence[Image.Image],
        params: SamplingParams,
        stops: Sequence[str] = (),
        repetition_threshold: float | None = None,
        on_tokens: Callable[[list[int]], bool] | None = None,
    ) -> Generation:
        """Generate from an already rendered chat prompt (servers handling arbitrary OpenAI messages).

        `prompt` must contain one `<|vision_start|><|image_pad|><|vision_end|>` per image, in order.
        on_tokens: called after every step with all the ids generated so far (streaming); returning False
        stops the generation there.
        """
        with self._lock:
            start = time.perf_counter()
            enc = self._tokenize(prompt, list(images))
            request = GenerationRequest(
                Conversation(system="", user=()), params, tuple(stops), repetition_threshold
            )
            return self._generate_encoded([request], [enc], start, on_tokens)[0]

    def _run_generate(
        self,
        requests: list[GenerationRequest],
        encoded: list[_Encoded],
        start: float,
        on_tokens: Callable[[list[int]], bool] | None = None,
    ) -> list[Generation]:
        params, stops = requests[0].params, requests[0].stops
        longest = max(len(e.ids) for e in encoded)
        max_new = params.max_new_tokens
        if self.context_length is not None:
            max_new = min(max_new, self.context_length - longest)
        reuse = len(encoded) == 1 and encoded[0].cache is not None
        inputs = self._single_with_cache(encoded[0]) if reuse else self._batch(encoded)
        cached = inputs[CACHE_KEY].get_seq_length() if reuse else 0
        self.stats["generate_calls"] += 1
        self.stats["cached_tokens"] += cached
        self.stats["prefill_tokens"] += sum(len(e.ids) for e in encoded) - cached
        ats = None
        processors = LogitsProcessorList([self._suppress])
        if params.ats and not params.greedy:
            if params.code_temperature != 0:
                raise BackendError(
                    "the transformers backend implements ATS as greedy code only; set code_temperature=0 "
                    "or None"
                )
            ats = CodeGreedyLogitsProcessor(
                self.tokenizer, [is_code_open(r.conversation.assistant_text) for r in requests]
            )
            processors.append(ats)
        stopping = []
        repetition = None
        if requests[0].repetition_threshold is not None:
            cfg = RepetitionConfig(threshold=requests[0].repetition_threshold)
            repetition = _RepetitionStop(len(requests), cfg)
            stopping.append(repetition)
        prompt_len = inputs["input_ids"].shape[1]
        if on_tokens is not None:
            if len(requests) != 1:
                raise ValueError("on_tokens streams one row; generate the rows one by one")
            stopping.append(_TokenSink(prompt_len, on_tokens))
        sampling = _sampling_kwargs(params)
        with _seeded(params.seed):
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new,
                logits_processor=processors,
                stopping_criteria=stopping or None,
                stop_strings=list(stops) or None,
                tokenizer=self.tokenizer,
                return_dict_in_generate=True,
                pad_token_id=self.pad_id,
                **sampling,
            )
        duration = time.perf_counter() - start
        self.stats["decode_steps"] += out.sequences.shape[1] - prompt_len
        results = []
        for row, (request, enc) in enumerate(zip(requests, encoded, strict=True)):
            new_ids = out.sequences[row, prompt_len:].tolist()
            triggered = repetition is not None and repetition.detectors[row].triggered
            results.append(
                self._finish(request, enc, new_ids, max_new, triggered, duration, ats, row, out, reuse)
            )
        return results

    def _finish(self, request, enc, new_ids, max_new, repeated, duration, ats, row, out, reuse) -> Generation:
        """Turn one row's new ids into a canonical `Generation` and the trajectory's next state."""
        # Finished rows are padded up to the longest row; a row never pads itself before it is finished.
        while new_ids and new_ids[-1] == self.pad_id and self.pad_id not in self.eos_ids:
            new_ids.pop()
        hit_eos = bool(new_ids) and new_ids[-1] in self.eos_ids
        if hit_eos:
            # Rows that stopped at EOS are padded with pad ids that may equal an EOS id: keep the first.
            first = next(i for i, t in enumerate(new_ids) if t in self.eos_ids)
            new_ids = new_ids[: first + 1]
        body = new_ids[:-1] if hit_eos else new_ids
        raw = self.tokenizer.decode(body, skip_special_tokens=False)
        text, stop = cut_at_first_stop(raw, request.stops)
        if stop is not None:
            reason = "stop"
            if text != raw:  # the token that completed the stop also carried text after it
                body = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        elif hit_eos:
            reason = "eos"
        elif repeated:
            reason = "repetition"
        elif len(new_ids) >= max_new and max_new < request.params.max_new_tokens:
            reason = "context"
        else:
            reason = "length"
        state = None
        if reason in ("stop", "length", "repetition"):
            covers = (*enc.covers, Piece(TextPart(text), "model", tuple(body)))
            # A one-row batch has no padding, so its cache is this trajectory's; a re-tokenised tail is not.
            cache = None
            if request.reuse_cache and len(out.sequences) == 1 and text == raw:
                cache = getattr(out, CACHE_KEY, None) if CACHE_KEY else None
                if cache is None and not self._said_no_cache:
                    self._said_no_cache = True
                    log.warning(
                        "KV reuse is on but this transformers release's generate() returned no cache "
                        "(looked for %r): every step re-encodes its whole prompt",
                        CACHE_KEY or "cache/past_key_values",
                    )
            state = _Encoded(
                ids=enc.ids + list(body),
                mm_types=enc.mm_types + [0] * len(body),
                pixels=enc.pixels,
                grids=enc.grids,
                covers=covers,
                cache=cache,
                cached_images=len(enc.pixels) if cache is not None else 0,
                cache_valid=len(enc.ids) + len(body) - 1 if cache is not None else 0,
            )
        return Generation(
            text=text,
            finish_reason=reason,
            stop=stop,
            token_ids=tuple(body),
            prompt_tokens=len(enc.ids),
            completion_tokens=len(new_ids),
            duration_s=duration,
            code_greedy=ats is not None and ats.greedy_steps[row] > 0,
            state=state,
        )

    # -- encoding ---------------------------------------------------------------------------------------
    def _encode(self, conv: Conversation, state: Any) -> _Encoded:
        """The trajectory's ids: continue `state` while it matches the conversation, else from scratch."""
        if isinstance(state, _Encoded):
            n = len(state.covers)
            if tuple(conv.assistant[:n]) == state.covers and len(conv.assistant) >= n:
                return self._extend(state, conv.assistant[n:])
            log.debug("state does not match the conversation (rolled back?): encoding from scratch")
        return self._encode_fresh(conv)

    def _encode_fresh(self, conv: Conversation) -> _Encoded:
        return _state(self._encoder_call(self.encoder.prompt, conv), covers=tuple(conv.assistant))

    def _extend(self, state: _Encoded, pieces: Sequence[Piece]) -> _Encoded:
        if not pieces:
            return state
        new = self._encoder_call(self.encoder.pieces, [_as_text(p) for p in pieces])
        return dataclasses.replace(
            state,
            ids=state.ids + new.ids,
            mm_types=state.mm_types + new.mm_types,
            pixels=state.pixels + new.pixels,
            grids=state.grids + new.grids,
            covers=(*state.covers, *pieces),
        )

    def _tokenize(self, text: str, images: list[Image.Image]) -> _Encoded:
        return _state(self.encoder.tokenize(text, images), covers=())

    @staticmethod
    def _encoder_call(method, arg) -> Encoded:
        try:
            return method(arg)
        except EncodingError as exc:
            raise BackendError(str(exc)) from exc

    def _batch(self, encoded: Sequence[_Encoded]) -> dict[str, Any]:
        """Left-padded batch of whole prompts, every row's images in row order."""
        longest = max(len(e.ids) for e in encoded)
        ids = torch.full((len(encoded), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        types = torch.zeros((len(encoded), longest), dtype=torch.int)
        for row, e in enumerate(encoded):
            n = len(e.ids)
            ids[row, longest - n :] = torch.tensor(e.ids)
            mask[row, longest - n :] = 1
            types[row, longest - n :] = torch.tensor(e.mm_types, dtype=torch.int)
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}
        pixels = [p for e in encoded for p in e.pixels]
        if pixels:
            inputs["pixel_values"] = torch.cat(pixels).to(self.model.dtype)
            inputs["image_grid_thw"] = torch.stack([g for e in encoded for g in e.grids])
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def _single_with_cache(self, e: _Encoded) -> dict[str, Any]:
        """One trajectory continuing its KV cache: positions for all tokens, pixels of new images only."""
        device = self.model.device
        ids = torch.tensor([e.ids], device=device)
        mask = torch.ones_like(ids)
        types = torch.tensor([e.mm_types], dtype=torch.int, device=device)
        # A cache is grown in place by the steps that use it, so a state reused after a rollback finds more
        # tokens in it than it covers: keep only the prefix this state vouches for.
        cache = e.cache
        keep = min(cache.get_seq_length(), e.cache_valid, len(e.ids) - 1)
        if cache.get_seq_length() > keep:
            cache.crop(keep - cache.get_seq_length())
        grids = torch.stack(e.grids).to(device) if e.grids else None
        position_kwargs = {"attention_mask": mask, "mm_token_type_ids": types}
        if grids is not None:
            position_kwargs["image_grid_thw"] = grids
        positions = self.model._prepare_position_ids_for_generation(ids, position_kwargs)
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "mm_token_type_ids": types,
            "position_ids": positions,
            CACHE_KEY: cache,
        }
        new = slice(e.cached_images, None)
        if e.pixels[new]:
            inputs["pixel_values"] = torch.cat(e.pixels[new]).to(device, self.model.dtype)
            inputs["image_grid_thw"] = torch.stack(e.grids[new]).to(device)
        return inputs


def _state(enc: Encoded, covers: tuple[Piece, ...]) -> _Encoded:
    return _Encoded(enc.ids, enc.mm_types, enc.pixels, enc.grids, covers=covers)


def _as_text(piece: Piece) -> Piece:
    """A piece the loop appends after a generation is encoded from its content (feedback has no ids)."""
    return piece if piece.token_ids is None else Piece(piece.part, piece.source)


def _sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    if params.greedy:  # the penalty applies to greedy decoding too, as in vLLM
        return {
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "repetition_penalty": params.repetition_penalty,
        }
    return {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "repetition_penalty": params.repetition_penalty,
    }


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Seed torch's generators for one call without leaving the global state changed."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16") from None
