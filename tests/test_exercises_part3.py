"""Part 3 exercises (Duo, notebooks 06-09): every check passes on its reference and on an
independent, written-out solution, and fails (AssertionError) on plausible mistakes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dllm_lesson.exercises import verify as run

# -- independent solutions (written out, not calling the library) ------------------------


def flip_v2_written(s):
    s = torch.as_tensor(s, dtype=torch.float64)
    x = -(1 - s) / (s * math.sqrt(2))
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # Phi(x)


def corrupt_written(x0, s, V, generator):
    B, L = x0.shape
    z = torch.randn(B, L, V, generator=generator)
    w = (1 - s) * F.one_hot(x0, V).float() + s * z
    return w.argmax(-1)


def tau_written(step, total, start, end):
    frac = min(step, total) / total
    return start * (end / start) ** frac


def soft_loss_written(model, x0, w, tau, loss_mask):
    probs = torch.softmax(w / tau, dim=-1)                          # (B, L, V)
    embeds = probs @ model.get_input_embeddings().weight            # (B, L, H)
    logits = model(inputs_embeds=embeds).logits                     # (B, L, V)
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
    return (ce * loss_mask).sum() / loss_mask.sum()


def sym_kl_written(logits, x0, eps=1e-4):
    V = logits.shape[-1]
    p = torch.softmax(logits.double(), -1)
    q = (1 - eps) * F.one_hot(x0, V).double() + eps / V
    kl_qp = (q * (q.log() - p.log())).sum(-1)
    kl_pq = (p * (p.log() - q.log())).sum(-1)
    return kl_qp + kl_pq


def row_scale_written(s, V):
    s = torch.as_tensor(s, dtype=torch.float64)
    return s / (V * (1 - s) + s)


def renoise_written(x0, flip, V, generator):
    u = torch.rand(x0.shape, generator=generator)
    offset = torch.randint(1, V, x0.shape, generator=generator)  # 1 .. V-1
    return torch.where(u < flip, (x0 + offset) % V, x0)


WRITTEN = {"flip_probability_v2": flip_v2_written, "corrupt_tokens": corrupt_written,
           "tau_schedule": tau_written, "soft_token_loss": soft_loss_written,
           "symmetric_kl": sym_kl_written, "row_scale": row_scale_written,
           "renoise": renoise_written}


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_written_solution_passes(name):
    run(name, WRITTEN[name])


# -- plausible mistakes -----------------------------------------------------------------


def _uniform_over_all(x0, flip, V, generator):
    """Replace with prob flip by any id, itself included (keeps too many)."""
    u = torch.rand(x0.shape, generator=generator)
    return torch.where(u < flip, torch.randint(0, V, x0.shape, generator=generator), x0)


def _flip_as_noise_weight(x0, flip, V, generator):
    """Uses the flip probability as the Gaussian noise weight."""
    from dllm_lesson import duo

    return duo.corrupt(x0, flip, V, generator=generator)


def _renoise_biased(x0, flip, V, generator):
    """Replaced tokens always move to the next id."""
    u = torch.rand(x0.shape, generator=generator)
    return torch.where(u < flip, (x0 + 1) % V, x0)


def _soft_loss_hard_ids(model, x0, w, tau, loss_mask):
    """Feeds the hard corrupted ids: right only as tau -> 0."""
    logits = model(input_ids=w.argmax(-1)).logits
    return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")[loss_mask].mean()


def _soft_loss_tau_times(model, x0, w, tau, loss_mask):
    embeds = torch.softmax(w * tau, -1) @ model.get_input_embeddings().weight
    logits = model(inputs_embeds=embeds).logits
    return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")[loss_mask].mean()


def _soft_loss_all_positions(model, x0, w, tau, loss_mask):
    embeds = torch.softmax(w / tau, -1) @ model.get_input_embeddings().weight
    logits = model(inputs_embeds=embeds).logits
    return F.cross_entropy(logits.transpose(1, 2), x0)


def _soft_loss_target_xt(model, x0, w, tau, loss_mask):
    embeds = torch.softmax(w / tau, -1) @ model.get_input_embeddings().weight
    logits = model(inputs_embeds=embeds).logits
    ce = F.cross_entropy(logits.transpose(1, 2), w.argmax(-1), reduction="none")
    return ce[loss_mask].mean()


WRONG = [
    ("flip_probability_v2", lambda s: torch.special.ndtr(-(1 - s) / s)),   # no sqrt 2
    ("flip_probability_v2", lambda s: torch.special.ndtr(-s / ((1 - s) * math.sqrt(2)))),
    ("corrupt_tokens", lambda x0, s, V, g: (F.one_hot(x0, V).float()
                                            + s * torch.randn(*x0.shape, V, generator=g)
                                            ).argmax(-1)),              # clean weight 1
    ("corrupt_tokens", lambda x0, s, V, g: (1 - s) * x0),               # not an argmax
    ("tau_schedule", lambda step, total, a, b: a + min(step / total, 1) * (b - a)),  # lin
    ("tau_schedule", lambda step, total, a, b: a * (b / a) ** (step / total)),  # no clamp
    ("soft_token_loss", _soft_loss_hard_ids),                              # argmax ids
    ("soft_token_loss", _soft_loss_tau_times),                             # w * tau
    ("soft_token_loss", _soft_loss_all_positions),                         # prompt too
    ("soft_token_loss", _soft_loss_target_xt),                             # target = xt
    ("symmetric_kl", lambda logits, x0, eps: F.cross_entropy(
        logits.transpose(1, 2), x0, reduction="none")),                   # CE only
    ("symmetric_kl", lambda logits, x0, eps: 2 * F.cross_entropy(
        logits.transpose(1, 2), x0, reduction="none")),
    ("row_scale", lambda s, V: s / (V * (1 - s))),                      # inf at s = 1
    ("row_scale", lambda s, V: 1 - s / (V * (1 - s) + s)),              # the seed's comment
    ("renoise", _uniform_over_all),
    ("renoise", _flip_as_noise_weight),
    ("renoise", _renoise_biased),
    ("renoise", lambda x0, flip, V, g: x0),                            # never changes
]


@pytest.mark.parametrize("name, fn", WRONG, ids=[f"{n}-{i}" for i, (n, _) in
                                                  enumerate(WRONG)])
def test_wrong_solution_fails(name, fn):
    with pytest.raises(AssertionError):
        run(name, fn)


def test_none_return_is_a_clear_failure():
    with pytest.raises(AssertionError, match="return"):
        run("corrupt_tokens", lambda *a: None)
    with pytest.raises(AssertionError, match="return"):
        run("row_scale", lambda *a: None)
