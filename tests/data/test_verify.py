"""`thyme data verify`: real samples re-run in the real sandbox; spoiled ones rejected for their reason."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from thyme.agent.conversation import Piece
from thyme.data.sample import Sample, read_samples, split_response
from thyme.data.store import SampleStore, Shard
from thyme.data.toyworld import generate
from thyme.data.toyworld.base import code_block
from thyme.data.verify import (
    MalformedSample,
    VerifyConfig,
    check_block,
    claims,
    user_images,
    verify_sample,
    verify_samples,
)
from thyme.data.verify_cli import verify_command
from thyme.data.verify_compare import (
    DEFAULT_IMAGE_THRESHOLD,
    exception_name,
    image_distance,
    texts_match,
)
from thyme.protocol import ImagePart, TextPart
from thyme.sandbox import ExecutionResult

CONFIG = VerifyConfig(workers=2)


# -- real samples -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory, toy_sandbox) -> Path:
    """Gold samples of every task: single crops, a multi-crop grid, computations, a rotation, a stretch."""
    root = tmp_path_factory.mktemp("toy")
    generate("zoom", 3, 0, root / "zoom", level="colour", sandbox=toy_sandbox)
    generate("zoom", 1, 10, root / "grid", level="grid", sandbox=toy_sandbox)
    generate("compute", 2, 0, root / "compute", sandbox=toy_sandbox)
    generate("rotate", 1, 0, root / "rotate", sandbox=toy_sandbox)
    generate("contrast", 1, 0, root / "contrast", sandbox=toy_sandbox)
    return root


@pytest.fixture(scope="module")
def samples(toy) -> dict[str, Sample]:
    return {
        s.id: s
        for name in ("zoom", "grid", "compute", "rotate", "contrast")
        for s in read_samples(toy / name)
    }


def check(sample: Sample, sandbox, config: VerifyConfig = CONFIG):
    with sandbox.session(inputs=user_images(sample)) as session:
        return verify_sample(sample, session, config)


def replace_text(sample: Sample, old: str, new: str, *, id: str) -> Sample:
    """The sample with `old` replaced in its (model or sandbox) text pieces."""
    hits = [i for i, p in enumerate(sample.assistant) if isinstance(p.part, TextPart) and old in p.part.text]
    assert hits, f"{old!r} not in {sample.id}"
    pieces = list(sample.assistant)
    for i in hits:
        pieces[i] = dataclasses.replace(pieces[i], part=TextPart(pieces[i].part.text.replace(old, new)))
    return dataclasses.replace(sample, id=id, assistant=tuple(pieces))


def replace_images(sample: Sample, images: list[Path], *, id: str) -> Sample:
    """The sample with its fed-back images replaced (a shorter list drops the last ones)."""
    pieces, queue = [], list(images)
    for piece in sample.assistant:
        if isinstance(piece.part, ImagePart):
            if not queue:
                continue
            piece = dataclasses.replace(piece, part=ImagePart(queue.pop(0)))
        pieces.append(piece)
    return dataclasses.replace(sample, id=id, assistant=tuple(pieces))


def handmade(id: str, image: Path, *rounds: tuple[str, str]) -> Sample:
    """A sample whose turn runs each (code, claimed text) round on `image`."""
    response = "<think>"
    for code, claimed in rounds:
        response += f"Run it. {code_block(code)}<sandbox_output>{claimed}</sandbox_output>"
    response += "Done.</think> <answer>x</answer>"
    return Sample(id, "system", (ImagePart(image), TextPart("q")), split_response(response, []), answer="x")


def jpeg_copy(path: Path, out: Path, quality: int = 90) -> Path:
    with Image.open(path) as img:
        img.convert("RGB").save(out, "JPEG", quality=quality)
    return out


# -- the data set: accepted gold, rejected spoils ---------------------------------------------------------
def test_gold_is_accepted_and_spoiled_samples_are_rejected_for_their_reason(samples, toy_sandbox, tmp_path):
    zoom, grid, compute = samples["zoom-000000000"], samples["zoom-000000010"], samples["compute-000000000"]
    other_crop = samples["zoom-000000001"].images[1]
    spoiled = [
        replace_text(zoom, "img.crop(", "img.crap(", id="fails"),
        replace_images(zoom, [other_crop], id="other-crop"),
        replace_images(grid, grid.images[1:2], id="one-image-short"),
        replace_text(compute, compute.answer, str(int(compute.answer) + 1), id="wrong-sum"),
    ]
    source = SampleStore(tmp_path / "in")
    source.append([*samples.values(), *spoiled])
    out = tmp_path / "out"
    summary = verify_samples([source.directory], out, config=CONFIG, sandbox=toy_sandbox)

    records = {r["id"]: r for r in map(json.loads, (out / "verify.jsonl").read_text().splitlines())}
    assert {i: r["reason"] for i, r in records.items() if not r["ok"]} == {
        "fails": "code_failed",
        "other-crop": "image_differs",
        "one-image-short": "image_count",
        "wrong-sum": "text_differs",
    }
    assert all(records[i]["reason"] == "ok" for i in samples)
    assert "AttributeError" in records["fails"]["detail"]
    assert records["other-crop"]["blocks"][0]["distances"][0] > DEFAULT_IMAGE_THRESHOLD
    assert records["zoom-000000000"]["blocks"][0]["distances"] == [0.0]
    assert records["zoom-000000010"]["blocks"][0]["produced_images"] == 2

    kept = list(read_samples(out))
    assert [s.id for s in kept] == list(samples)  # input order, spoils left out
    assert all(Path(p).parent.parent == out / "images" for s in kept for p in s.images)
    assert [s.response for s in kept] == [s.response for s in samples.values()]

    assert (summary.verified, summary.accepted, summary.reasons["ok"]) == (12, 8, 8)
    report = json.loads((out / "report.json").read_text())
    assert (report["samples"], report["accepted"], report["acceptance_rate"]) == (12, 8, 0.6667)
    assert report["reasons"] == {
        "ok": 8,
        "code_failed": 1,
        "image_count": 1,
        "image_differs": 1,
        "text_differs": 1,
    }
    assert report["run"]["samples_per_s"] > 0
    assert "Accepted 8 of 12 samples (66.7%)" in (out / "report.md").read_text()


def test_a_rerun_resumes_and_verifies_nothing_twice(samples, toy_sandbox, tmp_path):
    source = SampleStore(tmp_path / "in")
    source.append(list(samples.values())[:3])
    out = tmp_path / "out"
    first = verify_samples([source.directory], out, config=CONFIG, sandbox=toy_sandbox)
    before = (out / "samples.jsonl").read_text()
    source.append(list(samples.values())[3:5])  # the set grew
    seen = []
    second = verify_samples(
        [source.directory], out, config=CONFIG, sandbox=toy_sandbox, on_progress=seen.append
    )
    assert (first.verified, second.verified, second.resumed) == (3, 2, 3)
    assert seen[:3] == [None, None, None] and all(c.ok for c in seen[3:])
    assert (out / "samples.jsonl").read_text().startswith(before)
    assert [s.id for s in read_samples(out)] == list(samples)[:5]
    third = verify_samples([source.directory], out, config=CONFIG, sandbox=toy_sandbox)
    assert (third.verified, third.resumed, third.total_records) == (0, 5, 5)
    assert len((out / "verify.jsonl").read_text().splitlines()) == 5


def test_shards_split_the_inputs_disjointly_and_completely(samples, toy_sandbox, toy, tmp_path):
    inputs = [toy / "compute", toy / "zoom", toy / "rotate"]  # positions count across inputs
    ids = [s.id for path in inputs for s in read_samples(path)]
    out = tmp_path / "out"
    parts = [
        verify_samples(inputs, out, shard=Shard(i, 2), config=CONFIG, sandbox=toy_sandbox) for i in (0, 1)
    ]
    recorded = [
        [json.loads(line)["id"] for line in (out / f"verify-{i:05d}-of-00002.jsonl").read_text().splitlines()]
        for i in (0, 1)
    ]
    assert recorded == [ids[0::2], ids[1::2]]
    assert [p.verified for p in parts] == [3, 3]
    assert sorted(s.id for s in read_samples(out)) == sorted(ids)
    assert (out / "report-00001-of-00002.json").is_file() and (out / "report-00001-of-00002.md").is_file()


def test_a_repeated_id_is_verified_once(toy_sandbox, toy, tmp_path):
    summary = verify_samples(
        [toy / "compute", toy / "compute"], tmp_path / "out", config=CONFIG, sandbox=toy_sandbox
    )
    assert (summary.verified, summary.duplicates) == (2, 2)
    assert [s.id for s in read_samples(tmp_path / "out")] == ["compute-000000000", "compute-000000001"]


# -- one sample at a time ---------------------------------------------------------------------------------
def test_a_reencoded_claimed_image_is_still_accepted(samples, toy_sandbox, tmp_path):
    zoom = samples["zoom-000000001"]
    jpeg = jpeg_copy(zoom.images[1], tmp_path / "claimed.jpg")
    result = check(replace_images(zoom, [jpeg], id="jpeg"), toy_sandbox)
    assert result.ok and 0 < result.blocks[0].distances[0] < DEFAULT_IMAGE_THRESHOLD / 4


def test_a_claimed_crop_of_another_place_is_rejected(samples, toy_sandbox, tmp_path):
    zoom = samples["zoom-000000002"]
    code = claims(zoom)[0].code
    with Image.open(zoom.images[1]) as claimed:
        size = claimed.size
    with Image.open(zoom.images[0]) as scene:  # the same scene, the crop box 8 px to the right
        x0, y0 = (int(v) for v in code.split("img.crop((")[1].split(",")[:2])
        box = (x0 + 8, y0, x0 + 8 + size[0] // 4, y0 + size[1] // 4)
        scene.crop(box).resize(size, Image.LANCZOS).save(tmp_path / "shifted.png")
    result = check(replace_images(zoom, [tmp_path / "shifted.png"], id="shifted"), toy_sandbox)
    assert (result.reason, result.ok) == ("image_differs", False)
    assert "block 1: image 1 is at distance" in result.detail


def test_state_carries_from_block_to_block_of_one_sample(samples, toy_sandbox):
    image = samples["compute-000000000"].images[0]
    two = handmade("two", image, ("n = 6 * 7", ""), ("print(n)", "42"))
    result = check(two, toy_sandbox)
    assert result.ok and [b.reason for b in result.blocks] == ["ok", "ok"]
    alone = handmade("alone", image, ("print(n)", "42"))  # without block 1 the name is undefined
    assert check(alone, toy_sandbox).reason == "code_failed"
    stops = handmade("stops", image, ("n = 1", "5"), ("print(n)", "1"))
    result = check(stops, toy_sandbox)
    assert (result.reason, len(result.blocks)) == ("text_differs", 1)  # the first mismatch ends the sample


@pytest.mark.parametrize(
    ("claimed", "reason"),
    [
        ("Traceback (most recent call last):\n  File ...\nZeroDivisionError: division by zero", "ok"),
        ("ZeroDivisionError: another message", "ok"),  # the type counts, not the message
        ("ValueError: bad value", "error_differs"),
        ("0.5", "code_failed"),  # the sample claims the code printed something
    ],
)
def test_error_feedback_samples_must_fail_the_same_way(samples, toy_sandbox, claimed, reason):
    image = samples["compute-000000000"].images[0]
    sample = handmade("error", image, ("x = 1 / 0", claimed), ("print(7)", "7"))
    result = check(sample, toy_sandbox)
    assert result.reason == reason, result.detail
    if reason == "ok":
        assert [b.reason for b in result.blocks] == ["ok", "ok"]  # the session goes on after the error


def test_a_claimed_error_the_code_does_not_raise_is_rejected(samples, toy_sandbox):
    image = samples["compute-000000000"].images[0]
    sample = handmade("no-error", image, ("x = 1 / 2", "ZeroDivisionError: division by zero"))
    result = check(sample, toy_sandbox)
    assert result.reason == "error_differs" and "raised nothing" in result.detail


def test_printed_numbers_match_within_the_tolerance_unless_exact(samples, toy_sandbox):
    image = samples["compute-000000000"].images[0]
    sample = handmade("float", image, ("print(0.1 + 0.2, 3)", "0.3 3"))
    assert check(sample, toy_sandbox).ok
    assert check(sample, toy_sandbox, VerifyConfig(text_rule="exact")).reason == "text_differs"


def test_samples_without_code_pass_and_broken_turns_are_malformed(samples, toy_sandbox, toy):
    direct = next(read_samples(toy / "compute", toyworld_variants=("direct",)))
    assert check(direct, toy_sandbox).reason == "no_code"
    image = samples["compute-000000000"].images[0]
    orphan = Sample(
        "orphan", "s", (ImagePart(image),), split_response("<think>a<sandbox_output>1</sandbox_output>", [])
    )
    with pytest.raises(MalformedSample, match="follows no complete code block"):
        claims(orphan)
    assert check(orphan, toy_sandbox).reason == "malformed"
    unanswered = Sample(
        "unanswered", "s", (ImagePart(image),), (Piece(TextPart(code_block("print(1)")), "model"),)
    )
    assert check(unanswered, toy_sandbox).detail == "code block 1 has no sandbox output after it"
    gone = replace_images(samples["zoom-000000000"], [image.with_name("missing.png")], id="gone")
    assert check(gone, toy_sandbox).reason == "unreadable"


def test_a_block_past_its_time_limit_is_a_timeout():
    claim = claims(handmade("t", Path("x.png"), ("while True: pass", "")))[0]
    result = check_block(0, claim, ExecutionResult(error="timed out", timed_out=True), CONFIG)
    assert result.reason == "timeout" and "30 s" in result.detail


# -- the comparisons --------------------------------------------------------------------------------------
def test_image_distance_accepts_reencoding_and_resampling_and_rejects_other_crops(samples, tmp_path):
    zoom = samples["zoom-000000000"]
    claimed = zoom.images[1]
    with Image.open(claimed) as img:
        size = img.size
    code = claims(zoom)[0].code
    x0, y0, x1, y1 = (int(v) for v in code.split("img.crop((")[1].split(")")[0].split(","))
    with Image.open(zoom.images[0]) as scene:

        def crop(dx: int, dy: int, name: str, resample=Image.LANCZOS) -> Path:
            scene.crop((x0 + dx, y0 + dy, x1 + dx, y1 + dy)).resize(size, resample).save(tmp_path / name)
            return tmp_path / name

        near = [jpeg_copy(claimed, tmp_path / "q90.jpg"), crop(0, 0, "bicubic.png", Image.BICUBIC)]
        far = [crop(4, 0, "shift4.png"), crop(0, -16, "shift16.png"), crop(600, 300, "elsewhere.png")]
    assert image_distance(claimed, crop(0, 0, "same.png")) == 0.0
    assert all(image_distance(claimed, p) < DEFAULT_IMAGE_THRESHOLD / 4 for p in near)
    assert all(image_distance(claimed, p) > 2 * DEFAULT_IMAGE_THRESHOLD for p in far)
    Image.new("RGB", (size[0], size[1] // 2)).save(tmp_path / "flat.png")
    assert image_distance(claimed, tmp_path / "flat.png") == 1.0  # another shape


def test_text_and_exception_rules():
    assert texts_match("a  b\n c", " a b c ")
    assert texts_match("x = 0.30000000000000004", "x = 0.3")
    assert not texts_match("8303", "8304") and not texts_match("x = 0.31", "x = 0.3")
    assert not texts_match("0.3", "0.30000000000000004", rule="exact")
    assert not texts_match("sum 3", "total 3")
    assert exception_name("Traceback (most recent call last):\n  File x\nKeyError: 'a'") == "KeyError"
    assert exception_name("cv2.error: OpenCV(4.8) bad") == "cv2.error"
    assert exception_name("Answer: 42") is None and exception_name("raise ValueError") is None


def test_config_errors_say_how_to_fix_the_value():
    with pytest.raises(ValueError, match=r"--threshold 0: use an image distance in \(0, 1\]"):
        VerifyConfig(image_threshold=0)
    with pytest.raises(ValueError, match="--workers 0: use 1 or more"):
        VerifyConfig(workers=0)
    with pytest.raises(ValueError, match="text_rule='fuzzy': choose one of numeric, exact"):
        VerifyConfig(text_rule="fuzzy")


# -- the command ------------------------------------------------------------------------------------------
def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=False), buffer


def test_bad_arguments_fail_in_one_line_before_the_sandbox_starts(toy, tmp_path, monkeypatch):
    import thyme.sandbox

    monkeypatch.setattr(thyme.sandbox, "Sandbox", lambda *a, **k: pytest.fail("the sandbox started"))
    (tmp_path / "notes.jsonl").write_text('{"question": "q"}\n')
    cases = [
        ([tmp_path / "missing.jsonl"], {}, "does not exist; give a samples file or directory"),
        ([toy / "compute"], {"shard": "3/2"}, "shard 3/2: use i/n with 0 <= i < n"),
        ([toy / "compute"], {"threshold": 2.0}, "--threshold 2.0"),
        ([tmp_path / "notes.jsonl"], {}, "notes.jsonl:1: neither a thyme.sample/1 row nor a toy-world row"),
        ([toy / "compute"], {"out": toy / "compute"}, "is an output of --out"),
    ]
    for inputs, extra, message in cases:
        out, text = console()
        args = {"out": tmp_path / "out", **extra}
        assert verify_command(inputs, args.pop("out"), console=out, **args) == 2
        lines = text.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_a_corrupt_row_stops_the_run_in_one_line_and_keeps_the_verdicts(samples, tmp_path):
    source = SampleStore(tmp_path / "in")
    source.append(list(samples.values())[:2])
    with open(source.path, "a") as fh:
        fh.write('{"schema": "thyme.sample/1", "id": "broken"}\n')
    out, text = console()
    assert verify_command([source.directory], tmp_path / "out", workers=2, console=out) == 1
    last = text.getvalue().strip().splitlines()[-1]
    assert last.startswith("error: ") and "samples.jsonl:3: missing field 'assistant'" in last
    assert "the verdicts so far are kept: fix or delete that row and run again" in last
    assert len((tmp_path / "out" / "verify.jsonl").read_text().splitlines()) == 2


def test_thyme_data_verify_runs_from_the_command_line(toy, tmp_path):
    from typer.testing import CliRunner

    from thyme.cli import app

    args = ["data", "verify", str(toy / "compute"), str(toy / "rotate"), "--out", str(tmp_path / "out"),
            "--workers", "2", "--timeout", "20"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = result.output.strip().splitlines()[-1]
    assert summary.startswith("accepted 3/3 samples (100.0%); ") and "samples/s" in summary
