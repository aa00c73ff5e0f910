"""Our loss masks against the reference's own: trained spans that yfzhang114/Thyme's ms-swift template
(its `_pre_tokenize_images` masking, commit b9285b7) produced on fixtures built for it.

`fixtures/reference_masks/reference_labels.json` was written by running the reference code itself (not a
re-creation) in a separate environment on `samples.json`, with thyme's tiny tokenizer (identical ids); the
file records the commit, versions and command. Here the same rows go through thyme's converter
(`split_response`) and encoder, and the assistant's ids and trained spans must match:
- a-f (no code, printed text, one image, two and three rounds, error feedback) and i (two images): equal
  ids after the prompt, equal trained spans;
- g (newlines around an image): the reference trains the two newlines beside the image (its body splits
  into several pieces); we feed images without them, as the loop does, and train nothing there;
- h, j (text beside an image in one sandbox output, which the reference also trains): not something the
  loop ever produces; our converter refuses such rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thyme.agent.conversation import Conversation
from thyme.data.sample import SampleError, split_response
from thyme.protocol import ImagePart, TextPart, get_preset
from thyme.train.masks import IGNORE_INDEX

FIXTURES = Path(__file__).parent / "fixtures" / "reference_masks"
ROWS = {row["id"]: row for row in json.loads((FIXTURES / "samples.json").read_text())}
REFERENCE = {s["id"]: s for s in json.loads((FIXTURES / "reference_labels.json").read_text())["samples"]}
SAME = ["a", "b", "c", "d", "e", "f", "i"]


def row(prefix: str) -> dict:
    return next(r for key, r in ROWS.items() if key.startswith(prefix + "_"))


def encode(encoder, data: dict):
    images = [FIXTURES / name for name in data["image"]]
    user = (ImagePart(images[0]), TextPart(data["question"].removeprefix("<image>\n")))
    conv = Conversation(get_preset("released").system, user)
    conv.assistant = list(split_response(data["response"], images[1:]))
    return encoder.example(conv)


def spans(encoder, ids, labels) -> list[str]:
    out, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if run:
                out.append(run)
            run = []
        else:
            run.append(token)
    return [encoder.tokenizer.decode(r) for r in [*out, run] if r]


@pytest.mark.parametrize("prefix", SAME)
def test_ids_and_trained_spans_equal_the_references(encoder, prefix):
    data = row(prefix)
    reference = REFERENCE[data["id"]]
    ours = encode(encoder, data)
    assistant = ours.ids[ours.prompt_len :]
    assert reference["input_ids"][-len(assistant) :] == assistant
    assert reference["labels"][-len(assistant) :] == ours.labels[ours.prompt_len :]
    assert spans(encoder, ours.ids, ours.labels) == [s["text"] for s in reference["trained_spans"]]


def test_newlines_beside_an_image_are_not_trained_here(encoder):
    data = row("g")
    reference = [s["text"] for s in REFERENCE[data["id"]]["trained_spans"]]
    assert reference.count("\n") == 2  # the reference's leak
    ours = spans(encoder, *(lambda e: (e.ids, e.labels))(encode(encoder, data)))
    assert ours == [text for text in reference if text != "\n"]


@pytest.mark.parametrize("prefix", ["h", "j"])
def test_text_beside_an_image_is_refused(prefix):
    data = row(prefix)
    leaked = [s["text"] for s in REFERENCE[data["id"]]["trained_spans"]]
    assert any("Saved" in text for text in leaked)  # the reference trains sandbox text here
    with pytest.raises(SampleError, match="both images and text"):
        split_response(data["response"], [FIXTURES / n for n in data["image"][1:]])
