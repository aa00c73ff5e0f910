"""Open-answer benchmarks of the Thyme paper's Table 3: OCRBench, ChartQA and MathVerse (vision only).

Each reads VLMEvalKit's TSV (index, image as base64, question, answer, category or split) or the Hugging Face
parquet files of the benchmark (OCRBench: echo840/OCRBench's question, answer list and `question_type`;
ChartQA: HuggingFaceM4/ChartQA's `query`, `label` list and `human_or_machine`, or lmms-lab/ChartQA's `type`;
MathVerse: AI4Math/MathVerse's testmini, of which the "Vision Only" rows are kept). A gold `answer` may be one
text or a list (a Python list literal in a TSV: "['Stop', 'STOP']"); the accepted answers are kept in
meta["answers"]. OCRBench and ChartQA get the short-answer wrapper, as MathVista does; MathVerse's question
goes to the model as it is (as VLMEvalKit sends it: the vision-only question already says what to answer).

- OCRBench (`ocrbench_hit`, as VLMEvalKit's `OCRBench_eval`): a sample is right when one accepted answer
  occurs inside the model's answer, both lower-cased with line breaks made spaces and the ends trimmed; for
  "Handwritten Mathematical Expression Recognition" all spaces and line breaks are removed instead and case
  is kept. The headline (`ocrbench_metrics`) is the number of right samples, out of 1000 on the full
  benchmark, with VLMEvalKit's five groups (the six text-recognition categories summed into one).
- ChartQA (`relaxed_correct`, as VLMEvalKit's `relaxed_correctness` with `hit_calculate`): right when, for
  one accepted answer, both read as numbers (Python's `float`, a trailing "%" dividing by 100) and the
  prediction is within 5% of a non-zero gold; otherwise when both are equal ignoring case. The prediction is
  the answer with its ends trimmed: "12 apples" is not 12, as there. The split (human / augmented) is the
  category.
- MathVerse vision only (`mathverse_answer`, `mathverse_correct`, `mathverse_metrics`): VLMEvalKit asks a GPT
  judge to extract the answer and a second call to compare it unless the extracted answer equals the gold
  (`post_check_score`). Here the extraction is by rule: for multiple choice (`question_type`
  "multi-choice", gold a letter) the option letter the answer starts with ("B", "(B)", "B: 2", "The answer
  is B."); otherwise the answer without lead-ins or enclosing `$`. A prediction is right when it equals the
  gold, or (free form) is mathematically equal to it (`thyme.eval.scoring.math_equal`: math-verify); an
  optional judge (`--judge-url`) decides the rest, as VLMEvalKit's second call does. The headline is the
  accuracy, with VLMEvalKit's breakdown by `subject` (the category) and `subfield` (from `metadata`).

    thyme eval --task ocrbench --data OCRBench.tsv --model ... --out runs/ocrbench
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from thyme.eval.loaders import Columns, DataError, list_cell, load_table
from thyme.eval.scoring import MATH_BACKEND, math_equal
from thyme.eval.task import EvalSample, TaskSpec, register_task
from thyme.protocol import wrap_short_vqa
from thyme.protocol.answer import strip_answer_leadins

_HMER = "Handwritten Mathematical Expression Recognition"
OCRBENCH_GROUPS = {  # VLMEvalKit's reported groups and the categories summed into each
    "Text Recognition": (
        "Regular Text Recognition",
        "Irregular Text Recognition",
        "Artistic Text Recognition",
        "Handwriting Recognition",
        "Digit String Recognition",
        "Non-Semantic Text Recognition",
    ),
    "Scene Text-centric VQA": ("Scene Text-centric VQA",),
    "Doc-oriented VQA": ("Doc-oriented VQA",),
    "Key Information Extraction": ("Key Information Extraction",),
    _HMER: (_HMER,),
}
RELAXED_TOLERANCE = 0.05  # ChartQA: numbers within 5% of the gold
CHARTQA_SPLITS = {"0": "human", "1": "augmented"}  # HuggingFaceM4/ChartQA's human_or_machine labels
MATHVERSE_VERSION = "Vision Only"  # the problem_version kept (Table 3 reports MathVerse vision-only)
_LETTER_RE = re.compile(r"\(?([A-H])\)?(?=$|[\s.:,)])")


# -- OCRBench ----------------------------------------------------------------------------------------------
def ocrbench_hit(prediction: str | None, answers: Sequence[str], category: str) -> bool:
    """One accepted answer occurs in the prediction (VLMEvalKit's OCRBench rule, see the module docstring)."""
    if prediction is None:
        return False
    if category == _HMER:
        said = prediction.strip().replace("\n", " ").replace(" ", "")
        return any(a.strip().replace("\n", " ").replace(" ", "") in said for a in answers)
    said = prediction.lower().strip().replace("\n", " ")
    return any(a.lower().strip().replace("\n", " ") in said for a in answers)


def ocrbench_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Right samples per VLMEvalKit group and in all ("final_score": out of 1000 on the full benchmark),
    as whole numbers; "accuracy" is the share right."""
    right = [r for r in records if float(r.get("score") or 0.0) >= 1.0]
    metrics: dict[str, float] = {"final_score": len(right)}
    for group, categories in OCRBENCH_GROUPS.items():
        metrics[group] = sum(r.get("category") in categories for r in right)
    metrics["accuracy"] = len(right) / len(records) if records else 0.0
    return metrics


# -- ChartQA -----------------------------------------------------------------------------------------------
def _relaxed_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str | None, answers: Sequence[str]) -> bool:
    """ChartQA's relaxed accuracy for one sample (VLMEvalKit's rule, see the module docstring)."""
    if prediction is None:
        return False
    said = prediction.strip()
    said_number = _relaxed_float(said)
    for gold in answers:
        gold_number = _relaxed_float(gold)
        if said_number is not None and gold_number:
            if abs(said_number - gold_number) / abs(gold_number) <= RELAXED_TOLERANCE:
                return True
        elif said.lower() == gold.lower():
            return True
    return False


# -- MathVerse ---------------------------------------------------------------------------------------------
def _multiple_choice(sample: EvalSample) -> bool:
    return str(sample.meta.get("question_type", "")).strip().lower() == "multi-choice"


def mathverse_answer(answer: str | None, sample: EvalSample) -> str | None:
    """The prediction read out of the model's answer (see the module docstring), or None."""
    if answer is None:
        return None
    said = strip_answer_leadins(answer).strip()
    if _multiple_choice(sample):
        found = _LETTER_RE.match(said)
        return found.group(1) if found else (said or None)
    if len(said) > 1 and said.startswith("$") and said.endswith("$"):
        said = said.strip("$").strip()
    return said or None


def mathverse_correct(prediction: str | None, sample: EvalSample) -> bool:
    """Equal to the gold (VLMEvalKit's `post_check_score`), or, in free form, mathematically equal."""
    if prediction is None:
        return False
    gold = sample.answer.strip()
    if prediction.strip() == gold:
        return True
    return not _multiple_choice(sample) and math_equal(prediction, gold)


def mathverse_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy in all and per subject and subfield (VLMEvalKit's `MathVerse_acc` of one problem version)."""
    metrics = {"accuracy": _mean(records)}
    for field in ("subject", "subfield"):
        names = sorted({str(r.get("meta", {}).get(field) or "") for r in records} - {""})
        for name in names:
            metrics[f"{field}/{name}"] = _mean([r for r in records if r.get("meta", {}).get(field) == name])
    return metrics


def _mean(records: Sequence[Mapping[str, Any]]) -> float:
    return sum(float(r.get("score") or 0.0) for r in records) / len(records) if records else 0.0


def _shape_mathverse(sample: EvalSample) -> EvalSample | None:
    """A Vision Only row with subject and subfield lifted out of `metadata` (a dict, or its text in a TSV);
    None for another problem version (the HF files hold all six)."""
    version = str(sample.meta.get("problem_version") or MATHVERSE_VERSION)
    if version != MATHVERSE_VERSION:
        return None
    info = sample.meta.get("metadata") or {}
    if isinstance(info, str):
        try:
            info = ast.literal_eval(info)
        except (ValueError, SyntaxError):
            info = {}
    info = info if isinstance(info, dict) else {}
    meta = {**sample.meta, **{k: str(info[k]) for k in ("subject", "subfield") if info.get(k)}}
    meta.pop("metadata", None)
    if not sample.answer.strip():
        raise DataError(f"sample {sample.id}: no gold answer; the file is not MathVerse's")
    return dataclasses.replace(sample, category=meta.get("subject", sample.category), meta=meta)


# -- the tasks ---------------------------------------------------------------------------------------------
def _shape_answers(sample: EvalSample) -> EvalSample:
    answers = list_cell(sample.answer)  # the accepted answers: a list literal's items, else the text
    if not any(a.strip() for a in answers):
        raise DataError(f"sample {sample.id}: no gold answer; the file is not this benchmark's")
    return dataclasses.replace(sample, meta={**sample.meta, "answers": answers})


def _shape_chartqa(sample: EvalSample) -> EvalSample:
    return dataclasses.replace(
        _shape_answers(sample), category=CHARTQA_SPLITS.get(sample.category, sample.category)
    )


def _loader(
    name: str, columns: Columns, hint: str, shape: Callable[[EvalSample], EvalSample | None] = _shape_answers
) -> Callable[[Path | None, Path], Iterator[EvalSample]]:
    def load(data: Path | None, cache_dir: Path) -> Iterator[EvalSample]:
        rows = load_table(data, cache_dir, columns=columns, data_hint=hint)
        return (shaped for shaped in map(shape, rows) if shaped is not None)

    load.__qualname__ = f"load_{name}"
    return load


def _answers(sample: EvalSample) -> list[str]:
    return list(sample.meta.get("answers") or [sample.answer])


_OCRBENCH_HINT = (
    "OCRBench.tsv (VLMEvalKit: index, image, question, answer as a list, category), "
    "or echo840/OCRBench parquet"
)
_CHARTQA_HINT = (
    "ChartQA_TEST.tsv (VLMEvalKit: index, image, question, answer, split), or ChartQA test parquet"
)
_MATHVERSE_HINT = "MathVerse_MINI_Vision_Only.tsv (VLMEvalKit), or AI4Math/MathVerse testmini parquet"
_OCRBENCH_COLUMNS = Columns(category=("category", "question_type"))
_CHARTQA_COLUMNS = Columns(
    question=("question", "query"),
    answer=("answer", "label"),
    category=("split", "category", "type", "human_or_machine"),
)
_MATHVERSE_COLUMNS = Columns(id=("index", "sample_index", "id"))

register_task(
    TaskSpec(
        name="ocrbench",
        version="1",
        description="OCRBench: 1000 OCR questions, an accepted answer inside the reply; score out of 1000",
        load=_loader("ocrbench", _OCRBENCH_COLUMNS, _OCRBENCH_HINT),
        prompt=lambda sample: wrap_short_vqa(sample.question),
        extract=lambda answer, sample: answer,
        score=lambda prediction, sample: float(ocrbench_hit(prediction, _answers(sample), sample.category)),
        data_hint=_OCRBENCH_HINT,
        aggregate=ocrbench_metrics,
    )
)
register_task(
    TaskSpec(
        name="chartqa",
        version="1",
        description="ChartQA test: relaxed accuracy (numbers within 5%, text equal ignoring case); by split",
        load=_loader("chartqa", _CHARTQA_COLUMNS, _CHARTQA_HINT, _shape_chartqa),
        prompt=lambda sample: wrap_short_vqa(sample.question),
        extract=lambda answer, sample: answer,
        score=lambda prediction, sample: float(relaxed_correct(prediction, _answers(sample))),
        data_hint=_CHARTQA_HINT,
    )
)
register_task(
    TaskSpec(
        name="mathverse_vision_only",
        version=f"1+{MATH_BACKEND}",
        description=(
            "MathVerse testmini, vision only: the option letter or a free-form answer, equal or "
            f"mathematically equal ({MATH_BACKEND}) to the gold, the judge optional; by subject and subfield"
        ),
        load=_loader("mathverse_vision_only", _MATHVERSE_COLUMNS, _MATHVERSE_HINT, _shape_mathverse),
        prompt=lambda sample: sample.question,
        extract=mathverse_answer,
        score=lambda prediction, sample: float(mathverse_correct(prediction, sample)),
        data_hint=_MATHVERSE_HINT,
        judge=True,
        aggregate=mathverse_metrics,
    )
)
