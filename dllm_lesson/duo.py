"""Duo: Gaussian noise on one-hot vectors, soft tokens, symmetric KL, per-row scaling.

Masked diffusion (LLaDA) turns tokens into ``[MASK]`` and never revisits a token once it is
unmasked. Duo (the "diffusion duality") corrupts tokens differently:

1. write each clean token ``x0`` as a one-hot vector ``e_x0`` of length ``V``;
2. add Gaussian noise: ``w = c * e_x0 + s * z`` with ``z ~ N(0, I_V)``
   (``c`` = clean weight, ``s`` = noise weight; the seed uses ``c = 1 - s``);
3. read the corrupted token back with ``xt = argmax(w)``. Some tokens have flipped.

The model is trained to restore ``x0`` from the corrupted sequence. At sampling time it
starts from random tokens and refines them, and any token may change again: that is the
self-correction masked models lack.

The duality. Every coordinate of ``z`` is i.i.d. and the clean coordinate gets the same
bonus ``c`` whatever ``x0`` is, so ``argmax(w)`` either keeps ``x0`` or, if one of the
``V - 1`` other coordinates wins, picks the winner among them *uniformly at random* (they
are exchangeable). So the Gaussian process, looked at through ``argmax``, is a
**uniform-state discrete diffusion**: keep the token with probability ``1 - f``, replace
it by a uniformly random other token with probability ``f``. The flip probability ``f``
depends only on ``c / s`` and ``V`` (see :func:`flip_probability`).

Lessons (each public function names its notebook):

- ``06_duo_gaussian_noise``: :func:`gaussian_one_hot`, :func:`corrupt`,
  :func:`flip_probability`, the duality.
- ``07_soft_tokens``: :func:`soft_tokens`, :func:`tau_schedule`, :func:`soft_embeddings`.
- ``08_duo_loss_scaling``: :func:`symmetric_kl`, :func:`row_scale`, :func:`duo_loss`,
  :func:`row_gradient_norms`, :func:`gradient_spread_demo`.
- ``09_duo_sampling``: :func:`noise_for_flip`, :func:`suggest_noise_range`,
  :func:`uniform_posterior_logits`.

The paper's Duo (Sahoo et al., ICML 2025, "The Diffusion Duality"), beside the seed's:

- ``08_duo_loss_scaling``: :func:`discrete_alpha` (the diffusion transformation operator),
  :func:`alpha_table`, :class:`DuoSchedule`, :func:`uniform_state_nelbo` (the ELBO),
  :func:`scale_mode` and :func:`gradient_eps_share` / :func:`duo_gradient_stats` (the
  seed's scale against AdamW's eps);
- ``07_soft_tokens``: :func:`gradient_variance` (the curriculum's gradient variance, Table 4);
- ``09_duo_sampling``: :func:`model_probs`, :func:`uniform_posterior`,
  :func:`ancestral_step`, :func:`sampler_alphas` (the ancestral sampler),
  :func:`noise_level_readout` (does the model need a time input?);
- ``10_few_step_distillation``: :func:`shared_noise_pair`, :class:`DCDObjective`,
  :func:`wilson_interval`, :func:`accuracy_by_passes`.

:class:`DuoObjective` and :class:`DCDObjective` put the pieces together for the training
core (``train_flowlm.py``; :func:`objective_from_config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .claims import wilson_interval

__all__ = [
    "DCDObjective",
    "DuoObjective",
    "DuoSchedule",
    "accuracy_by_passes",
    "alpha_table",
    "ancestral_step",
    "discrete_alpha",
    "duo_gradient_stats",
    "gradient_eps_share",
    "gradient_variance",
    "make_objective_for",
    "model_probs",
    "noise_allowed",
    "noise_level_readout",
    "objective_from_config",
    "sample_uniform_state",
    "sampler_alphas",
    "scale_mode",
    "shared_noise_pair",
    "uniform_posterior",
    "uniform_state_nelbo",
    "wilson_interval",
    "allowed_mask",
    "corrupt",
    "cross_entropy",
    "duo_loss",
    "duo_weights",
    "flip_probability",
    "flip_probability_mc",
    "gaussian_one_hot",
    "gradient_spread_demo",
    "noise_for_flip",
    "row_gradient_norms",
    "row_scale",
    "soft_embeddings",
    "soft_tokens",
    "suggest_noise_range",
    "symmetric_kl",
    "tau_schedule",
    "uniform_posterior_logits",
]

#: Default Gaussian log-SNR range of the course's Duo: ``gamma = gamma_min + t (gamma_max -
#: gamma_min)``. For the tiny models' vocabulary (2780 ids noise may produce) the discrete
#: signal ``alpha = T(alpha~)`` falls from 0.98 (t = 0) through 0.14 (t = 0.5) to 0.0075
#: (t = 1, almost pure noise), so the sampler, which starts from pure noise, only visits
#: levels it was trained on. (The paper's released curriculum draws gamma in -3.5 .. -1.75
#: for GPT-2's 50k ids, discrete alpha 0.93 down to 0.04 there; a larger vocabulary flips
#: more tokens at the same gamma, and here that range spans alpha 0.98 down to 0.14.)
GAMMA_MIN, GAMMA_MAX = -3.5, 0.0
DUO_LOSSES = ("elbo", "sym_kl", "ce")
SAMPLERS = ("ancestral", "renoise")
DCD_KL = ("bwd", "fwd")

# How many float32 numbers we allow in one (positions, V) noise chunk: 2**22 = 16 MiB
_CHUNK_ELEMENTS = 2**22

# ---------------------------------------------------------------------------
# Helpers: noise and clean weights of any accepted shape -> (B, L)
# ---------------------------------------------------------------------------


def _check_vocab(vocab_size: int) -> int:
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    return int(vocab_size)


def _per_position(weight, x0: torch.Tensor, name: str) -> torch.Tensor:
    """A float, a (B,) / (B, 1) tensor or a (B, L) tensor -> a float32 (B, L) tensor."""
    B, L = x0.shape
    w = torch.as_tensor(weight, dtype=torch.float32, device=x0.device)
    if w.dim() == 0:
        return w.expand(B, L)
    if w.dim() == 1 and w.shape[0] == B:
        return w[:, None].expand(B, L)
    if w.dim() == 2 and w.shape == (B, 1):
        return w.expand(B, L)
    if w.dim() == 2 and w.shape == (B, L):
        return w
    raise ValueError(
        f"{name} must be a float, a (B,) or (B, 1) tensor (one per row) or a (B, L) "
        f"tensor; got shape {tuple(w.shape)} for x0 of shape {(B, L)}"
    )


def _weights(noise_weight, clean_weight, x0: torch.Tensor):
    """Return (clean, noise), both (B, L) float32; clean defaults to 1 - noise (seed)."""
    s = _per_position(noise_weight, x0, "noise_weight")  # (B, L)
    if clean_weight is None:
        if bool(((s < 0) | (s > 1)).any()):
            raise ValueError(
                "noise_weight must lie in [0, 1] when clean_weight is left out "
                "(it defaults to 1 - noise_weight); pass clean_weight for other scales"
            )
        c = 1.0 - s  # (B, L)
    else:
        c = _per_position(clean_weight, x0, "clean_weight")  # (B, L)
    if bool((s < 0).any()) or bool((c < 0).any()):
        raise ValueError("noise_weight and clean_weight must be >= 0")
    if bool(((s == 0) & (c == 0)).any()):
        raise ValueError("noise_weight and clean_weight cannot both be 0 (w would be 0)")
    return c, s


def _check_ids(x0: torch.Tensor, vocab_size: int) -> None:
    if x0.dim() != 2 or x0.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"x0 must be an integer (B, L) tensor, got {x0.dtype} {tuple(x0.shape)}"
        )
    if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= vocab_size):
        raise ValueError(f"x0 holds ids outside [0, {vocab_size}); check vocab_size")


def _check_allowed(allowed, vocab_size: int, device) -> torch.Tensor | None:
    if allowed is None:
        return None
    allowed = torch.as_tensor(allowed, device=device)
    if allowed.dtype != torch.bool or allowed.shape != (vocab_size,):
        raise ValueError(
            f"allowed must be a bool tensor of shape ({vocab_size},), True for the ids "
            "noise may produce; build one with allowed_mask(vocab_size, exclude=[...])"
        )
    if not bool(allowed.any()):
        raise ValueError("allowed excludes every token; keep at least one id allowed")
    return allowed


# ---------------------------------------------------------------------------
# 06_duo_gaussian_noise: Gaussian noise on one-hot vectors
# ---------------------------------------------------------------------------


def duo_weights(gamma):
    """Variance-preserving weights ``(clean, noise)`` for a log-SNR-like ``gamma``.

    Taught in ``06_duo_gaussian_noise``.

    ``clean = sqrt(sigmoid(-gamma))``, ``noise = sqrt(sigmoid(gamma))``, so
    ``clean**2 + noise**2 = 1`` (the Gaussian part keeps unit variance) and
    ``clean / noise = exp(-gamma / 2)``. Large ``gamma`` = mostly noise. This is the
    paper's option; the seed instead uses ``clean = 1 - noise``. Both work with every
    function here through the ``clean_weight`` argument.

    Returns tensors when ``gamma`` is a tensor, floats otherwise.
    """
    g = torch.as_tensor(gamma, dtype=torch.float64)
    clean = torch.sigmoid(-g).sqrt()  # sqrt(sigmoid(-gamma))
    noise = torch.sigmoid(g).sqrt()  # sqrt(sigmoid(gamma))
    if isinstance(gamma, torch.Tensor):
        return clean.to(gamma.dtype), noise.to(gamma.dtype)
    if g.dim() == 0:
        return float(clean), float(noise)
    return clean.numpy(), noise.numpy()


def allowed_mask(vocab_size: int, exclude: Iterable[int] = ()) -> torch.Tensor:
    """Bool mask ``(V,)``: True for ids that noise may produce, False for ``exclude``.

    Taught in ``06_duo_gaussian_noise``.

    Use it to keep ``[MASK]``, ``[PAD]``, ``[CLS]``... out of the corrupted tokens (and, for
    a model whose embedding matrix is larger than the tokenizer, the unused rows).
    """
    V = _check_vocab(vocab_size)
    mask = torch.ones(V, dtype=torch.bool)
    ids = [int(i) for i in exclude]
    if any(i < 0 or i >= V for i in ids):
        raise ValueError(f"exclude holds ids outside [0, {V}): {ids}")
    mask[ids] = False
    return mask


def gaussian_one_hot(
    x0: torch.Tensor,
    noise_weight,
    vocab_size: int,
    clean_weight=None,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noisy one-hot latents ``w = clean * one_hot(x0) + noise * z``, ``z ~ N(0, I)``.

    Taught in ``06_duo_gaussian_noise``.

    Args:
        x0: clean ids ``(B, L)``.
        noise_weight: ``s``; a float, one per row ``(B,)`` / ``(B, 1)``, or ``(B, L)``.
        vocab_size: ``V``, the length of the one-hot vectors.
        clean_weight: ``c``; same shapes; defaults to ``1 - noise_weight`` (the seed's).
        generator: a ``torch.Generator`` on ``x0``'s device, for reproducible noise.
        allowed: optional bool ``(V,)``; ids with False get ``w = -inf`` so ``argmax`` and
            ``softmax`` never pick them. The clean id keeps its value at its own position,
            so an excluded ``x0`` (e.g. a ``[SEP]`` target) can survive low noise.

    Returns:
        ``w`` of shape ``(B, L, V)``, float32.
    """
    V = _check_vocab(vocab_size)
    _check_ids(x0, V)
    c, s = _weights(noise_weight, clean_weight, x0)  # (B, L), (B, L)
    allowed = _check_allowed(allowed, V, x0.device)
    hot = F.one_hot(x0.long(), V).to(torch.float32)  # (B, L, V)
    z = torch.randn(hot.shape, generator=generator, device=x0.device)  # (B, L, V)
    w = c[..., None] * hot + s[..., None] * z  # w = c e_x0 + s z   (B, L, V)
    if allowed is not None:
        keep = allowed[None, None, :] | hot.bool()  # (B, L, V)
        w = w.masked_fill(~keep, float("-inf"))
    return w


def corrupt(
    x0: torch.Tensor,
    noise_weight,
    vocab_size: int,
    clean_weight=None,
    generator: torch.Generator | None = None,
    exclude: Iterable[int] | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Corrupted ids ``xt = argmax(clean * one_hot(x0) + noise * z)``, shape ``(B, L)``.

    Taught in ``06_duo_gaussian_noise``.

    Same arguments as :func:`gaussian_one_hot`. Tokens noise may never produce can be given
    either as ``exclude`` (a list of ids) or as ``allowed`` (a bool mask over ``V``), not
    both. With ``noise_weight=1`` (and the default ``clean = 0``) every token is replaced
    by a uniformly random allowed id: the sampler's starting point.

    Memory: ``w`` is built in chunks of positions (at most ``2**22`` numbers each), so a
    large vocabulary never needs a full ``(B, L, V)`` tensor. The result has the same
    distribution as ``gaussian_one_hot(...).argmax(-1)`` (the random stream differs).
    """
    V = _check_vocab(vocab_size)
    _check_ids(x0, V)
    if exclude is not None and allowed is not None:
        raise ValueError("pass either exclude (ids) or allowed (bool mask), not both")
    if exclude is not None:
        allowed = allowed_mask(V, exclude).to(x0.device)
    allowed = _check_allowed(allowed, V, x0.device)
    c, s = _weights(noise_weight, clean_weight, x0)  # (B, L), (B, L)
    flat_x0, flat_c, flat_s = x0.reshape(-1).long(), c.reshape(-1), s.reshape(-1)  # (N,)
    xt = torch.empty_like(flat_x0)  # (N,)
    chunk = max(1, _CHUNK_ELEMENTS // V)
    for i in range(0, flat_x0.numel(), chunk):
        ids = flat_x0[i : i + chunk]  # (n,)
        hot = F.one_hot(ids, V).to(torch.float32)  # (n, V)
        z = torch.randn(hot.shape, generator=generator, device=x0.device)  # (n, V)
        w = flat_c[i : i + chunk, None] * hot + flat_s[i : i + chunk, None] * z  # (n, V)
        if allowed is not None:
            w = w.masked_fill(~(allowed[None, :] | hot.bool()), float("-inf"))
        xt[i : i + chunk] = w.argmax(-1)  # xt = argmax(w)
    return xt.view_as(x0).to(x0.dtype)


# ---------------------------------------------------------------------------
# 06 / 09: the flip probability, analytically and by Monte Carlo
# ---------------------------------------------------------------------------

# Integration grid for z ~ N(0, 1): the integrand vanishes (< 1e-31) outside [-12, 12].
# The trapezoid rule converges very fast on such smooth, decaying integrands: spacing 0.02
# already agrees with the V = 2 closed form and with a 5x finer grid to ~1e-16.
_Z_GRID = torch.linspace(-12.0, 12.0, 1201, dtype=torch.float64)
_LOG_PHI_GRID = -0.5 * _Z_GRID**2 - 0.5 * math.log(2 * math.pi)  # log phi(z)


def _f64(x) -> torch.Tensor:
    """Any number / list / array / tensor -> a float64 CPU tensor (for the numerics)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _ratio(noise_weight, clean_weight) -> torch.Tensor:
    """``c / s`` as float64 (inf where s = 0), after validating the weights."""
    s = _f64(noise_weight)
    if clean_weight is None:
        if bool(((s < 0) | (s > 1)).any()):
            raise ValueError(
                "noise_weight must lie in [0, 1] when clean_weight is left out "
                "(it defaults to 1 - noise_weight)"
            )
        c = 1.0 - s
    else:
        c = _f64(clean_weight)
    s, c = torch.broadcast_tensors(s, c)
    if bool((s < 0).any()) or bool((c < 0).any()):
        raise ValueError("noise_weight and clean_weight must be >= 0")
    if bool(((s == 0) & (c == 0)).any()):
        raise ValueError("noise_weight and clean_weight cannot both be 0")
    return torch.where(s > 0, c / s.clamp_min(1e-300), torch.full_like(s, math.inf))


def _flip_from_ratio(r: torch.Tensor, V: int) -> torch.Tensor:
    """Flip probability for ``r = c / s`` (float64, any shape)."""
    flat = r.reshape(-1, 1)  # (N, 1)
    out = torch.zeros(flat.shape[0], dtype=torch.float64)
    finite = torch.isfinite(flat[:, 0])
    if bool(finite.any()):
        # per-row weights repeat along a row: integrate each distinct ratio once
        rf, back = torch.unique(flat[finite, 0], return_inverse=True)  # (n,)
        # P(no flip | z0 = z) = Phi(z + c/s)^(V-1); we integrate 1 - that, in logs
        log_keep = (V - 1) * torch.special.log_ndtr(_Z_GRID + rf[:, None])  # (n, G)
        integrand = torch.exp(_LOG_PHI_GRID)[None, :] * -torch.expm1(log_keep)  # (n, G)
        out[finite] = torch.trapezoid(integrand, _Z_GRID, dim=-1)[back]  # (n,)
    return out.clamp(0.0, (V - 1) / V).reshape(r.shape)  # s = 0 -> exactly 0 flips


def _to_output(x: torch.Tensor, like):
    if isinstance(like, torch.Tensor):
        return x.to(like.dtype if like.is_floating_point() else torch.float64)
    if x.dim() == 0:
        return float(x)
    return x.numpy()


def flip_probability(noise_weight, vocab_size: int, clean_weight=None):
    """Analytic ``P(argmax(c * e_x0 + s * z) != x0)``.

    Taught in ``06_duo_gaussian_noise``.

    Call ``z0`` the noise on the clean coordinate. No flip means every other coordinate
    stays below it: ``s * z_j < c + s * z0`` for the ``V - 1`` others, which are
    independent given ``z0``::

        P(no flip) = integral phi(z) * Phi((c + s z) / s)^(V-1) dz
                   = integral phi(z) * Phi(z + c/s)^(V-1) dz

    (``phi``/``Phi``: standard normal density / CDF). We integrate
    ``phi(z) * (1 - Phi(z + c/s)^(V-1))`` with the trapezoid rule on a fine float64 grid
    over ``[-12, 12]`` (spacing 0.02), working with ``log Phi`` so that ``V`` in the tens
    of thousands is fine. Only the ratio ``c / s`` matters. Limits: ``s = 0`` gives 0;
    pure noise (``c = 0``) gives ``(V - 1) / V``, since then every id, ``x0`` included, is
    equally likely to win. For ``V = 2`` there is a closed form, ``Phi(-c / (s sqrt 2))``.

    The curve is steep for a large vocabulary: with ``c = 1 - s`` and ``V = 2788`` it is
    ~0 at ``s = 0.1``, 2% at 0.15, 69% at 0.25, 99.2% at 0.5. A bigger ``V`` gives the
    clean id more rivals, so the same noise weight flips more tokens.

    ``noise_weight`` (and ``clean_weight``, default ``1 - noise_weight``) may be floats,
    lists, numpy arrays or tensors; the result has the same shape (a float for a float).
    With excluded ids, pass the number of ids that can still appear as ``vocab_size``.
    """
    V = _check_vocab(vocab_size)
    r = _ratio(noise_weight, clean_weight)  # c / s
    return _to_output(_flip_from_ratio(r, V), noise_weight)


def flip_probability_mc(
    noise_weight,
    vocab_size: int,
    n: int = 20_000,
    generator: torch.Generator | None = None,
    clean_weight=None,
):
    """Monte-Carlo estimate of :func:`flip_probability`: sample ``n`` tokens, count flips.

    Taught in ``06_duo_gaussian_noise``.

    By symmetry the clean id does not matter, so every sample uses ``x0 = 0``: we build
    ``w = c * e_0 + s * z`` in chunks and count ``argmax(w) != 0``. The standard error is
    ``sqrt(f (1 - f) / n)``, at most 0.35 percentage points for ``n = 20_000``.
    """
    V = _check_vocab(vocab_size)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _ratio(noise_weight, clean_weight)  # validates the weights
    s = _f64(noise_weight)
    c = (1.0 - s) if clean_weight is None else _f64(clean_weight)
    s, c = torch.broadcast_tensors(s, c)
    out = torch.empty(s.numel(), dtype=torch.float64)
    chunk = max(1, _CHUNK_ELEMENTS // V)
    for k, (sk, ck) in enumerate(zip(s.reshape(-1).tolist(), c.reshape(-1).tolist())):
        flips = 0
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            z = torch.randn(m, V, generator=generator)  # (m, V)
            w = sk * z  # (m, V)
            w[:, 0] += ck  # w = c e_0 + s z
            flips += int((w.argmax(-1) != 0).sum())
        out[k] = flips / n
    return _to_output(out.reshape(s.shape), noise_weight)


def noise_for_flip(p, vocab_size: int):
    """Noise weight ``s`` (with ``clean = 1 - s``) whose flip probability is ``p``.

    Taught in ``09_duo_sampling``.

    The inverse of :func:`flip_probability` under the seed's convention ``c = 1 - s``:
    ``c / s`` falls as ``s`` grows, so the flip probability rises monotonically from 0 at
    ``s = 0`` to ``(V - 1) / V`` at ``s = 1``, and bisection (60 halvings, vectorised over
    ``p``) finds ``s`` to ~1e-15. ``p`` must lie in ``[0, (V - 1) / V)``. Used to pick the
    training noise range (:func:`suggest_noise_range`) and the sampler's noise levels.
    """
    V = _check_vocab(vocab_size)
    target = _f64(p)
    top = (V - 1) / V
    if bool(((target < 0) | (target >= top)).any()):
        raise ValueError(
            f"flip probability must lie in [0, (V-1)/V) = [0, {top:.6f}) for V={V}; "
            "pure noise flips (V-1)/V of the tokens and no noise level flips more"
        )
    flat = target.reshape(-1)
    lo, hi = torch.zeros_like(flat), torch.ones_like(flat)
    for _ in range(60):
        mid = (lo + hi) / 2
        f = _flip_from_ratio((1 - mid) / mid, V)  # c / s with c = 1 - s
        too_noisy = f > flat
        hi = torch.where(too_noisy, mid, hi)
        lo = torch.where(too_noisy, lo, mid)
    s = torch.where(flat == 0, torch.zeros_like(flat), (lo + hi) / 2)
    return _to_output(s.reshape(target.shape), p)


def suggest_noise_range(
    vocab_size: int, low_flip: float = 0.05, high_margin: float = 1e-3
) -> tuple[float, float]:
    """Training range ``(noise_min, noise_max)`` that covers what the sampler visits.

    Taught in ``09_duo_sampling``.

    The sampler starts from pure noise (flip probability ``(V - 1) / V``) and walks down to
    almost clean. A model trained only on, say, the seed's ``U(0.25, 0.5)`` never sees the
    early, mostly-noise steps. We return the noise weight (seed convention,
    ``clean = 1 - noise``) where the flip probability is ``low_flip`` and the one where it
    is ``(V - 1) / V - high_margin``, i.e. within a hair of pure noise.
    """
    V = _check_vocab(vocab_size)
    top = (V - 1) / V
    if not 0 < low_flip < top - high_margin:
        raise ValueError(f"need 0 < low_flip < (V-1)/V - high_margin = {top - high_margin}")
    lo = noise_for_flip(low_flip, V)
    hi = noise_for_flip(top - high_margin, V)
    return float(lo), float(hi)


# ---------------------------------------------------------------------------
# 07_soft_tokens: softmax(w / tau), its annealing, and the embedding mixture
# ---------------------------------------------------------------------------


def soft_tokens(w: torch.Tensor, tau: float) -> torch.Tensor:
    """Soft tokens ``softmax(w / tau)`` over the last axis, in float32.

    Taught in ``07_soft_tokens``.

    A high temperature spreads probability over the ids whose noisy score is close to the
    winner's (a richer input early in training); as ``tau -> 0`` the result becomes the
    one-hot vector of ``argmax(w)``, i.e. exactly the corrupted token ``xt``. ``-inf``
    entries (excluded ids) get probability 0.
    """
    if not (isinstance(tau, (int, float)) or torch.is_tensor(tau)) or not float(tau) > 0:
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    return torch.softmax(w.to(torch.float32) / float(tau), dim=-1)  # (B, L, V)


def tau_schedule(
    step: int, total_steps: int, tau_start: float = 1e-3, tau_end: float = 1e-8
) -> float:
    """Log-linear annealing of the soft-token temperature.

    Taught in ``07_soft_tokens``.

    ``log tau = log tau_start + (step / total_steps) * (log tau_end - log tau_start)``,
    so ``tau`` drops by the same factor every step: ``tau_start`` at step 0, ``tau_end`` at
    ``total_steps`` and after. The seed anneals 1e-3 -> 1e-8 over 500K steps; the tiny
    preset passes its own ``total_steps``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not (tau_start > 0 and tau_end > 0):
        raise ValueError("tau_start and tau_end must be > 0")
    frac = min(max(step / total_steps, 0.0), 1.0)
    return math.exp(math.log(tau_start) + frac * (math.log(tau_end) - math.log(tau_start)))


def soft_embeddings(probs: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
    """Mix token embeddings by soft-token probabilities: ``probs @ E``, ``(B, L, H)``.

    Taught in ``07_soft_tokens``.

    ``E`` is the ``(V, H)`` token-embedding matrix (``tok_embeddings.weight``). For a
    one-hot row this returns exactly that token's embedding, so hard tokens are a special
    case. Feed the result as ``inputs_embeds``: in ModernBERT the embedding layer's norm
    and dropout still run after it, exactly as they do after ``tok_embeddings(ids)``.
    """
    if probs.shape[-1] != embedding_weight.shape[0]:
        raise ValueError(
            f"probs has {probs.shape[-1]} ids but the embedding matrix has "
            f"{embedding_weight.shape[0]} rows; they must match"
        )
    return probs.to(embedding_weight.dtype) @ embedding_weight  # (B, L, V) @ (V, H)


# ---------------------------------------------------------------------------
# 08_duo_loss_scaling: per-token losses, the per-row scale, the Duo loss
# ---------------------------------------------------------------------------


def cross_entropy(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``-log p(x0)``, shape ``(B, L)``, float32.

    Taught in ``08_duo_loss_scaling``.
    """
    B, L, V = logits.shape
    ce = F.cross_entropy(logits.float().reshape(B * L, V), x0.reshape(-1).long(),
                         reduction="none")  # (B*L,)
    return ce.view(B, L)


def symmetric_kl(logits: torch.Tensor, x0: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Per-token symmetric KL ``KL(q || p) + KL(p || q)``, shape ``(B, L)``, float32.

    Taught in ``08_duo_loss_scaling``.

    ``p = softmax(logits)`` is the prediction. The target ``q`` is the one-hot of ``x0``
    smoothed by ``eps`` (our choice: the seed does not say how it handles ``log 0``)::

        q = (1 - eps) * one_hot(x0) + eps / V

    so that ``log q`` is finite. Then

    - ``KL(q || p) = sum_j q_j (log q_j - log p_j)`` is cross-entropy up to ``O(eps)``:
      it rewards mass on the right id;
    - ``KL(p || q) = sum_j p_j (log p_j - log q_j)`` charges about ``log(V / eps)`` nats
      per unit of probability put on wrong ids: it penalises over-predicting wrong labels.

    Both are >= 0 and both are 0 when ``p = q``. ``eps`` sets how hard the second term
    bites; with ``eps -> 0`` it blows up. Computed without building ``q`` (B, L, V).
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    V = logits.shape[-1]
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, L, V)
    p = logp.exp()  # (B, L, V)
    q_hit, q_miss = 1 - eps + eps / V, eps / V  # q at x0, q elsewhere
    log_hit, log_miss = math.log(q_hit), math.log(q_miss)
    logp_x0 = logp.gather(-1, x0.long()[..., None]).squeeze(-1)  # (B, L)
    # KL(q||p) = sum q log q - [q_miss * sum_j log p_j + (q_hit - q_miss) * log p_x0]
    sum_q_log_q = q_hit * log_hit + (V - 1) * q_miss * log_miss
    kl_qp = sum_q_log_q - q_miss * logp.sum(-1) - (q_hit - q_miss) * logp_x0  # (B, L)
    # KL(p||q) = sum p log p - [log q_miss + p_x0 * (log q_hit - log q_miss)]
    p_log_p = torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)  # (B, L)
    kl_pq = p_log_p - log_miss - logp_x0.exp() * (log_hit - log_miss)  # (B, L)
    return kl_qp + kl_pq


def row_scale(noise_weight, vocab_size: int, clean_weight=None):
    """The seed's per-row loss scale ``noise / (V * clean + noise)``.

    Taught in ``08_duo_loss_scaling``.

    Implemented exactly as the seed's formula. Note the seed's comment next to it reads
    "As noise -> 0, view_scale -> 1, loss counts fully", but the formula does the
    opposite: with ``clean = 1 - noise`` it is 0 at ``noise = 0`` and 1 at pure noise
    (``clean = 0``), and for a vocabulary of thousands it stays tiny until the row is
    almost pure noise (V = 2788: 6.8e-5 at noise 0.16 (5% flips), 3.6e-4 at 0.5, 0.034
    at 0.99). So it *down-weights low-noise rows*: for V = 2788 the 99%-flip row gets
    4.8x the weight of the 5%-flip row, and across :func:`suggest_noise_range` (noise
    0.160 to 0.715) the factor is 13. We keep the formula and flag the disagreement; what it
    does to rows' gradients is measured in :func:`gradient_spread_demo`.

    Reading of the formula: with keep probability ``a`` in a uniform-state chain,
    ``(1 - a) / (V a + 1 - a)`` is P(xt = one given wrong id) / P(xt = x0).

    Accepts what :func:`flip_probability` accepts; returns a tensor for a tensor.
    """
    V = _check_vocab(vocab_size)
    _ratio(noise_weight, clean_weight)  # validates
    s = _f64(noise_weight)
    c = (1.0 - s) if clean_weight is None else _f64(clean_weight)
    scale = s / (V * c + s)  # noise / (V * clean + noise)
    if isinstance(noise_weight, torch.Tensor):
        return scale.to(device=noise_weight.device, dtype=torch.float32)
    return _to_output(scale, noise_weight)


SCALES = ("seed", "batch_mean", "none")


def scale_mode(scale) -> str:
    """The per-row scale setting as one of ``SCALES``: ``True`` is the seed's scale
    (:func:`row_scale`), ``False`` none; ``"batch_mean"`` is the seed's scale divided by
    its mean over the batch's scored tokens (same relative weights, mean 1).

    Taught in ``08_duo_loss_scaling``.
    """
    if scale is True:
        return "seed"
    if scale is False or scale is None:
        return "none"
    if scale not in SCALES:
        raise ValueError(f"unknown Duo loss scale {scale!r}: choose one of {SCALES} "
                         "(or True = 'seed', False = 'none')")
    return scale


def _per_token_loss(logits, x0, kind: str, eps: float) -> torch.Tensor:
    if kind == "sym_kl":
        return symmetric_kl(logits, x0, eps=eps)  # (B, L)
    if kind == "ce":
        return cross_entropy(logits, x0)  # (B, L)
    raise ValueError(f"kind must be 'sym_kl' or 'ce', got {kind!r}")


def _row_losses(logits, x0, noise_weight, vocab_size, clean_weight, kind, scale,
                loss_mask, eps):
    """(per-row loss (B,), rows that have scored tokens (B,) bool)."""
    B, L, _ = logits.shape
    if x0.shape != (B, L):
        raise ValueError(
            f"x0 {tuple(x0.shape)} does not match logits {tuple(logits.shape)}"
        )
    per_tok = _per_token_loss(logits, x0, kind, eps)  # (B, L)
    m = torch.ones_like(per_tok) if loss_mask is None else loss_mask.to(per_tok)  # (B, L)
    if m.shape != (B, L):
        raise ValueError(f"loss_mask must have shape {(B, L)}, got {tuple(m.shape)}")
    mode = scale_mode(scale)
    if mode != "none":
        c, s = _weights(noise_weight, clean_weight, x0)  # (B, L)
        weight = s / (vocab_size * c + s)  # noise / (V clean + noise)   (B, L)
        if mode == "batch_mean":  # same relative weights, mean 1 over the scored tokens
            scored = m > 0
            mean = weight[scored].mean() if bool(scored.any()) else weight.new_tensor(1.0)
            weight = weight / mean.clamp_min(1e-30)
        per_tok = per_tok * weight
    count = m.sum(1)  # (B,)
    rows = (per_tok * m).sum(1) / count.clamp_min(1)  # masked mean per row   (B,)
    return rows, count > 0


def duo_loss(
    logits: torch.Tensor,
    x0: torch.Tensor,
    noise_weight,
    vocab_size: int | None = None,
    clean_weight=None,
    kind: str = "sym_kl",
    scale: bool = True,
    loss_mask: torch.Tensor | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """The Duo training loss: a scalar.

    Taught in ``08_duo_loss_scaling``.

    For every row ``b``::

        row_b = row_scale(s_b) * mean_{i : loss_mask[b, i] = 1} loss(logits[b, i], x0[b, i])

    with ``loss`` = :func:`symmetric_kl` (``kind="sym_kl"``) or :func:`cross_entropy`
    (``kind="ce"``), and ``row_scale`` = :func:`row_scale` when ``scale`` is True (1
    otherwise). The result is the mean of ``row_b`` over rows that have at least one scored
    token. ``noise_weight`` is one per row (or per token, then the scale is per token).
    ``vocab_size`` defaults to ``logits.shape[-1]``.
    """
    V = logits.shape[-1] if vocab_size is None else _check_vocab(vocab_size)
    rows, has = _row_losses(logits, x0, noise_weight, V, clean_weight, kind, scale,
                            loss_mask, eps)  # (B,), (B,)
    if not bool(has.any()):
        return logits.sum() * 0.0  # nothing to score; keeps the graph
    return rows[has].mean()


# ---------------------------------------------------------------------------
# 08_duo_loss_scaling: a measured look at how rows' gradients spread
# ---------------------------------------------------------------------------


def uniform_posterior_logits(
    xt: torch.Tensor, noise_weight, vocab_size: int, clean_weight=None
) -> torch.Tensor:
    """Log-posterior ``log p(x0 | xt)`` of the best *context-free* denoiser, ``(B, L, V)``.

    Taught in ``08_duo_loss_scaling`` and ``09_duo_sampling``.

    By the duality, ``P(xt = x0) = 1 - f`` and ``P(xt = j) = f / (V - 1)`` for each other
    id ``j``, with ``f`` = :func:`flip_probability`. With a uniform prior over ``x0`` the
    posterior is the same table read the other way: ``1 - f`` on ``xt`` and
    ``f / (V - 1)`` on every other id. A model that ignored context and knew the noise
    level could do no better; real models beat it by reading the neighbours.
    """
    V = _check_vocab(vocab_size)
    c, s = _weights(noise_weight, clean_weight, xt)  # (B, L)
    f = _flip_from_ratio(_ratio(s, c), V)  # flip probability   (B, L)
    f = f.clamp(1e-12, 1 - 1e-12).to(device=xt.device, dtype=torch.float32)  # (B, L)
    hit = F.one_hot(xt.long(), V).bool()  # (B, L, V)
    log_keep, log_move = torch.log1p(-f)[..., None], torch.log(f / (V - 1))[..., None]
    return torch.where(hit, log_keep, log_move)  # (B, L, V)


def row_gradient_norms(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    noise_weights,
    vocab_size: int,
    kind: str = "sym_kl",
    scale: bool = True,
    clean_weight=None,
    loss_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_losses: bool = False,
    eps: float = 1e-4,
):
    """Per-row gradient norms ``||d row_loss_b / d logits_b||``, shape ``(B,)``.

    Taught in ``08_duo_loss_scaling``.

    Row ``b`` of ``x0`` is corrupted with ``noise_weights[b]`` (:func:`corrupt`), the
    corrupted ids go through ``logits_fn(xt, noise_weights) -> logits (B, L, V)`` (a real
    model: ``lambda xt, s: model(input_ids=xt).logits``; it may ignore ``s``), and we
    differentiate each row's loss (the ``row_b`` of :func:`duo_loss`, without the ``1/B``)
    with respect to that row's logits. Rows do not share logits, so one backward pass
    gives every row's gradient. ``return_losses=True`` also returns the row losses.
    """
    V = _check_vocab(vocab_size)
    s = torch.as_tensor(noise_weights, dtype=torch.float32, device=x0.device)
    if s.dim() != 1 or s.shape[0] != x0.shape[0]:
        raise ValueError("noise_weights must hold one weight per row of x0: shape (B,)")
    xt = corrupt(x0, s, V, clean_weight=clean_weight, generator=generator)  # (B, L)
    with torch.no_grad():
        logits = logits_fn(xt, s).float()  # (B, L, V)
    logits = logits.detach().requires_grad_(True)
    rows, _ = _row_losses(logits, x0, s, V, clean_weight, kind, scale, loss_mask, eps)
    (grad,) = torch.autograd.grad(rows.sum(), logits)  # (B, L, V)
    norms = grad.flatten(1).norm(dim=1)  # (B,)
    return (norms, rows.detach()) if return_losses else norms


def gradient_spread_demo(
    vocab_size: int = 2788,
    seed: int = 0,
    length: int = 512,
    flips: tuple[float, ...] = (0.05, 0.15, 0.3, 0.5, 0.7, 0.9, 0.99),
) -> dict:
    """Measure how much rows at different noise levels differ in loss and gradient.

    Taught in ``08_duo_loss_scaling``.

    One row per target flip probability in ``flips`` (noise weights from
    :func:`noise_for_flip`, seed convention), ``length`` random tokens each, two
    stand-in models:

    - ``"init"``: all-zero logits (a model at initialisation: uniform predictions);
    - ``"posterior"``: :func:`uniform_posterior_logits`, the best context-free denoiser
      that knows each row's noise level (easy rows are predicted well, hard rows not).

    For each model, each loss (``"ce"``, ``"sym_kl"``) and ``scale`` off / on we report the
    per-row losses and gradient norms (w.r.t. the logits) and their max/min ratios.

    What we measured (defaults: V = 2788, L = 512, seed 0, flips 5% ... 99%, i.e. noise
    weights 0.160 ... 0.478; ratio = max/min over the 7 rows):

    ============  ======  ==================  ==================
    model         loss    unscaled loss/grad  scaled loss/grad
    ============  ======  ==================  ==================
    init          CE      1.0 / 1.0           4.8 / 4.8
    init          sym-KL  1.0 / 1.0           4.8 / 4.8
    posterior     CE      14.6 / 3.4          70 / 16
    posterior     sym-KL  11.2 / 5.4          54 / 9.6
    ============  ======  ==================  ==================

    - Unscaled, the hard rows do dominate once the model is any good: with the posterior
      model the 99%-flip row's CE is 7.9 nats against 0.54 for the 5% row, and its
      gradient norm is 3.4x larger. At initialisation every row looks the same.
    - The seed's scale ``noise / (V clean + noise)`` does **not** equalise the rows: it is
      4.8x larger for the 99% row than for the 5% row, so it multiplies the spread (loss
      and gradient alike) by up to 4.8. It neither equalises loss magnitudes nor gradient
      norms; the high-noise rows dominate even more.

    So, measured rather than assumed: the formula as the seed writes it widens the spread.
    Run the function (or :func:`row_gradient_norms` with a trained model) to get the
    numbers for your own settings.
    """
    V = _check_vocab(vocab_size)
    g = torch.Generator().manual_seed(seed)
    flips_t = torch.tensor(flips, dtype=torch.float64)
    noise = torch.as_tensor(noise_for_flip(flips_t, V), dtype=torch.float32)  # (B,)
    x0 = torch.randint(0, V, (len(flips), length), generator=g)  # (B, L)
    models = {
        "init": lambda xt, s: torch.zeros(*xt.shape, V),
        "posterior": lambda xt, s: uniform_posterior_logits(xt, s, V),
    }
    out: dict = {"vocab_size": V, "length": length, "flip": list(flips),
                 "noise_weight": noise.tolist(), "row_scale": row_scale(noise, V).tolist()}
    for name, fn in models.items():
        out[name] = {}
        for kind in ("ce", "sym_kl"):
            out[name][kind] = {}
            for scaled in (False, True):
                gen = torch.Generator().manual_seed(seed + 1)  # same corruption each time
                norms, losses = row_gradient_norms(fn, x0, noise, V, kind=kind,
                                                   scale=scaled, generator=gen,
                                                   return_losses=True)
                out[name][kind]["scaled" if scaled else "unscaled"] = {
                    "grad_norm": norms.tolist(),
                    "loss": losses.tolist(),
                    "grad_ratio": float(norms.max() / norms.min()),
                    "loss_ratio": float(losses.max() / losses.min()),
                }
    return out


# ---------------------------------------------------------------------------
# The training objective used by train_flowlm.py
# ---------------------------------------------------------------------------


def _token_embedding_weight(model) -> torch.Tensor:
    """The ``(V, H)`` token-embedding matrix of a (possibly DDP-wrapped) model."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):
        inner = inner.module  # DistributedDataParallel / accelerate wrappers
    if hasattr(inner, "get_input_embeddings"):
        return inner.get_input_embeddings().weight
    for path in ("tok_embeddings", "embeddings.tok_embeddings",
                 "model.embeddings.tok_embeddings"):
        obj = inner
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj.weight
        except AttributeError:
            continue
    raise ValueError("cannot find the model's token embeddings (get_input_embeddings())")


@dataclass
class DuoObjective:
    """The Duo training objective: noisy one-hot -> soft tokens -> model -> Duo loss.

    Taught in ``08_duo_loss_scaling``; used by the training core (``train_flowlm.py``).

    Fields:
        vocab_size: ``V``; must equal the model's number of embedding rows (exclude
            unused or special rows with ``allowed``).
        loss_kind: ``"elbo"`` (the paper's: :func:`uniform_state_nelbo` with the
            Gaussian-to-discrete :class:`DuoSchedule`), ``"sym_kl"`` (the seed's
            :func:`symmetric_kl`) or ``"ce"``.
        scale: for ``sym_kl`` / ``ce`` only (:func:`scale_mode`): ``"seed"`` (True) the
            seed's :func:`row_scale`, ``"batch_mean"`` the same divided by its batch mean,
            ``"none"`` (False). The ELBO has its own weighting: pass ``"none"``/None there.
        noise_min, noise_max: ``sym_kl`` / ``ce``: per-row noise weight
            ``s ~ U(noise_min, noise_max)``, clean weight ``1 - s`` (seed convention). Left
            as None they default to :func:`suggest_noise_range`.
        gamma_min, gamma_max: ``elbo``: the :class:`DuoSchedule` (per row ``t ~ U(0, 1)``).
        tau_start, tau_end, total_steps: the :func:`tau_schedule` of the soft tokens.
        allowed: optional bool ``(V,)`` mask of ids noise may produce.
        sym_kl_eps: target smoothing of :func:`symmetric_kl`.
    """

    vocab_size: int
    noise_min: float | None = None
    noise_max: float | None = None
    tau_start: float = 1e-3
    tau_end: float = 1e-8
    total_steps: int = 500_000
    loss_kind: str = "sym_kl"
    scale: bool | str | None = True
    allowed: torch.Tensor | None = None
    sym_kl_eps: float = 1e-4
    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX

    def __post_init__(self):
        V = _check_vocab(self.vocab_size)
        if self.loss_kind not in DUO_LOSSES:
            raise ValueError(f"unknown Duo loss {self.loss_kind!r}: choose one of {DUO_LOSSES}")
        self.scale = scale_mode(self.scale)
        if self.loss_kind == "elbo" and self.scale != "none":
            raise ValueError("the ELBO brings its own per-token weight (-alpha'/(K alpha)); "
                             f"scale={self.scale!r} applies to sym_kl / ce only: use "
                             "scale='none'")
        if self.noise_min is None or self.noise_max is None:
            lo, hi = suggest_noise_range(V)
            self.noise_min = lo if self.noise_min is None else self.noise_min
            self.noise_max = hi if self.noise_max is None else self.noise_max
        if not 0 <= self.noise_min <= self.noise_max <= 1:
            raise ValueError(
                f"need 0 <= noise_min <= noise_max <= 1, got {self.noise_min}, "
                f"{self.noise_max} (clean weight is 1 - noise)"
            )
        tau_schedule(0, self.total_steps, self.tau_start, self.tau_end)  # validates
        if self.allowed is not None:
            self.allowed = _check_allowed(self.allowed, V, "cpu")
        K = V if self.allowed is None else int(self.allowed.sum())
        self.schedule = DuoSchedule(K, self.gamma_min, self.gamma_max)

    def tau(self, step: int) -> float:
        """Soft-token temperature at ``step`` (:func:`tau_schedule`)."""
        return tau_schedule(step, self.total_steps, self.tau_start, self.tau_end)

    def loss(self, model, batch: dict, step: int, generator: torch.Generator | None = None):
        """One training loss: returns ``(loss, metrics)``.

        ``batch``: ``input_ids`` ``(B, L)`` = x0; ``attention_mask`` ``(B, L)``;
        ``loss_mask`` ``(B, L)``, 1 where tokens are corrupted and scored (response tokens
        for SFT rows; defaults to the attention mask). Steps:

        1. a noise level per row: ``elbo``: ``t_b ~ U(0, 1)``, Gaussian weights
           ``(alpha~, sigma~)`` of :class:`DuoSchedule` (variance preserving);
           ``sym_kl`` / ``ce``: ``s_b ~ U(noise_min, noise_max)``, ``c_b = 1 - s_b``;
        2. ``w = c * one_hot(x0) + s * z`` on scored positions; the others keep their clean
           one-hot (no noise), so the prompt stays readable; ``x_t = argmax(w)``;
        3. ``soft = softmax(w / tau(step))``, ``inputs_embeds = soft @ E`` (raw token
           embeddings; ModernBERT still applies its embedding norm and dropout);
        4. ``logits = model(inputs_embeds=..., attention_mask=...).logits``;
        5. ``elbo``: :func:`uniform_state_nelbo` at ``alpha(t_b)``, ``alpha'(t_b)``, mean
           over scored tokens; else :func:`duo_loss`.

        ``metrics`` (floats): loss, ce (unscaled, scored tokens), acc (argmax = x0 on
        scored tokens), flip_rate (argmax(w) != x0 on scored tokens), noise (mean s, or
        mean t for the ELBO), tau. ``generator`` must live on the batch's device.
        """
        x0 = batch["input_ids"]  # (B, L)
        B, L = x0.shape
        attn = batch.get("attention_mask")
        attn = torch.ones_like(x0) if attn is None else attn  # (B, L)
        lm = batch.get("loss_mask")
        lm = attn if lm is None else lm  # (B, L)
        scored = lm.bool() & attn.bool()  # (B, L)
        E = _token_embedding_weight(model)  # (V, H)
        if E.shape[0] != self.vocab_size:
            raise ValueError(
                f"DuoObjective.vocab_size={self.vocab_size} but the model has {E.shape[0]} "
                "embedding rows; set vocab_size to the rows and exclude unused ids "
                "with allowed=allowed_mask(...)"
            )
        device = x0.device
        allowed = None if self.allowed is None else self.allowed.to(device)
        if allowed is not None:
            scored = scored & allowed[x0]  # a target noise can never produce is not scored
        u = torch.rand(B, generator=generator, device=device)  # (B,)
        if self.loss_kind == "elbo":
            t_row = u.clamp(1e-4, 1.0)
            c_row, s_row = self.schedule.gaussian_weights(t_row)  # (B,), (B,)
        else:
            s_row = self.noise_min + (self.noise_max - self.noise_min) * u  # (B,)
            c_row = 1.0 - s_row
        s_tok = torch.where(scored, s_row[:, None], torch.zeros_like(s_row[:, None]))
        c_tok = torch.where(scored, c_row[:, None], torch.ones_like(c_row[:, None]))
        w = gaussian_one_hot(x0, s_tok, self.vocab_size, clean_weight=c_tok,
                             generator=generator, allowed=allowed)  # (B, L, V)
        tau = self.tau(step)
        soft = soft_tokens(w, tau)  # softmax(w / tau)   (B, L, V)
        embeds = soft_embeddings(soft, E)  # soft @ E   (B, L, H)
        logits = model(inputs_embeds=embeds, attention_mask=attn).logits  # (B, L, V)
        xt = w.argmax(-1)  # (B, L)
        if self.loss_kind == "elbo":
            alpha = self.schedule.alpha(t_row).to(device)[:, None]  # (B, 1)
            dalpha = self.schedule.dalpha(t_row).to(device)[:, None]  # (B, 1)
            per_tok = uniform_state_nelbo(logits, x0, xt, alpha, dalpha, allowed)  # (B, L)
            n_scored = scored.sum()
            loss = ((per_tok * scored).sum() / n_scored.clamp_min(1)
                    if bool(n_scored > 0) else logits.sum() * 0.0)
            noise_metric = float(t_row.mean())
        else:
            loss = duo_loss(logits, x0, s_row, self.vocab_size, kind=self.loss_kind,
                            scale=self.scale, loss_mask=scored, eps=self.sym_kl_eps)
            noise_metric = float(s_row.mean())
        with torch.no_grad():
            n = scored.sum().clamp_min(1)
            ce = (cross_entropy(logits, x0) * scored).sum() / n
            metrics = {
                "loss": float(loss.detach()),
                "ce": float(ce),
                "acc": float(((logits.argmax(-1) == x0) & scored).sum() / n),
                "flip_rate": float(((xt != x0) & scored).sum() / n),
                "noise": noise_metric,
                "tau": tau,
            }
        return loss, metrics


# ===========================================================================
# The paper's Duo (Sahoo et al., ICML 2025): the uniform-state NELBO with the
# Gaussian-to-discrete schedule, the ancestral sampler, and few-step distillation (DCD)
# ===========================================================================



def discrete_alpha(gamma, vocab_size: int):
    """The diffusion transformation operator ``alpha = T(alpha~)``: the discrete signal
    level of the uniform-state process seen through ``argmax``.

    Taught in ``08_duo_loss_scaling``.

    Gaussian latents ``w = alpha~ e_x0 + sigma~ z`` with the variance-preserving weights of
    :func:`duo_weights` (``alpha~ = sqrt(sigmoid(-gamma))``, ``sigma~ = sqrt(sigmoid(gamma))``)
    give ``argmax(w)`` the uniform-state marginal ``alpha e_x0 + (1 - alpha) / V``: keep
    ``x0`` with probability ``alpha + (1 - alpha) / V``, else a uniformly random other id.
    So ``alpha = 1 - V / (V - 1) * flip`` with ``flip`` = :func:`flip_probability` at
    ``clean / noise = alpha~ / sigma~ = exp(-gamma / 2)``; that is the paper's integral
    ``T(alpha~) = V / (V - 1) * [integral phi(z - alpha~/sigma~) Phi(z)^(V-1) dz - 1 / V]``.

    ``gamma``: a float, list, array or tensor; returns the same kind (float64 numbers).
    """
    V = _check_vocab(vocab_size)
    g = _f64(gamma)
    f = _flip_from_ratio(torch.exp(-g / 2), V)
    alpha = (1.0 - f * V / (V - 1)).clamp(0.0, 1.0)
    return _to_output(alpha, gamma)


def _dalpha_dgamma(gamma: torch.Tensor, V: int) -> torch.Tensor:
    """``d alpha / d gamma`` by differentiating under the integral (float64 tensor)."""
    r = torch.exp(-gamma / 2).reshape(-1, 1)  # alpha~ / sigma~   (n, 1)
    # d P(keep) / d r = integral phi(z) (V-1) Phi(z + r)^(V-2) phi(z + r) dz
    log_int = (math.log(V - 1) + _LOG_PHI_GRID[None, :]
               + (V - 2) * torch.special.log_ndtr(_Z_GRID + r)
               - 0.5 * (_Z_GRID + r) ** 2 - 0.5 * math.log(2 * math.pi))  # (n, G)
    dkeep_dr = torch.trapezoid(torch.exp(log_int), _Z_GRID, dim=-1)  # (n,)
    # alpha = (V P(keep) - 1) / (V - 1); dr/dgamma = -r/2
    return (V / (V - 1) * dkeep_dr * (-r[:, 0] / 2)).reshape(gamma.shape)


@lru_cache(maxsize=32)
def alpha_table(vocab_size: int, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX,
                points: int = 2001) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(gamma, alpha, dalpha/dgamma)`` on ``points`` evenly spaced log-SNRs, float64.

    Taught in ``08_duo_loss_scaling``.

    The integral of :func:`discrete_alpha` is computed once per vocabulary size and range
    (cached) and then read by linear interpolation (:class:`DuoSchedule`), as the paper's
    code tabulates it once per tokenizer. Grid spacing for the defaults: 0.00225 in gamma;
    interpolation error below 1e-5 in alpha.
    """
    V = _check_vocab(vocab_size)
    if not gamma_min < gamma_max:
        raise ValueError(f"need gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
    g = torch.linspace(gamma_min, gamma_max, points, dtype=torch.float64)
    alpha = torch.as_tensor(discrete_alpha(g, V))
    return g, alpha, _dalpha_dgamma(g, V)


@dataclass(frozen=True)
class DuoSchedule:
    """Time ``t`` in [0, 1] -> Gaussian log-SNR ``gamma`` -> discrete signal ``alpha``.

    Taught in ``08_duo_loss_scaling`` and ``09_duo_sampling``.

    ``gamma(t) = gamma_min + t (gamma_max - gamma_min)`` (linear, as in the paper's code);
    ``alpha(t) = T(alpha~(gamma(t)))`` (:func:`discrete_alpha`, read from
    :func:`alpha_table`); ``dalpha(t) = d alpha / dt`` (negative: noise grows with t).
    ``vocab_size`` is the number of ids noise may produce. Every method takes tensors of
    any shape and returns float32 tensors of that shape on the same device.
    """

    vocab_size: int
    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX

    def __post_init__(self):
        _check_vocab(self.vocab_size)
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"need gamma_min < gamma_max, got {self.gamma_min}, "
                             f"{self.gamma_max}")

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        return self.gamma_min + t * (self.gamma_max - self.gamma_min)

    def _read(self, t, column: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        table = alpha_table(int(self.vocab_size), float(self.gamma_min), float(self.gamma_max))
        values = table[column]  # (n,)
        pos = t.detach().double().cpu().clamp(0, 1) * (len(values) - 1)
        lo = pos.floor().long().clamp(max=len(values) - 2)
        frac = pos - lo
        out = values[lo] * (1 - frac) + values[lo + 1] * frac  # linear interpolation
        return out.to(device=t.device, dtype=torch.float32)

    def alpha(self, t) -> torch.Tensor:
        """Discrete signal level ``alpha(t)``."""
        return self._read(t, 1)

    def dalpha(self, t) -> torch.Tensor:
        """``d alpha / dt = dalpha/dgamma * (gamma_max - gamma_min)``."""
        return self._read(t, 2) * (self.gamma_max - self.gamma_min)

    def gaussian_weights(self, t):
        """``(alpha~, sigma~)`` of the Gaussian latents at ``t`` (:func:`duo_weights`)."""
        return duo_weights(self.gamma(t))


def _allowed_or_all(allowed, V: int, device) -> torch.Tensor:
    if allowed is None:
        return torch.ones(V, dtype=torch.bool, device=device)
    allowed = torch.as_tensor(allowed, device=device)
    if allowed.dtype != torch.bool or allowed.shape != (V,):
        raise ValueError(f"allowed must be a bool tensor of shape ({V},)")
    return allowed


def model_probs(logits: torch.Tensor, allowed=None) -> torch.Tensor:
    """``x_theta``: the model's clean-token distribution over the allowed ids, ``(..., V)``.

    Taught in ``09_duo_sampling``. ``softmax`` of the logits with the ids noise never
    produces (``allowed`` False: ``[MASK]``, ``[CLS]``, ...) set to probability 0.
    """
    V = logits.shape[-1]
    allowed = _allowed_or_all(allowed, V, logits.device)
    return torch.softmax(logits.float().masked_fill(~allowed, -math.inf), dim=-1)


def uniform_state_nelbo(logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, alpha,
                        dalpha, allowed=None) -> torch.Tensor:
    """The uniform-state diffusion NELBO per token (UDLM, Schiff et al. 2025; Duo's
    ``loss_type: elbo``), shape ``x0.shape``.

    Taught in ``08_duo_loss_scaling``.

    Forward process over the ``K`` allowed ids: ``q(x_t | x0) = alpha e_x0 + (1 - alpha)/K``
    (times the allowed mask). Its reverse-time jump rates from ``z = x_t`` to ``y != z`` are
    ``r(y) = -alpha' / (K alpha) * xbar_y / xbar_z`` with ``xbar = K alpha e_x0 + (1 - alpha)``;
    the model's rates use ``xbar_theta = K alpha x_theta + (1 - alpha)`` instead
    (``x_theta`` = :func:`model_probs`). The continuous-time ELBO's integrand is the
    Bregman divergence of the rates::

        loss = sum_{y != z} [ r_theta(y) - r(y) + r(y) log(r(y) / r_theta(y)) ]
             = -alpha'/(K alpha) * [ K/xbar_theta_z - K/xbar_z
                 + sum_{y != z} xbar_y/xbar_z * log(xbar_y xbar_theta_z / (xbar_z xbar_theta_y)) ]

    It is >= 0 and 0 exactly when ``x_theta`` puts all its mass on ``x0``. Computed in
    closed form: ``xbar_y`` takes two values only, so the sum needs ``sum_y log
    xbar_theta_y`` and the entries at ``z`` and ``x0`` (no ``(..., V)`` temporaries beyond
    ``x_theta``). ``alpha`` and ``dalpha`` (``d alpha / dt``, negative) broadcast against
    ``x0``; any leading dims. Prior and reconstruction terms are left out (tiny here: the
    schedule ends at alpha 0.98 and 0.002).
    """
    V = logits.shape[-1]
    allowed = _allowed_or_all(allowed, V, logits.device)
    K = int(allowed.sum())
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=logits.device)
    dalpha = torch.as_tensor(dalpha, dtype=torch.float32, device=logits.device)
    alpha, dalpha = alpha.expand(x0.shape), dalpha.expand(x0.shape)  # (...)
    p = model_probs(logits, allowed)  # x_theta   (..., V)
    a = alpha[..., None]
    xbar_theta = K * a * p + (1 - a)  # (..., V)
    log_xbt = torch.log(xbar_theta).masked_fill(~allowed, 0.0)  # (..., V)
    S = log_xbt.sum(-1)  # sum_y log xbar_theta_y over allowed y   (...)
    xt_l, x0_l = xt.long()[..., None], x0.long()[..., None]
    L_z = log_xbt.gather(-1, xt_l)[..., 0]  # (...)
    L_x = log_xbt.gather(-1, x0_l)[..., 0]  # (...)
    xbt_z = xbar_theta.gather(-1, xt_l)[..., 0]  # (...)
    hi = K * alpha + (1 - alpha)  # xbar at x0
    lo = 1 - alpha  # xbar elsewhere
    same = xt == x0
    xbar_z = torch.where(same, hi, lo)
    term_a = K / xbt_z - K / xbar_z
    log_ratio = torch.log(lo) - torch.log(hi)  # log(lo / hi)
    # z == x0: every y != z has xbar_y = lo
    b_same = (lo / hi) * ((K - 1) * (log_ratio + L_z) - (S - L_z))
    # z != x0: y = x0 has xbar = hi, the K - 2 others lo
    b_diff = ((hi / lo) * (-log_ratio + L_z - L_x)
              + (K - 2) * L_z - (S - L_z - L_x))
    term_b = torch.where(same, b_same, b_diff)
    return -dalpha / (K * alpha) * (term_a + term_b)


def sample_uniform_state(x0: torch.Tensor, alpha, allowed=None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``x_t ~ alpha e_x0 + (1 - alpha) Uniform(allowed)`` directly (no Gaussian).

    Taught in ``08_duo_loss_scaling``. Same distribution as ``argmax`` of the Gaussian
    latents at the matching ``gamma`` (the duality); ``alpha`` broadcasts against ``x0``.
    """
    V = int(allowed.shape[0]) if allowed is not None else int(x0.max()) + 1
    allowed = _allowed_or_all(allowed, V, x0.device)
    ids = allowed.nonzero()[:, 0]  # (K,)
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=x0.device).expand(x0.shape)
    keep = torch.rand(x0.shape, generator=generator, device=x0.device) < alpha
    rand = ids[torch.randint(len(ids), x0.shape, generator=generator, device=x0.device)]
    return torch.where(keep, x0, rand)


def uniform_posterior(x0_probs: torch.Tensor, xt: torch.Tensor, alpha_s, alpha_t,
                      allowed=None) -> torch.Tensor:
    """``q(x_s | x_t, x0)`` of the uniform-state process, with ``x0`` given as a
    distribution (one-hot for the true posterior, ``x_theta`` for the sampler), ``(..., V)``.

    Taught in ``09_duo_sampling``.

    Bayes over the ``K`` allowed ids, ``u`` = uniform on them, ``alpha_{t|s} = alpha_t /
    alpha_s``::

        q(x_s = j | x_t = i, x0) ∝ [alpha_{t|s} [i = j] + (1 - alpha_{t|s}) u_i]
                                   * [alpha_s x0_j + (1 - alpha_s) u_j]

    The first factor gives ``x_t``'s own token extra weight: unlike re-noising a
    prediction, the sampler keeps what ``x_t`` already says unless the model disagrees.
    (The paper's code writes the same expression out with ``x0`` plugged in linearly.)
    ``alpha_s``, ``alpha_t`` broadcast against ``xt``; ``alpha_s >= alpha_t``.
    """
    V = x0_probs.shape[-1]
    allowed = _allowed_or_all(allowed, V, x0_probs.device)
    u = allowed.to(torch.float64) / allowed.sum()  # (V,)
    x = x0_probs.to(torch.float64) * allowed  # (..., V)
    a_s = torch.as_tensor(alpha_s, dtype=torch.float64, device=x.device).expand(xt.shape)
    a_t = torch.as_tensor(alpha_t, dtype=torch.float64, device=x.device).expand(xt.shape)
    a_ts = (a_t / a_s.clamp_min(1e-30))[..., None]  # (..., 1)
    hot = F.one_hot(xt.long(), V).to(torch.float64)  # (..., V)
    u_i = u[xt.long()][..., None]  # (..., 1)
    marg_s = a_s[..., None] * x + (1 - a_s[..., None]) * u  # q(x_s = j | x0)   (..., V)
    trans = a_ts * hot + (1 - a_ts) * u_i  # q(x_t = i | x_s = j)   (..., V)
    post = trans * marg_s
    return (post / post.sum(-1, keepdim=True)).to(torch.float32)


def ancestral_step(logits: torch.Tensor, xt: torch.Tensor, alpha_s, alpha_t, allowed=None,
                   generator: torch.Generator | None = None,
                   probs: bool = False) -> torch.Tensor:
    """One step of Duo's ancestral sampler: ``x_s ~ q(x_s | x_t, x_theta)``, ``xt.shape``.

    Taught in ``09_duo_sampling``. ``x_theta`` = :func:`model_probs` of the logits
    ``(..., V)`` (or ``logits`` itself, a distribution, with ``probs=True``: e.g. the
    one-hot of the argmax prediction); the draw is one categorical sample per position
    (``generator`` seeds it).
    """
    x0_probs = logits if probs else model_probs(logits, allowed)
    post = uniform_posterior(x0_probs, xt, alpha_s, alpha_t, allowed)
    flat = post.reshape(-1, post.shape[-1])
    draw = torch.multinomial(flat, 1, generator=generator)[:, 0]
    return draw.view(xt.shape).to(xt.dtype)


def sampler_alphas(steps: int, schedule: DuoSchedule) -> list[tuple[float, float]]:
    """``[(alpha_t, alpha_s), ...]`` for the ``steps`` steps of the ancestral sampler:
    ``t_k = 1 - k / steps``, ``s = t_k - 1 / steps``, read from the training schedule (so a
    distilled model's jumps are the ones it was trained on). The last pair has
    ``alpha_s = 1``: the sampler takes the argmax of ``x_theta`` there (greedy last step).

    Taught in ``09_duo_sampling``.
    """
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t = torch.tensor([1 - k / steps for k in range(steps + 1)], dtype=torch.float64)
    a = schedule.alpha(t).tolist()
    pairs = [(a[k], a[k + 1]) for k in range(steps)]
    pairs[-1] = (pairs[-1][0], 1.0)
    return pairs


# ---------------------------------------------------------------------------
# AdamW's eps and small gradients (08_duo_loss_scaling)
# ---------------------------------------------------------------------------


def gradient_eps_share(model, loss: torch.Tensor, eps: float = 1e-6) -> dict:
    """How many gradient entries fall below AdamW's ``eps``: ``backward`` of ``loss`` into a
    fresh gradient, then statistics over every parameter entry.

    Taught in ``08_duo_loss_scaling``.

    Adam divides each entry's (averaged) gradient by ``sqrt(v) + eps``; where ``|g|`` is well
    below ``eps`` the update shrinks roughly by ``|g| / eps``: the learning rate is cut there
    without anyone having asked. Returns ``share_below_eps`` (fraction of entries with
    ``|g| < eps``), ``median_abs`` and ``grad_norm``. The model's ``.grad`` is cleared after.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([g.detach().abs().reshape(-1) for g in grads if g is not None])
    return {"share_below_eps": float((flat < eps).float().mean()),
            "median_abs": float(flat.median()),
            "grad_norm": float(flat.norm()),
            "entries": int(flat.numel())}


def duo_gradient_stats(model, batch: dict, tokenizer, settings: dict, eps: float = 1e-6,
                       seed: int = 0) -> dict:
    """:func:`gradient_eps_share` for several Duo loss settings on the same batch and noise.

    Taught in ``08_duo_loss_scaling``. ``settings``: ``{label: {"loss_kind": ...,
    "scale": ...}}`` (:class:`DuoObjective` fields, ``tokenizer`` fills in the rest);
    returns ``{label: stats}``; ``model.train()`` mode is left as found.

    Measured on tiny-dllm (the start of the Duo stage), three batches of 16 chat rows (seq
    128), noise weight U(0.1, 0.6) for sym_kl, share of entries below eps = 1e-6:
    seed scale 50.3%, batch_mean 1.0%, unscaled 1.2%, ELBO 3.7% (gradient norms 0.01,
    46, 40, 25: with the seed's scale the clip at 1.0 never acts; with the others it
    always does).
    """
    out = {}
    for label, kw in settings.items():
        obj = make_objective_for(tokenizer, **kw)
        model.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(seed)
        loss, _ = obj.loss(model, batch, 0, generator=gen)
        out[label] = gradient_eps_share(model, loss, eps)
    return out


# ---------------------------------------------------------------------------
# Gradient variance and the curriculum (07_soft_tokens)
# ---------------------------------------------------------------------------

#: the curriculum of the paper's released configuration (configs/algo/duo.yaml): soft
#: tokens at log10 tau from -1 to -2, noise restricted to gamma in [-3.5, -1.75] (for the
#: course's vocabulary the low-noise half of its full range, -3.5 to 0: alpha >= 0.14)
CURRICULUM_GAMMA_MAX = -1.75


def gradient_variance(model, batches: list[dict], objective, draws: int = 32, top: int = 100,
                      seed: int = 0) -> dict:
    """How noisy a training loss's gradient is: the per-weight variance of the gradient over
    independent draws of data and noise, summarised as in the Duo paper's Table 4.

    Taught in ``07_soft_tokens``. Draw ``k`` computes ``objective.loss(model, batch, 0,
    generator)`` on ``batches[k % len(batches)]`` with a generator seeded ``seed + k``, so two
    objectives measured with the same arguments see the same rows and the same random
    numbers (their difference is the objectives', not the draws'). The gradients are
    accumulated in float64 (Welford), never stored, so any model size fits. Dropout is off
    during the measurement (``model.eval()``; the mode is restored).

    Returns ``top_variance`` (sum of the ``top`` largest per-weight variances: the paper's
    "top-100 weights"), ``total_variance`` (sum over every weight), ``mean_grad_norm``
    (norm of the mean gradient), ``noise_to_signal`` (``total_variance`` divided by the
    squared norm of the mean gradient: the variance relative to the gradient's own size)
    and ``draws``.
    """
    if not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2 (a variance needs two draws), "
                         f"got {draws!r}")
    if not batches:
        raise ValueError("batches is empty: pass at least one batch dict")
    params = [p for p in model.parameters() if p.requires_grad]
    n_weights = sum(p.numel() for p in params)
    if not isinstance(top, int) or not 1 <= top <= n_weights:
        raise ValueError(f"top must be an integer in [1, {n_weights}] (the model's trainable "
                         f"weights), got {top!r}")
    was_training = model.training
    model.eval()
    mean = m2 = None
    try:
        for k in range(draws):
            batch = batches[k % len(batches)]
            device = batch["input_ids"].device
            gen = torch.Generator(device=device).manual_seed(seed + k)
            loss, _ = objective.loss(model, batch, 0, generator=gen)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            g = torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1)
                           for p, gr in zip(params, grads)]).double()  # (n_weights,)
            if mean is None:
                mean, m2 = g.clone(), torch.zeros_like(g)
                continue
            delta = g - mean  # Welford: running mean and sum of squared deviations
            mean += delta / (k + 1)
            m2 += delta * (g - mean)
    finally:
        model.train(was_training)
    var = m2 / (draws - 1)  # unbiased per-weight variance   (n_weights,)
    total = float(var.sum())
    norm = float(mean.norm())
    return {"top_variance": float(var.topk(top).values.sum()), "total_variance": total,
            "mean_grad_norm": norm, "noise_to_signal": total / max(norm ** 2, 1e-30),
            "draws": draws}


# ---------------------------------------------------------------------------
# Few-step generation: Discrete Consistency Distillation (DCD)
# ---------------------------------------------------------------------------


def _unwrap(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def shared_noise_pair(x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                      schedule: DuoSchedule, scored: torch.Tensor, allowed=None,
                      vocab_size: int | None = None,
                      generator: torch.Generator | None = None):
    """``(x_t, x_s)``: two points of ONE Gaussian trajectory, each discretised by argmax.

    Taught in ``10_few_step_distillation``.

    One draw ``z ~ N(0, I)`` per position; ``w_t = alpha~_t e_x0 + sigma~_t z`` and
    ``w_s = alpha~_s e_x0 + sigma~_s z`` (weights of :class:`DuoSchedule` at the per-row
    times ``t``, ``s`` of shape ``(B,)``); ``x = argmax(w)``. Because the noise is shared,
    ``x_s`` is ``x_t`` with fewer flips: the deterministic (ODE-like) Gaussian path seen
    through ``argmax``. Positions not ``scored`` keep ``x0``.
    """
    V = vocab_size or (int(allowed.shape[0]) if allowed is not None else int(x0.max()) + 1)
    hot = F.one_hot(x0.long(), V).to(torch.float32)  # (B, L, V)
    z = torch.randn(hot.shape, generator=generator, device=x0.device)  # (B, L, V)
    out = []
    for time in (t, s):
        c, sd = schedule.gaussian_weights(time.to(x0.device))  # (B,), (B,)
        w = c[:, None, None] * hot + sd[:, None, None] * z
        if allowed is not None:
            w = w.masked_fill(~(allowed[None, None, :] | hot.bool()), float("-inf"))
        out.append(torch.where(scored, w.argmax(-1), x0))
    return out[0], out[1]


@dataclass
class DCDObjective:
    """Discrete Consistency Distillation (the paper's ``Distillation`` algorithm).

    Taught in ``10_few_step_distillation``; used by the training core
    (``./train_flowlm.py --objective dcd --teacher PATH``).

    Each step: per row ``t ~ U(0, 1)``, shifted by the gap ``dt`` (``t <- min(t + dt, 1)``,
    ``s = t - dt``); :func:`shared_noise_pair` gives ``x_t`` and ``x_s`` from one Gaussian
    draw; the student (the model being trained) predicts ``x0`` from ``x_t``, the frozen
    teacher from ``x_s`` (one step closer to clean on the same path); the loss is the KL
    between the two predictions (``kl="bwd"``: ``KL(student || teacher)``, the paper's
    default; ``"fwd"``: ``KL(teacher || student)``), mean over scored tokens. So the student
    learns to say at ``t`` what the teacher says one jump later: repeated over rounds it can
    cross ``2, 4, 8 ...`` sampler steps at once.

    Rounds: every ``update_every`` steps the teacher is refreshed with the student's
    weights (the paper copies an EMA; we copy the weights) and the gap doubles:
    ``dt = 2**(step // update_every) / base_steps`` (capped at 1). Starting from
    ``base_steps`` = 32, rounds 0, 1, 2, 3 teach jumps of 1/32, 1/16, 1/8, 1/4.

    ``teacher``: the model to distil (a module); it is moved to the batch's device, put in
    eval mode and never trained. A resumed run starts from a teacher refreshed with the
    resumed student at the current round's start (the exact teacher of an interrupted
    round is not saved).
    """

    vocab_size: int
    teacher: torch.nn.Module
    update_every: int = 100
    base_steps: int = 32
    kl: str = "bwd"
    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX
    allowed: torch.Tensor | None = None

    def __post_init__(self):
        V = _check_vocab(self.vocab_size)
        if self.teacher is None:
            raise ValueError("distillation needs a teacher: pass teacher=<model>, or "
                             "--teacher PATH (e.g. tiny-duo) to ./train_flowlm.py")
        if self.kl not in DCD_KL:
            raise ValueError(f"unknown DCD KL direction {self.kl!r}: choose one of {DCD_KL}")
        if self.update_every < 1 or self.base_steps < 1:
            raise ValueError("update_every and base_steps must be >= 1")
        if self.allowed is not None:
            self.allowed = _check_allowed(self.allowed, V, "cpu")
        K = V if self.allowed is None else int(self.allowed.sum())
        self.schedule = DuoSchedule(K, self.gamma_min, self.gamma_max)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._round: int | None = None

    def dt(self, step: int) -> float:
        """The round's gap in ``t``: ``2**(step // update_every) / base_steps``, at most 1."""
        return min(2 ** (step // self.update_every) / self.base_steps, 1.0)

    def _refresh(self, model, step: int) -> None:
        rnd = step // self.update_every
        if self._round is None and step < self.update_every:
            self._round = rnd                      # round 0: the teacher as given
        if self._round != rnd:                     # a new round (or a resumed run)
            self.teacher.load_state_dict(_unwrap(model).state_dict())
            self._round = rnd

    def loss(self, model, batch: dict, step: int, generator: torch.Generator | None = None):
        """One distillation loss: returns ``(loss, metrics)`` (as :meth:`DuoObjective.loss`).

        ``metrics``: loss, dt, agree (share of scored tokens where student and teacher
        argmax agree), acc (student argmax = x0), flip_rate (x_t != x0).
        """
        x0 = batch["input_ids"]  # (B, L)
        B = x0.shape[0]
        attn = batch.get("attention_mask")
        attn = torch.ones_like(x0) if attn is None else attn
        lm = batch.get("loss_mask")
        scored = (attn if lm is None else lm).bool() & attn.bool()  # (B, L)
        device = x0.device
        allowed = None if self.allowed is None else self.allowed.to(device)
        if allowed is not None:
            scored = scored & allowed[x0]
        self.teacher.to(device)
        self._refresh(model, step)
        dt = self.dt(step)
        u = torch.rand(B, generator=generator, device=device).clamp_min(1e-4)
        t = (u + dt).clamp(max=1.0)
        s = t - dt
        xt, xs = shared_noise_pair(x0, t, s, self.schedule, scored, allowed,
                                   self.vocab_size, generator)
        logits = model(input_ids=xt, attention_mask=attn).logits  # (B, L, V)
        with torch.no_grad():
            t_logits = self.teacher(input_ids=xs, attention_mask=attn).logits
        mask = _allowed_or_all(allowed, self.vocab_size, device)  # (V,)
        log_s = torch.log_softmax(logits.float().masked_fill(~mask, -1e9), -1)
        log_t = torch.log_softmax(t_logits.float().masked_fill(~mask, -1e9), -1)
        if self.kl == "bwd":
            per_tok = (log_s.exp() * (log_s - log_t)).sum(-1)  # KL(student || teacher)
        else:
            per_tok = (log_t.exp() * (log_t - log_s)).sum(-1)  # KL(teacher || student)
        n = scored.sum().clamp_min(1)
        loss = (per_tok * scored).sum() / n
        with torch.no_grad():
            pred = logits.argmax(-1)
            metrics = {"loss": float(loss.detach()), "dt": dt,
                       "agree": float(((pred == t_logits.argmax(-1)) & scored).sum() / n),
                       "acc": float(((pred == x0) & scored).sum() / n),
                       "flip_rate": float(((xt != x0) & scored).sum() / n)}
        return loss, metrics


# ---------------------------------------------------------------------------
# Objectives from a tokenizer (the training core and the notebooks)
# ---------------------------------------------------------------------------


def noise_allowed(tokenizer, vocab_size: int | None = None) -> torch.Tensor:
    """Bool ``(V,)``: the ids Duo's noise may produce: every tokenizer id but the specials
    (``[SEP]`` kept: answers end with it); embedding rows beyond the tokenizer excluded."""
    V = vocab_size or len(tokenizer)
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[:len(tokenizer)] = True
    allowed[[i for i in tokenizer.all_special_ids
             if i != tokenizer.sep_token_id and i < V]] = False
    return allowed


def make_objective_for(tokenizer, vocab_size: int | None = None, objective: str = "duo",
                       **fields):
    """A :class:`DuoObjective` (``objective="duo"``) or :class:`DCDObjective` (``"dcd"``)
    for a model that uses ``tokenizer``: ``vocab_size`` (default ``len(tokenizer)``) and
    ``allowed`` (:func:`noise_allowed`) filled in; ``fields`` are the class's fields.

    Taught in ``08_duo_loss_scaling`` and ``10_few_step_distillation``.
    """
    V = vocab_size or len(tokenizer)
    fields.setdefault("allowed", noise_allowed(tokenizer, V))
    if objective == "duo":
        return DuoObjective(vocab_size=V, **fields)
    if objective == "dcd":
        return DCDObjective(vocab_size=V, **fields)
    raise ValueError(f"unknown objective {objective!r}: 'duo' or 'dcd'")


def check_duo_config(cfg) -> None:
    """The Duo / DCD fields of a ``TrainConfig``: one clear error per bad value.

    Resolves ``cfg.duo_scale``: None becomes ``"none"`` for the ELBO and ``"batch_mean"``
    for ``sym_kl`` / ``ce`` (measured in ``08_duo_loss_scaling``: the seed's scale puts
    37% of the corpus-v2 tiny-dllm's gradient entries below AdamW's eps, its batch-mean
    version 2%; the corpus-v1 model: 50% and 1%).
    """
    if cfg.duo_loss not in DUO_LOSSES:
        raise ValueError(f"unknown duo_loss {cfg.duo_loss!r}: choose one of {DUO_LOSSES}")
    scale = cfg.duo_scale
    if isinstance(scale, str) and scale.lower() in ("true", "false"):
        scale = scale.lower() == "true"
    if scale is None:
        scale = "none" if cfg.duo_loss == "elbo" else "batch_mean"
    scale = scale_mode(scale)
    if cfg.duo_loss == "elbo" and scale != "none":
        raise ValueError(f"duo_scale={cfg.duo_scale!r} applies to sym_kl / ce: the ELBO "
                         "brings its own weighting; leave duo_scale unset (or 'none')")
    cfg.duo_scale = scale
    if not cfg.duo_gamma_min < cfg.duo_gamma_max:
        raise ValueError(f"need duo_gamma_min < duo_gamma_max, got {cfg.duo_gamma_min}, "
                         f"{cfg.duo_gamma_max}")
    if cfg.objective == "dcd":
        if not cfg.teacher:
            raise ValueError("objective 'dcd' distils a trained Duo model: give it as "
                             "teacher (./train_flowlm.py --objective dcd --teacher tiny-duo)")
        if cfg.dcd_kl not in DCD_KL:
            raise ValueError(f"unknown dcd_kl {cfg.dcd_kl!r}: choose one of {DCD_KL}")
        if cfg.dcd_update_every < 1 or cfg.dcd_base_steps < 1:
            raise ValueError("dcd_update_every and dcd_base_steps must be positive")


def load_teacher(name: str):
    """The teacher model for DCD: a shipped name (``tiny-duo``) or a local folder."""
    from transformers import AutoModelForMaskedLM

    from .loading import SHIPPED, model_path

    path = str(model_path(name)) if name in SHIPPED else name
    return AutoModelForMaskedLM.from_pretrained(path)


def objective_from_config(cfg, tokenizer):
    """The training core's Duo objective for a ``TrainConfig`` (``objective`` "duo" or
    "dcd"): :class:`DuoObjective` or :class:`DCDObjective` over ``len(tokenizer)`` ids."""
    check_duo_config(cfg)
    if cfg.objective == "dcd":
        return make_objective_for(tokenizer, objective="dcd", teacher=load_teacher(cfg.teacher),
                                  update_every=cfg.dcd_update_every,
                                  base_steps=cfg.dcd_base_steps, kl=cfg.dcd_kl,
                                  gamma_min=cfg.duo_gamma_min, gamma_max=cfg.duo_gamma_max)
    return make_objective_for(tokenizer, noise_min=cfg.noise_min, noise_max=cfg.noise_max,
                              tau_start=cfg.tau_start, tau_end=cfg.tau_end,
                              total_steps=cfg.max_steps, loss_kind=cfg.duo_loss,
                              scale=cfg.duo_scale, gamma_min=cfg.duo_gamma_min,
                              gamma_max=cfg.duo_gamma_max)


# ---------------------------------------------------------------------------
# Accuracy against forward passes (09_duo_sampling, 10_few_step_distillation)
# ---------------------------------------------------------------------------


def accuracy_by_passes(model, tokenizer, examples, steps=(1, 2, 4, 8, 16, 32),
                       strategy: str = "duo", progress: bool = False, **options) -> list[dict]:
    """One row per step count: exact-match accuracy with its 95% Wilson interval, forward
    passes per answer, self-corrections per answer
    (:func:`dllm_lesson.evaluate.evaluate_answers` does the decoding and scoring).

    Taught in ``09_duo_sampling`` and ``10_few_step_distillation``. ``options`` go to the
    decoder (``sampler="ancestral"``/``"renoise"`` for Duo, ``remasking=...`` for LLaDA).
    """
    from .evaluate import evaluate_answers

    rows = []
    for k in steps:
        ev = evaluate_answers(model, tokenizer, examples, strategy=strategy, steps=k,
                              progress=progress, **options)
        correct = sum(ok for *_, ok in ev["rows"])
        lo, hi = wilson_interval(correct, ev["n"])
        rows.append({"steps": k, "accuracy": ev["accuracy"], "ci95": [lo, hi], "n": ev["n"],
                     "mean_nfe": ev["mean_nfe"],
                     "corrections_per_answer": ev["corrections_per_answer"],
                     "answers_with_correction": ev["answers_with_correction"],
                     "per_task": ev["per_task"]})
    return rows


def noise_level_readout(model, tokenizer, examples, times=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
                                                         0.7, 0.8, 0.9),
                        schedule: DuoSchedule | None = None, seed: int = 0) -> list[dict]:
    """Can a model without a time input tell how noisy its input is? One forward pass per
    example and time: the answer is corrupted to ``alpha(t)`` (:func:`sample_uniform_state`),
    and we compare the true share of flipped answer tokens with the share of answer tokens
    the model would change (its argmax differs from the token it sees).

    Taught in ``09_duo_sampling``. The paper's DiT takes ``sigma = -log alpha_t`` as an
    input; ModernBERT has no such input. Uniform-state noise leaves its level written in
    ``x_t`` (the share of tokens that do not fit), so a model can read it off; this
    measures how well. Returns one dict per time: ``t``, ``alpha``, ``true_flip``,
    ``read_flip`` (means over examples) and ``abs_error`` (mean per-answer
    ``|read - true|``).
    """
    from .sampling import build_sequence

    schedule = schedule or DuoSchedule(int(noise_allowed(tokenizer).sum()))
    V = model.config.vocab_size
    allowed = noise_allowed(tokenizer, V)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in times:
        alpha = float(schedule.alpha(torch.tensor(t)))
        true, read = [], []
        for ex in examples:
            answer = tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"]
            answer = answer + [tokenizer.sep_token_id]
            ids, a0 = build_sequence(tokenizer, ex.prompt, len(answer))
            x0 = torch.tensor(answer)[None]  # (1, A)
            xt = sample_uniform_state(x0, alpha, allowed, generator=g)  # (1, A)
            ids[0, a0:a0 + len(answer)] = xt[0]
            with torch.no_grad():
                logits = model(input_ids=ids.to(device)).logits[0, a0:a0 + len(answer)]
            pred = model_probs(logits, allowed.to(logits.device)).argmax(-1).cpu()
            true.append(float((xt[0] != x0[0]).float().mean()))
            read.append(float((pred != xt[0]).float().mean()))
        tt, rr = torch.tensor(true), torch.tensor(read)
        out.append({"t": t, "alpha": alpha, "true_flip": float(tt.mean()),
                    "read_flip": float(rr.mean()), "abs_error": float((rr - tt).abs().mean())})
    return out
