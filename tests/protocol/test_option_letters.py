"""extract_option_letter: letters, marked letters, option texts, and ambiguity."""

from __future__ import annotations

import pytest

from thyme.protocol import extract_option_letter, normalize_options

OPTIONS = {"A": "blue car", "B": "red car", "C": "green bus", "D": "a cat"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("[B]", "B"),
        ("B) red car", "B"),
        ("B. red car", "B"),
        ("(B) The red car", "B"),
        ("Option B", "B"),
        ("b", "B"),
        ("(c)", "C"),
        ("The answer is C", "C"),
        ("Answer: (D)", "D"),
        ("red car", "B"),
        ("Green Bus.", "C"),
        ("B. because it is parked on the left", "B"),
        ("a red car", "B"),  # the lower-case "a" is an article, not option A
    ],
)
def test_picks_the_option(answer, expected):
    assert extract_option_letter(answer, OPTIONS) == expected


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("A or C", "two letters"),
        ("(A) and (C)", "two marked letters"),
        ("A, B", "a list of letters"),
        ("B. green bus", "letter contradicts the text of another option"),
        ("E", "not an option"),
        ("car", "matches no option text exactly"),
        ("", "empty"),
    ],
)
def test_refuses_when_ambiguous_or_absent(answer, why):
    assert extract_option_letter(answer, OPTIONS) is None, why


def test_capitalised_article_is_not_taken_as_a_letter():
    assert extract_option_letter("A cat", OPTIONS) == "D"


def test_duplicate_option_texts_are_ambiguous():
    assert extract_option_letter("yes", ["yes", "no", "yes"]) is None


def test_sequence_options_are_lettered():
    assert normalize_options(["x", "y"]) == {"A": "x", "B": "y"}
    assert extract_option_letter("y", ["x", "y"]) == "B"


def test_bad_option_keys_are_rejected():
    with pytest.raises(ValueError, match="single letter"):
        normalize_options({"AB": "x"})
