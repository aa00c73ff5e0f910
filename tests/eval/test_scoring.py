"""Scoring rules: MCQ letters, yes/no, numbers, short answers and math equivalence, on tricky answers."""

from __future__ import annotations

import threading

import pytest

from thyme.eval import scoring
from thyme.eval.scoring import (
    box_iou,
    exact_match,
    extract_choice,
    extract_yes_no,
    gold_letter,
    math_equal,
    normalize_answer,
    normalize_yes_no_gold,
    numbers_match,
    parse_number,
)

OPTIONS = {"A": "blue car", "B": "red car", "C": "green bus", "D": "a cat"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("The answer is D.", "D"),
        ("red car", "B"),
        # VLMEvalKit's can_infer: one capital letter among the last four words...
        ("I think the answer is C", "C"),
        ("so B", "B"),
        ("B. green bus", "B"),  # the letter wins over another option's text
        # ..."answer is X", even as the first letter of a word...
        ("the answer is d", "D"),
        ("answer is blue", "B"),
        # ...or exactly one option text inside the answer.
        ("It is the green bus on the left", "C"),
        ("A cat is on the mat", "D"),  # "A" is the first of six words: the option text decides
        ("answer B, the red car", "B"),
    ],
)
def test_choice_is_read_as_vlmevalkit_reads_it(answer, expected):
    assert extract_choice(answer, OPTIONS) == expected


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("b", "a lone lowercase letter is no option letter"),
        ("(b)", "nor in parentheses"),
        ("A or C", "two letters"),
        ("A, B", "two letters"),
        ("the red car or the blue car", "two option texts"),
        ("C because it is green and big", "a lone letter before the last four words"),
        ("Based on the image, I cannot tell", "no letter, no option text"),
        ("Cannot determine the answer", "a refusal"),
        ("Z", "VLMEvalKit's no-answer option"),
        ("E", "not an option"),
        ("", "empty"),
        (None, "no answer"),
    ],
)
def test_choice_refuses(answer, why):
    assert extract_choice(answer, OPTIONS) is None, why


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("b", "B"),
        ("(c)", "C"),
        ("Option d", "D"),
        ("C because it is green and big", None),  # five words from the end here: "C" is the sixth
        ("C because it is green", "C"),
        ("B. green bus", None),  # the letter contradicts another option's text
        ("red car", "B"),
    ],
)
def test_lenient_matching_is_an_explicit_choice(answer, expected):
    assert extract_choice(answer, OPTIONS, "lenient") == expected


def test_unknown_matching_is_refused():
    with pytest.raises(ValueError, match="choose vlmevalkit or lenient"):
        extract_choice("B", OPTIONS, "fuzzy")


def test_long_answers_are_not_searched_for_option_texts():
    rambling = "Looking closely at the scene, the red car " + "is parked near other things " * 5
    assert extract_choice(rambling, OPTIONS) is None


@pytest.mark.parametrize(
    ("gold", "expected"),
    [("B", "B"), ("(b)", "B"), ("C.", "C"), ("green bus", "C"), ("purple", None), ("Z", None)],
)
def test_gold_letter(gold, expected):
    assert gold_letter(gold, OPTIONS) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Yes", "yes"),
        ("no.", "no"),
        ("Yes, there is a dog.", "yes"),
        ("There is no dog in the image", "no"),
        ("NO", "no"),
        ("yes/no", None),
        ("Yes and no", None),
        ("Nope", None),
        ("I don't know", None),
        ("eyes", None),  # "yes" must be a word
        (None, None),
    ],
)
def test_yes_no(answer, expected):
    assert extract_yes_no(answer) == expected


@pytest.mark.parametrize(
    ("gold", "expected"), [("Yes", "yes"), ("no", "no"), ("1", "yes"), ("False", "no"), ("maybe", None)]
)
def test_yes_no_gold(gold, expected):
    assert normalize_yes_no_gold(gold) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0),
        ("1,234.5 cm", 1234.5),
        ("$12", 12.0),
        ("45%", 45.0),
        ("3/4", 0.75),
        ("\\frac{1}{2}", 0.5),
        ("-0.5", -0.5),
        ("1e3", 1000.0),
        ("x = 5", 5.0),
        ("2 + 3 = 5", 5.0),
        ("The answer is 7.", 7.0),
        ("\\text{12} m", 12.0),
        ("12 apples and 3 pears", None),
        ("2007-2008", None),
        ("twelve", None),
        ("", None),
        ("3/0", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("12.346", "12.35", True),  # within half a unit of the gold's last decimal
        ("12.3", "12.35", False),
        ("123456", "123,456", True),
        ("123457", "123456", False),  # an integer gold is exact
        ("123.4", "123", False),
        ("The product is 408.", "408", True),
        ("0.333", "1/3", False),
        (None, "1", False),
    ],
)
def test_numbers_match(prediction, gold, expected):
    assert numbers_match(prediction, gold) is expected


def test_numbers_match_explicit_tolerances():
    assert numbers_match("101", "100", rel_tol=0.02)
    assert not numbers_match("103", "100", rel_tol=0.02)
    assert numbers_match("0.104", "0.1", abs_tol=0.005)


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The Red car.", "red car", True),
        ("red  car", "Red Car", True),
        ("3.5", "3.5", True),
        ("3.5", "35", False),
        ("-1", "1", False),
        ("[1,2]", "[1, 2]", True),
        ("blue", "red", False),
        ("", "", False),
        ("...", "", False),
        (None, "x", False),
    ],
)
def test_exact_match(prediction, gold, expected):
    assert exact_match(prediction, gold) is expected


def test_normalize_answer_keeps_decimal_points():
    assert normalize_answer("The answer is: A 3.14 m!") == "3.14 m"
    assert normalize_answer("-1.5, then 2") == "-1.5 then 2"


MATH_CASES = [
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "0.5", True),
    ("3.0", "3", True),
    ("x = 5", "5", True),
    ("2", "3", False),
    ("0.3", "1/3", False),
]
VERIFY_ONLY = [
    ("\\sqrt{3}/2", "\\frac{\\sqrt{3}}{2}", True),
    ("1+x^2", "x^2+1", True),
    ("x^2-1", "x^2+1", False),
]


@pytest.mark.parametrize(("prediction", "gold", "expected"), MATH_CASES + VERIFY_ONLY)
def test_math_equal_with_math_verify(prediction, gold, expected):
    pytest.importorskip("math_verify")
    assert math_equal(prediction, gold) is expected


@pytest.mark.parametrize(("prediction", "gold", "expected"), MATH_CASES)
def test_math_equal_fallback_without_math_verify(prediction, gold, expected, monkeypatch):
    monkeypatch.setattr(scoring, "_HAS_MATH_VERIFY", False)
    assert math_equal(prediction, gold) is expected


def test_math_equal_fallback_compares_latex_without_spacing(monkeypatch, caplog):
    monkeypatch.setattr(scoring, "_HAS_MATH_VERIFY", False)
    assert math_equal("\\left( \\frac{\\sqrt{3}}{2} \\right)", "(\\frac{\\sqrt{3}}{2})")
    scoring._warn_fallback.cache_clear()
    assert not math_equal("\\sqrt{3}/2", "\\frac{\\sqrt{3}}{2}")  # needs math_verify
    assert "pip install math-verify" in caplog.text


def test_math_equal_works_off_the_main_thread():
    pytest.importorskip("math_verify")
    results = []
    thread = threading.Thread(target=lambda: results.append(math_equal("1+x^2", "x^2+1")))
    thread.start()
    thread.join(30)
    assert results == [True]


@pytest.mark.parametrize(
    ("prediction", "gold", "iou"),
    [
        ("[10, 20, 30, 40]", "[10, 20, 30, 40]", 1.0),
        ("(30, 40, 10, 20)", "[10, 20, 30, 40]", 1.0),  # corners in any order
        ("The box is [0, 0, 10, 10]", "[5, 0, 15, 10]", 1 / 3),
        ("[0, 0, 10, 10]", "[20, 20, 30, 30]", 0.0),
        ("[0, 0, 10]", "[0, 0, 10, 10]", 0.0),
        ("[0, 0, 10, 10] or [5, 0, 15, 10]", "[0, 0, 10, 10]", 0.0),  # two boxes: no answer
        ("row 1, column 2", "[0, 0, 10, 10]", 0.0),
        (None, "[0, 0, 10, 10]", 0.0),
    ],
)
def test_box_iou(prediction, gold, iou):
    assert box_iou(prediction, gold) == pytest.approx(iou)


def test_pope_metrics_are_f1_of_yes():
    from thyme.eval.scoring import pope_metrics

    def rec(answer, prediction, category=""):
        return {
            "answer": answer,
            "prediction": prediction,
            "score": float(answer == prediction),
            "category": category,
        }

    records = [
        rec("yes", "yes"),  # tp
        rec("yes", "no"),  # fn
        rec("no", "yes"),  # fp
        rec("no", "no"),  # tn
        rec("yes", "yes"),  # tp
        rec("no", None),  # tn (no answer is not a yes) but wrong
    ]
    m = pope_metrics(records)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(3 / 6)
    assert pope_metrics([])["f1"] == 0.0


def test_pope_row_in_two_splits_counts_in_each():
    from thyme.eval.scoring import pope_metrics

    both = {"answer": "yes", "prediction": "yes", "score": 1.0, "meta": {"categories": ["adv", "pop"]}}
    miss = {"answer": "yes", "prediction": "no", "score": 0.0, "meta": {"categories": ["pop"]}}
    m = pope_metrics([both, miss])
    assert m["recall/adv"] == 1.0 and m["recall/pop"] == 0.5 and m["accuracy/pop"] == 0.5
    assert m["recall"] == pytest.approx(2 / 3)  # over the rows as counted in the splits: 3, not 2
    assert m["f1"] == pytest.approx(0.8)


def test_hallusionbench_figure_and_question_accuracy():
    from thyme.eval.scoring import hallusionbench_metrics

    def rec(cat, l2, s, fig, q, score):
        meta = {"l2-category": l2, "set_id": s, "figure_id": fig, "question_id": q}
        return {"category": cat, "score": score, "meta": meta}

    records = [
        rec("VD", "chart", "1", "0", "0", 1.0),
        rec("VD", "chart", "1", "0", "1", 1.0),  # figure (chart,1,0) all right
        rec("VD", "chart", "1", "1", "0", 0.0),  # figure (chart,1,1) wrong; question (chart,1,0) wrong
        rec("VD", "chart", "1", "1", "1", 1.0),  # question (chart,1,1) right on both figures
        rec("VD", "map", "1", "0", "0", 1.0),  # set 1 again, another subcategory: its own groups
    ]
    m = hallusionbench_metrics(records)
    assert m["aAcc"] == pytest.approx(4 / 5)
    assert m["fAcc"] == pytest.approx(2 / 3)  # (chart,1,0) and (map,1,0) right, (chart,1,1) not
    assert m["qAcc"] == pytest.approx(2 / 3)  # (chart,1,1) and (map,1,0) right, (chart,1,0) not
    assert m["overall"] == pytest.approx((4 / 5 + 2 / 3 + 2 / 3) / 3)
    assert m["fAcc/map"] == 1.0 and m["fAcc/chart"] == 0.5 and m["fAcc/VD"] == m["fAcc"]
