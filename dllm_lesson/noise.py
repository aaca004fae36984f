"""Masked corruptions: BERT's 15% masking, LLaDA's variable masking, SFT response masking.

Names used across the course: ``x0`` clean ids (B, L), ``xt`` corrupted ids, ``t`` the
noise level of each row (B,), ``maskable`` the positions a corruption may touch (B, L).
Gaussian / uniform-state (Duo) corruptions live in :mod:`dllm_lesson.duo`.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def bert_mask(x0: torch.Tensor, maskable: torch.Tensor, mask_id: int, vocab_size: int,
              mask_prob: float = 0.15, random_ids: torch.Tensor | None = None,
              generator: torch.Generator | None = None):
    """BERT's corruption: pick ``mask_prob`` of the positions; of those 80% become
    ``[MASK]``, 10% a random token, 10% stay as they are.

    Returns ``(xt, labels)``: ``labels`` holds ``x0`` at the picked positions and
    ``IGNORE_INDEX`` elsewhere, so only picked positions are scored. ``random_ids`` lists
    the ids a random replacement may take (default: every id).
    Taught in ``01_bert_masking``.
    """
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    picked = (u < mask_prob) & maskable.bool()                      # (B, L)
    action = torch.rand(x0.shape, generator=generator, device=x0.device)
    if random_ids is None:
        random_ids = torch.arange(vocab_size, device=x0.device)
    pick = torch.randint(len(random_ids), x0.shape, generator=generator, device=x0.device)
    xt = x0.clone()
    xt[picked & (action < 0.8)] = mask_id                           # 80%: [MASK]
    swap = picked & (action >= 0.8) & (action < 0.9)                # 10%: random token
    xt[swap] = random_ids.to(x0.device)[pick[swap]]
    labels = torch.where(picked, x0, torch.full_like(x0, IGNORE_INDEX))
    return xt, labels


def mask_probability(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """LLaDA's forward process: a token is masked with probability ``(1 - eps) t + eps``."""
    return (1 - eps) * t + eps


def llada_mask(x0: torch.Tensor, maskable: torch.Tensor, mask_id: int, eps: float = 1e-3,
               t: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """LLaDA's variable masking: each row draws ``t ~ U(0, 1)`` and masks each maskable
    token independently with probability ``p = (1 - eps) t + eps``.

    Unlike the seed's script (masks fixed once per example), call this at every training
    step, so the same text is seen at many noise levels.
    Returns ``(xt, masked, p_mask)`` with ``masked`` (B, L) bool and ``p_mask`` (B, 1).
    For SFT pass ``maskable`` = the response tokens: the prompt is never masked.
    Taught in ``02_llada_training``.
    """
    B = x0.shape[0]
    if t is None:
        t = torch.rand(B, generator=generator, device=x0.device)    # (B,)
    p_mask = mask_probability(t, eps)[:, None]                      # (B, 1)
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    masked = (u < p_mask) & maskable.bool()                         # (B, L)
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked, p_mask


def mask_at_ratio(x0: torch.Tensor, maskable: torch.Tensor, mask_id: int, ratio: float,
                  generator: torch.Generator | None = None):
    """Mask exactly ``round(ratio * n)`` of each row's ``n`` maskable tokens (for eval).

    Taught in ``01_bert_masking`` (accuracy against mask ratio).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    scores = torch.rand(x0.shape, generator=generator, device=x0.device)
    scores = scores.masked_fill(~maskable.bool(), 2.0)              # never pick these
    n = maskable.sum(1)                                             # (B,)
    k = torch.round(ratio * n.float()).long()
    rank = scores.argsort(1).argsort(1)                             # rank of each position
    masked = rank < k[:, None]
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked
