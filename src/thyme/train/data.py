"""The training set: samples from every configured source, measured, filtered by length, ordered.

    train = build_training_set(config.data, encoder, max_length=config.max_length, seed=0)
    train.dataset      # datasets.Dataset with columns "sample" (thyme.sample/1 JSON, absolute image paths),
                       # "length" (tokens) and "has_image"; the collator encodes rows on the fly
    train.dropped      # ids longer than max_length (kept out: truncation would cut image tokens)

Lengths come from `Encoder.length` (text through the tokenizer, image tokens from image headers), so a
sample that would not fit is dropped before training with its id named, instead of failing mid-run.
`keep_modalities_apart` orders the set so that every optimizer step sees only image samples or only
text-only samples (the reference's computation-annealing stage feeds them separately).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from thyme.data.sample import SampleError, read_samples
from thyme.models.encoding import Encoder, EncodingError
from thyme.train.config import DataSource

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """The rows to train on and what was left out."""

    dataset: object  # datasets.Dataset
    dropped: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    per_source: dict[str, int] = field(default_factory=dict)
    max_region_label: int = 0  # the largest auxiliary region class kept (0: no regions)

    @property
    def size(self) -> int:
        return len(self.dataset)


def build_training_set(
    sources: Sequence[DataSource],
    encoder: Encoder,
    *,
    max_length: int,
    on_sample: Callable[[], None] | None = None,
) -> TrainingSet:
    """Read, measure and filter the samples of `sources` (each repeated `repeat` times)."""
    import datasets

    rows: dict[str, list] = {"sample": [], "length": [], "has_image": []}
    out = TrainingSet(dataset=None)
    for source in sources:
        taken = 0
        samples = read_samples(source.path, toyworld_variants=source.variants, preset=source.preset)
        for sample in samples:
            if source.limit is not None and taken >= source.limit:
                break
            if on_sample is not None:
                on_sample()
            try:
                length = encoder.length(sample.conversation())
            except EncodingError as exc:
                log.warning("sample %s left out: %s", sample.id, exc)
                out.unreadable.append(sample.id)
                continue
            if length > max_length:
                out.dropped.append(sample.id)
                continue
            out.max_region_label = max([out.max_region_label, *(r.label for r in sample.regions)])
            text = json.dumps(sample.to_dict(), ensure_ascii=False)
            for _ in range(source.repeat):
                rows["sample"].append(text)
                rows["length"].append(length)
                rows["has_image"].append(bool(sample.images))
            taken += 1
        out.per_source[source.path] = taken
    if out.dropped:
        log.warning(
            "%d samples are longer than max_length=%d and are left out (first: %s); raise max_length or "
            "lower max_pixels to keep them",
            len(out.dropped),
            max_length,
            ", ".join(out.dropped[:3]),
        )
    if not rows["sample"]:
        raise SampleError("no sample to train on: every source is empty or every sample too long")
    out.dataset = datasets.Dataset.from_dict(rows)
    return out


def modality_order(has_image: Sequence[bool], chunk: int, seed: int) -> list[int]:
    """Row indices in chunks of `chunk` rows that are all image samples or all text-only samples, the chunks
    shuffled; a kind's last partial chunk is filled with its own rows again, so no chunk mixes kinds."""
    rng = random.Random(seed)
    chunks: list[list[int]] = []
    for kind in (True, False):
        rows = [i for i, flag in enumerate(has_image) if flag == kind]
        if not rows:
            continue
        rng.shuffle(rows)
        short = -len(rows) % chunk
        rows += [rows[i % len(rows)] for i in range(short)]
        chunks += [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
    rng.shuffle(chunks)
    return [i for c in chunks for i in c]
