"""Offline model factory: our BPE tokenizer, an image-only Qwen2.5-VL processor, tiny random Qwen2.5-VLs.

Nothing here downloads anything. Importing the package registers `Qwen2_5_VLImageOnlyProcessor` with
`AutoProcessor` (see `thyme.models.processor`); it needs the `models` extra (torch, transformers).

    from thyme.models import build_tiny, suppress_vision_tokens
    path = build_tiny("out/tiny")
"""

from __future__ import annotations

from thyme.models.generation import (
    SuppressVisionTokens,
    suppress_vision_tokens,
    vision_bad_words_ids,
    vision_logit_bias,
    vision_token_ids,
)
from thyme.models.processor import Qwen2_5_VLImageOnlyProcessor, load_processor
from thyme.models.tiny import SIZES, TinySpec, build_tiny, parameter_count
from thyme.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, THYME_TAGS, build_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "SIZES",
    "SPECIAL_TOKENS",
    "THYME_TAGS",
    "Qwen2_5_VLImageOnlyProcessor",
    "SuppressVisionTokens",
    "TinySpec",
    "build_tiny",
    "build_tokenizer",
    "load_processor",
    "parameter_count",
    "suppress_vision_tokens",
    "vision_bad_words_ids",
    "vision_logit_bias",
    "vision_token_ids",
]
