"""The two likelihood measures notebook 11 compares: a causal LM's exact NLL and masked
diffusion's bound, on toy models whose answer is known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dllm_lesson.evaluate import causal_nll, masked_nll_bound

V, MASK = 12, 11


class Unigram(torch.nn.Module):
    """Ignores its input: every position gets the same distribution ``p``."""

    def __init__(self, p):
        super().__init__()
        self.logp = torch.log(torch.as_tensor(p, dtype=torch.float))

    def forward(self, input_ids):
        B, L = input_ids.shape
        return SimpleNamespace(logits=self.logp.expand(B, L, V).clone())


class Oracle(torch.nn.Module):
    """Knows the clean row: puts almost all mass on it at every position."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.nn.functional.one_hot(self.x0, V).float() * 30.0)


@pytest.fixture
def rows():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, MASK, (16, 24), generator=g)               # (16, 24)
    scored = torch.ones_like(x0, dtype=torch.bool)
    scored[:, 0] = False                                              # like [CLS]
    return x0, scored


def test_causal_nll_of_a_unigram_model_is_its_cross_entropy(rows):
    x0, scored = rows
    p = torch.linspace(1, 3, V)
    p[MASK] = 0.5
    p = p / p.sum()
    want = -torch.log(p[x0[:, 1:]]).mean().item()                    # every token but the first
    assert causal_nll(Unigram(p), x0, scored) == pytest.approx(want, rel=1e-5)


def test_the_bound_of_a_context_free_model_is_its_cross_entropy(rows):
    # c(t) does not depend on t when the model ignores the context, so the bound is the
    # cross-entropy of the masked tokens: close to the causal NLL of the same model
    x0, scored = rows
    p = torch.full((V,), 1.0)
    p[:4] = 4.0
    p = p / p.sum()
    bound, curve = masked_nll_bound(Unigram(p), x0, scored, MASK, n_t=10)
    assert curve.shape == (10,)
    assert bound == pytest.approx(causal_nll(Unigram(p), x0, scored), abs=0.03)
    assert bound > 0.5 * math.log(V)                                  # not a perfect model


def test_a_model_that_knows_the_row_scores_near_zero(rows):
    x0, scored = rows
    bound, _ = masked_nll_bound(Oracle(x0), x0, scored, MASK)
    assert bound < 1e-6 and causal_nll(Oracle(torch.roll(x0, -1, 1)), x0, scored) < 1e-6


def test_the_first_token_has_no_causal_score(rows):
    x0, scored = rows
    with pytest.raises(ValueError, match="first token"):
        causal_nll(Unigram(torch.full((V,), 1.0 / V)), x0, torch.ones_like(scored))
