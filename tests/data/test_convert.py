"""`thyme data convert`: released Thyme-SFT and Thyme-RL rows (parquet, JSONL) into samples.

Fixtures are built here from the released column facts (REFERENCE.md): SFT rows hold `image` = [original,
processed...] as base64 (parquet) or paths (the reference README's JSONL), `question` in the released prompt
with the user image path, `response` with `<sandbox_output>` parts; RL rows hold `messages`, `images`,
`solution`, `question`. Nothing is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from thyme.data.convert import ConvertConfig, convert
from thyme.data.convert_read import count_rows, infer_split, iter_rows, open_inputs
from thyme.data.released import rewrite_path
from thyme.data.sample import read_samples, split_response
from thyme.data.store import Shard
from thyme.protocol import ImagePart, TextPart, get_preset

RELEASED = get_preset("released")
PATH = "/data/thyme/images/photo_0007.jpg"
CODE_OPEN, CODE_CLOSE = "<code>\n```python\n", "```\n</code>\n"
OUT = "/mnt/data/temp_processed_images"


# -- fixtures in the released layouts ---------------------------------------------------------------------
def encoded(seed: int, size=(96, 64), fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def question(text: str, size=(96, 64), path: str = PATH) -> str:
    """The user text as the released data holds it: the released prompt with the dataset's own path."""
    return RELEASED.user_text(text, image_path=path, image_size=size)


def crop_code(name: str, comment: str = "") -> str:
    return (
        f'{CODE_OPEN}from PIL import Image\n{comment}image_path = "{PATH}"\nimg = Image.open(image_path)\n'
        f'processed_path = "{OUT}/{name}"\nimg.crop((0, 0, 32, 32)).save(processed_path)\n'
        f"print(processed_path){chr(10)}{CODE_CLOSE}"
    )


FED = "<sandbox_output><image></sandbox_output>\n"
SINGLE = (
    f"<think>The sign is tiny; crop it.\n{crop_code('photo_0007.jpg')}{FED}"
    "The crop shows STOP.</think>\n<answer>STOP</answer>"
)
TWO_ROUND = (
    f"<think>First the left half.\n{crop_code('left.png', '# the input is photo_0007.jpg' + chr(10))}"
    f"{FED}Not there; the right half.\n{crop_code('right.png')}{FED}It reads 12.</think>\n"
    "<answer>12</answer>"
)
ERROR_FEEDBACK = (
    f"<think>Open it.\n{CODE_OPEN}from PIL import Image\nimg = Image.open('/wrong/photo_0007.jpg')\n"
    f"{CODE_CLOSE}<sandbox_output>\n"
    "FileNotFoundError: [Errno 2] No such file or directory: '/wrong/photo_0007.jpg'\n</sandbox_output>\n"
    f"Use the stated path.\n{crop_code('fix.png')}{FED}Done.</think>\n<answer>blue</answer>"
)
COMPUTATION = (
    f"<think>Compute it.\n{CODE_OPEN}print(6 * 7)\n{CODE_CLOSE}"
    "<sandbox_output>\n42\n</sandbox_output>\nSo 42.</think>\n<answer>42</answer>"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sft_rows() -> list[dict]:
    """Single-round, 2-round, error-feedback and computation rows; the first three share their original."""
    original = encoded(0)
    return [
        {"image": [b64(original), b64(encoded(1, (32, 32), "PNG"))],
         "question": question("What does the sign say?"), "response": SINGLE},
        {"image": [b64(original), b64(encoded(2, (32, 32), "PNG")), b64(encoded(3, (32, 32), "PNG"))],
         "question": question("Which number is on the door?"), "response": TWO_ROUND},
        {"image": [b64(original), b64(encoded(4, (32, 32), "PNG"))], "question": question("Which colour?"),
         "response": ERROR_FEEDBACK},
        {"image": [], "question": "What is 6 times 7?", "response": COMPUTATION},
    ]  # fmt: skip


def rl_rows(image_value, birds: int | str = "3") -> list[dict]:
    system = "You are a helpful assistant. Use code when it helps."
    return [
        {"messages": [{"role": "system", "content": system},
                      {"role": "user", "content": "<image>\nWhat colour is the car?"}],
         "images": [image_value], "solution": "black", "question": "What colour is the car?"},
        {"messages": [{"role": "system", "content": system},
                      {"role": "user", "content": question("How many birds?", path="/rl/birds.jpg")}],
         "images": [image_value], "solution": birds, "question": "How many birds?"},
    ]  # fmt: skip


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def records(directory: Path, name: str = "convert.jsonl") -> list[dict]:
    return [json.loads(line) for line in (directory / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_parquet(tmp_path_factory) -> Path:
    return write_parquet(
        tmp_path_factory.mktemp("released") / "data" / "2round-00000-of-00001.parquet", sft_rows()
    )


@pytest.fixture(scope="module")
def converted(sft_parquet, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    summary = convert([sft_parquet], out)
    return out, summary, {s.meta["source"]: s for s in read_samples(out)}


# -- the SFT layout ---------------------------------------------------------------------------------------
def test_sft_rows_convert_with_images_by_content_and_one_path(converted):
    out, summary, samples = converted
    assert (summary.rows, summary.written, summary.rejected) == (4, 4, {})
    single = samples["2round-00000-of-00001.parquet: row 1"]
    assert single.id.startswith("2round-") and len(single.id) == len("2round-") + 16
    assert single.origin == "thyme-sft" and single.system == RELEASED.system and single.answer == "STOP"
    # Images: stored under the sha256 of their bytes, the shared original once.
    for sample in samples.values():
        for path in sample.images:
            assert (
                path.parent.parent == out / "images"
                and path.stem == hashlib.sha256(path.read_bytes()).hexdigest()
            )
    stored = {p for s in samples.values() for p in s.images}
    assert len(stored) == 5 == len([p for p in (out / "images").rglob("*") if p.is_file()])
    # One canonical path in the question and the code; processed images under the output prefix untouched.
    canonical = f"/mnt/data/{single.images[0].name}"
    assert single.user[0] == ImagePart(single.images[0])
    expected = SINGLE.replace(PATH, canonical)
    assert single.user[1] == TextPart(question("What does the sign say?").replace(PATH, canonical))
    assert f'image_path = "{canonical}"' in single.response and PATH not in single.response
    assert f'"{OUT}/photo_0007.jpg"' in single.response
    # Pieces exactly as split_response (the agent loop's structure) makes them.
    assert single.assistant == split_response(expected, single.images[1:])
    assert [p.source for p in single.assistant] == ["model", "sandbox", "sandbox", "sandbox", "model"]


def test_two_round_error_feedback_and_computation_rows(converted):
    _, _, samples = converted
    two = samples["2round-00000-of-00001.parquet: row 2"]
    canonical = f"/mnt/data/{two.images[0].name}"
    assert len(two.images) == 3 and two.code_rounds == 2 and two.answer == "12"
    assert f"# the input is {two.images[0].name}\n" in two.response  # the bare file name, renamed too
    assert two.assistant == split_response(TWO_ROUND.replace(PATH, canonical).replace(
        "photo_0007.jpg\n", f"{two.images[0].name}\n"), two.images[1:])  # fmt: skip
    error = samples["2round-00000-of-00001.parquet: row 3"]
    canonical = f"/mnt/data/{error.images[0].name}"
    feedback = [
        p.part.text for p in error.assistant if p.source == "sandbox" and isinstance(p.part, TextPart)
    ]
    assert feedback[1] == f"FileNotFoundError: [Errno 2] No such file or directory: '{canonical}'"
    assert error.images[0] == two.images[0] and error.code_rounds == 2
    compute = samples["2round-00000-of-00001.parquet: row 4"]
    assert compute.images == [] and compute.user == (TextPart("What is 6 times 7?"),)
    assert [p.part.text for p in compute.assistant if p.source == "sandbox"] == [
        "<sandbox_output>", "42", "</sandbox_output>"
    ]  # fmt: skip
    assert compute.answer == "42"


def test_a_question_without_the_path_line_is_built_by_the_released_preset(tmp_path):
    original = encoded(5)
    row = {"image": [b64(original), b64(encoded(6, (32, 32), "PNG"))], "question": "<image>\nWhat is it?",
           "response": SINGLE}  # fmt: skip
    convert([write_jsonl(tmp_path / "single.jsonl", [row])], tmp_path / "out")
    (sample,) = read_samples(tmp_path / "out")
    canonical = f"/mnt/data/{sample.images[0].name}"
    assert sample.user[1] == TextPart(
        RELEASED.user_text("What is it?", image_path=canonical, image_size=(96, 64))
    )
    assert f'image_path = "{canonical}"' in sample.response and sample.id.startswith("single-")


def test_the_reference_jsonl_layout_gives_the_same_samples_as_the_parquet(converted, tmp_path):
    _, _, samples = converted
    rows = []
    for number, row in enumerate(sft_rows()):
        names = []
        for k, value in enumerate(row["image"]):
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / "images" / f"{number:08d}_{k:02d}.img").write_bytes(base64.b64decode(value))
            names.append(f"images/{number:08d}_{k:02d}.img")
        rows.append({**row, "image": names})
    convert([write_jsonl(tmp_path / "2round.jsonl", rows)], tmp_path / "out")
    from_jsonl = {s.id: s for s in read_samples(tmp_path / "out")}
    assert set(from_jsonl) == {s.id for s in samples.values()}
    for sample in samples.values():
        assert from_jsonl[sample.id].response == sample.response
        assert [p.name for p in from_jsonl[sample.id].images] == [p.name for p in sample.images]


def test_a_converted_sample_trains_on_model_text_only(converted, tmp_path_factory):
    from thyme.models import build_tiny, load_processor
    from thyme.models.encoding import Encoder
    from thyme.train.masks import SANDBOX

    _, _, samples = converted
    sample = samples["2round-00000-of-00001.parquet: row 1"]
    encoder = Encoder(load_processor(build_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0)))
    example = encoder.example(sample.conversation())
    sandbox = [i for i, role in enumerate(example.roles) if role == SANDBOX]
    assert sandbox and all(example.labels[i] == -100 for i in sandbox)
    trained = encoder.tokenizer.decode([t for t in example.labels if t != -100])
    assert "<answer>STOP</answer>" in trained and "The crop shows STOP." in trained
    assert "sandbox_output" not in trained and example.image_rows == sum(int(g.prod()) for g in example.grids)


# -- the RL layout ----------------------------------------------------------------------------------------
def test_rl_rows_become_prompts_with_answers(tmp_path):
    png = encoded(7, (48, 40), "PNG")
    write_parquet(
        tmp_path / "rl" / "train-00000-of-00001.parquet", rl_rows({"bytes": png, "path": "car.png"})
    )
    (tmp_path / "rl" / "car.png").write_bytes(png)
    write_jsonl(tmp_path / "rl" / "extra.jsonl", rl_rows("car.png", birds=3))
    summary = convert([tmp_path / "rl"], tmp_path / "out", ConvertConfig(split="thyme_rl"))
    assert (summary.written, summary.duplicates) == (2, 2)  # the parquet rows repeat the JSONL's content
    first, second = read_samples(tmp_path / "out")
    canonical = f"/mnt/data/{first.images[0].name}"
    assert first.origin == "thyme-rl" and first.assistant == () and first.answer == "black"
    assert first.system == "You are a helpful assistant. Use code when it helps."
    assert first.user == (ImagePart(first.images[0]), TextPart("<image>\nWhat colour is the car?"))
    assert first.meta["question"] == "What colour is the car?" and first.id.startswith("thyme_rl-")
    assert second.answer == "3" and f'Path:** "{canonical}"' in second.user[1].text
    assert "/rl/birds.jpg" not in second.user[1].text and second.meta["stated_size"] == "96x64"


# -- rejections, resume, shards, memory -------------------------------------------------------------------
def test_rows_that_fail_a_check_are_recorded_with_a_reason(tmp_path):
    good = sft_rows()[0]
    truncated = encoded(8)[:200]
    rows = [
        {
            **good,
            "image": good["image"][:1],
            "question": "1",
        },  # one <image> in the response, no processed one
        {**good, "image": [good["image"][0], b64(b"not an image at all")], "question": "2"},
        {**good, "image": [b64(truncated), good["image"][1]]},
        {**good, "image": ["@@not base64@@", good["image"][1]], "question": "4"},
        {"image": [], "question": "<image>\nNo image here?", "response": COMPUTATION},
        {"image": [], "question": "q", "response": None},
        "{not json",
        good,
    ]
    summary = convert([write_jsonl(tmp_path / "bad.jsonl", rows)], tmp_path / "out")
    assert summary.written == 1
    assert summary.rejected == {"bad_image": 3, "image_count": 2, "malformed": 2}
    got = [(r["reason"], r["ok"], r["where"]) for r in records(tmp_path / "out")]
    assert [g[0] for g in got] == ["image_count", "bad_image", "bad_image", "bad_image", "image_count",
                                   "malformed", "malformed", "ok"]  # fmt: skip
    assert got[0][2] == "bad.jsonl:1" and got[-1][1] is True
    details = [r["detail"] for r in records(tmp_path / "out")]
    assert "feeds back 1 image(s)" in details[0] and "0 processed image(s)" in details[0]
    assert "image 1 is not an image file" in details[1] and "image 0 does not decode" in details[2]
    assert "not valid base64" in details[3] and "not JSON" in details[6]
    assert len([p for p in (tmp_path / "out" / "images").rglob("*") if p.is_file()]) == 2  # the good row's


def test_a_second_run_resumes_and_writes_nothing_new(sft_parquet, tmp_path):
    out = tmp_path / "out"
    convert([sft_parquet], out)
    before = (out / "samples.jsonl").read_text()
    again = convert([sft_parquet], out)
    assert (again.written, again.resumed) == (0, 4) and (out / "samples.jsonl").read_text() == before
    # A kill between writing the samples and their records: the re-run records them, writes no sample twice.
    lines = (out / "convert.jsonl").read_text().splitlines(keepends=True)
    (out / "convert.jsonl").write_text("".join(lines[:2]))
    mended = convert([sft_parquet], out)
    assert mended.resumed == 4 and (out / "samples.jsonl").read_text() == before
    assert [r["id"] for r in records(out)] == [json.loads(x)["id"] for x in lines]


def test_shards_are_disjoint_and_complete(tmp_path):
    rows = [{**row, "question": row["question"] + f" ({i})"} for i in range(3) for row in sft_rows()]
    source = write_parquet(tmp_path / "mix.parquet", rows, row_group_size=5)
    convert([source], tmp_path / "all", ConvertConfig(limit=11))
    whole = {s.id for s in read_samples(tmp_path / "all")}
    parts = []
    for i in range(3):
        summary = convert([source], tmp_path / "sharded", ConvertConfig(shard=Shard(i, 3), limit=11))
        assert summary.rows == len(range(i, 11, 3))
        parts.append({r["id"] for r in records(tmp_path / "sharded", f"convert-{i:05d}-of-00003.jsonl")})
    assert sum(len(p) for p in parts) == 11 and set().union(*parts) == whole
    assert {s.id for s in read_samples(tmp_path / "sharded")} == set().union(*parts)
    assert count_rows(open_inputs([source]), Shard(1, 3), 11) == 4


def test_parquet_streams_row_group_by_row_group(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": [rng.bytes(60_000)], "question": "q", "response": "r"} for _ in range(200)]
    source = write_parquet(tmp_path / "big.parquet", rows, row_group_size=4)
    size = source.stat().st_size
    before = pa.total_allocated_bytes()
    rows_iter = iter_rows(open_inputs([source]), shard=Shard())
    first = next(rows_iter)
    held = [pa.total_allocated_bytes() - before]
    assert first.position == 0 and first.data["question"] == "q"
    for raw in rows_iter:
        if raw.position == 100:
            held.append(pa.total_allocated_bytes() - before)
    assert raw.position == 199 and max(held) < size / 5, (held, size)  # a whole-file read holds `size`


def test_path_rewrite_and_split_names():
    new = "/mnt/data/ab12.jpg"
    text = f'a = "{PATH}"; b = "/other/photo_0007.jpg"; c = "photo_0007.jpg"; d = "{OUT}/photo_0007.jpg"'
    assert (
        rewrite_path(text, PATH, new)
        == f'a = "{new}"; b = "{new}"; c = "ab12.jpg"; d = "{OUT}/photo_0007.jpg"'
    )
    assert rewrite_path("my_photo_0007.jpg photo_0007.jpgs", PATH, new) == "my_photo_0007.jpg photo_0007.jpgs"
    bare = f'open("image.jpg"), "my_image.jpg", "{OUT}/image.jpg"'
    assert rewrite_path(bare, "image.jpg", new) == f'open("{new}"), "my_image.jpg", "{OUT}/image.jpg"'
    assert infer_split(Path("data/wo_thinking_thyme_single_round-00003-of-00012.parquet")) == (
        "wo_thinking_thyme_single_round"
    )
    assert infer_split(Path("computation/0000.parquet")) == "computation"
    assert infer_split(Path("out/2round.jsonl")) == "2round"


# -- the command line -------------------------------------------------------------------------------------
def test_thyme_data_convert_from_the_command_line(sft_parquet, tmp_path):
    from typer.testing import CliRunner

    from thyme.cli import app

    def run(*args: str):
        return CliRunner().invoke(app, ["data", "convert", *args])

    result = run(str(sft_parquet), "--out", str(tmp_path / "out"), "--limit", "3")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("converted 3 rows: 3 written, 0 rejected, 0 skipped; ") and "rows/s" in last
    bad = [
        ([str(tmp_path / "missing.parquet")], "missing.parquet does not exist"),
        ([str(sft_parquet), "--shard", "3"], "--shard '3': write it as i/n"),
        ([str(sft_parquet), "--shard", "4/4"], "shard 4/4: use i/n with 0 <= i < n"),
        ([str(sft_parquet), "--layout", "chat"], "--layout 'chat': choose auto, sft or rl"),
        ([str(sft_parquet), "--limit", "0"], "--limit 0: use 1 or more rows"),
        ([str(write_jsonl(tmp_path / "other.jsonl", [{"a": 1}]))], "are neither Thyme-SFT"),
        ([str(tmp_path / "out" / "samples.jsonl")], "is an output of --out"),
    ]
    for args, message in bad:
        result = run(*args, "--out", str(tmp_path / "out"))
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, (args, result.output)
        assert lines[0].startswith("error: ") and message in lines[0], (args, lines[0])
