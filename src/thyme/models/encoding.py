"""Conversations to token ids for a Qwen2.5-VL-family processor: one encoder for generation and training.

How a trajectory is encoded, in generation and in training alike:
- the prompt: the chat template over the system and user turns with the assistant turn opened
  (`add_generation_prompt`), images expanded to their vision tokens by the processor;
- then the assistant pieces at the token level, in the groups the loop feeds them: a model piece on its own
  (its generated token ids when the backend recorded them, else its text tokenised alone), a run of sandbox
  pieces together (`<sandbox_output>`, the images as `<|vision_start|><|image_pad|><|vision_end|>`, or the
  text, `</sandbox_output>`: appended in one go after `</code>`).

Nothing is re-tokenised across a boundary the model never saw as one string, so training sees exactly the ids
generation produces and consumes. `example` adds the end-of-turn token (trained: the model learns to stop)
and the loss mask of `thyme.train.masks`.

    enc = Encoder(processor, max_pixels=50176)
    ex = enc.example(sample.conversation(), MaskConfig())    # ids, labels, roles, pixels per image, grids
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from thyme.agent.conversation import Conversation, Piece
from thyme.protocol import ImagePart
from thyme.train.masks import DEFAULT_MASKS, MODEL, PROMPT, SANDBOX, MaskConfig, apply_mask, loss_mask

IMAGE_MARKUP = "<|vision_start|><|image_pad|><|vision_end|>"
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
END_OF_TURN = "<|im_end|>"


class EncodingError(ValueError):
    """A conversation that cannot be encoded (an unreadable image); the message names it."""


@dataclasses.dataclass
class Encoded:
    """Token ids with their multimodal token types and each image's processor output, in order."""

    ids: list[int]
    mm_types: list[int]
    pixels: list[torch.Tensor]  # one [patches, dim] tensor per image
    grids: list[torch.Tensor]  # one [3] (t, h, w) tensor per image
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # each image's (width, height)

    def __add__(self, other: Encoded) -> Encoded:
        return Encoded(
            self.ids + other.ids,
            self.mm_types + other.mm_types,
            self.pixels + other.pixels,
            self.grids + other.grids,
            self.sizes + other.sizes,
        )


@dataclasses.dataclass
class Example:
    """One training sequence.

    roles:  PROMPT / MODEL / SANDBOX per token (`thyme.train.masks`); GRPO's tool mask reads them.
    labels: the ids where the loss mask keeps them, -100 elsewhere.
    prompt_len: tokens before the assistant turn.
    """

    ids: list[int]
    labels: list[int]
    roles: list[int]
    mm_types: list[int]
    pixels: list[torch.Tensor]
    grids: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    prompt_len: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_rows(self) -> int:
        """Rows of pixel values over all images (== sum of the grids' products)."""
        return sum(int(p.shape[0]) for p in self.pixels)


class Encoder:
    """A processor plus the pixel bounds every image is resized into.

    min_pixels / max_pixels: the processor's resize bounds (None = the checkpoint's).
    """

    def __init__(self, processor, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_kwargs: dict[str, Any] = {}
        if min_pixels is not None or max_pixels is not None:
            size = dict(processor.image_processor.size)  # {"shortest_edge": min px, "longest_edge": max px}
            if min_pixels is not None:
                size["shortest_edge"] = min_pixels
            if max_pixels is not None:
                size["longest_edge"] = max_pixels
            self.image_kwargs["size"] = size
        vocab = self.tokenizer.get_vocab()
        self.vision_ids = frozenset(vocab[t] for t in VISION_TOKENS if t in vocab)
        end = vocab.get(END_OF_TURN)
        self.end_of_turn_id = int(end if end is not None else self.tokenizer.eos_token_id)

    @property
    def pixel_bounds(self) -> dict[str, int | None]:
        """The pixel range every image is resized into: {"min_pixels", "max_pixels"}."""
        size = self.image_kwargs.get("size") or dict(self.processor.image_processor.size)
        return {"min_pixels": size.get("shortest_edge"), "max_pixels": size.get("longest_edge")}

    # -- pieces -----------------------------------------------------------------------------------------
    def tokenize(self, text: str, images: Sequence[Image.Image]) -> Encoded:
        """Text (one `IMAGE_MARKUP` per image) through the processor: ids, token types, per-image pixels."""
        batch = self.processor(
            text=[text], images=list(images) or None, return_tensors="pt", **self.image_kwargs
        )
        pixels, grids = _split_pixels(batch)
        types = batch["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in batch else None
        ids = batch["input_ids"][0].tolist()
        return Encoded(
            ids, types if types is not None else [0] * len(ids), pixels, grids, [im.size for im in images]
        )

    def prompt(self, conv: Conversation) -> Encoded:
        """The chat template over the conversation: with no assistant pieces, the prompt with the assistant
        turn opened; with pieces, their text continued (a prefix rendered whole, as servers do)."""
        continuing = bool(conv.assistant)
        text = self.processor.apply_chat_template(
            conv.messages(),
            tokenize=False,
            add_generation_prompt=not continuing,
            continue_final_message=continuing,
        )
        return self.tokenize(text, [load_image(p) for p in conv.images])

    def pieces(self, pieces: Sequence[Piece]) -> Encoded:
        """Pieces appended at the token level in one go (the loop's feedback after `</code>`)."""
        if len(pieces) == 1 and pieces[0].token_ids is not None:
            ids = list(pieces[0].token_ids)
            return Encoded(ids, [0] * len(ids), [], [], [])
        text = "".join(IMAGE_MARKUP if isinstance(p.part, ImagePart) else p.part.text for p in pieces)
        images = [load_image(p.part.path) for p in pieces if isinstance(p.part, ImagePart)]
        return self.tokenize(text, images)

    # -- training ---------------------------------------------------------------------------------------
    def example(
        self, conv: Conversation, masks: MaskConfig = DEFAULT_MASKS, *, end_of_turn: bool = True
    ) -> Example:
        """The conversation as one training sequence with its loss mask.

        end_of_turn: append `<|im_end|>` as a model token (the turn is complete; the model learns to stop).
        """
        enc = self.prompt(Conversation(conv.system, conv.user))
        prompt_len = len(enc.ids)
        roles = [PROMPT] * prompt_len
        for group in piece_groups(conv.assistant):
            part = self.pieces(group)
            enc = enc + part
            roles += [MODEL if group[0].source == "model" else SANDBOX] * len(part.ids)
        if end_of_turn:
            enc = enc + Encoded([self.end_of_turn_id], [0], [], [], [])
            roles.append(MODEL)
        keep = loss_mask(roles, [t in self.vision_ids for t in enc.ids], masks)
        return Example(
            ids=enc.ids,
            labels=apply_mask(enc.ids, keep),
            roles=roles,
            mm_types=enc.mm_types,
            pixels=enc.pixels,
            grids=enc.grids,
            sizes=enc.sizes,
            prompt_len=prompt_len,
        )

    def length(self, conv: Conversation, *, end_of_turn: bool = True) -> int:
        """`len(self.example(conv))` without computing pixels: text through the tokenizer, each image's tokens
        from its header size and the processor's resize rule (cheap enough to scan a data set)."""
        image_pad = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")

        def count(text: str, images: Sequence[Path]) -> int:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            pads = sum(1 for t in ids if t == image_pad)
            if pads != len(images):
                raise EncodingError(f"{pads} image placeholders for {len(images)} images")
            return len(ids) - pads + sum(self.image_tokens(p) for p in images)

        text = self.processor.apply_chat_template(
            Conversation(conv.system, conv.user).messages(), tokenize=False, add_generation_prompt=True
        )
        total = count(text, conv.user_images)
        for group in piece_groups(conv.assistant):
            if len(group) == 1 and group[0].token_ids is not None:
                total += len(group[0].token_ids)
                continue
            text = "".join(IMAGE_MARKUP if isinstance(p.part, ImagePart) else p.part.text for p in group)
            total += count(text, [p.part.path for p in group if isinstance(p.part, ImagePart)])
        return total + (1 if end_of_turn else 0)

    def image_tokens(self, path: Path) -> int:
        """Vision tokens the processor gives the image at `path` (read from its header, not decoded)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, ValueError) as exc:
            raise EncodingError(f"cannot read image {path}: {exc}") from exc
        ip = self.processor.image_processor
        bounds = self.pixel_bounds
        h, w = smart_resize(
            height,
            width,
            factor=ip.patch_size * ip.merge_size,
            min_pixels=bounds["min_pixels"],
            max_pixels=bounds["max_pixels"],
        )
        return (h // ip.patch_size) * (w // ip.patch_size) // ip.merge_size**2


def piece_groups(pieces: Sequence[Piece]) -> list[list[Piece]]:
    """Assistant pieces in the groups the loop encodes them: each model piece alone, runs of sandbox pieces
    together."""
    groups: list[list[Piece]] = []
    for piece in pieces:
        if piece.source == "sandbox" and groups and groups[-1][0].source == "sandbox":
            groups[-1].append(piece)
        else:
            groups.append([piece])
    return groups


def load_image(path: Path) -> Image.Image:
    """An image file as RGB; an unreadable one raises `EncodingError` naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise EncodingError(f"cannot read image {path}: {exc}") from exc


def _split_pixels(batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-image pixel rows and grids from a processor output (patches are stored image after image)."""
    if "pixel_values" not in batch:
        return [], []
    grids = list(batch["image_grid_thw"])
    sizes = [int(g.prod()) for g in grids]
    return list(torch.split(batch["pixel_values"], sizes)), grids
