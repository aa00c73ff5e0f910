"""The loss-mask rules as a pure function: prompt, vision tokens, sandbox output and "only last round"."""

from __future__ import annotations

import pytest

from thyme.train.masks import IGNORE_INDEX, MODEL, PROMPT, SANDBOX, MaskConfig, apply_mask, loss_mask, rounds

P, M, S = PROMPT, MODEL, SANDBOX


def spans(roles, keep):
    """Indices that keep loss, as a list."""
    return [i for i, k in enumerate(keep) if k]


def test_prompt_and_vision_tokens_never_train():
    roles = [P, P, P, M, M, S, S, M]
    vision = [False, True, False, False, False, False, True, False]
    assert spans(roles, loss_mask(roles, vision)) == [3, 4, 7]
    # even when sandbox output is trained, its vision tokens are not
    naive = loss_mask(roles, vision, MaskConfig(mask_sandbox=False, only_last_round=False))
    assert spans(roles, naive) == [3, 4, 5, 7]


def test_no_code_and_one_round_train_every_model_token():
    assert spans(None, loss_mask([P, M, M, M], [False] * 4)) == [1, 2, 3]
    roles = [P, M, M, S, S, S, M, M]
    assert spans(roles, loss_mask(roles, [False] * 8)) == [1, 2, 6, 7]


def test_only_last_round_cuts_at_the_second_to_last_sandbox_output():
    # T0 C0 S0 T1 C1 S1 T2 A  ->  trains T1 C1 T2 A
    roles = [P, M, M, S, S, M, M, S, S, M, M]
    keep = loss_mask(roles, [False] * len(roles))
    assert spans(roles, keep) == [5, 6, 9, 10]
    # three outputs: only the turn after the second output onwards
    roles3 = [P, M, S, M, S, M, S, M]
    assert spans(roles3, loss_mask(roles3, [False] * 8)) == [5, 7]
    # switched off: every model token
    off = loss_mask(roles, [False] * len(roles), MaskConfig(only_last_round=False))
    assert spans(roles, off) == [1, 2, 5, 6, 9, 10]


def test_unmasked_sandbox_output_of_earlier_rounds_stays_masked():
    roles = [P, M, S, S, M, S, S, M]
    keep = loss_mask(roles, [False] * 8, MaskConfig(mask_sandbox=False))
    assert spans(roles, keep) == [4, 5, 6, 7]  # S0 and T0 masked, T1, S1 and T2 trained


def test_rounds_count_sandbox_outputs_before_each_token():
    assert rounds([P, M, S, S, M, S, M]) == [0, 0, 0, 0, 1, 1, 2]


def test_labels_and_argument_checks():
    assert apply_mask([5, 6, 7], [False, True, False]) == [IGNORE_INDEX, 6, IGNORE_INDEX]
    with pytest.raises(ValueError, match="roles but"):
        loss_mask([P, M], [False])
