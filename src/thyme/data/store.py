"""Where data tools write samples: content-addressed images, durable JSONL, shards, resume.

Layout of an output directory:

    DIR/samples.jsonl                         one `thyme.sample/1` row per line (no --shard)
    DIR/samples-00003-of-00016.jsonl          shard 3 of 16 (`--shard 3/16`), so a job array shares DIR
    DIR/images/3f/3fa2c4....png               every image once, named by the sha256 of its bytes

Images are written atomically (a temporary file renamed into place) and named by content, so concurrent
shards writing the same image cannot clash and a re-run rewrites nothing. Rows are appended with one write
and fsync per batch (`thyme.jsonl`); re-running the same command skips ids already written, and a torn last
line from a kill is dropped. `read_samples(DIR)` reads the plain file or every shard file.

    store = SampleStore(out_dir, shard=Shard.parse("3/16"))
    done = store.done_ids()
    path = store.add_image(png_bytes)               # DIR/images/ab/ab12....png
    store.append([sample, ...])                     # paths stored relative to DIR
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from thyme.data.sample import SAMPLES_FILE, Sample
from thyme.files import atomic_write
from thyme.jsonl import JsonlRecords

IMAGES_DIR = "images"
_SHARD_FILE = re.compile(r"samples-(\d{5})-of-(\d{5})\.jsonl")
_IMAGE_EXTS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based): the items whose position p has p % count == index."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: use i/n with 0 <= i < n (e.g. --shard 0/8)")

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        """ "i/n" (None or "" is the whole set)."""
        if not text:
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"--shard {text!r}: write it as i/n, e.g. 0/8 for the first of 8 shards")
        return cls(int(match.group(1)), int(match.group(2)))

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    @property
    def filename(self) -> str:
        """This shard's samples file: `samples.jsonl`, or `samples-00003-of-00016.jsonl`."""
        return self.file("samples", ".jsonl")

    def file(self, stem: str, suffix: str) -> str:
        """This shard's name for a file of a tool (`verify.jsonl`, `verify-00003-of-00016.jsonl`)."""
        return (
            f"{stem}{suffix}" if self.count == 1 else f"{stem}-{self.index:05d}-of-{self.count:05d}{suffix}"
        )


def sample_files(directory: Path) -> list[Path]:
    """The sample files of an output directory: `samples.jsonl` and every shard file, sorted."""
    files = sorted(p for p in directory.iterdir() if _SHARD_FILE.fullmatch(p.name))
    plain = directory / SAMPLES_FILE
    return ([plain] if plain.is_file() else []) + files


class SampleStore:
    """An output directory of samples (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], *, shard: Shard = Shard()) -> None:
        self.directory = Path(directory)
        self.shard = shard
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / IMAGES_DIR).mkdir(exist_ok=True)
        self.records = JsonlRecords(self.directory / shard.filename)

    @property
    def path(self) -> Path:
        """This shard's JSONL file."""
        return self.records.path

    def done_ids(self) -> set[str]:
        """Ids already written by this shard (a torn last line is dropped first); only the ids are kept."""
        return self.records.ids()

    def add_image(self, data: bytes | os.PathLike[str], ext: str | None = None) -> Path:
        """Store image bytes (or a file's bytes) under their sha256; returns the stored file's path.

        ext: ".png", ".jpg"...; None reads the format from the bytes (PIL) and fails on a non-image.
        """
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        ext = ext or image_extension(data)
        digest = hashlib.sha256(data).hexdigest()
        target = self.directory / IMAGES_DIR / digest[:2] / f"{digest}{ext}"
        if target.is_file() and target.stat().st_size == len(data):
            return target
        return atomic_write(target, data)

    def append(self, samples: Iterable[Sample]) -> None:
        """Append rows (image paths relative to the directory), one write and one fsync for all."""
        self.records.append_many(s.to_dict(self.directory) for s in samples)


def image_extension(data: bytes) -> str:
    """The file extension of encoded image bytes; ValueError when they are not an image PIL can open."""
    import io

    from PIL import Image

    from thyme.errors import image_error

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
    except (OSError, ValueError) as exc:
        raise ValueError(f"not an image: {image_error(exc)}") from None
    return _IMAGE_EXTS.get(fmt, f".{fmt.lower() or 'bin'}")
