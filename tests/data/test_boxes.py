"""`thyme data from-boxes`: grounding rows become crop-and-zoom samples verified in the real sandbox.

The images are drawn here: full-range noise with one solid red rectangle at a known box, so a crop can be
checked to hold the box (its red pixels), and an augmentation to be undone (its crop equals the plain one).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from thyme.agent.episode import Prompt, user_parts
from thyme.data.box_drafts import build_variant
from thyme.data.boxes import BoxesConfig, from_boxes, from_boxes_command
from thyme.data.rows import RowError
from thyme.data.sample import read_samples
from thyme.data.store import Shard
from thyme.data.toyworld.gold import GoldVerificationError, run_gold
from thyme.protocol import code_blocks, extract_answer, get_preset

RED = (255, 0, 0)
BOX = (150, 60, 190, 84)  # the red rectangle, [x1, y1, x2, y2] (right and bottom exclusive)


def draw(path: Path, size=(320, 240), box=BOX, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255  # the full range, so a contrast stretch restores it exactly
    pixels[box[1] : box[3], box[0] : box[2]] = RED
    Image.fromarray(pixels).save(path)
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("boxes")
    draw(root / "a.png")
    draw(root / "b.png", size=(200, 300), box=(20, 200, 60, 230), seed=1)
    return write_rows(
        root / "rows.jsonl",
        [
            {"image": "a.png", "question": "What colour is the patch?", "answer": "red", "box": list(BOX)},
            {"image": "b.png", "question": "And here?", "answer": "red", "box": [0.1, 2 / 3, 0.3, 230 / 300],
             "id": "b-row"},
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def augmented(rows_file, toy_sandbox, tmp_path_factory):
    out = tmp_path_factory.mktemp("boxes-out")
    config = BoxesConfig(augment=("rotate", "contrast"), workers=2)
    result = from_boxes(rows_file, out, config, sandbox=toy_sandbox)
    return result, {s.id: s for s in read_samples(out)}


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


def red_pixels(array: np.ndarray) -> int:
    return int(np.all(array == RED, axis=-1).sum())


def test_each_row_becomes_a_verified_zoom_sample_whose_crop_holds_the_box(augmented, rows_file):
    result, samples = augmented
    assert result.written == {"zoom": 2, "rotate": 2, "contrast": 2} and result.rejected == {}
    assert result.normalised == 1  # the second row's box was given as fractions
    zoom = next(s for s in samples.values() if s.meta["variant"] == "zoom" and s.id != "b-row-zoom")
    assert zoom.id.endswith("-zoom") and zoom.origin == "boxes" and zoom.answer == "red"
    assert zoom.code_rounds == 1 and extract_answer(zoom.response) == "red"
    [block] = code_blocks(zoom.response)
    assert "image_path" in block.code and "/mnt/data/temp_processed_images/" in block.code
    # The fed-back image is the window around the box enlarged 2x: all of the box's red, and only it.
    window = zoom.meta["crop_box"]
    assert window[0] <= BOX[0] and window[1] <= BOX[1] and window[2] >= BOX[2] and window[3] >= BOX[3]
    crop = pixels(zoom.images[1])
    assert crop.shape[1::-1] == (2 * (window[2] - window[0]), 2 * (window[3] - window[1]))
    x1, y1, x2, y2 = (2 * (v - window[i % 2]) for i, v in enumerate(BOX))  # the box in the crop
    edge = 6  # LANCZOS mixes 3 source px (6 here) across an edge
    assert (crop[y1 + edge : y2 - edge, x1 + edge : x2 - edge] == RED).all()
    outside = crop.copy()
    outside[y1 - edge : y2 + edge, x1 - edge : x2 + edge] = 0
    assert red_pixels(outside) == 0
    # The user turn is what the agent loop would show for this image and question.
    preset = get_preset("default")
    _, text = user_parts(preset, Prompt("What colour is the patch?", zoom.images[0], (320, 240)))
    assert zoom.system == preset.system and zoom.user[1].text == text
    assert (pixels(zoom.images[0]) == pixels(rows_file.parent / "a.png")).all()
    assert [r.box for r in zoom.regions] == [BOX]
    normalised = samples["b-row-zoom"]
    assert normalised.meta["box"] == [20, 200, 60, 230]


def test_rotation_is_undone_by_the_code_and_its_region_follows_the_image(augmented):
    _, samples = augmented
    for row in {s.meta["row"] for s in samples.values()}:
        rotate, zoom = samples[f"{row}-rotate"], samples[f"{row}-zoom"]
        angle = rotate.meta["angle"]
        assert f"img.rotate({(360 - angle) % 360}, expand=True)" in code_blocks(rotate.response)[0].code
        shown, upright = pixels(rotate.images[0]), pixels(zoom.images[0])
        assert (shown == np.rot90(upright, k=angle // 90)).all()  # stored turned counter-clockwise
        x1, y1, x2, y2 = rotate.regions[0].box
        assert (shown[y1:y2, x1:x2] == RED).all()  # the region is the red box in the turned image
        assert red_pixels(shown) == (x2 - x1) * (y2 - y1)
        assert (pixels(rotate.images[1]) == pixels(zoom.images[1])).all()  # undone exactly


def test_low_contrast_is_undone_by_the_code_within_rounding(augmented):
    _, samples = augmented
    for row in {s.meta["row"] for s in samples.values()}:
        contrast, zoom = samples[f"{row}-contrast"], samples[f"{row}-zoom"]
        shown = pixels(contrast.images[0])
        low, high = contrast.meta["squeeze"]
        assert shown.min() == low and shown.max() == high and high - low <= 72
        assert "np.rint(pixels)" in code_blocks(contrast.response)[0].code
        diff = np.abs(pixels(contrast.images[1]) - pixels(zoom.images[1]))
        assert diff.mean() < 1.5 and diff.max() <= 255 / (high - low) + 3


def test_the_released_preset_states_the_path_the_code_opens(rows_file, toy_sandbox, tmp_path):
    from_boxes(rows_file, tmp_path, BoxesConfig(preset="released", limit=1), sandbox=toy_sandbox)
    [sample] = read_samples(tmp_path)
    stated = f"/mnt/data/{sample.images[0].name}"
    assert f'"{stated}"' in sample.user[1].text and '"320x240"' in sample.user[1].text
    assert f'image_path = "{stated}"' in code_blocks(sample.response)[0].code


def test_same_seed_same_bytes_other_seed_other_choices(rows_file, toy_sandbox, tmp_path):
    config = BoxesConfig(augment=("rotate",), seed=3)
    for name in ("a", "b"):
        from_boxes(rows_file, tmp_path / name, config, sandbox=toy_sandbox)
    first = (tmp_path / "a" / "samples.jsonl").read_bytes()
    assert first == (tmp_path / "b" / "samples.jsonl").read_bytes()
    from_boxes(rows_file, tmp_path / "c", dataclasses.replace(config, seed=4), sandbox=toy_sandbox)
    assert first != (tmp_path / "c" / "samples.jsonl").read_bytes()


def test_a_rerun_resumes_and_adds_only_new_variants(rows_file, toy_sandbox, tmp_path):
    first = from_boxes(rows_file, tmp_path, BoxesConfig(), sandbox=toy_sandbox)
    assert first.written == {"zoom": 2}
    before = (tmp_path / "samples.jsonl").read_text()
    again = from_boxes(rows_file, tmp_path, BoxesConfig(), sandbox=toy_sandbox)
    assert again.written == {} and again.resumed == 2
    more = from_boxes(rows_file, tmp_path, BoxesConfig(augment=("contrast",)), sandbox=toy_sandbox)
    assert more.written == {"contrast": 2} and more.resumed == 0
    after = (tmp_path / "samples.jsonl").read_text()
    assert after.startswith(before) and len(after.splitlines()) == 4


def test_shards_split_the_rows_between_files(rows_file, toy_sandbox, tmp_path):
    ids = []
    for index in (0, 1):
        result = from_boxes(rows_file, tmp_path, BoxesConfig(shard=Shard(index, 2)), sandbox=toy_sandbox)
        assert result.rows == 1 and result.samples_path.name == f"samples-0000{index}-of-00002.jsonl"
        ids.append({json.loads(line)["id"] for line in result.samples_path.read_text().splitlines()})
    assert ids[0].isdisjoint(ids[1]) and "b-row-zoom" in ids[1]
    assert len(list(read_samples(tmp_path))) == 2


def test_rows_that_cannot_be_used_are_recorded_with_the_reason(rows_file, toy_sandbox, tmp_path):
    root = rows_file.parent
    rows = write_rows(
        tmp_path / "rows.jsonl",
        [
            {"image": str(root / "a.png"), "question": "Off?", "answer": "x", "box": [400, 10, 450, 40]},
            {"image": "missing.png", "question": "Where?", "answer": "x", "box": [1, 1, 5, 5], "id": "gone"},
            {"image": str(root / "a.png"), "question": "Fine?", "answer": "red", "box": list(BOX)},
            {"image": "also-missing.png", "question": "No id?", "answer": "x", "box": [1, 1, 5, 5]},
        ],
    )  # fmt: skip
    result = from_boxes(rows, tmp_path / "out", BoxesConfig(), sandbox=toy_sandbox)
    assert result.written == {"zoom": 1} and result.rejected == {"box": 1, "image": 2}
    records = [json.loads(line) for line in result.rejected_path.read_text().splitlines()]
    assert [r["where"] for r in records] == ["rows.jsonl:1", "rows.jsonl:2", "rows.jsonl:4"]
    assert "lies outside the 320x240 image" in records[0]["reason"] and records[1]["id"] == "gone"
    assert records[2]["id"] == "rows.jsonl:4" and "cannot read image" in records[2]["reason"]
    again = from_boxes(rows, tmp_path / "out", BoxesConfig(), sandbox=toy_sandbox)
    assert again.resumed == 4 and again.rejected == {}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"image": "a.png", "question": "q", "answer": "a"}, r"rows.jsonl:1: missing box"),
        ({"image": "a.png", "question": "q", "answer": "a", "box": [1, 2]}, r"jsonl:1: box .* four numbers"),
        ({"image": "a.png", "question": "q", "answer": "a", "box": [9, 9, 3, 20]}, r"box .* is empty"),
        ({"image": "a.png", "question": "q", "box": [1, 1, 9, 9]}, r"missing answer"),
    ],
)  # fmt: skip
def test_bad_rows_stop_the_run_before_any_work_with_one_line(tmp_path, row, message):
    rows = write_rows(tmp_path / "rows.jsonl", [row])
    with pytest.raises(RowError, match=message):
        from_boxes(rows, tmp_path / "out", BoxesConfig(), sandbox=object())
    assert not (tmp_path / "out").exists()
    buffer = io.StringIO()
    status = from_boxes_command(rows, tmp_path / "out", {}, console=Console(file=buffer, width=300))
    assert status == 2 and buffer.getvalue().count("\n") == 1 and buffer.getvalue().startswith("error: ")


def test_bad_options_are_one_line(rows_file, tmp_path):
    for args, words in [({"augment": ("blur",)}, "--augment blur"), ({"zoom": 20}, "--zoom 20")]:
        buffer = io.StringIO()
        assert from_boxes_command(rows_file, tmp_path, args, console=Console(file=buffer, width=300)) == 2
        assert buffer.getvalue().startswith(f"error: {words}") and buffer.getvalue().count("\n") == 1


def test_the_command_reports_what_it_wrote(rows_file, tmp_path):
    buffer = io.StringIO()
    status = from_boxes_command(rows_file, tmp_path, {"augment": ("rotate",)},
                                console=Console(file=buffer, width=300))  # fmt: skip
    text = buffer.getvalue()
    assert status == 0 and "wrote 4 samples (rotate 2, zoom 2) from 2 rows" in text
    assert "1 row had every box value <= 1; read as fractions of the image size" in text


def test_a_crop_that_does_not_match_its_expectation_is_refused(rows_file, toy_sandbox):
    """The check bites: code run on one image, expectation computed from another."""
    with Image.open(rows_file.parent / "a.png") as img:
        image = img.convert("RGB")
    variant = build_variant("zoom", np.random.default_rng(0), image, "q", "red", BOX, zoom=2, margin=8)
    other = Image.fromarray(255 - np.asarray(image))
    with toy_sandbox.session(inputs=[rows_file.parent / "a.png"]) as session:
        with pytest.raises(GoldVerificationError, match="differs from the expected one"):
            run_gold(variant.draft(other), session, rows_file.parent)
        assert run_gold(variant.draft(image), session, rows_file.parent).images  # the honest one passes


def test_thyme_data_from_boxes_runs_from_the_command_line(rows_file, tmp_path):
    from typer.testing import CliRunner

    from thyme.cli import app

    args = [
        "data",
        "from-boxes",
        str(rows_file),
        "--out",
        str(tmp_path),
        "--augment",
        "contrast",
        "--limit",
        "1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 samples (contrast 1, zoom 1) from 1 row" in result.output
    bad = CliRunner().invoke(
        app, ["data", "from-boxes", str(rows_file), "--out", str(tmp_path), "--shard", "3"]
    )
    assert bad.exit_code == 2 and "--shard '3': write it as i/n" in bad.output


def test_csv_and_tsv_rows_read_like_jsonl(tmp_path):
    from thyme.data.boxes import read_box_rows

    (tmp_path / "rows.tsv").write_text("image\tquestion\tanswer\tbox\na.png\tq?\t3\t[1, 2, 30, 40]\n")
    (tmp_path / "rows.csv").write_text('id,image,question,answer,box\nr1,/abs/a.png,q?,yes,"1, 2, 30, 40"\n')
    (tsv,), boxes = read_box_rows(tmp_path / "rows.tsv")
    assert (tsv.image, tsv.answer, boxes[tsv.where]) == (tmp_path / "a.png", "3", (1, 2, 30, 40))
    (csv,), boxes = read_box_rows(tmp_path / "rows.csv")
    assert (csv.id, csv.image, boxes["rows.csv:2"]) == ("r1", Path("/abs/a.png"), (1, 2, 30, 40))
