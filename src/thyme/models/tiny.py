"""Build a small random Qwen2.5-VL with our offline tokenizer and image-only processor, ready to load.

Why: tests, smoke runs and the toy-world training need a real Qwen2.5-VL (same classes, mRoPE, vision tower,
chat template, processor) that exists without a download and runs on a laptop CPU. The result is an ordinary
`save_pretrained` directory:

    from thyme.models import build_tiny, load_processor
    path = build_tiny("models/tiny", seed=0)             # 0.94M parameters, 3.8 MiB, ~0.2 s
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_processor(path)                      # or AutoProcessor, once thyme.models is imported

or `thyme models tiny --out models/tiny`. The same seed gives byte-identical files. Sizes:
- "tiny": LM 2 layers x 128, vision 2 blocks x 64; images resize to 4-16 vision tokens. For tests.
- "small": LM 4 layers x 256, vision 4 blocks x 192, 6.4M parameters; up to 64 vision tokens (224 x 224 px);
  rotary base 1e4 (see TinySpec.rope_theta).
  The shape of the CPU training measurements in DESIGN.md, a starting point for `thyme-tiny`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import torch
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from thyme.errors import needs_argument, suggest
from thyme.files import give_umask, staging_dir
from thyme.models.generation import vision_token_ids
from thyme.models.processor import Qwen2_5_VLImageOnlyProcessor, image_processor
from thyme.models.quiet import no_progress_bars
from thyme.models.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_tokenizer,
    special_token_ids,
)

# One vision token covers a 28 x 28 pixel square (14 px patches, 2 x 2 merged).
PIXELS_PER_TOKEN = 28 * 28


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """The shape of a built model. Head sizes must be multiples of 4 (mRoPE / 2-D vision RoPE halves)."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    min_image_tokens: int
    max_image_tokens: int
    max_positions: int = 4096
    # Qwen initialises with std 0.02; a model this small then emits one token forever, whatever the input,
    # which makes tests of batching, sampling and stop strings vacuous. At 0.1 its greedy output varies with
    # the image and the question.
    init_std: float = 0.1
    # Qwen2.5-VL's 1e6 suits long contexts; at 1e6 most of a 64-wide head's rotary pairs barely turn over a
    # few hundred tokens. Measured on the toy world's compute sets (`small`, 1,200 SFT steps): greedy add-text
    # 0.5% at 1e6, 71.0% at 1e4 (copying numbers needs exact relative positions).
    rope_theta: float = 1e6

    def __post_init__(self) -> None:
        for name, hidden, heads in (
            ("text", self.text_hidden, self.text_heads),
            ("vision", self.vision_hidden, self.vision_heads),
        ):
            if hidden % heads or (hidden // heads) % 4:
                raise ValueError(
                    f"{name} hidden size {hidden} / {heads} heads must be a whole head size divisible by 4"
                )
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads {self.text_heads} must be a multiple of text_kv_heads")
        if not 1 <= self.min_image_tokens <= self.max_image_tokens:
            raise ValueError("need 1 <= min_image_tokens <= max_image_tokens")

    @property
    def mrope_section(self) -> list[int]:
        """Split of half the text head size into (time, height, width) rotary parts, Qwen's 2:3:3 ratio."""
        half = self.text_hidden // self.text_heads // 2
        spatial = 3 * half // 8
        return [half - 2 * spatial, spatial, spatial]


SIZES: dict[str, TinySpec] = {
    "tiny": TinySpec(128, 2, 4, 2, 256, 64, 2, 2, 128, min_image_tokens=4, max_image_tokens=16),
    "small": TinySpec(
        256, 4, 4, 2, 768, 192, 4, 3, 384, min_image_tokens=16, max_image_tokens=64, rope_theta=1e4
    ),
}


def tiny_config(spec: TinySpec, token_ids: dict[str, int], vocab_size: int) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL config of `spec`, wired to our tokenizer's special-token ids."""
    text = {
        "vocab_size": vocab_size,
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "max_position_embeddings": spec.max_positions,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": spec.mrope_section,
        },
        "bos_token_id": token_ids[ENDOFTEXT],
        "eos_token_id": token_ids[IM_END],
        "pad_token_id": token_ids[ENDOFTEXT],
        "initializer_range": spec.init_std,
    }
    vision = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_intermediate,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.text_hidden,
        "fullatt_block_indexes": [spec.vision_depth - 1],  # windowed attention below, full in the last block
        "initializer_range": spec.init_std,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids[IMAGE_PAD],
        video_token_id=token_ids[VIDEO_PAD],
        vision_start_token_id=token_ids[VISION_START],
        vision_end_token_id=token_ids[VISION_END],
        tie_word_embeddings=True,  # halves the parameters of a model whose bulk is the embedding
    )


def build_tiny(
    out_dir: str | os.PathLike[str], *, seed: int = 0, size: str = "tiny", overwrite: bool = False
) -> pathlib.Path:
    """Write a random Qwen2.5-VL of `size` with our tokenizer and processor to `out_dir`; return its path.

    The files are written to a staging directory next to `out_dir` and moved into place when complete, so an
    interrupted build leaves no half-written model at a new `out_dir`. `out_dir` must be absent or empty
    unless `overwrite` is set (then same-named files are replaced, others kept).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    out = pathlib.Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        message = f"{out} is not empty; pick an empty directory or {suggest('overwrite')}"
        raise needs_argument(FileExistsError(message), "overwrite")
    spec = SIZES[size]
    tokenizer = build_tokenizer()
    token_ids = special_token_ids(tokenizer)
    config = tiny_config(spec, token_ids, vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids[ENDOFTEXT],
        eos_token_id=[token_ids[IM_END], token_ids[ENDOFTEXT]],
        pad_token_id=token_ids[ENDOFTEXT],
        do_sample=False,
        suppress_tokens=list(vision_token_ids(config)),  # see thyme.models.generation
    )
    processor = Qwen2_5_VLImageOnlyProcessor(
        image_processor=image_processor(
            min_pixels=spec.min_image_tokens * PIXELS_PER_TOKEN,
            max_pixels=spec.max_image_tokens * PIXELS_PER_TOKEN,
        ),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out.parent, out.name)  # the user's umask, unlike mkdtemp's 0700
    try:
        with no_progress_bars():  # a one-shard save needs no bar; the CLI shows its own status
            model.save_pretrained(staging)
        processor.save_pretrained(staging)
        give_umask(staging)  # the weights come out 0600
        if out.exists():
            shutil.copytree(staging, out, dirs_exist_ok=True)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of `model`; `parameters()` yields tied tensors (embedding = LM head) once."""
    return sum(p.numel() for p in model.parameters())
