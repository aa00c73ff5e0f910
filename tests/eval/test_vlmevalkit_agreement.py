"""Our benchmark numbers against VLMEvalKit's own scoring functions, on fixtures built for the purpose.

The fixtures in tests/eval/vlmevalkit/ hold questions, golds and model answers (no images: the test adds a
tiny one). The expected numbers were produced by running VLMEvalKit's functions, copied out of
open-compass/VLMEvalKit at commit e8e78f05f3080fe28154f2130321f17951c3be94 into a scratch directory outside
this repository, on the same fixture files; VLMEvalKit is not needed to run these tests. Each constant says
which function produced it. VLMEvalKit reports percentages; ours are fractions.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from benchmark_files import b64, png_bytes, write_tsv

from thyme.eval import get_task
from thyme.eval.runner import record_meta

FIXTURES = Path(__file__).parent / "vlmevalkit"
VLMEVALKIT_COMMIT = "e8e78f05f3080fe28154f2130321f17951c3be94"


def fixture_rows(name: str) -> list[dict[str, str]]:
    with (FIXTURES / name).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def scored_records(task_name: str, fixture: str, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """(the fixture's rows, result records as the runner writes them): the rows become a VLMEvalKit TSV
    with one image, loaded, extracted and scored by the task."""
    rows = fixture_rows(fixture)
    image = b64(png_bytes())
    tsv = []
    for i, row in enumerate(rows):
        cells = {k: v for k, v in row.items() if k != "prediction" and not k.startswith("vlmevalkit")}
        tsv.append({**cells, "image": image if i == 0 else rows[0]["index"]})
    task = get_task(task_name)
    samples = {s.id: s for s in task.load(write_tsv(tmp_path / f"{task_name}.tsv", tsv), tmp_path / "c")}
    records = []
    for row in rows:
        sample = samples[row["index"]]
        prediction = task.extract(row["prediction"], sample)
        records.append(
            {
                "id": sample.id,
                "category": sample.category,
                "answer": sample.answer,
                "prediction": prediction,
                "score": task.score(prediction, sample),
                "meta": record_meta(sample.meta),
            }
        )
    return rows, records


def as_vlmevalkit(prediction: str | None) -> str:
    return {"yes": "Yes", "no": "No", None: "Unknown"}[prediction]


# -- POPE --------------------------------------------------------------------------------------------------
# VLMEvalKit's POPE_rating (vlmeval/dataset/utils/yorn.py) on pope_predictions.tsv, after YOrN_Extraction
# and score = (answer == extracted) as ImageYORNDataset.evaluate does: {split: (F1, acc, precision, recall)}.
POPE_EXPECTED = {
    "Overall": (80.7017543859649, 72.38095238095238, 85.18518518518519, 76.66666666666667),
    "adversarial": (87.17948717948718, 78.125, 94.44444444444444, 80.95238095238095),
    "popular": (80.0, 72.5, 81.81818181818183, 78.26086956521739),
    "random": (73.33333333333334, 66.66666666666666, 78.57142857142857, 68.75),
}


def test_yes_no_extraction_matches_vlmevalkit():
    """Every answer in both fixtures is read as VLMEvalKit's YOrN_Extraction reads it (its column
    `vlmevalkit_extracted`), punctuation quirks included ("No:" is no "no")."""
    task = get_task("pope")
    for fixture in ("pope_predictions.tsv", "hallusionbench_predictions.tsv"):
        for row in fixture_rows(fixture):
            said = task.extract(row["prediction"], None)
            assert as_vlmevalkit(said) == row["vlmevalkit_extracted"], (fixture, row["prediction"])


def test_pope_counts_a_row_in_every_split_it_lists(tmp_path):
    _, records = scored_records("pope", "pope_predictions.tsv", tmp_path)
    assert any("," in r["category"] for r in records)  # the fixture has rows in several splits
    metrics = get_task("pope").aggregate(records)
    for split, (f1, acc, precision, recall) in POPE_EXPECTED.items():
        suffix = "" if split == "Overall" else f"/{split}"
        got = [metrics[f"{k}{suffix}"] for k in ("f1", "accuracy", "precision", "recall")]
        assert got == pytest.approx([f1 / 100, acc / 100, precision / 100, recall / 100]), split


def test_pope_report_accuracy_per_split_matches_vlmevalkit(tmp_path):
    from thyme.eval.report import ALL, ModeRun, accuracy_table

    _, records = scored_records("pope", "pope_predictions.tsv", tmp_path)
    table = dict(accuracy_table([ModeRun("tools", None, records, [])]))
    assert table[ALL]["tools"][0] == pytest.approx(POPE_EXPECTED["Overall"][1] / 100)
    for split in ("adversarial", "popular", "random"):
        assert table[split]["tools"][0] == pytest.approx(POPE_EXPECTED[split][1] / 100), split
    assert not any("," in category for category in table)


# -- HallusionBench ----------------------------------------------------------------------------------------
# VLMEvalKit's Hallusion_rating (vlmeval/dataset/utils/yorn.py) on hallusionbench_predictions.tsv, after
# YOrN_Extraction: {split: (aAcc, fAcc, qAcc)}. Set ids restart in each l2-category, and VD and VS share the
# l2-category "chart" in this fixture, so the overall fAcc is not a mix of the VD and VS ones.
HALLUSION_EXPECTED = {
    "Overall": (74.24242424242425, 44.44444444444444, 41.66666666666667),
    "VD": (75.0, 55.00000000000001, 50.0),
    "VS": (73.07692307692307, 46.15384615384615, 41.66666666666667),
    "chart": (75.0, 25.0, 33.33333333333333),
    "illusion": (71.42857142857143, 57.14285714285714, 33.33333333333333),
    "map": (80.0, 60.0, 66.66666666666666),
    "table": (71.42857142857143, 42.857142857142854, 33.33333333333333),
}


def test_hallusionbench_groups_figures_and_questions_by_subcategory(tmp_path):
    _, records = scored_records("hallusionbench", "hallusionbench_predictions.tsv", tmp_path)
    metrics = get_task("hallusionbench").aggregate(records)
    for split, (a_acc, f_acc, q_acc) in HALLUSION_EXPECTED.items():
        suffix = "" if split == "Overall" else f"/{split}"
        got = [metrics[f"{k}{suffix}"] for k in ("aAcc", "fAcc", "qAcc")]
        assert got == pytest.approx([a_acc / 100, f_acc / 100, q_acc / 100]), split
    overall = HALLUSION_EXPECTED["Overall"]
    assert metrics["overall"] == pytest.approx(sum(overall) / 300)


# -- multiple choice ---------------------------------------------------------------------------------------
def test_mcq_matching_matches_vlmevalkit_can_infer(tmp_path):
    """Each answer of mcq_predictions.tsv (three option sets) is read as VLMEvalKit's `can_infer`
    (vlmeval/utils/matching_util.py, the exact-matching path of its MCQ and MathVista scorers) read it: the
    column `vlmevalkit_can_infer` ("" for no letter; its refusal option "Z" is no letter here either)."""
    rows = fixture_rows("mcq_predictions.tsv")
    image = b64(png_bytes())
    tsv = [
        {k: v for k, v in row.items() if k not in ("prediction", "vlmevalkit_can_infer")}
        | {"image": image if i == 0 else rows[0]["index"]}
        for i, row in enumerate(rows)
    ]
    task = get_task("vstar")
    assert task.scoring == {"mcq_matching": "vlmevalkit"}
    samples = {s.id: s for s in task.load(write_tsv(tmp_path / "mcq.tsv", tsv), tmp_path / "c")}
    agree = [
        (task.extract(row["prediction"], samples[row["index"]]) or "")
        == row["vlmevalkit_can_infer"].replace("Z", "")
        for row in rows
    ]
    disagreeing = [row["prediction"] for row, ok in zip(rows, agree, strict=True) if not ok]
    assert not disagreeing and len(agree) == 168


# -- OCRBench and ChartQA ----------------------------------------------------------------------------------
# VLMEvalKit's OCRBench_eval (vlmeval/dataset/utils/ocrbench.py) on ocrbench_predictions.tsv: right samples
# per group ("Final Score" is out of 1000 on the full benchmark; this fixture has 18 samples).
OCRBENCH_EXPECTED = {
    "Text Recognition": 6,
    "Scene Text-centric VQA": 1,
    "Doc-oriented VQA": 1,
    "Key Information Extraction": 1,
    "Handwritten Mathematical Expression Recognition": 1,
    "Final Score": 10,
}


def test_ocrbench_matches_vlmevalkit(tmp_path):
    _, records = scored_records("ocrbench", "ocrbench_predictions.tsv", tmp_path)
    metrics = get_task("ocrbench").aggregate(records)
    ours = {("Final Score" if k == "final_score" else k): v for k, v in metrics.items() if k != "accuracy"}
    assert ours == OCRBENCH_EXPECTED
    assert metrics["accuracy"] == pytest.approx(10 / 18)


# VLMEvalKit's process_line(method="relaxed_accuracy") and hit_calculate (vlmeval/dataset/utils/vqa_eval.py)
# as ImageVQADataset.evaluate_heuristic runs them for ChartQA: each row's hit is the fixture's column
# `vlmevalkit_hit`; Overall 62.5, human 58.333..., augmented 66.666... (percent).
CHARTQA_EXPECTED = {"all": 62.5, "human": 58.333333333333336, "augmented": 66.66666666666666}


def test_chartqa_relaxed_accuracy_matches_vlmevalkit(tmp_path):
    from thyme.eval.report import ALL, ModeRun, accuracy_table

    rows, records = scored_records("chartqa", "chartqa_predictions.tsv", tmp_path)
    hits = [int(r["vlmevalkit_hit"]) for r in rows]
    assert [int(r["score"]) for r in records] == hits
    table = dict(accuracy_table([ModeRun("tools", None, records, [])]))
    assert table[ALL]["tools"][0] == pytest.approx(CHARTQA_EXPECTED["all"] / 100)
    for split in ("human", "augmented"):
        assert table[split]["tools"][0] == pytest.approx(CHARTQA_EXPECTED[split] / 100)


# VLMEvalKit's MathVerse (vlmeval/dataset/utils/mathverse.py) on mathverse_predictions.tsv. Its extraction and
# most of its scoring are GPT calls; its rule is `post_check_score` (the extracted answer equals the gold,
# then no judge is asked), given here each row's prediction as the extracted answer (vlmevalkit_post_check).
# `MathVerse_acc` on the fixture with our per-row scores gave this breakdown (percent):
MATHVERSE_EXPECTED = {
    "Overall": 66.66666666666666,
    "Plane Geometry": 83.33333333333334,
    "Functions": 60.0,
    "Solid Geometry": 0.0,
    "Volume": 0.0,
    "Expression": 50.0,
    "Angle": 100.0,
    "Length": 100.0,
    "Coordinate": 50.0,
    "Area": 0.0,
    "Property": 100.0,
}


def test_mathverse_rules_and_breakdown_match_vlmevalkit(tmp_path):
    rows, records = scored_records("mathverse_vision_only", "mathverse_predictions.tsv", tmp_path)
    scores = [r["score"] for r in records]
    # Where VLMEvalKit's rule says right, so do we; where we say right beyond it (an option letter in "(C)",
    # math equivalence), VLMEvalKit asks its judge; a lone "b" and a wrong equation stay wrong.
    assert all(s == 1.0 for s, row in zip(scores, rows, strict=True) if row["vlmevalkit_post_check"] == "1")
    assert scores == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    metrics = get_task("mathverse_vision_only").aggregate(records)
    ours = {k.split("/", 1)[-1]: 100 * v for k, v in metrics.items()}
    ours["Overall"] = ours.pop("accuracy")
    assert ours == pytest.approx(MATHVERSE_EXPECTED)
