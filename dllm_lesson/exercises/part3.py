"""Exercises of part 3 (Duo, notebooks 06-10): reference solutions and their checks.

Each exercise is a reference (a slow, obvious spec, or the library function itself) and a
checker ``_check(candidate, reference)`` that draws random inputs from a seeded
``torch.Generator`` and raises ``AssertionError`` with the first input where the two
disagree. In a notebook::

    from dllm_lesson.exercises import check
    # check("flip_probability_v2", flip_probability_v2)

===================  =======================  ==========================================
exercise             notebook                 what you write
===================  =======================  ==========================================
flip_probability_v2  06_duo_gaussian_noise    ``Phi(-c / (s sqrt 2))`` for ``V = 2``
corrupt_tokens       06_duo_gaussian_noise    ``argmax(c one_hot(x0) + s z)``
soft_token_loss      07_soft_tokens           soft tokens -> embeddings -> model -> CE
symmetric_kl         08_duo_loss_scaling      ``KL(q || p) + KL(p || q)`` per token
nelbo_by_jumps       08_duo_loss_scaling      the uniform-state NELBO, a sum over jumps
renoise              09_duo_sampling          keep with ``1 - f``, else a uniform other id
uniform_posterior    09_duo_sampling          ``q(x_s | x_t, x0)`` by Bayes
dcd_pair             10_few_step_distillation ``(x_t, x_s)`` from one shared Gaussian draw
===================  =======================  ==========================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import duo
from . import exercise

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _as_tensor(value, name: str) -> torch.Tensor:
    """The candidate's answer as a float64 tensor (floats, arrays and tensors accepted)."""
    if value is None:
        raise AssertionError(f"{name} returned None: did you forget `return`?")
    try:
        return torch.as_tensor(value).detach().to("cpu", torch.float64)
    except Exception as e:  # noqa: BLE001 - report what came back
        raise AssertionError(f"{name} returned {type(value).__name__}, not numbers: {e}")


def _close(got, want, what: str, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    got, want = _as_tensor(got, what), _as_tensor(want, "reference")
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected "
                             f"{tuple(want.shape)}")
    if not torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=False):
        bad = (got - want).abs().argmax()
        idx = tuple(int(i) for i in torch.unravel_index(bad, got.shape))
        raise AssertionError(
            f"{what}: at index {idx} you return {float(got.reshape(-1)[bad]):.6g}, "
            f"expected {float(want.reshape(-1)[bad]):.6g} "
            f"(largest difference {float((got - want).abs().max()):.3g})")


# ---------------------------------------------------------------------------------------
# 06_duo_gaussian_noise
# ---------------------------------------------------------------------------------------


def flip_probability_v2(noise_weight: torch.Tensor) -> torch.Tensor:
    """Flip probability for a vocabulary of two ids, ``clean = 1 - noise``.

    Taught in ``06_duo_gaussian_noise``.

    With ``V = 2`` the token flips when ``s z1 > c + s z0``, i.e. ``z1 - z0 > c / s``;
    ``z1 - z0 ~ N(0, 2)``, so ``P(flip) = Phi(-c / (s sqrt 2))``.
    """
    s = torch.as_tensor(noise_weight, dtype=torch.float64)
    c = 1.0 - s
    return torch.special.ndtr(-c / (s * math.sqrt(2.0)))  # Phi(-c / (s sqrt 2))


@exercise("flip_probability_v2", "06_duo_gaussian_noise", flip_probability_v2)
def _check_flip_v2(candidate, reference):
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        s = 0.02 + 0.98 * torch.rand(40, generator=g, dtype=torch.float64)  # (40,)
        s[0] = 1.0                                     # pure noise: a fair coin
        want = reference(s)
        # the general formula (numerical integral) must agree with the closed form
        _close(want, duo.flip_probability(s, 2), "reference vs duo.flip_probability")
        _close(candidate(s.clone()), want, f"flip_probability_v2(s) for s = {s.tolist()}",
               atol=1e-6)


def corrupt_tokens(x0: torch.Tensor, noise_weight: float, vocab_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``xt = argmax(c * one_hot(x0) + s * z)`` with ``c = 1 - s``, ``z ~ N(0, I)``.

    Taught in ``06_duo_gaussian_noise``. The noise is drawn as
    ``torch.randn(B, L, V, generator=generator)``, in one call, as
    :func:`dllm_lesson.duo.gaussian_one_hot` does.
    """
    w = duo.gaussian_one_hot(x0, noise_weight, vocab_size, generator=generator)  # (B, L, V)
    return w.argmax(-1)  # xt = argmax(w)   (B, L)


@exercise("corrupt_tokens", "06_duo_gaussian_noise", corrupt_tokens)
def _check_corrupt(candidate, reference):
    g = torch.Generator().manual_seed(60)
    for trial in range(6):
        B, L = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 9, (1,),
                                                                              generator=g))
        V = int(torch.randint(2, 12, (1,), generator=g))
        s = round(float(torch.rand(1, generator=g)) * 0.8 + 0.1, 3)
        x0 = torch.randint(0, V, (B, L), generator=g)
        want = reference(x0, s, V, torch.Generator().manual_seed(trial))
        got = candidate(x0.clone(), s, V, torch.Generator().manual_seed(trial))
        if got is None:
            raise AssertionError("corrupt_tokens returned None: did you forget `return`?")
        got = torch.as_tensor(got)
        if got.shape != want.shape:
            raise AssertionError(f"corrupt_tokens: shape {tuple(got.shape)}, expected "
                                 f"{tuple(want.shape)} (one id per position, (B, L))")
        if not torch.equal(got.long(), want.long()):
            raise AssertionError(
                f"corrupt_tokens(x0={x0.tolist()}, noise_weight={s}, vocab_size={V}) "
                f"returned {got.tolist()}, expected {want.tolist()}. Draw the noise as "
                "torch.randn(B, L, V, generator=generator) and use clean = 1 - noise")


# ---------------------------------------------------------------------------------------
# 07_soft_tokens
# ---------------------------------------------------------------------------------------


def soft_token_loss(model, x0: torch.Tensor, w: torch.Tensor, tau: float,
                    loss_mask: torch.Tensor) -> torch.Tensor:
    """The soft-token forward pass and its loss: a scalar.

    Taught in ``07_soft_tokens``. Soft tokens ``softmax(w / tau)`` ``(B, L, V)`` mix the rows
    of the embedding matrix ``E`` ``(V, H)`` into ``inputs_embeds`` ``(B, L, H)``; the model
    predicts ``x0`` from them; the loss is the cross-entropy of ``x0``, averaged over the
    positions where ``loss_mask`` is True (the answer tokens). The same steps, with the
    noise drawn and ``tau`` annealed, run inside :class:`dllm_lesson.duo.DuoObjective`.
    """
    E = model.get_input_embeddings().weight                               # (V, H)
    probs = duo.soft_tokens(w, tau)                                       # (B, L, V)
    logits = model(inputs_embeds=duo.soft_embeddings(probs, E)).logits    # (B, L, V)
    ce = duo.cross_entropy(logits, x0)                                    # (B, L)
    return ce[loss_mask].mean()


def _tiny_modernbert(vocab_size: int, seed: int):
    """A random two-layer ModernBERT small enough for a check (``eval`` mode)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    cfg = ModernBertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2,
                           max_position_embeddings=64, pad_token_id=0, cls_token_id=1,
                           sep_token_id=2, bos_token_id=1, eos_token_id=2,
                           global_attn_every_n_layers=1, local_attention=16,
                           reference_compile=False)
    torch.manual_seed(seed)
    return ModernBertForMaskedLM(cfg).eval()


@exercise("soft_token_loss", "07_soft_tokens", soft_token_loss)
def _check_soft_token_loss(candidate, reference):
    g = torch.Generator().manual_seed(70)
    V = 40
    model = _tiny_modernbert(V, seed=7)
    for tau in (1.0, 0.3, 0.05):
        B, L = 2, int(torch.randint(4, 10, (1,), generator=g))
        x0 = torch.randint(3, V, (B, L), generator=g)                     # (B, L)
        w = duo.gaussian_one_hot(x0, 0.45, V, generator=g)                # (B, L, V)
        loss_mask = torch.rand(B, L, generator=g) < 0.6                   # (B, L)
        loss_mask[:, 0] = False                                           # the prompt
        loss_mask[0, -1] = True                                           # never empty
        with torch.no_grad():
            want = reference(model, x0, w, tau, loss_mask)
            got = candidate(model, x0.clone(), w.clone(), tau, loss_mask.clone())
        got_t = _as_tensor(got, "soft_token_loss")
        if got_t.numel() != 1:
            raise AssertionError(f"soft_token_loss returned shape {tuple(got_t.shape)}; "
                                 "return one number, the mean over loss_mask positions")
        _close(got_t.reshape(()), want, f"soft_token_loss(model, x0, w, tau={tau}, "
               f"loss_mask) with x0 of shape {tuple(x0.shape)}", rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# 08_duo_loss_scaling
# ---------------------------------------------------------------------------------------


def symmetric_kl(logits: torch.Tensor, x0: torch.Tensor, eps: float = 1e-4):
    """Per-token ``KL(q || p) + KL(p || q)``, ``q = (1 - eps) one_hot(x0) + eps / V``.

    Taught in ``08_duo_loss_scaling`` (the library's :func:`dllm_lesson.duo.symmetric_kl`).
    """
    return duo.symmetric_kl(logits, x0, eps=eps)


@exercise("symmetric_kl", "08_duo_loss_scaling", symmetric_kl)
def _check_sym_kl(candidate, reference):
    g = torch.Generator().manual_seed(8)
    for eps in (1e-4, 1e-2, 0.3):
        B, L, V = 2, 4, int(torch.randint(2, 20, (1,), generator=g))
        logits = 3 * torch.randn(B, L, V, generator=g)  # (B, L, V)
        x0 = torch.randint(0, V, (B, L), generator=g)  # (B, L)
        want = reference(logits, x0, eps)
        got = candidate(logits.clone(), x0.clone(), eps)
        _close(got, want, f"symmetric_kl(logits, x0, eps={eps}) with V={V}",
               rtol=1e-4, atol=1e-4)


def nelbo_by_jumps(x_theta: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, alpha,
                   dalpha) -> torch.Tensor:
    """The uniform-state NELBO per token, ``(N,)``, every one of the ``K`` ids allowed.

    Taught in ``08_duo_loss_scaling`` (the library's
    :func:`dllm_lesson.duo.uniform_state_nelbo`, computed there in closed form; here the
    slow, obvious sum over the jumps). With ``z = xt``, ``xbar = K alpha e_x0 + (1 - alpha)``
    and ``xbar_theta = K alpha x_theta + (1 - alpha)``, the true and the model's jump rates
    to ``y != z`` are ``r(y) = -alpha' / (K alpha) * xbar_y / xbar_z`` and the same with
    ``xbar_theta``; the loss is ``sum_{y != z} r_theta(y) - r(y) + r(y) log(r(y) / r_theta(y))``.
    """
    return duo.uniform_state_nelbo(x_theta.log(), x0, xt, alpha, dalpha)


@exercise("nelbo_by_jumps", "08_duo_loss_scaling", nelbo_by_jumps)
def _check_nelbo(candidate, reference):
    g = torch.Generator().manual_seed(80)
    for K, alpha, dalpha in ((5, 0.9, -0.3), (7, 0.5, -1.2), (12, 0.1, -0.05),
                             (3, 0.98, -2.0)):
        N = 24
        x_theta = torch.softmax(2 * torch.randn(N, K, generator=g, dtype=torch.float64), -1)
        x0 = torch.randint(0, K, (N,), generator=g)                       # (N,)
        xt = x0.clone()
        flip = torch.rand(N, generator=g) < 0.5                           # half: xt != x0
        xt[flip] = (x0[flip] + torch.randint(1, K, (int(flip.sum()),), generator=g)) % K
        x_theta[0] = 0.0
        x_theta[0, x0[0]] = 1.0                                           # a perfect row: 0
        x_theta = (x_theta + 1e-12) / (1 + K * 1e-12)
        want = reference(x_theta, x0, xt, alpha, dalpha)
        got = candidate(x_theta.clone(), x0.clone(), xt.clone(), alpha, dalpha)
        _close(got, want, f"nelbo_by_jumps(x_theta, x0, xt, alpha={alpha}, dalpha={dalpha}) "
               f"with K={K} ids", rtol=2e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------
# 09_duo_sampling
# ---------------------------------------------------------------------------------------


def renoise(x0_hat: torch.Tensor, flip: float, vocab_size: int,
            generator: torch.Generator) -> torch.Tensor:
    """One re-noise step of the uniform-state sampler, ``(B, L)`` ids.

    Taught in ``09_duo_sampling``.

    Each token is kept with probability ``1 - flip`` and otherwise replaced by one of the
    ``V - 1`` *other* ids, uniformly. By the duality this is Gaussian noise on the one-hot
    vector at the noise weight whose flip probability is ``flip``
    (:func:`dllm_lesson.duo.noise_for_flip`), read back with ``argmax``.
    """
    s = duo.noise_for_flip(flip, vocab_size)  # the noise weight that flips `flip` of them
    return duo.corrupt(x0_hat, s, vocab_size, generator=generator)  # argmax(c e + s z)


def _binomial_z(count: float, n: int, p: float) -> float:
    """How many standard deviations ``count`` lies from ``Binomial(n, p)``'s mean."""
    sd = math.sqrt(max(n * p * (1 - p), 1e-12))
    return (count - n * p) / sd


@exercise("renoise", "09_duo_sampling", renoise)
def _check_renoise(candidate, reference):
    g = torch.Generator().manual_seed(9)
    n = 30_000
    for V, flip in ((3, 0.0), (3, 0.5), (7, 0.8), (50, 0.3)):
        x0 = torch.randint(0, V, (2, n // 2), generator=g)  # (2, n/2)
        xt = candidate(x0.clone(), flip, V, torch.Generator().manual_seed(V))
        if xt is None:
            raise AssertionError("renoise returned None: did you forget `return`?")
        xt = torch.as_tensor(xt).long()
        where = f"renoise(x0, flip={flip}, vocab_size={V})"
        if xt.shape != x0.shape:
            raise AssertionError(f"{where}: shape {tuple(xt.shape)}, expected "
                                 f"{tuple(x0.shape)}")
        if int(xt.min()) < 0 or int(xt.max()) >= V:
            raise AssertionError(f"{where}: ids outside [0, {V})")
        moved = xt != x0  # (2, n/2)
        if flip == 0.0:
            if bool(moved.any()):
                raise AssertionError(f"{where}: flip=0 must keep every token")
            continue
        k = int(moved.sum())
        z = _binomial_z(k, n, flip)
        if abs(z) > 5:
            raise AssertionError(
                f"{where}: {k / n:.3f} of the tokens changed, expected {flip} "
                f"({z:+.1f} standard deviations). A token that is 'replaced' must get a "
                "different id: draw among the V - 1 others")
        # replaced tokens: uniform over the V - 1 other ids. (xt - x0) mod V is then
        # uniform over 1 .. V-1 whatever x0 is
        shift = ((xt - x0) % V)[moved]  # (k,)
        counts = torch.bincount(shift, minlength=V)[1:].double()  # (V - 1,)
        for j, c in enumerate(counts.tolist(), start=1):
            zj = _binomial_z(c, k, 1 / (V - 1))
            if abs(zj) > 5:
                raise AssertionError(
                    f"{where}: replaced tokens are not uniform over the other ids "
                    f"(offset {j}: {int(c)} of {k}, expected about {k / (V - 1):.0f})")
        # and they must not depend on the position: first half vs second half of a row
        half = x0.shape[1] // 2
        a = float(moved[:, :half].double().mean())
        b = float(moved[:, half:].double().mean())
        if abs(a - b) > 6 * math.sqrt(flip * (1 - flip) / (n / 2)):
            raise AssertionError(f"{where}: the first half of the positions changed "
                                 f"{a:.3f}, the second half {b:.3f}; use one flip rate")


def uniform_posterior(x0_probs: torch.Tensor, xt: torch.Tensor, alpha_s: float,
                      alpha_t: float) -> torch.Tensor:
    """``q(x_s | x_t, x0)`` of the uniform-state process, ``x0`` given as a distribution
    ``(N, V)`` (every id allowed), ``(N, V)``.

    Taught in ``09_duo_sampling`` (the library's :func:`dllm_lesson.duo.uniform_posterior`):
    Bayes, ``q(x_s = j | x_t = i, x0) ∝ q(x_t = i | x_s = j) q(x_s = j | x0)`` with
    ``q(x_t = i | x_s = j) = alpha_{t|s} [i = j] + (1 - alpha_{t|s}) / V``,
    ``alpha_{t|s} = alpha_t / alpha_s``, and ``q(x_s = j | x0) = alpha_s x0_j +
    (1 - alpha_s) / V``.
    """
    return duo.uniform_posterior(x0_probs, xt, alpha_s, alpha_t)


@exercise("uniform_posterior", "09_duo_sampling", uniform_posterior)
def _check_posterior(candidate, reference):
    g = torch.Generator().manual_seed(90)
    for V, a_s, a_t in ((4, 0.9, 0.5), (9, 0.6, 0.1), (20, 0.3, 0.29), (6, 1.0, 0.2)):
        N = 16
        x0_probs = torch.softmax(3 * torch.randn(N, V, generator=g), -1)     # (N, V)
        x0_probs[:4] = F.one_hot(torch.randint(0, V, (4,), generator=g), V).float()
        xt = torch.randint(0, V, (N,), generator=g)                          # (N,)
        want = reference(x0_probs, xt, a_s, a_t)
        got = candidate(x0_probs.clone(), xt.clone(), a_s, a_t)
        _close(got, want, f"uniform_posterior(x0_probs, xt, alpha_s={a_s}, alpha_t={a_t}) "
               f"with V={V}", rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# 10_few_step_distillation
# ---------------------------------------------------------------------------------------


def dcd_pair(x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, vocab_size: int,
             schedule, generator: torch.Generator):
    """``(x_t, x_s)`` from ONE Gaussian draw, each discretised by ``argmax``.

    Taught in ``10_few_step_distillation`` (the library's
    :func:`dllm_lesson.duo.shared_noise_pair`). ``z = torch.randn(B, L, V,
    generator=generator)`` once; ``(c, sd) = schedule.gaussian_weights(t)`` per row ``(B,)``;
    ``x_t = argmax(c e_x0 + sd z)``; the same ``z`` at ``s`` gives ``x_s``.
    """
    scored = torch.ones_like(x0, dtype=torch.bool)
    return duo.shared_noise_pair(x0, t, s, schedule, scored, vocab_size=vocab_size,
                                 generator=generator)


@exercise("dcd_pair", "10_few_step_distillation", dcd_pair)
def _check_dcd_pair(candidate, reference):
    g = torch.Generator().manual_seed(100)
    for trial, V in enumerate((6, 30, 200)):
        schedule = duo.DuoSchedule(V)
        B, L = 3, 12
        x0 = torch.randint(0, V, (B, L), generator=g)                        # (B, L)
        t = 0.3 + 0.7 * torch.rand(B, generator=g)                           # (B,)
        s = (t - torch.tensor([0.25, 0.5, 0.125])).clamp_min(0.0)            # (B,)
        want = reference(x0, t, s, V, schedule, torch.Generator().manual_seed(trial))
        got = candidate(x0.clone(), t.clone(), s.clone(), V, schedule,
                        torch.Generator().manual_seed(trial))
        if got is None or len(got) != 2:
            raise AssertionError("dcd_pair must return the pair (x_t, x_s)")
        where = f"dcd_pair(x0, t={t.tolist()}, s={s.tolist()}, vocab_size={V})"
        for name, a, b in (("x_t", got[0], want[0]), ("x_s", got[1], want[1])):
            a = torch.as_tensor(a)
            if a.shape != b.shape:
                raise AssertionError(f"{where}: {name} has shape {tuple(a.shape)}, expected "
                                     f"{tuple(b.shape)}")
            if not torch.equal(a.long(), b.long()):
                raise AssertionError(
                    f"{where}: {name} differs at {int((a.long() != b).sum())} positions. "
                    "Draw z once as torch.randn(B, L, V, generator=generator), use each "
                    "row's own weights schedule.gaussian_weights(t) and (s), and share z")
