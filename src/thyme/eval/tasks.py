"""The built-in tasks: the benchmarks of the Thyme paper (Table 3) and the toy world.

Prompts are the released evaluation's wrappers (`thyme.protocol.wrappers`): MCQ benchmarks (V*, HR-Bench,
MME-RealWorld) get the lettered options and "Please select the correct answer from the options above.";
yes/no benchmarks (HallusionBench, POPE) get " Please answer yes or no."; MathVista, a VQA benchmark in
VLMEvalKit, gets the short-answer request after its question. Scoring is `thyme.eval.scoring`; MCQ answers
(and MathVista's multiple-choice ones) are read by VLMEvalKit's rule-based matching unless the task is
configured otherwise (`configure_task(task, mcq_matching="lenient")`, `thyme eval --mcq-matching lenient`),
which the protocol card records.

Assumptions about the files, from VLMEvalKit's loaders (see each task's description):
- MCQ golds are option letters, or option texts that match one option exactly; options are the A..Z
  columns, or one list column ("multi-choice options" in MME-RealWorld-Lite's TSV, "choices"/"options" in
  parquet). A file without options for an MCQ task is refused rather than scored wrongly.
- MME-RealWorld's `category` ("Perception/Monitoring"...) is the sub-task the report groups by;
  `l2-category` stays in meta. VLMEvalKit's MME-RealWorld prompt differs from Thyme's; we use Thyme's.
- MathVista: VLMEvalKit's TSV holds the full query (hint, question, choices) in `question`; HF parquet
  (AI4Math/MathVista) holds it in `query`, preferred when present. `question_type`, `answer_type`,
  `precision`, `choices` and (TSV) `answer_option` drive scoring; the sub-task is the `task` column.
- HallusionBench and POPE golds are "Yes"/"No". Per-sample scores are question accuracy; VLMEvalKit's
  headline HallusionBench number averages aAcc, fAcc and qAcc (meta keeps the ids those need; figures and
  questions are keyed by l2-category, set and figure/question id), and POPE's is the F1 of "yes"
  (meta["categories"] lists a row's splits, which can be several, comma-joined; the row counts in each).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

from thyme.eval.loaders import Columns, DataError, load_table, load_toyworld
from thyme.eval.scoring import (
    MATH_BACKEND,
    MCQ_MATCHING,
    box_iou,
    decimals,
    exact_match,
    extract_choice,
    extract_yes_no,
    gold_letter,
    hallusionbench_metrics,
    math_equal,
    normalize_yes_no_gold,
    numbers_match,
    parse_box,
    parse_number,
    pope_metrics,
)
from thyme.eval.task import EvalSample, TaskSpec, register_task
from thyme.protocol import wrap_mcq, wrap_short_vqa, wrap_yes_no
from thyme.protocol.answer import strip_answer_leadins

Shape = Callable[[EvalSample], EvalSample]  # a benchmark's own reading of a loaded row
_COLUMNS = Columns()


def _table_loader(
    name: str, shape: Shape, data_hint: str, columns: Columns = _COLUMNS, split: str | None = None
) -> Callable[[Path | None, Path], Iterator[EvalSample]]:
    def load(data: Path | None, cache_dir: Path) -> Iterator[EvalSample]:
        rows = load_table(data, cache_dir, columns=columns, split=split, data_hint=data_hint)
        return (shape(sample) for sample in rows)

    load.__qualname__ = f"load_{name}"
    return load


# -- multiple choice ---------------------------------------------------------------------------------------
def _shape_mcq(sample: EvalSample) -> EvalSample:
    """Gold as an option letter; DataError when the sample has no options or its gold is none of them."""
    if not sample.choices:
        raise DataError(
            f"sample {sample.id}: no options (columns A, B, ... or a list column 'options'/'choices'); "
            "use the benchmark's VLMEvalKit TSV"
        )
    letter = gold_letter(sample.answer, sample.choices)
    if letter is None:
        raise DataError(
            f"sample {sample.id}: gold answer {sample.answer!r} is none of the options "
            f"{', '.join(sample.choices)}; the file is not this benchmark's"
        )
    return dataclasses.replace(sample, answer=letter)


def _prompt_mcq(sample: EvalSample) -> str:
    return wrap_mcq(sample.question, sample.choices or {}, sample.hint)


def _extract_mcq(answer: str | None, sample: EvalSample, *, matching: str) -> str | None:
    return extract_choice(answer, sample.choices or {}, matching)


def _mcq_matching(value: str) -> str:
    if value not in MCQ_MATCHING:
        raise ValueError(f"MCQ matching {value!r} is unknown; choose {' or '.join(MCQ_MATCHING)}")
    return value


def _score_equal(prediction: str | None, sample: EvalSample) -> float:
    return float(prediction is not None and prediction == sample.answer)


def _mcq_task(
    name: str, version: str, description: str, data_hint: str, mcq_matching: str = "vlmevalkit"
) -> TaskSpec:
    return TaskSpec(
        name=name,
        version=version,
        description=description,
        load=_table_loader(name, _shape_mcq, data_hint),
        prompt=_prompt_mcq,
        extract=functools.partial(_extract_mcq, matching=_mcq_matching(mcq_matching)),
        score=_score_equal,
        data_hint=data_hint,
        scoring={"mcq_matching": mcq_matching},
        rescore=functools.partial(_mcq_task, name, version, description, data_hint),
    )


# -- yes / no ----------------------------------------------------------------------------------------------
def _shape_yes_no(sample: EvalSample) -> EvalSample:
    gold = normalize_yes_no_gold(sample.answer)
    if gold is None:
        raise DataError(f"sample {sample.id}: gold answer {sample.answer!r} is neither yes nor no")
    meta = dict(sample.meta)
    if sample.category:
        meta["categories"] = [c.strip() for c in sample.category.split(",") if c.strip()]
    # HallusionBench indices carry set, figure and question ids, which its fAcc and qAcc group by.
    parts = sample.id.split("_")
    if len(parts) >= 6:
        meta.update(set_id=parts[3], figure_id=parts[4], question_id=parts[5])
    return dataclasses.replace(sample, answer=gold, meta=meta)


def _yes_no_task(name: str, version: str, description: str, data_hint: str, aggregate=None) -> TaskSpec:
    return TaskSpec(
        name=name,
        version=version,
        description=description,
        load=_table_loader(name, _shape_yes_no, data_hint),
        prompt=lambda sample: wrap_yes_no(sample.question),
        extract=lambda answer, sample: extract_yes_no(answer),
        score=_score_equal,
        data_hint=data_hint,
        aggregate=aggregate,
    )


# -- MathVista ---------------------------------------------------------------------------------------------
_MATHVISTA_COLUMNS = Columns(question=("query", "question"), category=("task", "category"))


def _shape_mathvista(sample: EvalSample) -> EvalSample:
    meta = dict(sample.meta)
    category = sample.category or str((meta.get("metadata") or {}).get("task") or "")
    if str(meta.get("question_type", "")) != "multi_choice":
        return dataclasses.replace(sample, choices=None, category=category, meta=meta)
    meta["answer_text"] = sample.answer
    shaped = _shape_mcq(dataclasses.replace(sample, answer=str(meta.get("answer_option") or sample.answer)))
    return dataclasses.replace(shaped, category=category, meta=meta)


def _extract_mathvista(answer: str | None, sample: EvalSample, *, matching: str) -> str | None:
    if sample.choices:
        return extract_choice(answer, sample.choices, matching)
    if answer is None:
        return None
    return strip_answer_leadins(answer) or None


def _score_mathvista(prediction: str | None, sample: EvalSample) -> float:
    """MCQ: the letter. Integers: exact value. Floats: equal when rounded to the gold's `precision` (as
    MathVista's own scorer does). Lists and text: normalised equality, then math equivalence."""
    if prediction is None:
        return 0.0
    if sample.choices:
        return _score_equal(prediction, sample)
    kind = str(sample.meta.get("answer_type", ""))
    pred = parse_number(prediction)
    if kind in ("integer", "float") and pred is not None:
        gold = parse_number(sample.answer)
        if gold is None:
            return float(math_equal(prediction, sample.answer))
        if kind == "integer":
            return float(pred == gold)
        places = _precision(sample)
        return float(round(pred, places) == round(gold, places))
    return float(exact_match(prediction, sample.answer) or math_equal(prediction, sample.answer))


def _precision(sample: EvalSample) -> int:
    value = parse_number(str(sample.meta.get("precision", "")))
    return int(value) if value is not None and value >= 0 else decimals(sample.answer)


# -- the toy world -----------------------------------------------------------------------------------------
def _extract_toyworld(answer: str | None, sample: EvalSample) -> str | None:
    if answer is None:
        return None
    if sample.choices:  # the toy world is ours: the protocol's own reader, beyond VLMEvalKit's rule
        return extract_choice(answer, sample.choices, "lenient")
    return strip_answer_leadins(answer) or None


_BOX_IOU = 0.5  # the usual grounding threshold


def _score_toyworld(prediction: str | None, sample: EvalSample, *, numeric: bool) -> float:
    """Option letters, numbers (compute) or normalised exact text; a gold box "[x1, y1, x2, y2]" (zoom's
    "box" level) counts when the predicted box overlaps it with IoU >= 0.5."""
    if prediction is None:
        return 0.0
    if parse_box(sample.answer) is not None:
        return float(box_iou(prediction, sample.answer) >= _BOX_IOU)
    if sample.choices:
        gold = gold_letter(sample.answer, sample.choices)
        return (
            float(prediction == gold) if gold is not None else float(exact_match(prediction, sample.answer))
        )
    if numeric:
        return float(numbers_match(prediction, sample.answer))
    return float(exact_match(prediction, sample.answer))


def _toyworld_task(kind: str, description: str) -> TaskSpec:
    hint = f"DIR written by `thyme synth --task {kind} --n N --seed S --out DIR` (DIR/samples.jsonl)"
    return TaskSpec(
        name=f"toyworld_{kind}",
        version="1",
        description=description,
        load=functools.partial(load_toyworld, kind=kind),
        prompt=lambda sample: sample.question,
        extract=_extract_toyworld,
        score=functools.partial(_score_toyworld, numeric=kind == "compute"),
        data_hint=hint,
    )


# -- the registry ------------------------------------------------------------------------------------------
register_task(
    _mcq_task(
        "vstar",
        "2",
        "V* Bench: 191 MCQs on small details in large images (direct_attributes, relative_position)",
        "VStarBench.tsv (VLMEvalKit: index, image, question, A-D, answer, category)",
    )
)
register_task(
    _mcq_task(
        "hrbench4k",
        "2",
        "HR-Bench 4K: MCQ A-D on 4K images (single- and cross-instance; cycle_category in meta)",
        "hr_bench_4k.tsv (VLMEvalKit, from DreamMr/HR-Bench)",
    )
)
register_task(
    _mcq_task(
        "hrbench8k",
        "2",
        "HR-Bench 8K: MCQ A-D on 8K images (single- and cross-instance; cycle_category in meta)",
        "hr_bench_8k.tsv (VLMEvalKit, from DreamMr/HR-Bench)",
    )
)
register_task(
    _mcq_task(
        "mme_realworld",
        "2",
        "MME-RealWorld: MCQ A-E; category = the Perception/Reasoning sub-task, l2-category in meta",
        "MME-RealWorld.tsv (VLMEvalKit, built from yifanzhang114/MME-RealWorld-Base64)",
    )
)
register_task(
    _mcq_task(
        "mme_realworld_lite",
        "2",
        "MME-RealWorld-Lite: MCQ A-E; category = the sub-task, l2-category in meta",
        "mme_realworld_lite.tsv (VLMEvalKit, from yifanzhang114/MME-RealWorld-Base64)",
    )
)
register_task(
    _yes_no_task(
        "hallusionbench",
        "3",
        "HallusionBench: yes/no; category VD/VS, l2-category and set/figure/question ids in meta",
        "HallusionBench.tsv (VLMEvalKit)",
        aggregate=hallusionbench_metrics,
    )
)
register_task(
    _yes_no_task(
        "pope",
        "2",
        "POPE: yes/no object hallucination; categories = the adversarial/popular/random splits",
        "POPE.tsv (VLMEvalKit)",
        aggregate=pope_metrics,
    )
)
_MATHVISTA_HINT = "MathVista_MINI.tsv (VLMEvalKit), or AI4Math/MathVista parquet files (split testmini)"


def _mathvista_task(mcq_matching: str = "vlmevalkit") -> TaskSpec:
    return TaskSpec(
        name="mathvista_mini",
        version=f"2+{MATH_BACKEND}",
        description=(
            "MathVista testmini: free-form numbers (per-question precision), lists and text, and MCQs; "
            f"category = task; math equivalence by {MATH_BACKEND}"
        ),
        load=_table_loader(
            "mathvista_mini", _shape_mathvista, _MATHVISTA_HINT, _MATHVISTA_COLUMNS, "testmini"
        ),
        prompt=lambda sample: wrap_short_vqa(sample.question),
        extract=functools.partial(_extract_mathvista, matching=_mcq_matching(mcq_matching)),
        score=_score_mathvista,
        data_hint=_MATHVISTA_HINT,
        judge=True,
        scoring={"mcq_matching": mcq_matching},
        rescore=_mathvista_task,
    )


register_task(_mathvista_task())
register_task(
    _toyworld_task("zoom", "toy world: read a small target in a large cluttered image (crop, zoom)")
)
register_task(
    _toyworld_task("compute", "toy world: multi-digit arithmetic, numeric answer to the gold's precision")
)
register_task(_toyworld_task("rotate", "toy world: read a rotated target (rotate the image back)"))
register_task(_toyworld_task("contrast", "toy world: read a very low-contrast target (enhance the contrast)"))
