"""The training sample format: converters, response splitting, JSON round trips and reading any source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from thyme.agent.conversation import Piece
from thyme.data.sample import SCHEMA, Region, Sample, SampleError, read_samples, split_response
from thyme.data.store import SampleStore, Shard
from thyme.protocol import ImagePart, TextPart, get_preset

CODE = "<code>\n```python\nprint(1)\n```\n</code>"


def test_split_response_gives_the_loops_piece_structure(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    response = f"<think>x {CODE}<sandbox_output><image><image></sandbox_output>y {CODE}<sandbox_output> 42\n"
    response += "</sandbox_output>z</think> <answer>1</answer>"
    pieces = split_response(response, [a, b])
    model, box = "model", "sandbox"
    assert [p.source for p in pieces] == [model, box, box, box, box, model, box, box, box, model]
    assert pieces[2].part == ImagePart(a) and pieces[3].part == ImagePart(b)
    assert pieces[7].part == TextPart("42")  # stripped, as the loop feeds printed text
    assert pieces[-1].part == TextPart("z</think> <answer>1</answer>")


@pytest.mark.parametrize(
    ("response", "images", "message"),
    [
        ("<sandbox_output><image></sandbox_output>", [], "more <image> placeholders"),
        ("<sandbox_output>text</sandbox_output>", ["x.png"], "1 fed-back images given"),
        ("<think><image></think>", [], "outside <sandbox_output>"),
        ("<sandbox_output><image> and text</sandbox_output>", ["x.png"], "both images and text"),
    ],
)
def test_split_response_rejects_inconsistent_rows(response, images, message):
    with pytest.raises(SampleError, match=message):
        split_response(response, images)


def test_toyworld_rows_convert_with_the_eval_prompt(tmp_path):
    from thyme.data.toyworld import generate

    generate("zoom", 2, 0, tmp_path / "zoom", level="colour", verify=False)
    row = json.loads((tmp_path / "zoom" / "samples.jsonl").read_text().splitlines()[0])
    gold = Sample.from_toyworld(row, tmp_path / "zoom")
    direct = Sample.from_toyworld(row, tmp_path / "zoom", variant="direct")
    assert gold.system == get_preset("default").system and direct.system == get_preset("direct").system
    assert gold.answer == direct.answer == row["answer"] and direct.id == gold.id + "-direct"
    assert gold.code_rounds == 1 and direct.code_rounds == 0
    assert len(gold.images) == 2 and len(direct.images) == 1
    assert gold.response == row["gold"]["response"]
    assert gold.regions and gold.regions[0].box == tuple(row["meta"]["labels"][0]["box"])
    assert row["question"] in gold.user[1].text and "Image size: 1792x1792" in gold.user[1].text


@pytest.mark.parametrize("level", ["find", "colour"])
def test_toyworld_colour_crops_carry_the_chip_as_a_region(tmp_path, level):
    """The auxiliary loss's target in the fed-back crop: the chip's box, classed by its colour."""
    from thyme.data.toyworld import generate
    from thyme.data.toyworld.draw import PALETTE
    from thyme.data.toyworld.read import nearest_colour

    generate("zoom", 3, 0, tmp_path / level, level=level, verify=False)
    for line in (tmp_path / level / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        gold = Sample.from_toyworld(row, tmp_path / level)
        (crop,) = [r for r in gold.regions if r.image == 1]
        assert crop.label == 2 + list(PALETTE).index(row["answer"])
        with Image.open(gold.images[1]) as img:
            pixels = img.convert("RGB")
            x0, y0, x1, y1 = crop.box
            assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
            assert pixels.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == PALETTE[row["answer"]]
            # up to its corners the box is the chip (the nearest palette colour; enlarging rings at the edges)
            for x, y in ((x0 + 2, y0 + 2), (x1 - 3, y1 - 3), (x0 + 2, y1 - 3), (x1 - 3, y0 + 2)):
                assert nearest_colour(pixels.getpixel((x, y))) == row["answer"], (x, y)
        direct = Sample.from_toyworld(row, tmp_path / level, variant="direct")
        assert not [r for r in direct.regions if r.image]


def test_json_round_trip_keeps_everything(tmp_path):
    image = tmp_path / "images" / "u.png"
    image.parent.mkdir()
    Image.new("RGB", (8, 8)).save(image)
    sample = Sample(
        id="s1",
        system="sys",
        user=(ImagePart(image), TextPart("q")),
        assistant=(Piece(TextPart("<think>a"), "model", (1, 2, 3)), Piece(TextPart("b</think>"), "model")),
        answer="b",
        origin="test",
        regions=(Region(0, (1, 2, 3, 4), 2),),
        meta={"k": [1]},
    )
    data = sample.to_dict(tmp_path)
    assert data["schema"] == SCHEMA and data["user"][0] == {"image": "images/u.png"}
    assert Sample.from_dict(json.loads(json.dumps(data)), tmp_path) == sample


def test_read_samples_reads_our_files_shards_toyworld_and_trajectories(tmp_path, small_png):
    store = SampleStore(tmp_path / "ours", shard=Shard.parse("1/2"))
    path = store.add_image(small_png)
    s = Sample("x", "sys", (ImagePart(path), TextPart("q")), (Piece(TextPart("a"), "model"),))
    store.append([s])
    assert store.path.name == "samples-00001-of-00002.jsonl"
    assert [r.id for r in read_samples(tmp_path / "ours")] == ["x"]
    assert read_samples(tmp_path / "ours").__next__().images == [path.resolve()]
    with pytest.raises(SampleError, match=r"holds no samples\.jsonl"):
        list(read_samples(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(SampleError, match=r"bad\.jsonl:1: neither"):
        list(read_samples(bad))


def test_a_trajectory_converts_with_its_token_ids(scripted_trajectory):
    sample = Sample.from_trajectory(scripted_trajectory)
    assert sample.origin == "trajectory" and sample.answer == scripted_trajectory.answer
    assert any(p.token_ids for p in sample.assistant if p.source == "model")
    assert sample.response == scripted_trajectory.text


@pytest.fixture(scope="module")
def scripted_trajectory(tmp_path_factory, toy_sandbox):
    from thyme.agent import Agent, Trajectory
    from thyme.agent.backends.transformers import TransformersBackend
    from thyme.testing.scripted import build_scripted

    root = tmp_path_factory.mktemp("sample-traj")
    image = root / "noise.png"
    Image.effect_noise((64, 48), 40).convert("RGB").save(image)
    model = build_scripted(root / "m", image, sandbox=toy_sandbox)
    with Agent(TransformersBackend.from_pretrained(str(model)), sandbox=toy_sandbox) as agent:
        saved = agent.run(image=image, question="What is six times seven?").save(root / "t")
    return Trajectory.load(Path(saved))
