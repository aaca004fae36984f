"""Infilling: a missing span between a left and a right context.

A masked model sees both sides of a gap at once: put ``[MASK]`` tokens between the two
texts and unmask them, most confident first (the engine's greedy order, one token per
forward pass). A causal model reads left to right only: to use the right context it must
score whole candidate sentences, one forward pass per candidate (a batch), or be trained
for it (fill-in-the-middle). LLaDA reports infilling as one of the things masked
diffusion gets for free. Taught in ``11_ar_vs_diffusion``.
"""

from __future__ import annotations

import torch

__all__ = ["infill_masked", "infill_by_scoring", "sentence_ids"]


def sentence_ids(tokenizer, left: str, middle, right: str) -> list[int]:
    """``[CLS] left middle right [SEP]`` as ids; ``middle`` is text or a list of ids.

    The course tokenizer marks a word's leading space in the token (``" Paris"``), so the
    texts are joined as written: ``left`` ends before the gap's space."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    mid = enc(middle) if isinstance(middle, str) else list(middle)
    return [tokenizer.cls_token_id, *enc(left), *mid, *enc(right), tokenizer.sep_token_id]


@torch.inference_mode()
def infill_masked(model, tokenizer, left: str, right: str, lengths=(1, 2, 3)):
    """Fill the gap between ``left`` and ``right`` with a masked LM.

    For each span length ``n`` in ``lengths`` the gap is ``n`` masks, unmasked one per
    forward pass, the most confident position first; the fill kept is the one whose
    committed tokens the model was surest of (mean log-probability). Returns ``(text,
    forward passes)``: ``sum(lengths)`` passes in all. The model does not know the span's
    length: trying a few and comparing is part of its cost.
    """
    device = next(model.parameters()).device
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("infill_masked needs a masked LM with a [MASK] token; for a causal "
                         "LM use infill_by_scoring")
    specials = torch.tensor(tokenizer.all_special_ids, device=device)
    best, passes = None, 0
    for n in lengths:
        if n < 1:
            raise ValueError(f"span lengths must be >= 1, got {n}")
        x = torch.tensor([sentence_ids(tokenizer, left, [mask_id] * n, right)], device=device)
        gap = (x[0] == mask_id).nonzero()[:, 0]
        logp_sum = 0.0
        for _ in range(n):
            logp = model(input_ids=x).logits[0].float().log_softmax(-1)   # (L, V)
            passes += 1
            logp[:, specials] = -float("inf")                  # words only
            still = gap[x[0, gap] == mask_id]
            conf, tok = logp[still].max(-1)
            i = int(conf.argmax())
            x[0, still[i]] = tok[i]
            logp_sum += float(conf[i])
        score = logp_sum / n
        if best is None or score > best[0]:
            best = (score, tokenizer.decode(x[0, gap]))
    return best[1].strip(), passes


@torch.inference_mode()
def infill_by_scoring(model, tokenizer, left: str, right: str, candidates, batch_size=64):
    """Fill the gap with a causal LM: the candidate whose whole sentence
    ``left + candidate + right`` the model finds most likely (sum of next-token
    log-probabilities). Returns ``(text, forward passes)``: one pass per candidate (in
    batches of ``batch_size`` rows; the passes count rows, as a model call per sentence
    would)."""
    device = next(model.parameters()).device
    candidates = list(candidates)
    if not candidates:
        raise ValueError("infill_by_scoring needs at least one candidate")
    scores = []
    from .training import collate

    for i in range(0, len(candidates), batch_size):
        rows = [sentence_ids(tokenizer, left, " " + c.strip(), right)
                for c in candidates[i:i + batch_size]]
        batch = collate([(ids, [1] * len(ids)) for ids in rows], tokenizer.pad_token_id)
        x, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logp = model(input_ids=x, attention_mask=am).logits.float().log_softmax(-1)
        nxt = logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]          # (R, L - 1)
        scores += (nxt * am[:, 1:]).sum(1).tolist()
    best = max(range(len(candidates)), key=scores.__getitem__)
    return candidates[best], len(candidates)
