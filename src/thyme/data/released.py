"""Released Thyme rows as samples: one row of the Thyme-SFT or the Thyme-RL layout becomes one `Sample`.

The layouts (REFERENCE.md; column facts only):
- Thyme-SFT, splits `wo_thinking_thyme_single_round`, `2round`, `computation`: `image` is a list [original,
  processed...] (base64 text in the parquet files; file paths in the JSONL the reference README's converter
  writes); `question` is the user text the checkpoints were trained on (an `<image>` line, the question, the
  `### User Image Path:** "<path>"` and `### User Image Size:** "WxH"` lines, the output-format block);
  `response` is the whole assistant turn with one `<image>` inside `<sandbox_output>` per processed image,
  or the printed text. Computation rows may have no image at all.
- Thyme-RL: `messages` [system, user], `images` [the input image], `solution` (a bare answer), `question`.

Decisions (`thyme data convert` applies them; `thyme.data.convert` runs it over files):
- Images (base64 text, bytes, HF datasets' `{"bytes", "path"}` structs, or file paths relative to the input
  file) are decoded in full once (a corrupt one rejects the row, so training never meets it) and stored by
  content (`SampleStore.add_image`): an image repeated across rows or splits is one file.
- The user image path becomes `/mnt/data/<stored file name>`, the shape every data tool gives it
  (`from-boxes`, `distill`, the toy world): one convention across a mixed SFT set, unique per image, and at
  run time the sandbox's `image_path` repair points it at the real input. The stated path (and the code's
  first `image_path = "..."` literal when it names another file) is replaced in the question and the whole
  response (code, reasoning, printed text): the exact path, then any other path ending in its file name
  (outside the sandbox's output prefix), then the bare file name, so question and code agree.
- SFT user text: the released question verbatim apart from that path (faithful to the checkpoints' prompt).
  A question without the path line is rebuilt by the released preset (`user_parts`, as the loop builds it).
  Rows without an image keep their text alone. System: the row's own `system`, else the released one.
- The response is split by `split_response` into model and sandbox pieces exactly as the loop records them
  (printed text stripped, as the loop feeds it); `answer` is its `<answer>`.
- RL rows are prompts: no assistant pieces, `answer = solution`, the system and user text of `messages` kept
  (path rewritten when stated); the plain `question` goes to `meta`.
- Checks, each a `RowRejected(kind, detail)`: `image_count` (the response's `<image>` placeholders are not
  one per processed image; more than one `<image>` in the question, or one without an image), `bad_image`
  (undecodable data, a missing file), `malformed` (missing or mistyped fields, a response that does not
  split).
- Ids: `<split>-<16 hex of sha256(the row's texts, its first image's bytes)>`, the same in every run and
  shard (the resume keys); a repeated row gets the same id.

    row = ReleasedRow(data, layout="sft", split="2round", where="2round.parquet: row 7", root=Path("data"))
    row.id
    sample = row_to_sample(row, store)          # RowRejected(kind, detail) when the row fails a check
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from thyme.agent.episode import Prompt, user_parts
from thyme.data.rows import RowRejected
from thyme.data.sample import Sample, SampleError, split_response
from thyme.data.store import SampleStore
from thyme.errors import first_line
from thyme.protocol import IMAGE_PLACEHOLDER, ImagePart, TextPart, code_blocks, extract_answer, get_preset
from thyme.sandbox.repairs import OUTPUT_PREFIX

Layout = Literal["sft", "rl"]
LAYOUTS: tuple[str, ...] = ("sft", "rl")
REASONS: tuple[str, ...] = ("ok", "image_count", "bad_image", "malformed")
SANDBOX_DIR = "/mnt/data"  # where the sample's prompt says the user image lives

RELEASED = get_preset("released")
_CODE_IMAGE_PATH = re.compile(r"""\bimage_path\s*=\s*[rRuU]?(["'])(?P<value>[^"'\n]+)\1""")
_PATH_CHAR = r"[\w.~+-]"


def _stated_line(placeholder: str) -> re.Pattern[str]:
    """The released user template's line holding `{placeholder}`, as a pattern capturing the value."""
    line = next(t for t in RELEASED.user_template.splitlines() if "{" + placeholder + "}" in t)
    before, after = line.split("{" + placeholder + "}")
    return re.compile(re.escape(before) + r"(?P<value>[^\n]*?)" + re.escape(after) + r"[ \t\r]*$", re.M)


_PATH_LINE = _stated_line("image_path")
_SIZE_LINE = _stated_line("image_size")


@dataclass(frozen=True)
class ReleasedRow:
    """One input row in a known layout.

    data:  the row by column name; where: "file: row N" for messages; root: the input file's directory
    (image paths are relative to it).
    """

    data: Mapping[str, Any]
    layout: Layout
    split: str
    where: str
    root: Path

    @functools.cached_property
    def image_values(self) -> list[Any]:
        """The row's images as stored (base64, bytes, structs or paths), in order; [] when it has none."""
        value = self.data.get("image" if self.layout == "sft" else "images")
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]

    @functools.cached_property
    def id(self) -> str:
        """`<split>-<16 hex>` from the row's texts and its first image's bytes (its stored value when the
        image does not decode, so a rejected row has a stable id too)."""
        keys = ("question", "response") if self.layout == "sft" else ("messages", "solution")
        digest = hashlib.sha256()
        for key in keys:
            digest.update(_canonical(self.data.get(key)).encode("utf-8") + b"\0")
        if self.image_values:
            try:
                digest.update(image_bytes(self.image_values[0], self.root))
            except (RowRejected, TypeError, ValueError):  # RowRejected is a ValueError
                digest.update(_canonical(self.image_values[0]).encode("utf-8"))
        return f"{self.split}-{digest.hexdigest()[:16]}"


def row_to_sample(row: ReleasedRow, store: SampleStore) -> Sample:
    """The row as a sample, its images stored; RowRejected(kind, detail) when a check fails."""
    return sft_row_to_sample(row, store) if row.layout == "sft" else rl_row_to_sample(row, store)


def sft_row_to_sample(row: ReleasedRow, store: SampleStore) -> Sample:
    """A Thyme-SFT row (`image`, `question`, `response`) as a training sample."""
    question, response = _text(row, "question"), _text(row, "response")
    if not response.strip():
        raise RowRejected("malformed", "the response is empty")
    fed = response.count(IMAGE_PLACEHOLDER)
    processed = max(len(row.image_values) - 1, 0)
    if fed != processed:
        raise RowRejected(
            "image_count",
            f"the response feeds back {fed} image(s) (<image> in sandbox outputs) but the row has "
            f"{processed} processed image(s)",
        )
    _check_question_images(question, len(row.image_values))
    stored, sizes = _store_images(row, store)
    meta: dict[str, Any] = {"layout": "sft", "split": row.split, "source": row.where}
    if not stored:
        user: tuple = (TextPart(question),)
    else:
        canonical = f"{SANDBOX_DIR}/{stored[0].name}"
        stated = _PATH_LINE.search(question)
        if stated:
            text = question
            _note_stated_size(question, sizes[0], meta)
        else:
            bare = question.removeprefix(IMAGE_PLACEHOLDER).removeprefix("\n")
            _, text = user_parts(RELEASED, Prompt(bare, stored[0], sizes[0], canonical))
            meta["prompt_rebuilt"] = True
        # The stated path, then the code's own `image_path` literal when it names another file.
        found = [stated.group("value") if stated else None, _code_image_path(response)]
        originals = [p for p in dict.fromkeys(found) if p and not p.startswith(OUTPUT_PREFIX)]
        for original in originals:
            text = rewrite_path(text, original, canonical)
            response = rewrite_path(response, original, canonical)
        if originals:
            meta["original_path"] = originals[0]
        user = (ImagePart(stored[0]), TextPart(text))
    try:
        assistant = split_response(response, stored[1:])
    except SampleError as exc:
        raise RowRejected("malformed", str(exc)) from None
    return Sample(
        id=row.id,
        system=_system(row.data.get("system")),
        user=user,
        assistant=assistant,
        answer=extract_answer(response),
        origin="thyme-sft",
        meta=meta,
    )


def rl_row_to_sample(row: ReleasedRow, store: SampleStore) -> Sample:
    """A Thyme-RL row (`messages` [system, user], `images`, `solution`, `question`) as an RL prompt."""
    messages = row.data.get("messages")
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, Mapping) for m in messages):
        raise RowRejected("malformed", "messages must be a list of {role, content} objects")
    by_role = {str(m.get("role")): m.get("content") for m in reversed(messages)}  # the first of each wins
    if "user" not in by_role:
        raise RowRejected("malformed", "messages hold no user message")
    text = _content_text(by_role["user"])
    solution = row.data.get("solution")
    if solution is None or isinstance(solution, (list, dict)) or not str(solution).strip():
        raise RowRejected("malformed", "solution must be a non-empty string or number")
    if len(row.image_values) > 1:
        raise RowRejected("image_count", f"an RL prompt holds one image; the row has {len(row.image_values)}")
    _check_question_images(text, len(row.image_values))
    stored, sizes = _store_images(row, store)
    meta: dict[str, Any] = {"layout": "rl", "split": row.split, "source": row.where}
    if isinstance(row.data.get("question"), str):
        meta["question"] = row.data["question"]
    user: tuple = (TextPart(text),)
    if stored:
        stated = _PATH_LINE.search(text)
        if stated and stated.group("value"):
            canonical = f"{SANDBOX_DIR}/{stored[0].name}"
            text = rewrite_path(text, stated.group("value"), canonical)
            meta["original_path"] = stated.group("value")
            _note_stated_size(text, sizes[0], meta)
        user = (ImagePart(stored[0]), TextPart(text))
    return Sample(
        id=row.id,
        system=_system(by_role.get("system")),
        user=user,
        assistant=(),
        answer=str(solution).strip(),
        origin="thyme-rl",
        meta=meta,
    )


# -- paths ------------------------------------------------------------------------------------------------
def rewrite_path(text: str, original: str, canonical: str) -> str:
    """`text` with the user image's `original` path replaced by `canonical`: the exact path, then any other
    path ending in the same file name (not under the sandbox's output prefix), then the bare file name."""
    if not original:
        return text
    exact = re.compile(rf"(?<![\w.~+/-]){re.escape(original)}(?!{_PATH_CHAR})")  # not inside a longer name
    text = exact.sub(lambda _: canonical, text)
    name, new_name = posixpath.basename(original), posixpath.basename(canonical)
    if not name or name == new_name:
        return text
    pattern = re.compile(rf"(?<![\w.~+/-])(?P<dir>(?:{_PATH_CHAR}*/)+)?{re.escape(name)}(?!{_PATH_CHAR})")

    def swap(match: re.Match[str]) -> str:
        directory = match.group("dir")
        if directory is None:
            return new_name
        if directory.rstrip("/").startswith(OUTPUT_PREFIX):
            return match.group(0)  # a processed image the code writes, which may share the input's name
        return canonical

    return pattern.sub(swap, text)


def _code_image_path(response: str) -> str | None:
    """The first `image_path = "..."` literal of the response's code (the path the code opens)."""
    for block in code_blocks(response):
        match = _CODE_IMAGE_PATH.search(block.code)
        if match:
            return match.group("value")
    return None


def _note_stated_size(text: str, size: tuple[int, int], meta: dict[str, Any]) -> None:
    """Keep the stated size in `meta` when it is not the image's (the code's coordinates may be off)."""
    stated = _SIZE_LINE.search(text)
    if stated and stated.group("value") != f"{size[0]}x{size[1]}":
        meta["stated_size"] = stated.group("value")


# -- images -----------------------------------------------------------------------------------------------
def image_bytes(value: Any, root: Path, label: str = "image") -> bytes:
    """The encoded bytes of one stored image: base64 text (a `data:` URL too), bytes, a `{"bytes", "path"}`
    struct, or a file path (relative to `root`). A string holding a "." (never in base64) is a path."""
    from thyme.eval.loaders import decode_base64

    if isinstance(value, Mapping):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return _read_image_file(root, str(value["path"]))
        raise RowRejected("bad_image", "an image struct with neither bytes nor a path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise RowRejected("malformed", f"an image given as {type(value).__name__}")
    text = value.strip()
    if not text.startswith("data:") and ("." in text or (len(text) < 1024 and _is_file(root / text))):
        return _read_image_file(root, text)
    try:
        return decode_base64(text, label)
    except ValueError as exc:
        raise RowRejected("bad_image", first_line(exc)) from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a base64 text too long for a file name
        return False


def _read_image_file(root: Path, name: str) -> bytes:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else root / path
    try:
        return path.read_bytes()
    except OSError as exc:
        detail = f"cannot read image file {name} ({exc.strerror or exc}); paths are relative to the data"
        raise RowRejected("bad_image", detail) from None


def _store_images(row: ReleasedRow, store: SampleStore) -> tuple[list[Path], list[tuple[int, int]]]:
    """Every image of the row decoded in full, then stored (nothing is stored when one fails)."""
    decoded = []
    for number, value in enumerate(row.image_values):
        data = image_bytes(value, row.root, f"image {number}")
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                decoded.append((data, img.size))
        except UnidentifiedImageError:
            raise RowRejected("bad_image", f"image {number} is not an image file PIL can read") from None
        except Exception as exc:  # PIL raises many types for corrupt or truncated data
            raise RowRejected("bad_image", f"image {number} does not decode ({first_line(exc)})") from None
    return [store.add_image(data) for data, _ in decoded], [size for _, size in decoded]


# -- fields -----------------------------------------------------------------------------------------------
def _text(row: ReleasedRow, key: str) -> str:
    value = row.data.get(key)
    if not isinstance(value, str):
        what = "is missing" if value is None else f"must be text, got {type(value).__name__}"
        raise RowRejected("malformed", f"{key} {what}")
    return value


def _check_question_images(text: str, images: int) -> None:
    tags = text.count(IMAGE_PLACEHOLDER)
    if tags > min(images, 1):
        has = "no image" if not images else "one user image"
        raise RowRejected("image_count", f"the question holds {tags} <image> tag(s) but the row has {has}")


def _content_text(content: Any) -> str:
    """A message's content as text: a string, or a list of items ({"type": "text"} / {"type": "image"})."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)) and all(isinstance(c, Mapping) for c in content):
        return "".join(
            str(c.get("text") or "") if c.get("type") == "text" else IMAGE_PLACEHOLDER + "\n" for c in content
        )
    raise RowRejected("malformed", "a message's content must be text or a list of content items")


def _system(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return RELEASED.system
    return _content_text(value)


def _canonical(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False)
