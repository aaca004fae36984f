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


def nelbo_written(x_theta, x0, xt, alpha, dalpha, swap=False, factor=None):
    """The sum over jumps, one token at a time (``swap``/``factor``: plausible mistakes)."""
    N, K = x_theta.shape
    out = torch.zeros(N, dtype=torch.float64)
    c = -dalpha / (K * alpha) if factor is None else factor
    for n in range(N):
        z = int(xt[n])
        xbar = torch.full((K,), 1 - alpha, dtype=torch.float64)
        xbar[int(x0[n])] += K * alpha
        xbar_t = K * alpha * x_theta[n].double() + (1 - alpha)
        for y in range(K):
            if y == z:
                continue
            r, r_t = c * xbar[y] / xbar[z], c * xbar_t[y] / xbar_t[z]
            if swap:
                r, r_t = r_t, r
            out[n] += r_t - r + r * torch.log(r / r_t)
    return out


def posterior_written(x0_probs, xt, a_s, a_t):
    N, V = x0_probs.shape
    out = torch.zeros(N, V, dtype=torch.float64)
    a_ts = a_t / a_s
    for n in range(N):
        for j in range(V):
            trans = a_ts * (int(xt[n]) == j) + (1 - a_ts) / V        # q(x_t | x_s = j)
            marg = a_s * float(x0_probs[n, j]) + (1 - a_s) / V       # q(x_s = j | x0)
            out[n, j] = trans * marg
    return out / out.sum(-1, keepdim=True)


def dcd_pair_written(x0, t, s, V, schedule, generator):
    z = torch.randn(*x0.shape, V, generator=generator)               # one draw
    hot = F.one_hot(x0, V).float()
    pair = []
    for time in (t, s):
        c, sd = schedule.gaussian_weights(time)                       # (B,), (B,)
        pair.append((c[:, None, None] * hot + sd[:, None, None] * z).argmax(-1))
    return tuple(pair)


def renoise_written(x0, flip, V, generator):
    u = torch.rand(x0.shape, generator=generator)
    offset = torch.randint(1, V, x0.shape, generator=generator)  # 1 .. V-1
    return torch.where(u < flip, (x0 + offset) % V, x0)


WRITTEN = {"flip_probability_v2": flip_v2_written, "corrupt_tokens": corrupt_written,
           "soft_token_loss": soft_loss_written,
           "symmetric_kl": sym_kl_written, "nelbo_by_jumps": nelbo_written,
           "renoise": renoise_written, "uniform_posterior": posterior_written,
           "dcd_pair": dcd_pair_written}


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


def _dcd_two_draws(x0, t, s, V, schedule, generator):
    """Two independent draws: x_s is not on x_t's path."""
    hot = F.one_hot(x0, V).float()
    pair = []
    for time in (t, s):
        z = torch.randn(*x0.shape, V, generator=generator)
        c, sd = schedule.gaussian_weights(time)
        pair.append((c[:, None, None] * hot + sd[:, None, None] * z).argmax(-1))
    return tuple(pair)


WRONG = [
    ("flip_probability_v2", lambda s: torch.special.ndtr(-(1 - s) / s)),   # no sqrt 2
    ("flip_probability_v2", lambda s: torch.special.ndtr(-s / ((1 - s) * math.sqrt(2)))),
    ("corrupt_tokens", lambda x0, s, V, g: (F.one_hot(x0, V).float()
                                            + s * torch.randn(*x0.shape, V, generator=g)
                                            ).argmax(-1)),              # clean weight 1
    ("corrupt_tokens", lambda x0, s, V, g: (1 - s) * x0),               # not an argmax
    ("soft_token_loss", _soft_loss_hard_ids),                              # argmax ids
    ("soft_token_loss", _soft_loss_tau_times),                             # w * tau
    ("soft_token_loss", _soft_loss_all_positions),                         # prompt too
    ("soft_token_loss", _soft_loss_target_xt),                             # target = xt
    ("symmetric_kl", lambda logits, x0, eps: F.cross_entropy(
        logits.transpose(1, 2), x0, reduction="none")),                   # CE only
    ("symmetric_kl", lambda logits, x0, eps: 2 * F.cross_entropy(
        logits.transpose(1, 2), x0, reduction="none")),
    ("nelbo_by_jumps", lambda *a: nelbo_written(*a, swap=True)),          # KL reversed
    ("nelbo_by_jumps", lambda *a: nelbo_written(*a, factor=1.0)),         # no -alpha'/(K a)
    ("nelbo_by_jumps", lambda p, x0, xt, a, da: nelbo_written(p, x0, xt, a, -da)),  # sign
    ("nelbo_by_jumps", lambda p, x0, xt, a, da: -torch.log(p[torch.arange(len(x0)), x0])),
    ("uniform_posterior", lambda p, xt, a_s, a_t: a_s * p + (1 - a_s) / p.shape[-1]),  # no xt
    ("uniform_posterior", lambda p, xt, a_s, a_t: posterior_written(p, xt, a_s, a_t * a_s)),
    ("uniform_posterior", lambda p, xt, a_s, a_t: (a_t * F.one_hot(xt, p.shape[-1])
                                                   + (1 - a_t) / p.shape[-1]) * p),  # no norm
    ("dcd_pair", _dcd_two_draws),
    ("dcd_pair", lambda x0, t, s, V, sch, g: dcd_pair_written(x0, s, t, V, sch, g)),  # swap
    ("dcd_pair", lambda x0, t, s, V, sch, g: dcd_pair_written(
        x0, t.mean().expand(3), s.mean().expand(3), V, sch, g)),               # one time
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
        run("nelbo_by_jumps", lambda *a: None)
