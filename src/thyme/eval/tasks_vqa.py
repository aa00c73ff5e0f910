"""Open-answer benchmarks of the Thyme paper's Table 3 that VLMEvalKit scores by rules: OCRBench and ChartQA.

Both read VLMEvalKit's TSVs (index, image as base64, question, answer, category or split). A gold `answer`
may be one text or a Python list literal of accepted answers ("['Stop', 'STOP']"); the accepted answers
are kept in meta["answers"]. The prompt is the short-answer wrapper, as for MathVista.

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

    thyme eval --task ocrbench --data OCRBench.tsv --model ... --out runs/ocrbench
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from thyme.eval.loaders import Columns, DataError, list_cell, load_table
from thyme.eval.task import EvalSample, TaskSpec, register_task
from thyme.protocol import wrap_short_vqa

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


# -- the tasks ---------------------------------------------------------------------------------------------
def _shape_answers(sample: EvalSample) -> EvalSample:
    answers = list_cell(sample.answer)  # the accepted answers: a list literal's items, else the text
    if not any(a.strip() for a in answers):
        raise DataError(f"sample {sample.id}: no gold answer; the file is not this benchmark's")
    return dataclasses.replace(sample, meta={**sample.meta, "answers": answers})


def _loader(name: str, columns: Columns, hint: str) -> Callable[[Path | None, Path], Iterator[EvalSample]]:
    def load(data: Path | None, cache_dir: Path) -> Iterator[EvalSample]:
        return (_shape_answers(s) for s in load_table(data, cache_dir, columns=columns, data_hint=hint))

    load.__qualname__ = f"load_{name}"
    return load


def _answers(sample: EvalSample) -> list[str]:
    return list(sample.meta.get("answers") or [sample.answer])


_OCRBENCH_HINT = "OCRBench.tsv (VLMEvalKit: index, image, question, answer as a list, category)"
_CHARTQA_HINT = "ChartQA_TEST.tsv (VLMEvalKit: index, image, question, answer, split)"

register_task(
    TaskSpec(
        name="ocrbench",
        version="1",
        description="OCRBench: 1000 OCR questions, an accepted answer inside the reply; score out of 1000",
        load=_loader("ocrbench", Columns(), _OCRBENCH_HINT),
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
        load=_loader("chartqa", Columns(category=("split", "category", "type")), _CHARTQA_HINT),
        prompt=lambda sample: wrap_short_vqa(sample.question),
        extract=lambda answer, sample: answer,
        score=lambda prediction, sample: float(relaxed_correct(prediction, _answers(sample))),
        data_hint=_CHARTQA_HINT,
    )
)
