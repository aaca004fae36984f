"""claims.claim / claim_between: print the sentence when true, raise with it when false."""

import numpy as np
import pytest
import torch

from dllm_lesson.claims import ClaimError, claim, claim_between


def test_true_claim_prints_sentence_with_mark(capsys):
    claim(3 > 2, "three beats two")
    assert capsys.readouterr().out == "✓ three beats two\n"


def test_false_claim_raises_assertion_with_sentence(capsys):
    with pytest.raises(AssertionError, match="two beats three"):
        claim(2 > 3, "two beats three")
    assert capsys.readouterr().out == ""   # nothing printed for a false claim


def test_claim_error_is_an_assertion_error():
    with pytest.raises(ClaimError):
        claim(False, "never")


@pytest.mark.parametrize("cond, ok", [(np.bool_(True), True), (np.bool_(False), False),
                                      (torch.tensor(True), True), (torch.tensor([0.0]), False),
                                      (np.array([1]), True), (1, True), (0.0, False)])
def test_scalar_like_conditions(cond, ok):
    if ok:
        claim(cond, "holds")
    else:
        with pytest.raises(ClaimError):
            claim(cond, "does not hold")


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match="condition comes first"):
        claim("the sentence", True)
    with pytest.raises(TypeError, match="non-empty"):
        claim(True, "")
    with pytest.raises(TypeError, match=r"\.all\(\) or \.any\(\)"):
        claim(torch.tensor([True, False]), "many elements")
    with pytest.raises(TypeError, match="None"):
        claim(None, "nothing")


def test_claim_between(capsys):
    claim_between(0.5, 0.4, 0.6, "half, give or take")
    assert capsys.readouterr().out == "✓ half, give or take\n"
    with pytest.raises(ClaimError, match=r"measured 0\.7.*\[0\.4, 0\.6\]"):
        claim_between(0.7, 0.4, 0.6, "half, give or take")
    with pytest.raises(ClaimError):
        claim_between(float("nan"), 0.0, 1.0, "a number")
    with pytest.raises(ValueError, match="above high"):
        claim_between(0.5, 0.6, 0.4, "bad range")
    with pytest.raises(TypeError, match="must be a number"):
        claim_between("0.5", 0.4, 0.6, "text")


def test_wilson_interval_known_values():
    from dllm_lesson.claims import wilson_interval

    lo, hi = wilson_interval(8, 8)            # 8/8 is far from certain
    assert hi == 1.0 and 0.67 < lo < 0.68     # textbook: [0.676, 1]
    lo, hi = wilson_interval(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    lo, hi = wilson_interval(190, 200)
    assert lo < 0.95 < hi and hi - lo < 0.07
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)


def test_paired_difference():
    from dllm_lesson.claims import paired_difference

    same = [1, 0, 1, 1] * 50
    assert paired_difference(same, same) == (0.0, 0.0, 0.0)
    a = [1] * 200
    b = [1] * 180 + [0] * 20                   # b loses 20 of 200
    diff, lo, hi = paired_difference(a, b)
    assert diff == pytest.approx(0.1) and 0.05 < lo < 0.1 < hi < 0.15
    diff, lo, hi = paired_difference(b, a)
    assert diff == pytest.approx(-0.1) and hi < 0
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1, 0], [1])
