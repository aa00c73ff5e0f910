"""Loaders on real files of every supported format, written here: VLMEvalKit TSV, parquet, save_to_disk
Arrow directories, and the toy world's samples.jsonl."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest
from benchmark_files import (
    b64,
    image_struct,
    jpeg_bytes,
    noise_png_bytes,
    png_bytes,
    write_parquet,
    write_saved_dataset,
    write_toyworld,
    write_tsv,
)

from thyme.eval.loaders import Columns, DataError, load_table, load_toyworld

RED, BLUE = png_bytes((220, 20, 20)), png_bytes((20, 20, 220))


def cached_name(data: bytes, ext: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{ext}"


# -- VLMEvalKit TSV ----------------------------------------------------------------------------------------
@pytest.fixture
def tsv(tmp_path) -> Path:
    rows = [
        # Row 0 takes its image from row 3, which comes later in the file.
        {
            "index": 10,
            "image": "13",
            "question": "Which colour?",
            "A": "red",
            "B": "blue",
            "C": None,
            "answer": "A",
            "category": "direct_attributes",
            "hint": None,
            "source": "x",
        },
        {
            "index": 11,
            "image": b64(RED),
            "question": 'Tab\there, "quotes" and\na newline?',
            "A": "red",
            "B": "blue",
            "C": "green",
            "answer": "C",
            "category": "direct_attributes",
            "hint": "Look left.",
            "source": "y",
        },
        {
            "index": 12,
            "image": "11",
            "question": "Same image as 11?",
            "A": "yes",
            "B": "no",
            "answer": "A",
            "category": "relative_position",
            "source": "z",
        },
        {
            "index": 13,
            "image": b64(jpeg_bytes()),
            "question": "Noise?",
            "A": "yes",
            "B": "no",
            "answer": "B",
            "category": "relative_position",
            "source": "w",
        },
    ]
    return write_tsv(tmp_path / "VStarBench.tsv", rows)


def test_tsv_rows_become_samples_with_cached_images(tsv, tmp_path):
    cache = tmp_path / "cache"
    samples = {s.id: s for s in load_table(tsv, cache)}
    assert sorted(samples) == ["10", "11", "12", "13"]
    s11 = samples["11"]
    assert s11.question == 'Tab\there, "quotes" and\na newline?'
    assert s11.choices == {"A": "red", "B": "blue", "C": "green"}
    assert (s11.answer, s11.category, s11.hint) == ("C", "direct_attributes", "Look left.")
    assert s11.meta == {"source": "y"}
    assert s11.image.name == cached_name(RED, "png")
    assert s11.image.read_bytes() == RED  # the original bytes, not a re-encoding
    assert s11.image.parent.parent == cache / "decoded"
    # Row 12 references row 11's image; row 10 references row 13's, which comes after it.
    assert samples["12"].image == s11.image
    assert samples["10"].image == samples["13"].image
    assert samples["10"].image.suffix == ".jpg"
    assert samples["10"].choices == {"A": "red", "B": "blue"}  # the empty C cell is no option
    assert samples["10"].hint is None


def test_forward_references_wait_for_their_image(tsv, tmp_path):
    order = [s.id for s in load_table(tsv, tmp_path / "cache")]
    assert order == ["11", "12", "13", "10"]


def test_cache_is_reused_across_runs_and_left_clean(tsv, tmp_path):
    cache = tmp_path / "cache"
    first = {s.id: s.image for s in load_table(tsv, cache)}
    mtimes = {p: p.stat().st_mtime_ns for p in first.values()}
    second = {s.id: s.image for s in load_table(tsv, cache)}
    assert first == second
    assert {p: p.stat().st_mtime_ns for p in second.values()} == mtimes
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert files == sorted({p.name for p in first.values()})  # two images, no temporary files


def test_images_larger_than_the_csv_field_limit(tmp_path):
    big = noise_png_bytes()
    assert len(b64(big)) > 131072  # csv's default limit
    path = write_tsv(tmp_path / "big.tsv", [{"index": 0, "image": b64(big), "question": "q", "answer": "a"}])
    [sample] = load_table(path, tmp_path / "cache")
    assert sample.image.read_bytes() == big


def test_rows_without_image_are_skipped_with_a_warning(tmp_path, caplog):
    rows = [
        {"index": 0, "image": b64(RED), "question": "q", "answer": "a"},
        {"index": 1, "image": "", "question": "q", "answer": "a"},
    ]
    path = write_tsv(tmp_path / "t.tsv", rows)
    with caplog.at_level(logging.WARNING):
        assert [s.id for s in load_table(path, tmp_path / "cache")] == ["0"]
    assert "skipped 1 row(s) without an image" in caplog.text


def test_several_images_in_one_cell(tmp_path):
    cell = str([b64(RED), b64(BLUE)])
    path = write_tsv(tmp_path / "t.tsv", [{"index": 0, "image": cell, "question": "q", "answer": "a"}])
    [sample] = load_table(path, tmp_path / "cache")
    assert sample.image.read_bytes() == RED
    assert [Path(p).read_bytes() for p in sample.meta["images"]] == [RED, BLUE]


def test_image_path_column_names_files_beside_the_tsv(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(RED)
    path = write_tsv(
        tmp_path / "t.tsv", [{"index": 0, "image_path": "imgs/a.png", "question": "q", "answer": "a"}]
    )
    [sample] = load_table(path, tmp_path / "cache")
    assert sample.image == tmp_path / "imgs" / "a.png"


def test_option_list_column_mme_realworld_lite(tmp_path):
    options = str(["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) The image does not feature the number"])
    rows = [
        {
            "index": 0,
            "image": b64(RED),
            "question": "How many?",
            "multi-choice options": options,
            "answer": "E",
            "category": "Perception/Monitoring",
            "l2-category": "counting",
        }
    ]
    [sample] = load_table(write_tsv(tmp_path / "lite.tsv", rows), tmp_path / "cache")
    assert sample.choices == {
        "A": "1",
        "B": "2",
        "C": "3",
        "D": "4",
        "E": "The image does not feature the number",
    }
    assert sample.meta == {"l2-category": "counting"}


# -- TSV errors --------------------------------------------------------------------------------------------
def test_missing_file_names_what_to_pass(tmp_path):
    with pytest.raises(DataError, match=r"nope\.tsv does not exist; expected VStarBench\.tsv"):
        list(load_table(tmp_path / "nope.tsv", tmp_path / "c", data_hint="VStarBench.tsv"))
    with pytest.raises(DataError, match="pass --data"):
        list(load_table(None, tmp_path / "c"))


def test_missing_column_lists_the_columns_there_are(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", [{"index": 0, "image": b64(RED), "query": "q", "answer": "a"}])
    with pytest.raises(
        DataError, match=r"no question column .* the file has columns: index, image, query, answer"
    ):
        list(load_table(path, tmp_path / "c"))
    path = write_tsv(tmp_path / "u.tsv", [{"id": 0, "image": b64(RED), "question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"no 'index' column; the file has columns: id, image"):
        list(load_table(path, tmp_path / "c"))


def test_corrupt_base64_is_that_sample_s_error(tmp_path):
    rows = [
        {"index": 0, "image": b64(RED), "question": "q", "answer": "a"},
        {"index": 7, "image": b64(BLUE)[:-3] + "!!!" + "A" * 70, "question": "q", "answer": "a"},
    ]
    samples = {s.id: s for s in load_table(write_tsv(tmp_path / "t.tsv", rows), tmp_path / "c")}
    assert samples["0"].error is None and samples["0"].image.is_file()
    assert samples["7"].image is None
    assert "row 2 (index 7): the image is not valid base64" in samples["7"].error


def test_base64_that_is_no_image_is_that_sample_s_error(tmp_path):
    rows = [
        {"index": 3, "image": b64(b"not an image at all, just text " * 4), "question": "q", "answer": "a"}
    ]
    (sample,) = load_table(write_tsv(tmp_path / "t.tsv", rows), tmp_path / "c")
    assert sample.image is None and "row 1 (index 3): the image is not a readable image" in sample.error


def test_truncated_images_are_errors_at_load_time_not_inputs(tmp_path):
    """A truncated JPEG passes PIL's verify(); it must not reach the model. It is its sample's error, and
    that of the rows that reference its image; the other samples load, and nothing broken is cached."""
    jpeg = jpeg_bytes(3, size=(64, 48))
    rows = [
        {"index": 1, "image": b64(jpeg[: len(jpeg) // 2]), "question": "q", "answer": "a"},
        {"index": 2, "image": "1", "question": "q", "answer": "a"},
        {"index": 3, "image": b64(noise_png_bytes(60)[:-200]), "question": "q", "answer": "a"},
        {"index": 4, "image": b64(jpeg), "question": "q", "answer": "a"},
    ]
    cache = tmp_path / "c"
    samples = {s.id: s for s in load_table(write_tsv(tmp_path / "t.tsv", rows), cache)}
    assert list(samples) == ["1", "2", "3", "4"]
    assert "row 1 (index 1): the image is corrupt (image file is truncated" in samples["1"].error
    assert samples["2"].error == samples["1"].error and samples["2"].image is None
    assert "index 3): the image is corrupt" in samples["3"].error
    assert samples["4"].error is None and samples["4"].image.read_bytes() == jpeg
    assert [p for p in cache.rglob("*") if p.is_file()] == [samples["4"].image]
    assert samples["4"].image.parent.parent == cache / "decoded"


def test_truncated_image_in_parquet_is_that_sample_s_error(tmp_path):
    jpeg = jpeg_bytes(4, size=(64, 48))
    rows = [
        {"id": "cut", "image": image_struct(jpeg[:-300], "a.jpg"), "question": "q", "answer": "a"},
        {"id": "whole", "image": image_struct(jpeg, "b.jpg"), "question": "q", "answer": "a"},
    ]
    path = write_parquet(tmp_path / "d" / "test-00000-of-00001.parquet", rows)
    samples = {s.id: s for s in load_table(path, tmp_path / "c")}
    assert "the image is corrupt" in samples["cut"].error and samples["cut"].image is None
    assert samples["whole"].error is None


def test_reference_to_a_missing_row_fails(tmp_path):
    rows = [{"index": 0, "image": "99", "question": "q", "answer": "a"}]
    with pytest.raises(DataError, match=r"takes its image from index '99'"):
        list(load_table(write_tsv(tmp_path / "t.tsv", rows), tmp_path / "c"))


def test_duplicate_ids_fail(tmp_path):
    rows = [{"index": 0, "image": b64(RED), "question": "q", "answer": "a"}] * 2
    with pytest.raises(DataError, match="repeats id '0'"):
        list(load_table(write_tsv(tmp_path / "t.tsv", rows), tmp_path / "c"))


# -- parquet and Arrow -------------------------------------------------------------------------------------
def hf_rows() -> list[dict]:
    return [
        {
            "question_id": "q1",
            "question": "Colour?",
            "decoded_image": image_struct(RED),
            "answer": "red",
            "options": ["red", "blue"],
            "category": "c1",
            "metadata": {"task": "vqa", "grade": "college"},
        },
        {
            "question_id": "q2",
            "question": "Colour?",
            "decoded_image": image_struct(BLUE),
            "answer": "blue",
            "options": ["red", "blue"],
            "category": "c2",
            "metadata": {"task": "vqa", "grade": "college"},
        },
    ]


def test_parquet_file_with_image_structs(tmp_path):
    path = write_parquet(tmp_path / "test.parquet", hf_rows())
    samples = list(load_table(path, tmp_path / "cache"))
    assert [s.id for s in samples] == ["q1", "q2"]
    assert samples[0].image.read_bytes() == RED
    assert samples[1].choices == {"A": "red", "B": "blue"}
    assert samples[1].meta == {"metadata": {"task": "vqa", "grade": "college"}}


def test_parquet_raw_bytes_and_relative_paths(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "b.png").write_bytes(BLUE)
    raw = write_parquet(
        tmp_path / "data" / "raw.parquet", [{"id": 1, "image": RED, "question": "q", "answer": "a"}]
    )
    named = write_parquet(
        tmp_path / "data" / "named.parquet",
        [{"id": 2, "image": "images/b.png", "question": "q", "answer": "a"}],
    )
    [from_bytes] = load_table(raw, tmp_path / "cache")
    [from_name] = load_table(named, tmp_path / "cache")
    assert from_bytes.image.read_bytes() == RED
    assert from_name.image == tmp_path / "data" / "images" / "b.png"


def test_parquet_image_column_prefers_data_over_file_names(tmp_path):
    rows = [
        {
            "pid": "1",
            "image": "images/1.jpg",
            "decoded_image": image_struct(RED),
            "question": "q",
            "answer": "a",
        }
    ]
    [sample] = load_table(write_parquet(tmp_path / "m.parquet", rows), tmp_path / "cache")
    assert sample.image.read_bytes() == RED
    assert sample.meta == {"image": "images/1.jpg"}


def test_parquet_directory_with_splits(tmp_path):
    root = tmp_path / "MathVista"
    write_parquet(root / "data" / "testmini-00000-of-00001.parquet", hf_rows()[:1])
    write_parquet(root / "data" / "test-00000-of-00002.parquet", hf_rows()[1:])
    write_parquet(root / "data" / "test-00001-of-00002.parquet", [])
    with pytest.raises(DataError, match=r"holds several splits \(data/test, data/testmini\)"):
        list(load_table(root, tmp_path / "cache"))
    assert [s.id for s in load_table(root, tmp_path / "cache", split="testmini")] == ["q1"]
    assert [s.id for s in load_table(root / "data" / "test-00000-of-00002.parquet", tmp_path / "c")] == ["q2"]


def test_parquet_without_id_column_numbers_rows(tmp_path):
    rows = [{"image": RED, "question": "q", "answer": "a"}, {"image": BLUE, "question": "q", "answer": "b"}]
    assert [s.id for s in load_table(write_parquet(tmp_path / "n.parquet", rows), tmp_path / "c")] == [
        "0",
        "1",
    ]


def test_save_to_disk_directory(tmp_path):
    rows = [*hf_rows(), dict(hf_rows()[0], question_id="q3")]
    saved = write_saved_dataset(tmp_path / "saved", rows, shards=2)
    assert [s.id for s in load_table(saved, tmp_path / "cache")] == ["q1", "q2", "q3"]


def test_save_to_disk_dataset_dict(tmp_path):
    root = tmp_path / "dd"
    write_saved_dataset(root / "test", hf_rows(), shards=1)
    write_saved_dataset(root / "train", hf_rows()[:1], shards=1)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["test", "train"]}))
    with pytest.raises(DataError, match="holds splits test, train"):
        list(load_table(root, tmp_path / "c"))
    assert len(list(load_table(root, tmp_path / "c", split="test"))) == 2


def test_parquet_needs_pyarrow_and_says_so(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "x.parquet", hf_rows())
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match="needs pyarrow: pip install pyarrow"):
        list(load_table(path, tmp_path / "c"))


def test_custom_columns(tmp_path):
    rows = [{"qid": "a", "img": RED, "prompt": "p", "label": "x", "group": "g"}]
    columns = Columns(
        id=("qid",), question=("prompt",), answer=("label",), image=("img",), category=("group",)
    )
    [sample] = load_table(write_parquet(tmp_path / "c.parquet", rows), tmp_path / "c", columns=columns)
    assert (sample.id, sample.question, sample.answer, sample.category) == ("a", "p", "x", "g")


# -- the toy world -----------------------------------------------------------------------------------------
def test_toyworld_samples_of_one_task(tmp_path):
    root = write_toyworld(
        tmp_path / "toy",
        [
            {"id": "z1", "task": "zoom", "question": "What colour is the chip?", "answer": "red"},
            {"id": "c1", "task": "compute", "question": "12*34?", "answer": "408"},
            {
                "id": "z2",
                "task": "zoom",
                "question": "Which shape?",
                "answer": "B",
                "choices": {"A": "circle", "B": "square"},
            },
        ],
    )
    zoom = list(load_toyworld(root, tmp_path / "cache", kind="zoom"))
    assert [s.id for s in zoom] == ["z1", "z2"]
    assert zoom[0].image == root / "images" / "z1.png"
    assert zoom[0].meta == {
        "split": "test",
        "seed": 1000,
        "difficulty": {"level": 1},
        "meta": {"note": "fixture"},
    }
    assert zoom[1].choices == {"A": "circle", "B": "square"}
    assert zoom[0].category == "easy"
    # The samples.jsonl path itself works too.
    assert [s.id for s in load_toyworld(root / "samples.jsonl", tmp_path / "c", kind="compute")] == ["c1"]


def test_toyworld_errors(tmp_path):
    root = write_toyworld(tmp_path / "toy", [{"id": "c1", "task": "compute", "question": "q", "answer": "1"}])
    with pytest.raises(DataError, match=r"no 'rotate' samples \(tasks in it: compute\)"):
        list(load_toyworld(root, tmp_path / "c", kind="rotate"))
    with pytest.raises(DataError, match="thyme synth --task zoom"):
        list(load_toyworld(None, tmp_path / "c", kind="zoom"))
    with pytest.raises(DataError, match="does not exist"):
        list(load_toyworld(tmp_path / "empty", tmp_path / "c", kind="zoom"))
    (root / "images" / "c1.png").unlink()
    with pytest.raises(DataError, match=r"samples.jsonl:1: image .* is missing"):
        list(load_toyworld(root, tmp_path / "c", kind="compute"))
    (root / "samples.jsonl").write_text('{"id": "x", "task": "compute"}\n')
    with pytest.raises(DataError, match=r"samples.jsonl:1: not a toy-world sample \(KeyError"):
        list(load_toyworld(root, tmp_path / "c", kind="compute"))
