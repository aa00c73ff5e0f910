"""Scoring rules: pure functions that read a prediction out of a final answer and compare it with the gold.

They follow VLMEvalKit's rules where those are documented, so our numbers can sit beside published ones:

- MCQ (`extract_choice`): by default VLMEvalKit's rule-based matching (`can_infer`, as its MCQ and MathVista
  scorers use it without a judge): the answer's words (these marks `.()[],:;!*#{}` made spaces) hold
  exactly one option letter, in capitals, among the last four words; else "answer is X" (X one of A-D, any
  case, even the first letter of a word); else exactly one option text, lower-cased, inside the answer
  (answers longer than twice all option texts together are not searched). A lone "b" is no letter there,
  nor here. A refusal VLMEvalKit recognises ("Cannot determine the answer", a lone "Z") gives None.
  `mcq_matching="lenient"` (an explicit choice, recorded in the protocol card) first tries the protocol's
  strict reader (`thyme.protocol.extract_option_letter`: "b", "(B)", "B. text", "Option B", the option's own
  text), then the same word and text rules with the last five words, and refuses an answer whose letter
  contradicts another option's text ("B. blue" where blue is C's text), which VLMEvalKit takes as B.
- Yes/no (`extract_yes_no`): VLMEvalKit's `YOrN_Extraction`: "yes" among the words and no "no" gives yes,
  and the reverse; anything else (both, neither) gives None. Words are split as VLMEvalKit's
  `process_punctuation` splits them, quirks included: "No:" is no word "no" there, so not here either.
- Numbers (`parse_number`, `numbers_match`): thousands separators, currency signs, percent signs, units and
  LaTeX dollar signs are dropped; an answer holding several numbers counts only when one follows the last
  "=". The default tolerance is half a unit of the gold's last decimal place ("12.35" accepts 12.346,
  not 12.3) and exact equality for integer golds.
- Short answers (`normalize_answer`, `exact_match`): case, punctuation, articles and spacing ignored.
- Boxes (`box_iou`): "[x1, y1, x2, y2]" answers compared by intersection over union.
- Math (`math_equal`): `math_verify` when it is installed (`pip install math-verify`); without it, a
  normalised string and number comparison, which `MATH_BACKEND` names so that the protocol card records
  which one produced a number.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from thyme.protocol import extract_option_letter
from thyme.protocol.answer import strip_answer_leadins

log = logging.getLogger(__name__)

# -- multiple choice ---------------------------------------------------------------------------------------
_MCQ_PUNCT_RE = re.compile(r"[.()\[\],:;!*#{}]")
_LAST_WORDS = 5  # a lone option letter counts near the end: VLMEvalKit's last four words, lenient's five


MCQ_MATCHING = ("vlmevalkit", "lenient")
_REFUSALS = (  # VLMEvalKit's can_infer_option: answers that refuse to choose (its option "Z")
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_ANSWER_IS_RE = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)


def extract_choice(
    answer: str | None, choices: Mapping[str, str], matching: str = "vlmevalkit"
) -> str | None:
    """The option letter an answer picks (see the module docstring for `matching`), or None."""
    if matching not in MCQ_MATCHING:
        raise ValueError(f"MCQ matching {matching!r} is unknown; choose {' or '.join(MCQ_MATCHING)}")
    if answer is None or not answer.strip() or not choices:
        return None
    if matching == "lenient":
        return _lenient_choice(answer, choices)
    return _vlmevalkit_choice(answer, choices)


def _vlmevalkit_choice(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit's `can_infer`: the letter rule, "answer is X", then the option-text rule."""
    if any(refusal in answer for refusal in _REFUSALS):
        return None
    words = _MCQ_PUNCT_RE.sub(" ", answer).split()
    found = [letter for letter in choices if letter in words]
    if len(found) == 1 and words.index(found[0]) > len(words) - _LAST_WORDS:
        return found[0]
    if not found and "Z" in words:  # VLMEvalKit's "no answer" option
        return None
    stated = _ANSWER_IS_RE.search(answer)
    if stated is not None and stated.group(1).upper() in choices:
        return stated.group(1).upper()
    return _option_text_inside(answer, choices)


def _lenient_choice(answer: str, choices: Mapping[str, str]) -> str | None:
    strict = extract_option_letter(answer, choices)
    if strict is not None:
        return strict
    text = strip_answer_leadins(answer)
    letter = _letter_among_words(text, choices)
    if letter is None:
        return _option_text_inside(text, choices)
    named = [other for other, option in choices.items() if _names(text, option)]
    contradicted = bool(named) and letter not in named  # "B. blue" where blue is C's text
    return None if contradicted else letter


def _letter_among_words(text: str, choices: Mapping[str, str]) -> str | None:
    words = _MCQ_PUNCT_RE.sub(" ", text).split()
    found = [letter for letter in choices if letter in words]
    if len(found) != 1:
        return None
    return found[0] if words.index(found[0]) >= len(words) - _LAST_WORDS else None


def _names(text: str, option: str) -> bool:
    """The answer contains the option's text as whole words."""
    option = option.strip()
    return bool(option) and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", text, re.IGNORECASE) is not None


def _option_text_inside(text: str, choices: Mapping[str, str]) -> str | None:
    """Exactly one option's text, lower-cased, inside the lower-cased answer (VLMEvalKit's
    `can_infer_text`; an empty option text is inside every answer, as there)."""
    said = text.lower()
    if len(said) > 2 * sum(len(str(option)) for option in choices.values()):
        return None
    hits = [letter for letter, option in choices.items() if str(option).lower() in said]
    return hits[0] if len(hits) == 1 else None


def gold_letter(answer: str, choices: Mapping[str, str]) -> str | None:
    """The gold option letter from a gold answer: "B", "(B)", "B." or the option's exact text; else None."""
    s = answer.strip()
    bare = s.strip("()[]. ").upper()
    if len(bare) == 1 and bare in choices:
        return bare
    hits = [letter for letter, option in choices.items() if option.strip() == s]
    return hits[0] if len(hits) == 1 else None


# -- yes / no ----------------------------------------------------------------------------------------------
_YES_NO_GOLD = {"yes": "yes", "no": "no", "true": "yes", "false": "no", "1": "yes", "0": "no"}
# VLMEvalKit's `process_punctuation` (the VQA word splitter): these marks are deleted when the text has one
# next to a space (or has a thousands comma anywhere), else replaced by a space; then periods that touch no
# digit are deleted, at most 32 of them (VLMEvalKit passes re.UNICODE, 32, where `re.sub` takes a count).
_VQA_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_VQA_COMMA_RE = re.compile(r"(\d)(,)(\d)")
_VQA_PERIOD_RE = re.compile(r"(?<!\d)\.(?!\d)")
_VQA_PERIOD_COUNT = 32


def vqa_words(text: str) -> list[str]:
    """The words VLMEvalKit's VQA scorers see in `text` (its `process_punctuation`, then whitespace)."""
    out = text
    has_number_comma = _VQA_COMMA_RE.search(text) is not None
    for mark in _VQA_PUNCT:
        glued = f"{mark} " in text or f" {mark}" in text or has_number_comma
        out = out.replace(mark, "" if glued else " ")
    return _VQA_PERIOD_RE.sub("", out, count=_VQA_PERIOD_COUNT).split()


def extract_yes_no(answer: str | None) -> str | None:
    """ "yes" or "no" when the answer says exactly one of them as a word (VLMEvalKit's words), else None."""
    if answer is None:
        return None
    words = set(vqa_words(answer.lower()))
    if ("yes" in words) == ("no" in words):
        return None
    return "yes" if "yes" in words else "no"


def normalize_yes_no_gold(answer: str) -> str | None:
    """A gold yes/no label ("Yes", "no", "1", "False"...) as "yes"/"no"; None when it is neither."""
    return _YES_NO_GOLD.get(answer.strip().lower().rstrip("."))


# -- numbers -----------------------------------------------------------------------------------------------
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|mathrm|mbox)\{([^{}]*)\}")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\{\s*(-?\d+(?:\.\d+)?)\s*\}\{\s*(-?\d+(?:\.\d+)?)\s*\}")
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")


def parse_number(text: str | None) -> float | None:
    """The number an answer states ("1,234.5 cm", "$12", "45%", "3/4", "x = 5"), or None.

    An answer with several numbers counts only when exactly one follows its last "="; otherwise it is
    ambiguous and gives None.
    """
    if text is None:
        return None
    s = strip_answer_leadins(text)
    s = _LATEX_TEXT_RE.sub(r" \1 ", s)
    s = _LATEX_FRAC_RE.sub(r" \1/\2 ", s)
    s = s.replace("\\%", "%").replace("$", " ").replace("\\!", "").replace("{,}", ",")
    s = _THOUSANDS_RE.sub("", s)
    found = _NUMBER_RE.findall(s)
    if len(found) > 1 and "=" in s:
        found = _NUMBER_RE.findall(s.rsplit("=", 1)[1])
    if len(found) != 1:
        return None
    return _to_float(found[0])


def _to_float(token: str) -> float | None:
    numerator, _, denominator = token.replace(" ", "").partition("/")
    try:
        value = float(numerator)
        if denominator:
            value /= float(denominator)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def decimals(text: str) -> int:
    """Decimal places a number is written with ("12.50" -> 2, "3" -> 0, "1e-3" -> 0)."""
    match = re.search(r"\.(\d+)", text)
    return len(match.group(1)) if match and "e" not in text.lower() else 0


def numbers_match(
    prediction: str | None, gold: str, *, rel_tol: float = 0.0, abs_tol: float | None = None
) -> bool:
    """The prediction states the gold number within tolerance.

    abs_tol None: half a unit of the gold's last decimal place for a decimal gold ("0.25" accepts 0.2549),
    exact equality (up to float rounding) for an integer gold.
    """
    pred, want = parse_number(prediction), parse_number(gold)
    if pred is None or want is None:
        return False
    if abs_tol is None:
        places = decimals(str(gold))
        abs_tol = 0.5 * 10.0**-places if places else 0.0
    return math.isclose(pred, want, rel_tol=max(rel_tol, 1e-9), abs_tol=abs_tol)


# -- boxes -------------------------------------------------------------------------------------------------
_FOUR = r"\s*,\s*".join([r"(-?\d+(?:\.\d+)?)"] * 4)
_BOX_RE = re.compile(rf"^\s*[\[(]?\s*{_FOUR}\s*[\])]?\s*$")
_BRACKETED_BOX_RE = re.compile(rf"[\[(]\s*{_FOUR}\s*[\])]")


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """A box "[x1, y1, x2, y2]" (brackets, parentheses or bare; or the one bracketed box in a sentence),
    corners sorted; else None."""
    if text is None:
        return None
    match = _BOX_RE.match(strip_answer_leadins(text))
    if match is None:
        found = list(_BRACKETED_BOX_RE.finditer(text))
        match = found[0] if len(found) == 1 else None
    if match is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in match.groups())
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def box_iou(prediction: str | None, gold: str) -> float:
    """Intersection over union of two boxes written as text; 0.0 when either is not a box."""
    a, b = parse_box(prediction), parse_box(gold)
    if a is None or b is None:
        return 0.0
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


# -- short answers -----------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"(?<!\w)-?\d+(?:\.\d+)?|\w+")  # signed decimals stay whole: "-1.5" is not "1 5"
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str) -> str:
    """Case, punctuation, articles and spacing removed, signs and decimal points kept: "The Red car." ->
    "red car", "-1.5 m" -> "-1.5 m"."""
    tokens = _TOKEN_RE.findall(strip_answer_leadins(text).casefold())
    return " ".join(t for t in tokens if t not in _ARTICLES)


def exact_match(prediction: str | None, gold: str) -> bool:
    """Equal after `normalize_answer` (an empty prediction never matches)."""
    if prediction is None:
        return False
    said = normalize_answer(prediction)
    return bool(said) and said == normalize_answer(gold)


# -- math equivalence --------------------------------------------------------------------------------------
_MAX_MATH_CHARS = 1000  # sympy can take very long on huge expressions; such answers are wrong anyway
_LATEX_NOISE_RE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\displaystyle|\s+|\$")

# math_verify imports sympy (a second or so), so it is imported on first use; whether it is installed is
# known at once. The backend is recorded in the MathVista task's version: the two differ on a few answers.
_HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None
MATH_BACKEND = "math_verify" if _HAS_MATH_VERIFY else "string-fallback"


@functools.cache
def _math_verify() -> Any:
    import math_verify

    return math_verify


def math_equal(prediction: str | None, gold: str) -> bool:
    """The prediction is mathematically equal to the gold (see `MATH_BACKEND` for how it is decided)."""
    if prediction is None or not prediction.strip():
        return False
    if _plain_latex(prediction) == _plain_latex(gold):
        return True
    pred, want = parse_number(prediction), parse_number(gold)
    if pred is not None and want is not None:
        return math.isclose(pred, want, rel_tol=1e-9, abs_tol=1e-12)
    if not _HAS_MATH_VERIFY:
        _warn_fallback()
        return False
    if max(len(prediction), len(gold)) > _MAX_MATH_CHARS:
        return False
    return _verify(prediction, gold)


@functools.cache
def _warn_fallback() -> None:
    log.warning(
        "math_verify is not installed: math answers are compared as normalised strings and numbers only "
        "(pip install math-verify for symbolic equivalence)"
    )


def _plain_latex(text: str) -> str:
    """The answer with LaTeX spacing, sizing and dollar signs removed, case folded (operators kept)."""
    return _LATEX_NOISE_RE.sub("", strip_answer_leadins(text)).rstrip(".").casefold()


def _verify(prediction: str, gold: str) -> bool:
    # math_verify's time limits use SIGALRM, which only the main thread may set; other threads (the runner's
    # workers) go without, and the input length cap above bounds the work instead.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = _math_parse(gold, limit)
        pred_parsed = _math_parse(prediction, limit)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(_math_verify().verify(gold_parsed, pred_parsed, timeout_seconds=limit))
    except Exception as exc:  # a parser or sympy failure on odd input means "not shown equal"
        log.debug("math_verify failed on %r vs %r: %s", prediction, gold, exc)
        return False


def _math_parse(text: str, limit: int | None) -> list:
    # Bare expressions parse best as inline LaTeX; text already holding "$" or a box is parsed as it is.
    wrapped = text if ("$" in text or "\\boxed" in text) else f"${text}$"
    parse = _math_verify().parse
    return parse(wrapped, parsing_timeout=limit) or parse(text, parsing_timeout=limit)


# -- benchmark-level metrics (what VLMEvalKit reports as the headline) --------------------------------------
def record_categories(record: Mapping[str, Any]) -> list[str]:
    """The splits a result record counts in: `meta["categories"]` when the task lists several (a POPE row
    can be in "adversarial,popular"), else its one `category` (none: [])."""
    listed = (record.get("meta") or {}).get("categories")
    if isinstance(listed, list):
        return [str(c) for c in listed]
    category = record.get("category")
    return [str(category)] if category else []


def pope_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """POPE's headline as VLMEvalKit's `POPE_rating` computes it, over scored result records.

    A row counts once in each split it lists (`record_categories`), in that split's numbers and in the
    overall ones, which are taken over those repeated rows: "f1" (of "yes"), "precision", "recall",
    "accuracy", then the same per split as "f1/adversarial", ... A record needs `answer` ("yes"/"no"),
    `prediction` (None counts as not "yes") and `score`.
    """
    rows = [(split, r) for r in records for split in (record_categories(r) or [None])]
    metrics = _pope_split([r for _, r in rows])
    for split in sorted({split for split, _ in rows if split is not None}):
        part = _pope_split([r for name, r in rows if name == split])
        metrics.update({f"{key}/{split}": value for key, value in part.items()})
    return metrics


def _pope_split(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    tp = fp = fn = 0
    for r in records:
        gold_yes = str(r.get("answer", "")).strip().lower() == "yes"
        said_yes = str(r.get("prediction") or "").strip().lower() == "yes"
        tp += gold_yes and said_yes
        fp += said_yes and not gold_yes
        fn += gold_yes and not said_yes
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    right = sum(float(r.get("score") or 0.0) >= 1.0 for r in records)
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "accuracy": right / len(records) if records else 0.0,
    }


def hallusionbench_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """HallusionBench's aAcc (per question), fAcc (every question about one figure right) and qAcc (one
    question right on every figure it is asked about), and their mean, as VLMEvalKit's `Hallusion_rating`
    and HallusionBench's own scorer compute them; then aAcc/fAcc/qAcc per `category` (VD, VS) and per
    `l2-category` as "fAcc/VD", "qAcc/chart", ...

    Figures and questions are keyed by l2-category, set id and figure or question id: set ids restart in
    each subcategory, so set 1 of "chart" and set 1 of "map" are different sets. A record needs `score` and
    `meta` with `l2-category`, `set_id`, `figure_id`, `question_id`.
    """
    if not records:
        return {}
    metrics = _hallusion_split(records)
    metrics["overall"] = (metrics["aAcc"] + metrics["fAcc"] + metrics["qAcc"]) / 3
    for field in ("category", "l2-category"):
        values = {_hallusion_field(r, field) for r in records} - {None}
        for value in sorted(values):
            part = _hallusion_split([r for r in records if _hallusion_field(r, field) == value])
            metrics.update({f"{key}/{value}": v for key, v in part.items()})
    return metrics


def _hallusion_field(record: Mapping[str, Any], field: str) -> str | None:
    value = record.get(field) if field == "category" else (record.get("meta") or {}).get(field)
    return str(value) if value not in (None, "") else None


def _hallusion_split(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    figures: dict[tuple, list[bool]] = {}
    questions: dict[tuple, list[bool]] = {}
    for r in records:
        meta = r.get("meta") or {}
        right = float(r.get("score") or 0.0) >= 1.0
        key = (meta.get("l2-category"), meta.get("set_id"))
        figures.setdefault((*key, meta.get("figure_id")), []).append(right)
        questions.setdefault((*key, meta.get("question_id")), []).append(right)
    return {
        "aAcc": sum(float(r.get("score") or 0.0) >= 1.0 for r in records) / len(records),
        "fAcc": sum(all(v) for v in figures.values()) / len(figures),
        "qAcc": sum(all(v) for v in questions.values()) / len(questions),
    }
