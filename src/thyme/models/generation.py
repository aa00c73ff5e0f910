"""Keep a Qwen2.5-VL from generating vision placeholder tokens.

Why: the image/video pads and the vision start/end markers are only meaningful where the processor put them.
A random or young model happily emits them, and then the next step of the agent loop fails: re-encoded as
text, the processor finds more `<|image_pad|>` than images; fed back as ids, the model finds image tokens
without features ("Image features and image tokens do not match"). Trained checkpoints never emit them, so
suppressing them changes nothing there; every backend applies this to every `generate()`.

    out = model.generate(**inputs, logits_processor=suppress_vision_tokens(model.config))
    # generation kwargs instead of a processor: bad_words_ids=vision_bad_words_ids(model.config)
    # OpenAI-compatible servers: {"logit_bias": vision_logit_bias(config)}
"""

from __future__ import annotations

from transformers import LogitsProcessorList, PreTrainedConfig, SuppressTokensLogitsProcessor

# Config attributes of Qwen2-VL / Qwen2.5-VL configs that hold a vision placeholder id.
_VISION_ID_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def vision_token_ids(config: PreTrainedConfig) -> tuple[int, ...]:
    """The vision placeholder ids a model config names, sorted; an error if it names none."""
    ids = sorted({int(i) for f in _VISION_ID_FIELDS if (i := getattr(config, f, None)) is not None})
    if not ids:
        raise ValueError(
            f"{type(config).__name__} names no vision token ids ({', '.join(_VISION_ID_FIELDS)}); "
            "is this a Qwen2-VL-family config?"
        )
    return tuple(ids)


class SuppressVisionTokens(SuppressTokensLogitsProcessor):
    """Sets the vision placeholder logits to -inf.

    Its own type, so that `generate()` keeps it beside a `suppress_tokens` processor built from the generation
    config instead of replacing one with the other (and warning).
    """

    def __init__(self, config: PreTrainedConfig, device: str = "cpu") -> None:
        self.token_ids = vision_token_ids(config)
        super().__init__(list(self.token_ids), device=device)


def suppress_vision_tokens(config: PreTrainedConfig, device: str = "cpu") -> LogitsProcessorList:
    """A logits-processor list holding `SuppressVisionTokens` (append your own processors after it)."""
    return LogitsProcessorList([SuppressVisionTokens(config, device=device)])


def vision_bad_words_ids(config: PreTrainedConfig) -> list[list[int]]:
    """The same ids in `bad_words_ids` form, for engines that take generation kwargs but no processors."""
    return [[i] for i in vision_token_ids(config)]


def vision_logit_bias(config: PreTrainedConfig) -> dict[str, int]:
    """The same ids as an OpenAI-style `logit_bias` (token id as a string -> -100, i.e. never sampled)."""
    return {str(i): -100 for i in vision_token_ids(config)}
