"""Samples to a padded training batch for a Qwen2.5-VL-family model: the one collator SFT uses.

    collator = SampleCollator(encoder, MaskConfig(), pad_id=tokenizer.pad_token_id)
    batch = collator([{"sample": json_text}, ...])   # rows of a `datasets.Dataset` (absolute image paths)
    model(**{k: v for k, v in batch.items() if k != "patch_labels"}).loss

A batch (B rows padded on the right to the longest, L tokens; N images over the batch, in row order):
    input_ids          [B, L]   long
    attention_mask     [B, L]   long (1 on real tokens)
    labels             [B, L]   long (-100 on the prompt, vision tokens, sandbox output, padding...)
    mm_token_type_ids  [B, L]   int  (1 on image tokens: transformers computes 3-D mRoPE positions from it)
    pixel_values       [sum over images of t*h*w, C*patch*patch]   (absent when no row has an image)
    image_grid_thw     [N, 3]
    patch_labels       [sum over images of t*h*w / merge^2]   long, only with `aux_classes`: the class of
                       each merged vision token from the samples' regions (0 = nothing; -100 = no regions)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from thyme.data.sample import Region, Sample
from thyme.models.encoding import Encoder, Example
from thyme.train.masks import DEFAULT_MASKS, IGNORE_INDEX, MaskConfig


class SampleCollator:
    """Encodes `{"sample": <thyme.sample/1 JSON, absolute image paths>}` rows and pads them into one batch.

    aux_classes: also return `patch_labels` (the per-patch auxiliary loss); None leaves them out.
    """

    def __init__(
        self,
        encoder: Encoder,
        masks: MaskConfig = DEFAULT_MASKS,
        *,
        pad_id: int,
        aux_classes: int | None = None,
    ) -> None:
        self.encoder = encoder
        self.masks = masks
        self.pad_id = pad_id
        self.aux_classes = aux_classes

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        samples = [Sample.from_dict(json.loads(r["sample"])) for r in rows]
        examples = [self.encoder.example(s.conversation(), self.masks) for s in samples]
        batch = collate(examples, self.pad_id)
        if self.aux_classes is not None:
            merge = self.encoder.processor.image_processor.merge_size
            batch["patch_labels"] = torch.cat(
                [patch_labels(e, s.regions, merge) for e, s in zip(examples, samples, strict=True)]
                or [torch.zeros(0, dtype=torch.long)]
            )
        return batch


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of encoded examples (see the module docstring for the shapes)."""
    longest = max(len(e) for e in examples)
    rows = len(examples)
    ids = torch.full((rows, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, longest), dtype=torch.long)
    labels = torch.full((rows, longest), IGNORE_INDEX, dtype=torch.long)
    types = torch.zeros((rows, longest), dtype=torch.int)
    for row, e in enumerate(examples):
        n = len(e)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
        types[row, :n] = torch.tensor(e.mm_types, dtype=torch.int)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "mm_token_type_ids": types}
    pixels = [p for e in examples for p in e.pixels]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
        batch["image_grid_thw"] = torch.stack([g for e in examples for g in e.grids])
    return batch


def patch_labels(example: Example, regions: Sequence[Region], merge: int) -> torch.Tensor:
    """One class per merged vision token of each of the example's images, row-major per image.

    A token takes the label of the region whose box holds the token's centre (the later region wins), and
    every region also labels the token holding its own centre, so a box smaller than a token still marks
    one. Images no region refers to are -100 throughout (nothing is known about them).
    """
    out = []
    for index, (grid, (width, height)) in enumerate(zip(example.grids, example.sizes, strict=True)):
        t, h, w = (int(v) for v in grid)
        rows, cols = h // merge, w // merge
        mine = [r for r in regions if r.image == index]
        if not mine:
            out.append(torch.full((t * rows * cols,), IGNORE_INDEX, dtype=torch.long))
            continue
        labels = torch.zeros((rows, cols), dtype=torch.long)
        cell_w, cell_h = width / cols, height / rows
        centres_x = (torch.arange(cols) + 0.5) * cell_w
        centres_y = (torch.arange(rows) + 0.5) * cell_h
        for region in mine:
            x0, y0, x1, y1 = region.box
            inside_y = (centres_y >= y0) & (centres_y < y1)
            inside_x = (centres_x >= x0) & (centres_x < x1)
            labels[inside_y[:, None] & inside_x[None, :]] = region.label
            cy = min(rows - 1, int((y0 + y1) / 2 / cell_h))
            cx = min(cols - 1, int((x0 + x1) / 2 / cell_w))
            labels[cy, cx] = region.label
        out.append(labels.flatten().repeat(t))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
