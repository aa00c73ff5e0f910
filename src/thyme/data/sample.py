"""The training sample: one prompt and one assistant turn as pieces; SFT, GRPO and the data tools share it.

A sample is a trajectory of the agent loop reduced to what training needs: the system text, the user message
(its image, then its text), and the assistant turn as pieces marked "model" (what the model writes, trained)
or "sandbox" (the `<sandbox_output>` tags, the printed text or the images fed back: context, never a target),
with the images in the order the model sees them. Each source converts to it with one function:

    Sample.from_trajectory(traj)                 # a Trajectory of the agent loop (token ids kept)
    Sample.from_toyworld(row, root)              # a `thyme synth` row: its gold or its direct variant
    thyme.data.released.sft_row_to_sample(...)   # a released Thyme-SFT row (`thyme data convert`)

and nothing but `thyme.models.encoding` turns a sample into token ids. A response string in the protocol
(`<image>` for each fed-back image) becomes pieces with `split_response`, in exactly the structure the loop
records (`thyme.protocol.render_feedback`): the open tag, the images or the text, the close tag.

On disk: JSONL, one object per line (schema `thyme.sample/1`), image paths relative to the file's directory:

    {"schema": "thyme.sample/1", "id": "...", "system": "...",
     "user": [{"image": "images/3f/3fa2....png"}, {"text": "What colour ..."}],
     "assistant": [{"source": "model", "text": "<think>Crop it. <code>...</code>"},
                   {"source": "sandbox", "text": "<sandbox_output>"}, {"source": "sandbox", "image": "..."},
                   {"source": "sandbox", "text": "</sandbox_output>"}, {"source": "model", "text": "..."}],
     "answer": "orange", "origin": "toyworld", "regions": [], "meta": {}}

`read_samples(path)` reads our files, `thyme synth` directories and saved trajectories alike.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thyme.agent.conversation import Conversation, Piece
from thyme.protocol import (
    IMAGE_PLACEHOLDER,
    SANDBOX_CLOSE,
    SANDBOX_OPEN,
    FeedbackPart,
    ImagePart,
    TextPart,
    render_feedback,
)

SCHEMA = "thyme.sample/1"
SAMPLES_FILE = "samples.jsonl"

_SANDBOX_RE = re.compile(re.escape(SANDBOX_OPEN) + r"(.*?)" + re.escape(SANDBOX_CLOSE), re.DOTALL)


class SampleError(ValueError):
    """A row that cannot become a sample; the message says which row and what is wrong."""


@dataclass(frozen=True)
class Region:
    """A labelled box on one of the sample's images, in that image's pixels (auxiliary per-patch targets).

    image: index into `Sample.images`; label: a class id >= 1 (0 is "nothing here").
    """

    image: int
    box: tuple[int, int, int, int]
    label: int

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise SampleError(f"region box {self.box} is empty; give (left, top, right, bottom)")
        if self.label < 1:
            raise SampleError(f"region label {self.label} must be >= 1 (0 means no region)")


@dataclass(frozen=True)
class Sample:
    """One training sample.

    answer:  the gold answer when known (RL rewards, verification), else None.
    origin:  where it came from ("toyworld", "thyme-sft", "thyme-rl", "trajectory", "boxes", "distill"...).
    """

    id: str
    system: str
    user: tuple[FeedbackPart, ...]
    assistant: tuple[Piece, ...]
    answer: str | None = None
    origin: str = ""
    regions: tuple[Region, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    # -- reading ----------------------------------------------------------------------------------------
    def conversation(self) -> Conversation:
        """The sample as the agent loop's conversation (what the encoder and the loop consume)."""
        return Conversation(self.system, self.user, list(self.assistant))

    @property
    def images(self) -> list[Path]:
        """Every image in the order the model sees them: the user's, then the fed-back ones."""
        return self.conversation().images

    @property
    def response(self) -> str:
        """The assistant turn as text, `<image>` for each fed-back image."""
        return self.conversation().assistant_text

    @property
    def code_rounds(self) -> int:
        """How many sandbox outputs the turn holds (0: a direct answer)."""
        return sum(1 for p in self.assistant if isinstance(p.part, TextPart) and p.part.text == SANDBOX_OPEN)

    # -- converters -------------------------------------------------------------------------------------
    @classmethod
    def from_trajectory(cls, traj, *, id: str | None = None, answer: str | None = None) -> Sample:
        """A `thyme.agent.Trajectory` as a sample (the model's token ids are kept with its pieces)."""
        conv = traj.conversation
        return cls(
            id=id or str(traj.meta.get("id") or traj.question),
            system=conv.system,
            user=tuple(conv.user),
            assistant=tuple(conv.assistant),
            answer=answer if answer is not None else traj.answer,
            origin="trajectory",
            meta={"model": traj.model, "preset": traj.preset, "tools": traj.tools, "question": traj.question},
        )

    @classmethod
    def from_toyworld(
        cls,
        row: Mapping[str, Any],
        root: Path,
        *,
        variant: str = "gold",
        preset: str | None = None,
    ) -> Sample:
        """One `thyme synth` row (`root` is its directory) as a sample.

        variant: "gold" (the verified code trajectory) or "direct" (the no-code answer).
        preset:  the tool-using prompt preset (default "default"); a direct sample takes its direct
                 counterpart ("direct"), as `thyme eval` does with and without tools.
        """
        from PIL import Image

        from thyme.agent.episode import Prompt, user_parts
        from thyme.protocol import direct_preset, get_preset

        if variant not in ("gold", "direct"):
            raise SampleError(f"toy-world variant {variant!r}: choose gold or direct")
        chosen = get_preset(preset or "default")
        chosen = chosen if variant == "gold" else direct_preset(chosen)
        image = root / row["image"]
        with Image.open(image) as img:
            size = img.size
        parts, _ = user_parts(chosen, Prompt(row["question"], image, size, f"/mnt/data/{Path(image).name}"))
        if variant == "gold":
            fed = [root / p for p in row["gold"]["images"][1:]]
            assistant = split_response(row["gold"]["response"], fed)
        else:
            assistant = split_response(row["direct"]["response"], [])
        regions = tuple(
            Region(0, tuple(int(v) for v in label["box"]), 1)
            for label in row.get("meta", {}).get("labels", ())
        )
        if variant == "gold":
            regions += _crop_regions(row.get("meta", {}), row["answer"], fed)
        return cls(
            id=f"{row['id']}" if variant == "gold" else f"{row['id']}-direct",
            system=chosen.system,
            user=parts,
            assistant=assistant,
            answer=str(row["answer"]),
            origin="toyworld",
            regions=regions,
            meta={
                "task": row.get("task"),
                "category": row.get("category"),
                "variant": variant,
                "question": row["question"],
            },
        )

    # -- JSON -------------------------------------------------------------------------------------------
    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        """JSON-ready; image paths relative to `root` when they lie below it."""

        def part(p: FeedbackPart) -> dict[str, Any]:
            return {"image": _rel(p.path, root)} if isinstance(p, ImagePart) else {"text": p.text}

        pieces = []
        for piece in self.assistant:
            d = {"source": piece.source, **part(piece.part)}
            if piece.token_ids is not None:
                d["token_ids"] = list(piece.token_ids)
            pieces.append(d)
        return {
            "schema": SCHEMA,
            "id": self.id,
            "system": self.system,
            "user": [part(p) for p in self.user],
            "assistant": pieces,
            "answer": self.answer,
            "origin": self.origin,
            "regions": [{"image": r.image, "box": list(r.box), "label": r.label} for r in self.regions],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], root: Path | None = None) -> Sample:
        if data.get("schema") != SCHEMA:
            raise SampleError(f"not a {SCHEMA} row (schema={data.get('schema')!r})")

        def part(d: Mapping[str, Any]) -> FeedbackPart:
            if "image" in d:
                path = Path(d["image"])
                return ImagePart(path if root is None or path.is_absolute() else root / path)
            return TextPart(str(d["text"]))

        assistant = []
        for d in data["assistant"]:
            if d["source"] not in ("model", "sandbox"):
                raise SampleError(f"piece source {d['source']!r}: must be model or sandbox")
            ids = tuple(d["token_ids"]) if d.get("token_ids") is not None else None
            assistant.append(Piece(part(d), d["source"], ids))
        return cls(
            id=str(data["id"]),
            system=str(data["system"]),
            user=tuple(part(d) for d in data["user"]),
            assistant=tuple(assistant),
            answer=data.get("answer"),
            origin=str(data.get("origin", "")),
            regions=tuple(
                Region(int(r["image"]), tuple(r["box"]), int(r["label"])) for r in data.get("regions", ())
            ),
            meta=dict(data.get("meta") or {}),
        )


def split_response(response: str, images: Sequence[str | os.PathLike[str]]) -> tuple[Piece, ...]:
    """A protocol response (`<image>` per fed-back image inside `<sandbox_output>`) as assistant pieces.

    Everything outside `<sandbox_output>...</sandbox_output>` is model-written; each sandbox span becomes the
    parts `render_feedback` makes (open tag, its images or its stripped text, close tag), so a sample encodes
    exactly as the loop's own trajectory would. `images` are the fed-back images in order; their number
    must equal the placeholders inside sandbox spans.
    """
    pieces: list[Piece] = []
    queue = [Path(p) for p in images]
    used = 0
    last = 0
    for match in _SANDBOX_RE.finditer(response):
        if match.start() > last:
            pieces.append(Piece(TextPart(response[last : match.start()]), "model"))
        body = match.group(1)
        count = body.count(IMAGE_PLACEHOLDER)
        if count:
            if body.replace(IMAGE_PLACEHOLDER, "").strip():
                raise SampleError(
                    "a sandbox output holds both images and text; the protocol feeds back one kind"
                )
            if used + count > len(queue):
                raise SampleError(
                    f"the response has more <image> placeholders in sandbox outputs than the {len(queue)} "
                    "fed-back images given"
                )
            parts = render_feedback(None, queue[used : used + count])
            used += count
        else:
            parts = render_feedback(body)
        pieces.extend(Piece(p, "sandbox") for p in parts)
        last = match.end()
    if last < len(response):
        pieces.append(Piece(TextPart(response[last:]), "model"))
    if used != len(queue):
        raise SampleError(f"{len(queue)} fed-back images given but the sandbox outputs hold {used} <image>")
    if any(
        IMAGE_PLACEHOLDER in p.part.text
        for p in pieces
        if p.source == "model" and isinstance(p.part, TextPart)
    ):
        raise SampleError(
            "an <image> placeholder outside <sandbox_output>: only the sandbox feeds images back"
        )
    return tuple(pieces)


# -- files ----------------------------------------------------------------------------------------------
def read_samples(
    path: str | os.PathLike[str], *, toyworld_variants: Sequence[str] = ("gold",), preset: str | None = None
) -> Iterator[Sample]:
    """Samples from a file or directory, whatever wrote it.

    - our JSONL (`thyme.sample/1` rows), or a directory holding `samples.jsonl` or shard files
      (`thyme.data.store`);
    - a `thyme synth` directory or its `samples.jsonl` (each row's `toyworld_variants`, in `preset`);
    - a saved trajectory (`trajectory.json`) or a directory of them (`*/trajectory.json`, e.g. an eval run).
    """
    path = Path(path).resolve()  # image paths of the samples come out absolute
    if path.is_dir():
        from thyme.data.store import sample_files

        files = sample_files(path)
        if files:
            for file in files:
                yield from read_samples(file, toyworld_variants=toyworld_variants, preset=preset)
            return
        if (path / "trajectory.json").is_file():
            path = path / "trajectory.json"
        else:
            found = sorted(path.rglob("trajectory.json"))
            if not found:
                raise SampleError(f"{path} holds no {SAMPLES_FILE}, shard files or trajectory.json files")
            for file in found:
                yield _from_trajectory_file(file)
            return
    if not path.is_file():
        raise SampleError(f"{path} does not exist")
    if path.name == "trajectory.json":
        yield _from_trajectory_file(path)
        return
    root = path.parent
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row.get("schema") == SCHEMA:
                    yield Sample.from_dict(row, root)
                elif "gold" in row and "task" in row:
                    for variant in toyworld_variants:
                        yield Sample.from_toyworld(row, root, variant=variant, preset=preset)
                else:
                    raise SampleError(
                        f"neither a {SCHEMA} row nor a toy-world row (keys: {', '.join(sorted(row))})"
                    )
            except (SampleError, KeyError, TypeError, ValueError) as exc:
                what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                raise SampleError(f"{path}:{number}: {what}") from None


def _from_trajectory_file(path: Path) -> Sample:
    from thyme.agent.trajectory import Trajectory

    traj = Trajectory.load(path)
    return Sample.from_trajectory(traj, id=traj.meta.get("id") or path.parent.name)


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _crop_regions(meta: Mapping[str, Any], answer: str, fed: Sequence[Path]) -> tuple[Region, ...]:
    """The colour chip in each fed-back crop of a colour question, labelled with its colour class.

    Class 1 marks a label on the user image; class `2 + i` is `PALETTE`'s i-th colour seen in a crop, so an
    auxiliary loss over toy-world colour crops has `aux.classes: 10`. The chip's box maps from the user image
    into the crop by the crop's scale (the fed image's size over its crop box), so the auxiliary loss can
    teach the vision tower to read the chip where the model is asked to read it.
    """
    from PIL import Image

    from thyme.data.toyworld.draw import PALETTE

    chip, boxes = meta.get("content_box"), meta.get("crop_boxes") or ()
    if meta.get("target") != "colour" or chip is None or answer not in PALETTE or len(boxes) != len(fed):
        return ()
    out = []
    for index, (box, image) in enumerate(zip(boxes, fed, strict=True), start=1):
        with Image.open(image) as img:
            width, height = img.size
        sx, sy = width / (box[2] - box[0]), height / (box[3] - box[1])
        inside = (
            max(0, round((chip[0] - box[0]) * sx)),
            max(0, round((chip[1] - box[1]) * sy)),
            min(width, round((chip[2] - box[0]) * sx)),
            min(height, round((chip[3] - box[1]) * sy)),
        )
        if inside[2] > inside[0] and inside[3] > inside[1]:
            out.append(Region(index, inside, 2 + list(PALETTE).index(answer)))
    return tuple(out)
