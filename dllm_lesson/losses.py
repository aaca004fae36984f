"""Losses of the masked models and of the autoregressive baseline. Duo's losses live in
:mod:`dllm_lesson.duo`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .noise import IGNORE_INDEX


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's loss: cross-entropy on the picked positions only (``labels != -100``).

    "Only the masked tokens contribute to the loss" (the seed). ``logits`` (B, L, V) with
    ``labels`` (B, L), or the logits at the picked positions only, (N, V) with their labels
    (N,) (the training core computes no others: see :func:`training.logits_at`).
    Taught in ``01_bert_masking``.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def llada_loss(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor,
               p_mask: torch.Tensor, maskable: torch.Tensor,
               inverse_t: bool = True) -> torch.Tensor:
    """LLaDA's loss: masked cross-entropy divided by the mask probability, per token.

    .. math:: \\mathcal{L} = \\frac{1}{B}\\sum_b \\frac{1}{n_b}
              \\sum_{i:\\,x_t^i = M} \\frac{-\\log p_\\theta(x_0^i \\mid x_t)}{p_b}

    where ``n_b`` is the number of maskable tokens of row ``b`` (the response length in
    SFT) and ``p_b`` its mask probability. Dividing by ``p_b`` (the "1/t" weight) makes the
    loss an upper bound on the negative log-likelihood; ``inverse_t=False`` drops it
    (plain masked cross-entropy per token).

    ``logits`` is (B, L, V), or (N, V): the logits at the masked positions only, in the
    order of ``masked.nonzero()`` (row by row), which is all the loss reads; the training
    core computes no others (:func:`training.logits_at`).
    Taught in ``02_llada_training``.
    """
    if logits.dim() == 3:
        logits = logits[masked]                                     # (N, V)
    ce = F.cross_entropy(logits.float(), x0[masked], reduction="none")  # (N,)
    n = maskable.sum(1, keepdim=True).clamp(min=1)                  # (B, 1)
    w = 1.0 / (n * x0.shape[0])                                     # (B, 1): mean over rows
    if inverse_t:
        w = w / p_mask                                              # (B, 1)
    return (ce * w.expand_as(masked)[masked]).sum()


def ar_loss(logits: torch.Tensor, x0: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """The autoregressive baseline's loss: next-token cross-entropy, averaged over the
    tokens that carry a loss.

    Position ``i`` predicts token ``i + 1`` from tokens ``0..i`` (the causal mask sees to
    that); ``loss_mask[b, i + 1]`` says whether token ``i + 1`` is scored (the answer's
    tokens in SFT, every token of plain text). One token per forward pass at inference, in
    a fixed left-to-right order: the contrast to masked diffusion. ``logits`` are every
    position's (B, L, V), or (N, V) at the positions ``i`` whose next token is scored (the
    training core computes only those).
    Taught in ``11_ar_vs_diffusion``.
    """
    scored = loss_mask[:, 1:].bool()
    if logits.dim() == 2:   # (N, V): the logits at the scored positions only, row by row
        ce = F.cross_entropy(logits.float(), x0[:, 1:][scored], reduction="sum")
        return ce / scored.sum().clamp(min=1)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), x0[:, 1:], reduction="none")
    w = scored.float()
    return (ce * w).sum() / w.sum().clamp(min=1)
