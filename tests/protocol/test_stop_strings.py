"""Stop strings: the grammar's constants, restoring a dropped stop, cutting an overshoot."""

from __future__ import annotations

from protocol_samples import CROP

from thyme.protocol import STOP_STRINGS, cut_at_first_stop, pending_code, restore_stop_string

STOPPED_AT_CODE = CROP[: CROP.index("</code>")]  # what vLLM returns with the stop string dropped


def test_stop_strings_are_the_released_pair():
    assert STOP_STRINGS == ("</code>", "</answer>")


def test_reported_stop_is_restored_and_the_code_becomes_pending():
    assert pending_code(STOPPED_AT_CODE) is None
    restored = restore_stop_string(STOPPED_AT_CODE, "stop", "</code>")
    assert restored.endswith("```\n</code>")
    assert pending_code(restored) is not None


def test_stop_already_present_is_not_doubled():
    text = STOPPED_AT_CODE + "</code>"
    assert restore_stop_string(text, "stop", "</code>") == text
    assert restore_stop_string(text, "stop") == text


def test_truncation_appends_nothing():
    assert restore_stop_string(STOPPED_AT_CODE, "length") == STOPPED_AT_CODE
    assert restore_stop_string(STOPPED_AT_CODE, None) == STOPPED_AT_CODE


def test_unreported_stop_inside_code_is_code_close():
    assert restore_stop_string(STOPPED_AT_CODE, "stop").endswith("</code>")


def test_unreported_stop_inside_answer_is_answer_close():
    text = "<think>It is red.</think>\n<answer>red"
    assert restore_stop_string(text, "stop") == text + "</answer>"


def test_end_of_sequence_stop_appends_nothing():
    text = "<think>It is red.</think>\n<answer>red</answer>"
    assert restore_stop_string(text, "stop") == text
    assert restore_stop_string("just prose", "stop", 151645) == "just prose"


def test_other_reported_stop_strings_are_restored_too():
    assert restore_stop_string("<think>Let me check.\n", "stop", "<code>") == "<think>Let me check.\n<code>"


def test_cut_at_first_stop_removes_an_overshoot():
    text = "print(1)\n```\n</code>\n<sandbox_output>"
    assert cut_at_first_stop(text) == ("print(1)\n```\n</code>", "</code>")


def test_cut_at_first_stop_takes_the_earliest():
    assert cut_at_first_stop("a</answer>b</code>") == ("a</answer>", "</answer>")
    assert cut_at_first_stop("no stop here") == ("no stop here", None)
