"""Tests for dllm_lesson.duo: flip probability, soft tokens, losses, the Duo objective.

Each check compares against an independent, slow or sampled implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_lesson import duo

# ---------------------------------------------------------------------------
# Gaussian noise on one-hot vectors
# ---------------------------------------------------------------------------


def test_gaussian_one_hot_moments_and_default_clean_weight():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 5, (4, 3000), generator=g)
    noise = torch.tensor([0.0, 0.2, 0.5, 1.0])  # one per row
    w = duo.gaussian_one_hot(x0, noise, 5, generator=g)  # (4, 3000, 5)
    assert w.shape == (4, 3000, 5) and w.dtype == torch.float32
    hot = torch.nn.functional.one_hot(x0, 5).float()
    for b, s in enumerate(noise.tolist()):
        resid = w[b] - (1 - s) * hot[b]  # should be s * N(0, 1)
        assert abs(resid.mean().item()) < 0.02
        assert resid.std().item() == pytest.approx(s, abs=0.02)
    # shapes (B, 1) and float give the same distribution; clean_weight overrides 1 - s
    w2 = duo.gaussian_one_hot(x0[:1, :4], 0.0, 5, clean_weight=3.0)
    assert torch.equal(w2, 3.0 * hot[:1, :4])
    g1 = torch.Generator().manual_seed(1)
    w3 = duo.gaussian_one_hot(x0, noise[:, None], 5, generator=g1)
    assert w3.shape == w.shape


def test_gaussian_one_hot_allowed_sets_minus_inf_but_keeps_clean_id():
    x0 = torch.tensor([[0, 4, 2]])
    allowed = duo.allowed_mask(6, exclude=[0, 4])
    w = duo.gaussian_one_hot(x0, 0.5, 6, allowed=allowed, generator=torch.Generator())
    assert torch.isinf(w[0, 1, 0]) and torch.isfinite(w[0, 1, 4])  # x0 = 4 kept at pos 1
    assert torch.isfinite(w[0, 0, 0]) and torch.isinf(w[0, 0, 4])
    assert torch.isinf(w[0, 2, [0, 4]]).all()


def test_duo_weights_variance_preserving():
    gamma = torch.linspace(-5, 5, 11, dtype=torch.float64)
    c, s = duo.duo_weights(gamma)
    assert torch.allclose(c**2 + s**2, torch.ones_like(c))
    assert torch.allclose(c / s, torch.exp(-gamma / 2))
    c0, s0 = duo.duo_weights(0.0)
    assert c0 == pytest.approx(math.sqrt(0.5)) and s0 == pytest.approx(math.sqrt(0.5))


def test_corrupt_keeps_tokens_at_zero_noise_and_never_produces_excluded_ids():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(5, 40, (3, 50), generator=g)
    assert torch.equal(duo.corrupt(x0, 0.0, 40, generator=g), x0)
    xt = duo.corrupt(x0, 1.0, 40, generator=g, exclude=[0, 1, 2, 3, 4])  # pure noise
    assert int(xt.min()) >= 5
    assert (xt != x0).float().mean() > 0.9
    with pytest.raises(ValueError):
        duo.corrupt(x0, 0.5, 40, exclude=[4], allowed=duo.allowed_mask(40))


def test_corrupt_flip_rate_matches_analytic_and_chunks():
    # V = 3000 with 2400 positions forces several chunks inside corrupt
    V, s = 3000, 0.22
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, V, (4, 600), generator=g)
    xt = duo.corrupt(x0, s, V, generator=g)
    rate = (xt != x0).float().mean().item()
    f = duo.flip_probability(s, V)
    assert 0.2 < f < 0.8
    assert rate == pytest.approx(f, abs=4 * math.sqrt(f * (1 - f) / x0.numel()))


def test_bad_inputs_raise_clear_value_errors():
    x0 = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="noise_weight"):
        duo.gaussian_one_hot(x0, 1.5, 4)
    with pytest.raises(ValueError, match="shape"):
        duo.gaussian_one_hot(x0, torch.ones(3), 4)
    with pytest.raises(ValueError, match="outside"):
        duo.corrupt(x0 + 9, 0.1, 4)
    with pytest.raises(ValueError, match="tau"):
        duo.soft_tokens(torch.zeros(1, 1, 3), 0.0)
    with pytest.raises(ValueError, match=r"\(V-1\)/V"):
        duo.noise_for_flip(0.5, 2)
    with pytest.raises(ValueError, match="vocab_size"):
        duo.flip_probability(0.3, 1)
    with pytest.raises(ValueError, match="both be 0"):
        duo.flip_probability(0.0, 10, clean_weight=0.0)


# ---------------------------------------------------------------------------
# Flip probability: analytic vs Monte Carlo, limits, inverse, duality
# ---------------------------------------------------------------------------

NOISE_GRID = [0.05, 0.15, 0.25, 0.35, 0.5, 0.7]


@pytest.mark.parametrize("V", [2, 8, 100, 2788])
def test_flip_probability_matches_monte_carlo(V):
    n = 20_000 if V > 1000 else 50_000
    g = torch.Generator().manual_seed(V)
    analytic = duo.flip_probability(np.array(NOISE_GRID), V)
    mc = duo.flip_probability_mc(np.array(NOISE_GRID), V, n=n, generator=g)
    assert analytic.shape == mc.shape == (len(NOISE_GRID),)
    np.testing.assert_allclose(mc, analytic, atol=0.01)  # within 1 percentage point


def test_flip_probability_v2_closed_form_and_custom_clean_weight():
    s = np.linspace(0.01, 0.99, 50)
    exact = 0.5 * np.array([math.erfc((1 - x) / x / 2) for x in s])  # Phi(-c/(s sqrt 2))
    np.testing.assert_allclose(duo.flip_probability(s, 2), exact, atol=1e-12)
    # only c / s matters
    a = duo.flip_probability(0.3, 50, clean_weight=0.6)
    b = duo.flip_probability(0.6, 50, clean_weight=1.2)
    assert a == pytest.approx(b, abs=1e-14)


@pytest.mark.parametrize("V", [2, 8, 2788, 50368])
def test_flip_probability_limits_and_monotone(V):
    assert duo.flip_probability(0.0, V) == 0.0
    assert duo.flip_probability(1.0, V) == pytest.approx((V - 1) / V, abs=1e-9)
    f = duo.flip_probability(np.linspace(0, 1, 101), V)
    assert np.all(np.diff(f) >= -1e-12)
    t = duo.flip_probability(torch.tensor([0.1, 0.4]), V)
    assert isinstance(t, torch.Tensor) and t.shape == (2,)


@pytest.mark.parametrize("V", [2, 8, 2788])
def test_noise_for_flip_inverts_flip_probability(V):
    p = np.array([0.0, 0.01, 0.05, 0.3, 0.45, (V - 1) / V - 1e-3])
    s = duo.noise_for_flip(p, V)
    np.testing.assert_allclose(duo.flip_probability(s, V), p, atol=1e-9)
    lo, hi = duo.suggest_noise_range(V)
    assert duo.flip_probability(lo, V) == pytest.approx(0.05, abs=1e-9)
    assert duo.flip_probability(hi, V) == pytest.approx((V - 1) / V - 1e-3, abs=1e-9)
    assert 0 < lo < hi < 1


def _chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


def test_flipped_tokens_are_replaced_uniformly():
    # The duality: given a flip, the new id is uniform over the V - 1 others
    V, s = 8, 0.45
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, V, (40, 1000), generator=g)
    xt = duo.corrupt(x0, s, V, generator=g)
    flipped = xt != x0
    offset = ((xt - x0) % V)[flipped]  # 1..V-1 : which other id replaced x0
    counts = torch.bincount(offset, minlength=V)[1:].double()  # (V - 1,)
    dof = V - 2
    assert _chi_square(counts) < dof + 6 * math.sqrt(2 * dof)
    # new id is also independent of which id was clean (uniform over all ids as targets)
    for clean in range(V):
        sel = flipped & (x0 == clean)
        c = torch.bincount(xt[sel], minlength=V).double()
        assert c[clean] == 0
        assert _chi_square(torch.cat([c[:clean], c[clean + 1 :]])) < dof + 6 * math.sqrt(
            2 * dof
        )
    # the statistic can fail: a sampler biased towards x0 + 1 is caught
    biased = counts.clone()
    biased[0] *= 1.15
    assert _chi_square(biased) > dof + 6 * math.sqrt(2 * dof)


# ---------------------------------------------------------------------------
# Soft tokens
# ---------------------------------------------------------------------------


def test_soft_tokens_tend_to_argmax_as_tau_goes_to_zero():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 50, (3, 20), generator=g)
    w = duo.gaussian_one_hot(x0, 0.4, 50, generator=g)
    hard = torch.nn.functional.one_hot(w.argmax(-1), 50).float()
    for tau in (1e-6, 1e-8):
        p = duo.soft_tokens(w, tau)
        assert p.dtype == torch.float32
        assert torch.allclose(p, hard, atol=1e-5)
        assert torch.equal(p.argmax(-1), w.argmax(-1))
    ent = []
    for tau in (1e-3, 1e-1, 1.0, 10.0):
        p = duo.soft_tokens(w, tau)
        assert torch.allclose(p.sum(-1), torch.ones(3, 20))
        ent.append(float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()))
    assert ent == sorted(ent) and ent[-1] > 3.5  # high tau spreads mass (log 50 = 3.9)


def test_tau_schedule_endpoints_monotone_log_linear():
    taus = [duo.tau_schedule(k, 100) for k in range(0, 121)]
    assert taus[0] == pytest.approx(1e-3) and taus[100] == pytest.approx(1e-8)
    assert taus[120] == pytest.approx(1e-8)
    assert all(a > b for a, b in zip(taus[:100], taus[1:101]))
    assert taus[50] == pytest.approx(math.sqrt(1e-3 * 1e-8))  # geometric midpoint
    ratios = [taus[k + 1] / taus[k] for k in range(99)]
    assert max(ratios) == pytest.approx(min(ratios))
    with pytest.raises(ValueError):
        duo.tau_schedule(0, 0)


def test_soft_embeddings_mix_rows():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(7, 5, generator=g)
    probs = torch.softmax(torch.randn(2, 3, 7, generator=g), -1)
    out = duo.soft_embeddings(probs, E)
    slow = torch.zeros(2, 3, 5)
    for b in range(2):
        for i in range(3):
            for v in range(7):
                slow[b, i] += probs[b, i, v] * E[v]
    assert torch.allclose(out, slow, atol=1e-6)
    ids = torch.tensor([[1, 6, 0]])
    hot = torch.nn.functional.one_hot(ids, 7).float()
    assert torch.allclose(duo.soft_embeddings(hot, E), E[ids])


# ---------------------------------------------------------------------------
# Losses, checked against slow per-token / per-row loops
# ---------------------------------------------------------------------------


def _slow_sym_kl(logits, x0, eps):
    B, L, V = logits.shape
    out = torch.zeros(B, L, dtype=torch.float64)
    kl_qp = torch.zeros(B, L, dtype=torch.float64)
    kl_pq = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        for i in range(L):
            p = torch.softmax(logits[b, i].double(), -1)
            q = torch.full((V,), eps / V, dtype=torch.float64)
            q[x0[b, i]] += 1 - eps
            a = sum(float(q[j] * (math.log(q[j]) - math.log(p[j]))) for j in range(V))
            c = sum(float(p[j] * (math.log(p[j]) - math.log(q[j]))) for j in range(V))
            kl_qp[b, i], kl_pq[b, i], out[b, i] = a, c, a + c
    return out, kl_qp, kl_pq


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3), L=st.integers(1, 4), V=st.integers(2, 9),
    eps=st.sampled_from([1e-4, 1e-2, 0.2]), seed=st.integers(0, 10_000),
    spread=st.sampled_from([0.1, 1.0, 5.0]),
)
def test_symmetric_kl_matches_slow_loop(B, L, V, eps, seed, spread):
    g = torch.Generator().manual_seed(seed)
    logits = spread * torch.randn(B, L, V, generator=g)
    x0 = torch.randint(0, V, (B, L), generator=g)
    fast = duo.symmetric_kl(logits, x0, eps=eps)
    slow, kl_qp, kl_pq = _slow_sym_kl(logits, x0, eps)
    assert fast.shape == (B, L)
    assert torch.allclose(fast.double(), slow, rtol=1e-4, atol=1e-4)
    assert (fast.double() >= kl_qp - 1e-4).all() and (fast.double() >= kl_pq - 1e-4).all()
    ce = duo.cross_entropy(logits, x0).double()
    # KL(q||p) is cross-entropy up to O(eps)
    assert torch.allclose(kl_qp, ce, atol=eps * (1 + ce.abs().max().item()) * 20 + 1e-4)


def test_symmetric_kl_zero_at_perfect_prediction_and_ce_on_loop():
    V, eps = 11, 1e-3
    x0 = torch.tensor([[0, 3, 10]])
    q = torch.full((1, 3, V), eps / V)
    q.scatter_(-1, x0[..., None], 1 - eps + eps / V)
    assert duo.symmetric_kl(q.log(), x0, eps=eps).abs().max() < 1e-5
    wrong = duo.symmetric_kl(q.log(), (x0 + 1) % V, eps=eps)
    assert (wrong > 5).all()
    logits = torch.randn(2, 4, V, generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(1))
    ce = duo.cross_entropy(logits, x)
    for b in range(2):
        for i in range(4):
            expect = -torch.log_softmax(logits[b, i], -1)[x[b, i]]
            assert ce[b, i].item() == pytest.approx(expect.item(), rel=1e-5)


def test_row_scale_formula_against_loop():
    noise = [0.0, 0.1, 0.3, 0.5, 0.9, 1.0]
    for V in (2, 64, 2788):
        got = duo.row_scale(np.array(noise), V)
        for k, s in enumerate(noise):
            c = 1 - s
            assert got[k] == pytest.approx(s / (V * c + s), rel=1e-12, abs=0)
    assert duo.row_scale(0.0, 100) == 0.0  # formula: 0 at no noise (seed comment says 1)
    assert duo.row_scale(1.0, 100) == 1.0
    t = duo.row_scale(torch.tensor([0.2, 0.4]), 10, clean_weight=torch.tensor([1.0, 0.5]))
    assert torch.allclose(t, torch.tensor([0.2 / 10.2, 0.4 / 5.4]))


def _slow_duo_loss(logits, x0, noise, V, kind, scale, mask, eps):
    rows = []
    for b in range(x0.shape[0]):
        total, count = 0.0, 0
        for i in range(x0.shape[1]):
            if mask[b, i]:
                p = torch.softmax(logits[b, i].double(), -1)
                if kind == "ce":
                    tok = -math.log(p[x0[b, i]])
                else:
                    q = torch.full((V,), eps / V, dtype=torch.float64)
                    q[x0[b, i]] += 1 - eps
                    kl_qp = (q * (q.log() - p.log())).sum()
                    kl_pq = (p * (p.log() - q.log())).sum()
                    tok = float(kl_qp + kl_pq)
                total += tok
                count += 1
        if count:
            s = float(noise[b])
            rows.append(total / count * (s / (V * (1 - s) + s) if scale else 1.0))
    return sum(rows) / len(rows) if rows else 0.0


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 4), L=st.integers(1, 5), V=st.integers(2, 8),
    kind=st.sampled_from(["ce", "sym_kl"]), scale=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_duo_loss_matches_slow_loop(B, L, V, kind, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(B, L, V, generator=g)
    x0 = torch.randint(0, V, (B, L), generator=g)
    noise = torch.rand(B, generator=g)
    mask = torch.rand(B, L, generator=g) < 0.6
    got = duo.duo_loss(logits, x0, noise, V, kind=kind, scale=scale, loss_mask=mask)
    want = _slow_duo_loss(logits, x0, noise, V, kind, scale, mask, 1e-4)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------
# Gradient spread (notebook 08)
# ---------------------------------------------------------------------------


def test_row_gradient_norms_for_uniform_predictions_match_closed_form():
    # zero logits: d CE / d logits = softmax - one_hot, norm sqrt((V-1)/V) per token;
    # the row loss is a mean over L tokens, so the row norm is sqrt(L (V-1)/V) / L
    V, L = 30, 16
    x0 = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(0))
    noise = torch.tensor([0.1, 0.3, 0.6])
    norms = duo.row_gradient_norms(lambda xt, s: torch.zeros(*xt.shape, V), x0, noise, V,
                                   kind="ce", scale=False, generator=torch.Generator())
    expect = math.sqrt(L * (V - 1) / V) / L
    assert torch.allclose(norms, torch.full((3,), expect), rtol=1e-5)
    scaled = duo.row_gradient_norms(lambda xt, s: torch.zeros(*xt.shape, V), x0, noise, V,
                                    kind="ce", scale=True, generator=torch.Generator())
    assert torch.allclose(scaled, norms * duo.row_scale(noise, V), rtol=1e-5)


def test_uniform_posterior_logits_is_the_flip_table():
    V = 12
    xt = torch.tensor([[3, 7]])
    logp = duo.uniform_posterior_logits(xt, 0.4, V)
    f = duo.flip_probability(0.4, V)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 2), atol=1e-6)
    assert logp[0, 0, 3].exp().item() == pytest.approx(1 - f, rel=1e-6)
    assert logp[0, 0, 5].exp().item() == pytest.approx(f / (V - 1), rel=1e-6)


def test_gradient_spread_demo_matches_closed_forms_and_its_table():
    """The demo at its defaults (V = 2788, L = 512) against numbers derived by hand and the
    table its docstring (and notebook 08) quotes."""
    d = duo.gradient_spread_demo()
    V, L, flips = d["vocab_size"], d["length"], d["flip"]
    assert (V, L, len(flips)) == (2788, 512, 7)
    # noise weights and the seed's row scale at 5% / 99% flips, as the docstring quotes
    assert d["noise_weight"][0] == pytest.approx(0.160, abs=5e-4)
    assert d["noise_weight"][-1] == pytest.approx(0.478, abs=5e-4)
    assert d["row_scale"][0] == pytest.approx(6.8e-5, rel=0.01)
    # init model (zero logits): CE is log V on every row and its gradient norm is
    # sqrt(L (V-1)/V) / L (softmax - one_hot per token), whatever the noise
    init = d["init"]["ce"]["unscaled"]
    assert init["loss"] == pytest.approx([math.log(V)] * 7, rel=1e-5)
    assert init["grad_norm"] == pytest.approx([math.sqrt(L * (V - 1) / V) / L] * 7, rel=1e-3)
    # the posterior model's CE on a row is the flip channel's entropy
    # H(f) = -(1-f) log(1-f) - f log(f/(V-1)), up to the sampling error of L tokens
    post = d["posterior"]["ce"]["unscaled"]["loss"]
    for f, got in zip(flips, post):
        h = -(1 - f) * math.log(1 - f) - f * math.log(f / (V - 1))
        se = math.sqrt(f * (1 - f) / L) * abs(math.log((1 - f) * (V - 1) / f))
        assert abs(got - h) <= 4 * se + 1e-3, (f, got, h)
    # the docstring's table: model, loss -> (unscaled loss/grad, scaled loss/grad) ratios
    table = {("init", "ce"): (1.0, 1.0, 4.8, 4.8), ("init", "sym_kl"): (1.0, 1.0, 4.8, 4.8),
             ("posterior", "ce"): (14.6, 3.4, 70, 16),
             ("posterior", "sym_kl"): (11.2, 5.4, 54, 9.6)}
    for (model, kind), (lu, gu, ls, gs) in table.items():
        e = d[model][kind]
        got = (e["unscaled"]["loss_ratio"], e["unscaled"]["grad_ratio"],
               e["scaled"]["loss_ratio"], e["scaled"]["grad_ratio"])
        assert got == pytest.approx((lu, gu, ls, gs), rel=0.03), (model, kind, got)


# ---------------------------------------------------------------------------
# DuoObjective on a tiny transformers ModernBERT
# ---------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and steadiest on a busy 2-core box) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_modernbert(seed=0):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    cfg = ModernBertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, pad_token_id=0,
        bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
        local_attention=16, global_attn_every_n_layers=2,
    )
    return ModernBertForMaskedLM(cfg)


def _batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(5, 64, (4, 12), generator=g)
    attn = torch.ones_like(x0)
    attn[3, 9:] = 0  # a padded row
    loss_mask = torch.zeros_like(x0)
    loss_mask[:, 4:] = 1  # "response" tokens
    loss_mask = loss_mask * attn
    return {"input_ids": x0, "attention_mask": attn, "loss_mask": loss_mask}


def test_duo_objective_runs_backprops_and_learns(one_thread):
    model = _tiny_modernbert()
    obj = duo.DuoObjective(vocab_size=64, noise_min=0.2, noise_max=0.5, total_steps=30,
                           allowed=duo.allowed_mask(64, exclude=range(5)))
    batch = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        g = torch.Generator().manual_seed(7)  # same noise every step
        loss, metrics = obj.loss(model, batch, step, generator=g)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grad = model.get_input_embeddings().weight.grad
            assert grad is not None and grad.abs().sum() > 0
            assert set(metrics) >= {"loss", "ce", "acc", "flip_rate", "noise", "tau"}
            assert 0.2 <= metrics["noise"] <= 0.5
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]  # same noise every step: it must fit the batch
    assert metrics["tau"] == pytest.approx(duo.tau_schedule(29, 30))


def test_duo_objective_feeds_clean_embeddings_outside_loss_mask(one_thread):
    hf = _tiny_modernbert()
    E = hf.get_input_embeddings().weight
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = hf

        def get_input_embeddings(self):
            return hf.get_input_embeddings()

        def forward(self, inputs_embeds=None, attention_mask=None):
            seen["embeds"] = inputs_embeds.detach()
            return hf(inputs_embeds=inputs_embeds, attention_mask=attention_mask)

    batch = _batch()
    obj = duo.DuoObjective(vocab_size=64, noise_min=1.0, noise_max=1.0, total_steps=10)
    obj.loss(Spy(), batch, 10, generator=torch.Generator().manual_seed(0))
    emb = seen["embeds"]  # (B, L, H)
    clean = E[batch["input_ids"]].detach()
    keep = batch["loss_mask"] == 0
    assert torch.allclose(emb[keep], clean[keep], atol=1e-6)
    # at pure noise, nearly every scored token's embedding is some other token's
    scored = ~keep
    same = (emb[scored] - clean[scored]).abs().amax(-1) < 1e-6
    assert same.float().mean() < 0.2


def test_duo_objective_defaults_and_validation(one_thread):
    obj = duo.DuoObjective(vocab_size=2788)
    assert (obj.noise_min, obj.noise_max) == pytest.approx(duo.suggest_noise_range(2788))
    with pytest.raises(ValueError):
        duo.DuoObjective(vocab_size=64, noise_min=0.6, noise_max=0.2)
    with pytest.raises(ValueError):
        duo.DuoObjective(vocab_size=64, loss_kind="mse")
    with pytest.raises(ValueError, match="embedding rows"):
        duo.DuoObjective(vocab_size=65, noise_min=0.1, noise_max=0.2).loss(
            _tiny_modernbert(), _batch(), 0
        )


# ---------------------------------------------------------------------------
# The paper's Duo: schedule, uniform-state NELBO, posterior, ancestral step
# ---------------------------------------------------------------------------


def _slow_nelbo(logits, x0, xt, alpha, dalpha, allowed):
    """The NELBO integrand written as the sum over jumps of the rate Bregman divergence."""
    ids = [j for j in range(logits.shape[-1]) if allowed[j]]
    K = len(ids)
    p = torch.softmax(logits.double().masked_fill(~allowed, -math.inf), -1)
    out = torch.zeros(x0.shape, dtype=torch.float64)
    for idx in np.ndindex(*x0.shape):
        z, x = int(xt[idx]), int(x0[idx])
        a, da = float(alpha[idx]), float(dalpha[idx])
        xbar = {y: K * a * (y == x) + (1 - a) for y in ids}
        xbt = {y: K * a * float(p[idx][y]) + (1 - a) for y in ids}
        total = 0.0
        for y in ids:
            if y == z:
                continue
            r = -da / (K * a) * xbar[y] / xbar[z]  # true reverse rate z -> y
            r_theta = -da / (K * a) * xbt[y] / xbt[z]  # model's
            total += r_theta - r + r * math.log(r / r_theta)
        out[idx] = total
    return out


@settings(max_examples=40, deadline=None)
@given(V=st.integers(3, 7), seed=st.integers(0, 10_000), excluded=st.booleans())
def test_uniform_state_nelbo_matches_slow_sum_over_jumps(V, seed, excluded):
    g = torch.Generator().manual_seed(seed)
    allowed = torch.ones(V, dtype=torch.bool)
    if excluded:
        allowed[0] = False
    ids = allowed.nonzero()[:, 0]
    shape = (2, 3)
    x0 = ids[torch.randint(len(ids), shape, generator=g)]
    xt = torch.where(torch.rand(shape, generator=g) < 0.5, x0,
                     ids[torch.randint(len(ids), shape, generator=g)])
    logits = 3 * torch.randn(*shape, V, generator=g)
    alpha = 0.01 + 0.98 * torch.rand(shape, generator=g)
    dalpha = -0.1 - 3 * torch.rand(shape, generator=g)
    fast = duo.uniform_state_nelbo(logits, x0, xt, alpha, dalpha, allowed)
    slow = _slow_nelbo(logits, x0, xt, alpha, dalpha, allowed)
    assert fast.shape == shape
    assert torch.allclose(fast.double(), slow, rtol=1e-3, atol=1e-4)
    assert bool((fast > -1e-4).all())  # a Bregman divergence: never negative


def test_uniform_state_nelbo_is_zero_for_the_perfect_model_and_grows_when_wrong():
    V = 11
    x0 = torch.tensor([[1, 2, 3, 4]])
    xt = torch.tensor([[1, 5, 3, 7]])
    perfect = 40 * torch.nn.functional.one_hot(x0, V).float()
    wrong = 40 * torch.nn.functional.one_hot((x0 + 1) % V, V).float()
    kw = dict(alpha=torch.tensor(0.3), dalpha=torch.tensor(-1.0))
    assert duo.uniform_state_nelbo(perfect, x0, xt, **kw).abs().max() < 1e-4
    assert bool((duo.uniform_state_nelbo(wrong, x0, xt, **kw) > 1).all())


def test_discrete_alpha_matches_the_argmax_of_gaussian_latents():
    V, gamma = 50, -1.0
    alpha = duo.discrete_alpha(gamma, V)
    c, s = duo.duo_weights(gamma)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V, (1, 40_000), generator=g)
    xt = duo.corrupt(x0, s, V, clean_weight=c, generator=g)
    keep = (xt == x0).float().mean().item()
    expected = alpha + (1 - alpha) / V
    assert keep == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / 40_000))
    # monotone: more gamma, less signal; ends near 1 and near 0
    a = duo.discrete_alpha([-8.0, -3.0, 0.0, 4.0], 2780)
    assert a[0] > 0.999 and a[3] < 1e-3 and all(np.diff(a) < 0)


def test_schedule_table_interpolates_and_its_derivative_matches_finite_differences():
    sched = duo.DuoSchedule(300, -3.0, 1.0)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    exact = torch.as_tensor(duo.discrete_alpha(sched.gamma(t).double(), 300)).float()
    assert torch.allclose(sched.alpha(t), exact, atol=1e-5)
    h = 1e-3
    fd = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)
    assert torch.allclose(sched.dalpha(t), fd, rtol=2e-3, atol=1e-4)
    assert bool((sched.dalpha(t) < 0).all())
    assert duo.alpha_table(300, -3.0, 1.0) is duo.alpha_table(300, -3.0, 1.0)  # cached


def test_sample_uniform_state_keep_rate():
    V, alpha = 20, 0.4
    allowed = duo.allowed_mask(V, exclude=[0])
    x0 = torch.full((1, 50_000), 5)
    xt = duo.sample_uniform_state(x0, alpha, allowed, generator=torch.Generator().manual_seed(0))
    keep = alpha + (1 - alpha) / 19
    assert (xt == 5).float().mean().item() == pytest.approx(keep, abs=0.01)
    assert int((xt == 0).sum()) == 0


def _paper_posterior(x, xt, a_s, a_t, V):
    """The posterior as the paper's code writes it out (full vocabulary)."""
    a_ts = a_t / a_s
    hot = torch.nn.functional.one_hot(xt, V).double()
    num = (a_t * V * x * hot + (a_ts - a_t) * hot + (a_s - a_t) * x
           + (1 - a_ts) * (1 - a_s) / V)
    return num / (a_t * V * x.gather(-1, xt[..., None]) + (1 - a_t))


@settings(max_examples=30, deadline=None)
@given(V=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_uniform_posterior_matches_the_papers_closed_form_and_bayes(V, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.softmax(2 * torch.randn(3, V, generator=g, dtype=torch.float64), -1)
    xt = torch.randint(0, V, (3,), generator=g)
    a_t = 0.05 + 0.5 * torch.rand(3, generator=g, dtype=torch.float64)
    a_s = a_t + (1 - a_t) * torch.rand(3, generator=g, dtype=torch.float64)
    post = duo.uniform_posterior(x, xt, a_s, a_t).double()
    paper = _paper_posterior(x, xt, a_s[:, None], a_t[:, None], V)
    assert torch.allclose(post, paper, atol=1e-5)
    assert torch.allclose(post.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    # Bayes with one-hot x0: sum_i q(x_t = i | x0) q(x_s | x_t = i, x0) = q(x_s | x0)
    x0 = torch.nn.functional.one_hot(torch.tensor(1 % V), V).double()
    as_, at_ = float(a_s[0]), float(a_t[0])
    total = torch.zeros(V, dtype=torch.float64)
    for i in range(V):
        q_t = at_ * float(x0[i]) + (1 - at_) / V
        total += q_t * duo.uniform_posterior(x0[None], torch.tensor([i]), as_, at_)[0].double()
    assert torch.allclose(total, as_ * x0 + (1 - as_) / V, atol=1e-5)


def test_uniform_posterior_gives_xt_extra_weight_and_respects_allowed():
    V = 6
    allowed = duo.allowed_mask(V, exclude=[0])
    x = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0, 0.0]])  # model torn between 1 and 2
    post = duo.uniform_posterior(x, torch.tensor([2]), 0.6, 0.3, allowed)
    assert post[0, 2] > post[0, 1] > post[0, 3]  # x_t's token wins the tie
    assert post[0, 0] == 0
    # a greedy last step (alpha_s = 1) returns the model's distribution itself
    last = duo.uniform_posterior(x, torch.tensor([4]), 1.0, 0.3, allowed)
    assert torch.allclose(last, x, atol=1e-6)


def test_ancestral_step_batched_shapes_and_seed():
    V = 8
    logits = torch.randn(2, 3, 5, V)  # any leading dims
    xt = torch.randint(1, V, (2, 3, 5))
    allowed = duo.allowed_mask(V, exclude=[0])
    a = duo.ancestral_step(logits, xt, 0.5, 0.2, allowed, torch.Generator().manual_seed(1))
    b = duo.ancestral_step(logits, xt, 0.5, 0.2, allowed, torch.Generator().manual_seed(1))
    assert a.shape == xt.shape and torch.equal(a, b) and int((a == 0).sum()) == 0


def test_sampler_alphas_rise_to_one_and_reject_bad_steps():
    sched = duo.DuoSchedule(2780)
    pairs = duo.sampler_alphas(4, sched)
    assert len(pairs) == 4 and pairs[-1][1] == 1.0
    assert all(a_t < a_s for a_t, a_s in pairs)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps"):
            duo.sampler_alphas(bad, sched)


def test_duo_objective_bad_loss_and_scale_names():
    with pytest.raises(ValueError, match="unknown Duo loss"):
        duo.DuoObjective(vocab_size=50, loss_kind="elbow")
    with pytest.raises(ValueError, match="unknown Duo loss scale"):
        duo.DuoObjective(vocab_size=50, scale="mean")
    with pytest.raises(ValueError, match="own per-token weight"):
        duo.DuoObjective(vocab_size=50, loss_kind="elbo", scale="seed")


# ---------------------------------------------------------------------------
# The engine's duo strategy: ancestral (default) and renoise samplers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tok():
    from dllm_lesson.tokenizer import build_tokenizer

    return build_tokenizer()


class _Fixed(torch.nn.Module):
    """A fake model: the same logits at every call (answer positions favour ``token``)."""

    def __init__(self, V, a0, token, strength):
        super().__init__()
        from types import SimpleNamespace

        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=V, max_position_embeddings=512)
        self.a0, self.token, self.strength = a0, token, strength

    def forward(self, input_ids):
        from types import SimpleNamespace

        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        logits[0, self.a0:, self.token] = self.strength
        return SimpleNamespace(logits=logits)


def test_ancestral_sampler_is_the_default_keeps_xt_and_ends_greedy(tiny_tok):
    from dllm_lesson.sampling import build_sequence, decode_steps

    A, steps, tok = 12, 8, 100
    _, a0 = build_sequence(tiny_tok, "hi", A)
    model = _Fixed(len(tiny_tok), a0, tok, strength=3.0)
    anc = list(decode_steps(model, tiny_tok, "hi", A, "duo", steps=steps, seed=0))
    ren = list(decode_steps(model, tiny_tok, "hi", A, "duo", steps=steps, seed=0,
                            sampler="renoise"))
    old = list(decode_steps(model, tiny_tok, "hi", A, "duo", steps=steps, seed=0,
                            renoise="random"))  # the older option name still works
    assert [r.tokens for r in ren] == [r.tokens for r in old]
    assert anc[-1].tokens == [tok] * A == ren[-1].tokens  # greedy last step
    # the posterior keeps x_t's tokens: a token once set to `tok` stays (the model agrees),
    # while re-noising throws predictions away again at every step
    for prev, cur in zip(anc[:-1], anc[1:]):
        assert all(c == tok for p, c in zip(prev.tokens, cur.tokens) if p == tok)
    assert [r.tokens for r in anc] != [r.tokens for r in ren]


def test_duo_sampler_bad_options(tiny_tok):
    from dllm_lesson.sampling import build_sequence, decode_steps

    _, a0 = build_sequence(tiny_tok, "hi", 4)
    model = _Fixed(len(tiny_tok), a0, 100, 3.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        next(decode_steps(model, tiny_tok, "hi", 4, "duo", sampler="psi"))
    with pytest.raises(ValueError, match="belongs to sampler='renoise'"):
        next(decode_steps(model, tiny_tok, "hi", 4, "duo", sampler="ancestral",
                          renoise="random"))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        next(decode_steps(model, tiny_tok, "hi", 4, "duo", steps=0))
    with pytest.raises(ValueError, match="options of strategy='duo'"):
        next(decode_steps(model, tiny_tok, "hi", 4, "llada", sampler="ancestral"))


# ---------------------------------------------------------------------------
# gradient_variance (07_soft_tokens: the curriculum's gradient variance)
# ---------------------------------------------------------------------------


def _draw_gradients(model, batches, obj, draws, seed):
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for k in range(draws):
        g = torch.Generator().manual_seed(seed + k)
        loss, _ = obj.loss(model, batches[k % len(batches)], 0, generator=g)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1)
                               for p, gr in zip(params, grads)]).double())
    return torch.stack(rows)  # (draws, n_weights)


def test_gradient_variance_matches_stacked_gradients(one_thread):
    model = _tiny_modernbert()
    obj = duo.DuoObjective(vocab_size=64, loss_kind="elbo", scale="none", total_steps=1,
                           allowed=duo.allowed_mask(64, exclude=range(5)))
    batches = [_batch(), {k: v[:2] for k, v in _batch().items()}]
    out = duo.gradient_variance(model, batches, obj, draws=5, top=7, seed=3)
    G = _draw_gradients(model, batches, obj, 5, 3)
    var = G.var(0)  # unbiased, over draws
    assert out["draws"] == 5
    assert out["top_variance"] == pytest.approx(float(var.topk(7).values.sum()), rel=1e-6)
    assert out["total_variance"] == pytest.approx(float(var.sum()), rel=1e-6)
    assert out["mean_grad_norm"] == pytest.approx(float(G.mean(0).norm()), rel=1e-6)
    assert out["noise_to_signal"] == pytest.approx(
        float(var.sum() / G.mean(0).norm() ** 2), rel=1e-6)
    # the same arguments give the same numbers (common random numbers), another seed not
    assert duo.gradient_variance(model, batches, obj, draws=5, top=7, seed=3) == out
    assert duo.gradient_variance(model, batches, obj, draws=5, top=7, seed=4) != out
    assert model.training  # the mode is restored


def test_gradient_variance_zero_for_a_noise_free_objective(one_thread):
    """An objective whose loss ignores the generator has the same gradient every draw."""
    model = _tiny_modernbert()

    class Fixed:
        def loss(self, model, batch, step, generator=None):
            logits = model(input_ids=batch["input_ids"]).logits
            return logits.logsumexp(-1).mean(), {}

    out = duo.gradient_variance(model, [_batch()], Fixed(), draws=3)
    assert out["total_variance"] < 1e-12 and out["top_variance"] < 1e-12
    assert out["mean_grad_norm"] > 0


def test_gradient_variance_bad_inputs(one_thread):
    model = _tiny_modernbert()
    obj = duo.DuoObjective(vocab_size=64, loss_kind="elbo", scale="none", total_steps=1)
    with pytest.raises(ValueError, match="draws must be an integer >= 2"):
        duo.gradient_variance(model, [_batch()], obj, draws=1)
    with pytest.raises(ValueError, match="batches is empty"):
        duo.gradient_variance(model, [], obj)
    with pytest.raises(ValueError, match="top must be an integer in"):
        duo.gradient_variance(model, [_batch()], obj, draws=2, top=10**9)
