"""The decoding engine: every sampling strategy of the course is one loop with settings.

A masked diffusion LM answers by filling a row of ``[MASK]`` tokens. Each step:

1. run the model on the whole sequence (or, with a KV cache, on a window of it);
2. for every answer position, predict a token ``x0_hat`` and its confidence (its
   probability);
3. a *policy* decides what changes: which masked positions are committed this step
   (how many, and chosen by confidence or at random), which committed ones are turned
   back into ``[MASK]`` (strategy ``remask``), or, for Duo's uniform-state sampler, how
   the whole answer is re-noised to the next, lower noise level.

Semi-autoregressive *blocks* restrict step 3 to one block of the answer at a time, left to
right. Strategies only differ in these choices:

=========  =====================================  ===================  ======
strategy   tokens committed per step              chosen by            blocks
=========  =====================================  ===================  ======
greedy     1 (the seed's ``iter_mask_decode``)    highest confidence   no
llada      ``steps`` split over the blocks        confidence / random  yes
threshold  all with confidence >= ``threshold``   confidence           yes
remask     as llada; low ones go back to [MASK]   confidence           yes
duo        every position is predicted again      (no masks)           no
=========  =====================================  ===================  ======

:func:`decode_steps` yields one :class:`Step` record per step: the terminal animation
(:func:`animate`), the notebook widgets, ``eval`` and ``bench`` all read these records.
:func:`generate` returns the final answer text.

Taught in ``03_greedy_decoding`` (greedy), ``04_block_generation_and_kv_cache`` (steps,
blocks, cache), ``05_remasking_and_parallel_decoding`` (random/low-confidence remasking,
threshold, remask) and ``09_duo_sampling`` (duo).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Iterator

import torch

from . import duo
from .modernbert import ModernBert
from .tokenizer import visible_text

STRATEGIES = ("greedy", "llada", "threshold", "remask", "duo", "ar")
#: the strategy for causal (left-to-right) LMs such as tiny-ar; the others need a masked LM
CAUSAL_STRATEGIES = ("ar",)
CACHES = (None, "prefix", "dual")
REMASKING = ("low_confidence", "random")
REMASK_CHECK = ("masked", "visible")
CACHE_REFRESH = ("block", "step")
RENOISE = ("random", "confidence")
SAMPLERS = duo.SAMPLERS                       # duo: ("ancestral", "renoise")


@dataclass
class Step:
    """What one decoding step did. Positions are 0-based indices into the answer.

    ``tokens`` is the answer area after the step (``mask_token_id`` where still masked);
    ``changed`` the positions whose token was set this step; ``remasked`` the positions
    turned back into ``[MASK]`` (strategy ``remask``); ``corrected`` the positions that
    changed after they looked final (``remask``, ``duo``); ``confidence`` the model's
    probability of its prediction at every answer position (a heatmap row); ``nfe`` the
    forward passes so far (a cached window pass counts one); ``block`` the block index.

    Taught in ``03_greedy_decoding``.
    """

    step: int
    tokens: list[int]
    changed: list[int] = field(default_factory=list)
    remasked: list[int] = field(default_factory=list)
    corrected: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    nfe: int = 0
    block: int = 0


# -- the sequence ------------------------------------------------------------------------
def build_sequence(tokenizer, prompt: str, answer_length: int) -> tuple[torch.Tensor, int]:
    """The seed's starting sequence: the chat template with ``answer_length`` masks as the
    assistant message. Returns ``(input_ids (1, L), answer_start)``.

    ``answer_start`` is the first position of the assistant mask; the answer area is
    ``input_ids[0, answer_start : answer_start + answer_length]`` and the template's own
    end token ``[SEP]`` follows it.
    Taught in ``03_greedy_decoding``.
    """
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        raise ValueError("this tokenizer has no mask token: masked diffusion needs one "
                         "(ModernBERT's and the course tokenizer have [MASK])")
    if getattr(tokenizer, "chat_template", None) is None:
        from .tokenizer import ensure_chat_template

        tokenizer = ensure_chat_template(tokenizer)
    assistant_message = tokenizer.mask_token * answer_length
    toks = tokenizer.apply_chat_template(
        [{"content": prompt}, {"content": assistant_message}],
        return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt")
    ids = toks["input_ids"]                                          # (1, L)
    answer_start = int(torch.as_tensor(toks["assistant_masks"])[0].nonzero().min())
    return ids, answer_start


def answer_end(tokenizer, tokens) -> int:
    """Where the answer stops: the index of the first end token ([SEP] / eos) in the
    answer area ``tokens``, or its length if there is none."""
    stops = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None}
    tokens = list(tokens)
    return next((i for i, tok in enumerate(tokens) if tok in stops), len(tokens))


def answer_text(tokenizer, tokens) -> str:
    """The answer text: tokens up to the first end token ([SEP] / eos), specials skipped,
    without the space the first token carries (the chat template puts the answer after
    ``"Assistant:"`` with a space, so that its first word is the same token as in a
    sentence: ``" Paris"``).

    Taught in ``03_greedy_decoding``.
    """
    tokens = list(tokens)
    text = tokenizer.decode(tokens[:answer_end(tokenizer, tokens)], skip_special_tokens=True)
    return text.lstrip(" ")


# -- LLaDA's helpers -----------------------------------------------------------------------
def num_transfer_tokens(mask_count: int, steps: int) -> list[int]:
    """LLaDA's ``get_num_transfer_tokens``: how many masks to commit at each of ``steps``.

    ``mask_count = steps * base + rem``: every step commits ``base``, the first ``rem``
    steps one more. The engine uses the equivalent running form
    ``ceil(masks_left / steps_left)`` (see :func:`commit_count`), which also works when
    re-masking adds masks back.
    Taught in ``04_block_generation_and_kv_cache``.
    """
    base, rem = divmod(mask_count, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def commit_count(masks_left: int, steps_left: int) -> int:
    """Tokens to commit now: ``ceil(masks_left / steps_left)`` (all on the last step).

    Applied step after step it reproduces :func:`num_transfer_tokens`.
    Taught in ``04_block_generation_and_kv_cache``.
    """
    return -(-masks_left // max(steps_left, 1))


def add_gumbel_noise(logits: torch.Tensor, temperature: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-max sampling scores in float64, as LLaDA's ``add_gumbel_noise``.

    LLaDA computes ``exp(logits) / (-log u) ** T`` with ``u ~ U(0, 1)``; its logarithm is
    ``logits + T * g`` with ``g = -log(-log u)`` a Gumbel draw, which has the same argmax
    and cannot overflow. ``argmax(logits / T + g)`` samples from ``softmax(logits / T)``.
    float64 matters: in low precision the noise is rounded and sampling gets skewed.
    Taught in ``05_remasking_and_parallel_decoding``.
    """
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    u = torch.rand(logits.shape, dtype=torch.float64, generator=generator,
                   device=logits.device).clamp_min(1e-300)
    gumbel = -torch.log(-torch.log(u))                               # g ~ Gumbel(0, 1)
    return logits + temperature * gumbel


def _predict(logits: torch.Tensor, current: torch.Tensor, banned: torch.Tensor,
             temperature: float, generator: torch.Generator):
    """Prediction, its confidence and the probability of the current tokens, per row.

    ``logits`` (W, V) for W answer positions; ``current`` (W,) their tokens now.
    Banned ids get probability 0 (not renormalised, so confidences match the seed's).
    """
    probs = torch.softmax(logits.float(), dim=-1)                    # (W, V)
    probs[:, banned] = 0.0
    if temperature == 0:
        conf, x0_hat = probs.max(dim=-1)                             # (W,) first max wins
    else:
        scores = add_gumbel_noise(logits.masked_fill(probs == 0, -math.inf), temperature,
                                  generator)
        x0_hat = scores.argmax(dim=-1)                               # (W,) sampled
        conf = probs.gather(1, x0_hat[:, None])[:, 0]                # LLaDA's x0_p
    current_prob = probs.gather(1, current.clamp(0, probs.shape[1] - 1)[:, None])[:, 0]
    return x0_hat, conf, current_prob


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores; ties go to the lower index (like argmax)."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]


# -- policies: what one step changes -----------------------------------------------------
class _Unmask:
    """Masked strategies: commit some masked positions of the block, maybe re-mask some.

    ``mode``: "schedule" (``ceil(masks left / steps left)`` per step: greedy, llada,
    remask) or "threshold". ``remask``: turn committed low-confidence tokens back into
    ``[MASK]``. ``check``: how a committed token's current confidence is read:
    "visible" from this step's pass, where the model sees the token (a masked model
    mostly copies what it sees, so this rarely fires), or "masked" from one more pass in
    which every other committed token of the block is hidden and predicted again from
    its context (``probe``, counted in the NFE).
    """

    def __init__(self, mask_id, mode, remasking, threshold, remask, remask_threshold,
                 max_remask, check="visible", probe=None):
        self.mask_id, self.mode, self.remasking = mask_id, mode, remasking
        self.threshold, self.remask = threshold, remask
        self.remask_threshold, self.max_remask = remask_threshold, max_remask
        self.check, self.probe = check, probe
        self.remasked_token: dict[int, int] = {}     # position -> token it had before

    def block_done(self, xa, bs, be, k):
        return not bool((xa[bs:be] == self.mask_id).any())

    def update(self, xa, x0_hat, conf, current_prob, bs, be, k, planned, max_steps, gen):
        A = xa.shape[0]
        masked = xa == self.mask_id                                  # (A,)
        in_block = torch.zeros(A, dtype=torch.bool, device=xa.device)
        in_block[bs:be] = True
        candidates = masked & in_block
        if self.mode == "threshold":   # all with conf >= threshold, at least the best one
            n = max(1, int((conf[candidates] >= self.threshold).sum()))
        else:                          # LLaDA's schedule, as a running count
            n = commit_count(int(candidates.sum()), planned - k)
        if self.remasking == "random":
            score = torch.rand(A, generator=gen, device=xa.device)  # LLaDA: x0_p = rand
        else:
            score = conf.clone()                                     # low_confidence
        score[~candidates] = -math.inf
        chosen = _top(score, n)
        new = xa.clone()
        new[chosen] = x0_hat[chosen]
        changed = sorted(chosen.tolist())
        corrected = [i for i in changed
                     if self.remasked_token.pop(i, int(new[i])) != int(new[i])]
        remasked: list[int] = []
        if self.remask and k < max_steps - 1:      # never on a block's last allowed step
            done = ~masked & in_block              # committed before this step: never
                                                   # the ones just committed
            if self.check == "masked":             # ask again with the token hidden
                parity = torch.arange(A, device=xa.device) % 2 == k % 2
                done &= parity                     # every other one: neighbours stay
                if done.any():
                    current_prob = self.probe(new, done)
            low = done & (current_prob < self.remask_threshold)
            pick = _top(-current_prob.masked_fill(~low, math.inf), self.max_remask)
            pick = pick[low[pick]]
            for i in pick.tolist():
                self.remasked_token[i] = int(xa[i])
            new[pick] = self.mask_id
            remasked = sorted(pick.tolist())
        return new, changed, remasked, corrected


class _Autoregressive:
    """Strategy ``"ar"`` for a causal LM (``tiny-ar``): step ``k`` commits answer position
    ``k`` from the logits one position to its left (the causal model's next-token
    prediction), so one token per forward pass, strictly left to right; it stops after
    the end token and fills the rest of the answer area with it. The [MASK]s still to the
    right are placeholders the causal model never attends to.
    """

    def __init__(self, end_id: int):
        self.end_id = end_id

    def block_done(self, xa, bs, be, k):
        return k >= be - bs or (k > 0 and int(xa[bs + k - 1]) == self.end_id)

    def update(self, xa, x0_hat, conf, current_prob, bs, be, k, planned, max_steps, gen):
        i = bs + k
        new = xa.clone()
        new[i] = x0_hat[i]
        if int(new[i]) == self.end_id:
            new[i + 1:be] = self.end_id
        return new, [i], [], []


def _duo_flip(k: int, steps: int, V: int) -> float:
    return (V - 1) / V * (1 - (k + 1) / steps)


@lru_cache(maxsize=64)
def _duo_noise_levels(steps: int, V: int) -> tuple[float, ...]:
    """The noise weights after steps ``0 .. steps-2`` (the last step keeps the
    prediction). Each one inverts the flip-probability integral numerically, so they are
    computed once per (steps, V) rather than once per answer."""
    flips = [_duo_flip(k, steps, V) for k in range(steps - 1)]
    return tuple(float(s) for s in duo.noise_for_flip(flips, V)) if flips else ()


class _Duo:
    """Duo's uniform-state sampler. Tokens live in ``allowed`` (bool (V,): every id but the
    specials, [SEP] kept), V' of them; the answer starts as uniformly random tokens.

    ``sampler="ancestral"`` (the paper's, the default): at step ``k`` (time ``t = 1 -
    k/steps``), ``x_s ~ q(x_s | x_t, x_theta)``, the uniform-state posterior
    (:func:`dllm_lesson.duo.ancestral_step`), on the training schedule
    (:func:`dllm_lesson.duo.sampler_alphas`); the last step takes the argmax of
    ``x_theta`` (greedy). The posterior gives ``x_t``'s own tokens extra weight.
    ``x_theta`` follows the engine's ``temperature``: 0 (default) plugs in the one-hot of
    the argmax prediction (which positions move stays random, what they move to is the
    model's best guess); ``T > 0`` the model's distribution ``softmax(logits / T)``
    (``T = 1``: the paper's sampler exactly).

    ``sampler="renoise"`` (the seed's): predict the clean answer, then re-noise the
    prediction to the next lower noise level, ignoring ``x_t``; the last step keeps the
    prediction. The flip probability after step ``k`` falls linearly from ``(V'-1)/V'``
    to 0: ``p_k = (V'-1)/V' * (1 - (k+1)/steps)``, ``w_k = noise_for_flip(p_k, V')``.
    ``renoise="random"``: the Gaussian-argmax corruption (random positions);
    ``"confidence"``: the same number of random tokens on the least confident positions.

    The loop hands it each pass's logits of its row as ``self.logits`` (W, V).
    """

    def __init__(self, allowed: torch.Tensor, steps: int, renoise: str = "random",
                 sampler: str = "renoise", temperature: float = 0.0):
        self.renoise, self.sampler, self.temperature = renoise, sampler, temperature
        self.allowed = allowed                                       # (V,) bool
        self.allowed_ids = allowed.nonzero()[:, 0]                   # (V',)
        self.steps = steps
        if sampler == "renoise":
            self.noise = list(_duo_noise_levels(steps, len(self.allowed_ids)))
        else:
            self.alphas = duo.sampler_alphas(steps, duo.DuoSchedule(len(self.allowed_ids)))
        self.logits: torch.Tensor | None = None                      # last pass (W, V)
        self.previous: torch.Tensor | None = None                    # last x0_hat (A,)
        self.stable: torch.Tensor | None = None                      # run lengths (A,)

    def block_done(self, xa, bs, be, k):
        return k >= self.steps

    def flip(self, k: int) -> float:
        """Flip probability of the answer after step ``k`` (0-based), ``renoise``."""
        return _duo_flip(k, self.steps, len(self.allowed_ids))

    def update(self, xa, x0_hat, conf, current_prob, bs, be, k, planned, max_steps, gen):
        # corrected: the prediction changed after it had been stable for >= 2 steps
        if self.previous is None:
            self.stable = torch.ones_like(x0_hat)
            corrected = []
        else:
            moved = x0_hat != self.previous                          # (A,)
            corrected = (moved & (self.stable >= 2)).nonzero()[:, 0].tolist()
            self.stable = torch.where(moved, 1, self.stable + 1)
        self.previous = x0_hat.clone()
        if k >= self.steps - 1:                    # last step: the prediction itself
            new = x0_hat.clone()
        elif self.sampler == "ancestral":          # x_s ~ q(x_s | x_t, x_theta)
            alpha_t, alpha_s = self.alphas[k]
            if self.temperature == 0:              # x_theta = the argmax prediction
                x0_probs = torch.nn.functional.one_hot(x0_hat, len(self.allowed)).float()
            else:                                  # x_theta = softmax(logits / T)
                x0_probs = duo.model_probs(self.logits / self.temperature, self.allowed)
            new = duo.ancestral_step(x0_probs, xa, alpha_s, alpha_t, self.allowed, gen,
                                     probs=True)
        elif self.renoise == "confidence":
            # as many random tokens as the noise level implies (p_k * A), placed on the
            # positions the model is least sure of rather than on random ones
            n = round(self.flip(k) * len(x0_hat))
            new = x0_hat.clone()
            if n > 0:
                weak = conf.argsort()[:n]                            # (n,)
                pick = torch.randint(len(self.allowed_ids), (n,), generator=gen,
                                     device=gen.device)
                new[weak] = self.allowed_ids[pick.to(self.allowed_ids.device)]
        else:                                      # x_s = argmax(c e_x0_hat + s z)
            s = self.noise[k]                      # c = 1 - s
            new = duo.corrupt(x0_hat[None], s, len(self.allowed), generator=gen,
                              allowed=self.allowed)[0]               # (A,)
        changed = (new != xa).nonzero()[:, 0].tolist()
        return new, changed, [], corrected


# -- the model, with or without a KV cache -------------------------------------------------
class _Forward:
    """Calls the model, counts forward passes (NFE, per row) and hides the KV cache.

    No cache: a full forward each step. ``prefix`` / ``dual``: at a block's start
    ``build_cache`` runs the full sequence and stores every layer's K and V; later steps
    of the block recompute only a window (``prefix``: block start to the end of the
    sequence; ``dual``: the block alone) against the cached K, V of everything else.
    ``refresh="step"`` rebuilds the cache every step, which is the uncached computation.

    A batch is left-padded (``pads[r]`` padding tokens before row ``r``), so that every
    row's answer starts at the same index and one window serves all rows; each call runs
    the rows ``rows`` that still decode (a row that finished its block waits). The
    ``attention_mask`` hides the padding and ``position_ids`` give each row the positions
    it has alone; the library's ModernBERT also computes attention row by row
    (``per_row``), so that a row's logits are bit for bit those it gets alone.
    """

    def __init__(self, model, cache, refresh, answer_start, answer_length, pads=(0,),
                 attention_mask=None, position_ids=None, shift=0):
        self.model, self.cache, self.refresh = model, cache, refresh
        self.shift = shift   # 1 for a causal LM: position i's logits predict token i + 1
        self.a0, self.A = answer_start, answer_length
        self.pads = list(pads)
        self.mask, self.positions = attention_mask, position_ids        # (B, L) or None
        self.per_row = isinstance(model, ModernBert)
        self.kv, self.kv_rows = None, None
        self.nfe = [0] * len(self.pads)

    def new_block(self):
        self.kv, self.kv_rows = None, None

    def _inputs(self, x, rows):
        """The rows' input ids and the padding keywords (none for an unpadded batch)."""
        if len(rows) == x.shape[0]:
            idx = None
        else:
            idx = torch.tensor(rows, device=x.device)
            x = x[idx]
        if self.mask is None:
            return x, {}
        pick = (lambda t: t) if idx is None else (lambda t: t[idx])
        kw = dict(attention_mask=pick(self.mask), position_ids=pick(self.positions))
        if self.per_row:
            kw["per_row"] = True
        return x, kw

    def __call__(self, x: torch.Tensor, rows: list[int], bs: int, be: int):
        """Logits of answer positions ``lo:hi`` of the batch rows ``rows``:
        ``(lo, hi, logits (len(rows), hi - lo, V))``."""
        a0, A = self.a0, self.A
        for r in rows:
            self.nfe[r] += 1
        xr, kw = self._inputs(x, rows)
        if self.cache is None:
            span = (a0 - self.shift, a0 + A - self.shift)
            if self.per_row:   # the head only where the answer's logits are read
                return 0, A, self.model(input_ids=xr, head_at=span, **kw).logits
            logits = self.model(input_ids=xr, **kw).logits           # (R, L, V)
            return 0, A, logits[:, span[0]:span[1]]
        if self.kv is None or self.refresh == "step":
            if self.per_row:   # the head only at the answer
                kw["head_at"] = (a0, a0 + A)
            logits, self.kv = self.model.build_cache(xr, **kw)      # (R, A or L, V)
            self.kv_rows = list(rows)
            return 0, A, logits if self.per_row else logits[:, a0:a0 + A]
        if rows != self.kv_rows:   # rows that finished the block leave the cache
            self.kv = self.kv.select([self.kv_rows.index(r) for r in rows])
            self.kv_rows = list(rows)
        lo = a0 + bs
        hi = x.shape[1] if self.cache == "prefix" else a0 + be
        end = min(hi, a0 + A)                                        # drop the final [SEP]
        window = xr[:, lo:hi]
        if self.per_row:
            logits = self.model.forward_window(window, lo, self.kv, head_at=(0, end - lo))
        else:
            logits = self.model.forward_window(window, lo, self.kv)[:, :end - lo]
        return bs, end - a0, logits                                  # (R, end - lo, V)

    def probe(self, x, mask_id, row, answer, hide):
        """One more full pass of row ``row`` (alone, without its padding) with the
        ``hide`` answer positions masked: the probability of each answer token given
        everything else, ``p(answer_i | x without it)`` (A,)."""
        pad = self.pads[row]
        a0, A = self.a0 - pad, self.A
        xp = x[row:row + 1, pad:].clone()                             # (1, L_row)
        xp[0, a0:a0 + A] = answer.masked_fill(hide, mask_id)
        self.nfe[row] += 1
        logits = self.model(input_ids=xp).logits[0, a0:a0 + A]       # (A, V)
        probs = torch.softmax(logits.float(), dim=-1)                # (A, V)
        return probs.gather(1, answer[:, None])[:, 0]


# -- settings ------------------------------------------------------------------------------
def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return value or getattr(model, "max_position_embeddings", None)


def _check(model, tokenizer, answer_length, strategy, steps, block_length,
           remasking, temperature, threshold, remask_threshold, max_remask, remask_check,
           cache, cache_refresh, renoise=None, sampler=None):
    """Every ValueError a reader may trigger through the settings, each with what to do
    instead (the prompts are checked by :func:`_sequence`)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {STRATEGIES}")
    causal = _is_causal(model)
    if causal and strategy not in CAUSAL_STRATEGIES:
        raise ValueError(f"this is a causal (autoregressive) LM: it writes left to right, one "
                         f"token per pass, and cannot fill masks; use strategy='ar', not "
                         f"{strategy!r}")
    if strategy in CAUSAL_STRATEGIES:
        if not causal:
            raise ValueError("strategy 'ar' needs a causal LM such as load_model('tiny-ar'); "
                             "this is a masked LM: use a masked strategy (greedy, llada, "
                             "threshold, remask) or duo")
        if (steps, block_length) != (None, None) or cache is not None:
            raise ValueError("strategy 'ar' writes one token per pass, left to right: it "
                             "takes no steps, block_length or cache")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {SAMPLERS} "
                         "(strategy='duo')")
    if renoise is not None and renoise not in RENOISE:
        raise ValueError(f"unknown renoise {renoise!r}: choose one of {RENOISE}")
    if sampler == "ancestral" and renoise is not None:
        raise ValueError(f"renoise={renoise!r} belongs to sampler='renoise' (the seed's "
                         "predict-and-renoise); the ancestral sampler has no renoise option")
    if strategy != "duo" and (sampler, renoise) != (None, None):
        raise ValueError("sampler and renoise are options of strategy='duo'")
    if not isinstance(answer_length, int) or answer_length <= 0:
        raise ValueError(f"answer_length must be a positive integer, got {answer_length!r}")
    if steps is not None and (not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if block_length is not None and (not isinstance(block_length, int)
                                     or block_length <= 0):
        raise ValueError(f"block_length must be a positive integer, got {block_length!r}")
    if strategy == "greedy" and (steps, block_length) != (None, None):
        raise ValueError("greedy commits one token per step over the whole answer: it "
                         "takes no steps or block_length; use strategy='llada' for those")
    if strategy == "threshold" and steps is not None:
        raise ValueError("threshold takes as many steps as its threshold needs: drop "
                         "steps, or use strategy='llada' for a fixed number of steps")
    if strategy == "duo" and block_length is not None:
        raise ValueError("duo refines the whole answer at once: it takes no block_length")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not 0.0 <= remask_threshold <= 1.0:
        raise ValueError(f"remask_threshold must be in [0, 1], got {remask_threshold}")
    if max_remask < 0:
        raise ValueError(f"max_remask must be >= 0, got {max_remask}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = argmax), got {temperature}")
    if remask_check not in REMASK_CHECK:
        raise ValueError(f"unknown remask_check {remask_check!r}: choose one of "
                         f"{REMASK_CHECK}")
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}: choose one of {REMASKING}")
    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}: choose one of {CACHES}")
    if cache_refresh not in CACHE_REFRESH:
        raise ValueError(f"unknown cache_refresh {cache_refresh!r}: choose one of "
                         f"{CACHE_REFRESH}")
    if cache is not None:
        if strategy == "duo":
            raise ValueError("cache works with the block strategies (greedy, llada, "
                             "threshold, remask), not with duo: use cache=None")
        if not (hasattr(model, "build_cache") and hasattr(model, "forward_window")):
            raise ValueError(f"cache={cache!r} needs the library's ModernBERT with a KV "
                             "cache: load the model with load_model(..., backend='lesson')")
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        raise ValueError("this tokenizer has no mask token: masked diffusion needs one "
                         "(ModernBERT's and the course tokenizer have [MASK])")


def _is_causal(model) -> bool:
    from .loading import is_causal

    config = getattr(model, "config", None)
    return config is not None and is_causal(config)


def _sequence(model, tokenizer, prompt, answer_length, row=None):
    """One prompt's starting sequence ``(input_ids (1, L), answer_start)``, with a clear
    error for an empty prompt or one too long for the model (naming the batch row)."""
    where = "" if row is None else f"prompt {row} of the batch: "
    if not isinstance(prompt, str):
        raise ValueError(f"{where}a prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where}the prompt is empty: write a question or instruction")
    ids, answer_start = build_sequence(tokenizer, prompt, answer_length)
    max_pos = _max_positions(model)
    if max_pos is not None and ids.shape[1] > max_pos:
        empty, _ = build_sequence(tokenizer, "", answer_length)
        if empty.shape[1] > max_pos:
            raise ValueError(
                f"answer_length={answer_length} does not fit: with the chat template the "
                f"sequence has {empty.shape[1]} tokens but the model takes at most "
                f"{max_pos} (max_position_embeddings); use a smaller answer_length")
        room = answer_length - (ids.shape[1] - max_pos)
        hint = f" or use answer_length <= {room}" if room > 0 else ""
        raise ValueError(
            f"{where}prompt too long: prompt + answer = {ids.shape[1]} tokens, the model "
            f"takes at most {max_pos} (max_position_embeddings); shorten the prompt{hint}")
    return ids, answer_start


def _batch(model, tokenizer, prompts, answer_length, single):
    """Left-padded batch of the prompts' sequences: ``(input_ids (B, L), answer_start,
    pads, attention_mask, position_ids)``; the last two are None when no row is padded.

    Left padding puts every answer area at the same indices (the template's tail after
    the answer is the same for every prompt); ``position_ids`` count each row's own
    tokens from 0, so each row sees the positions it has alone.
    """
    seqs = [_sequence(model, tokenizer, p, answer_length, None if single else i)
            for i, p in enumerate(prompts)]
    tails = {ids.shape[1] - a0 - answer_length for ids, a0 in seqs}
    if len(tails) != 1:
        raise ValueError("the chat template ends answers differently for these prompts; "
                         "decode them one at a time")
    L = max(ids.shape[1] for ids, _ in seqs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    x = torch.full((len(seqs), L), pad_id, dtype=torch.long)         # (B, L)
    pads = [L - ids.shape[1] for ids, _ in seqs]
    for r, (ids, _) in enumerate(seqs):
        x[r, pads[r]:] = ids[0]
    answer_start = L - tails.pop() - answer_length
    if not any(pads):
        return x, answer_start, pads, None, None
    mask = (torch.arange(L)[None, :] >= torch.tensor(pads)[:, None]).long()   # (B, L)
    positions = (mask.cumsum(1) - 1).clamp_min(0)                    # (B, L)
    return x, answer_start, pads, mask, positions


def _blocks(answer_length: int, block_length: int | None) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering the answer; the last block may be shorter."""
    size = block_length or answer_length
    return [(s, min(s + size, answer_length)) for s in range(0, answer_length, size)]


def _split_steps(steps: int, blocks) -> list[int]:
    """``steps`` split evenly over the blocks (earlier blocks take the remainder), each
    block at most one step per token."""
    base, rem = divmod(steps, len(blocks))
    return [min(base + (1 if b < rem else 0), be - bs) for b, (bs, be) in enumerate(blocks)]


def decode_steps(model, tokenizer, prompt: str | list[str], answer_length: int = 64,
                 strategy: str = "greedy", *, steps: int | None = None,
                 block_length: int | None = None, remasking: str = "low_confidence",
                 temperature: float = 0.0, threshold: float = 0.9,
                 remask_threshold: float = 0.9, max_remask: int = 2,
                 remask_extra_steps: int | None = None, remask_check: str = "visible",
                 sampler: str | None = None, renoise: str | None = None,
                 cache: str | None = None, cache_refresh: str = "block",
                 seed: int = 0) -> Iterator[Step]:
    """Decode an answer step by step; yields one :class:`Step` per model step.

    prompt
        a string, or a list of strings decoded together as one batch. For a list, each
        model step yields a list with one entry per prompt: its :class:`Step`, or None
        when that row did not step (it finished, or finished its block and waits for the
        others). Row ``i``'s records (the non-None ones) are identical to those of
        decoding ``prompt[i]`` alone with the same settings and seed: every row keeps
        its own random generator, own step count and own policy; threshold rows commit
        their own counts; the batch is left-padded with an attention mask (see
        :class:`_Forward`; bit-exact with ``backend="lesson"``, to float noise with
        transformers' model).

    strategy
        ``"greedy"``: the seed's ``iter_mask_decode``, one token per step, the most
        confident masked position, no blocks. ``"llada"``: ``steps`` in total (default
        ``answer_length``) split evenly over blocks of ``block_length`` (default: one
        block), ``remasking="low_confidence"`` (commit the most confident) or
        ``"random"``. ``"threshold"``: commit every masked position of the block whose
        confidence is ``>= threshold``, at least the best one. ``"remask"``: as llada
        with low confidence, and each step up to ``max_remask`` committed tokens of the
        block whose probability fell below ``remask_threshold`` become ``[MASK]`` again
        (each block may take ``remask_extra_steps`` more steps than planned, default
        half its steps, so it ends). ``remask_check="visible"`` reads that probability
        from the step's own pass, where the model sees the token (a masked model mostly
        copies what it sees: probabilities stay near 1, hence the high default
        threshold); ``"masked"`` from one extra pass per step in which every other
        committed token of the block is hidden and predicted again (NFE ~ 2 x steps).
        ``"duo"``: uniform-state sampler, ``steps`` (default 32), starting from random
        tokens. ``sampler="ancestral"`` (the default; the Duo paper's): each step draws
        ``x_s ~ q(x_s | x_t, x_theta)``, the uniform-state posterior, which keeps
        ``x_t``'s tokens unless the model disagrees; the last step is greedy.
        ``sampler="renoise"`` (the seed's predict-and-renoise): each step's prediction is
        re-noised to the next level, ignoring ``x_t``; with ``renoise="random"`` (its
        default) by the Gaussian-argmax corruption, so random positions become random
        tokens; ``"confidence"``: the same number of random tokens go to the positions
        the model is least sure of. Giving ``renoise`` alone implies
        ``sampler="renoise"`` (older code keeps working).
        ``"ar"``: the autoregressive baseline (a causal LM such as ``tiny-ar``): one
        token per forward pass, left to right, stopping at the end token (taught in
        ``11_ar_vs_diffusion``).
    temperature
        0: argmax. > 0: Gumbel-max sampling in float64 (:func:`add_gumbel_noise`).
    cache
        ``None``, ``"prefix"`` or ``"dual"`` (needs ``load_model(..., backend="lesson")``);
        rebuilt at each block's start (``cache_refresh="block"``) or every step
        (``"step"``, same tokens as no cache).
    seed
        seeds random remasking, temperature sampling and duo's noise.

    Bad settings raise ``ValueError`` here, before the first step.
    Taught in ``03_greedy_decoding``, ``04_block_generation_and_kv_cache``,
    ``05_remasking_and_parallel_decoding`` and ``09_duo_sampling``.
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        raise ValueError("no prompts: pass a string or a non-empty list of strings")
    _check(model, tokenizer, answer_length, strategy, steps, block_length, remasking,
           temperature, threshold, remask_threshold, max_remask, remask_check, cache,
           cache_refresh, renoise, sampler)
    ids, answer_start, pads, attention_mask, position_ids = _batch(
        model, tokenizer, prompts, answer_length, single)
    A = answer_length
    mask_id = tokenizer.mask_token_id
    device = next(model.parameters()).device
    vocab = model.config.vocab_size if hasattr(model, "config") else len(tokenizer)
    banned = torch.tensor([mask_id], device=device)
    if strategy in ("greedy", "duo", "ar"):
        blocks = [(0, A)]
    else:
        blocks = _blocks(A, block_length)
    if strategy in ("greedy", "ar"):
        planned = [A]
    elif strategy == "duo":
        planned = [steps or 32]
    else:
        n_steps = steps or A
        if len(blocks) > n_steps:
            raise ValueError(f"more blocks than steps: {len(blocks)} blocks of "
                             f"{block_length} tokens need steps >= {len(blocks)}, got "
                             f"{n_steps}; use more steps or a larger block_length")
        planned = _split_steps(n_steps, blocks)
    max_steps = list(planned)
    if strategy == "threshold":
        max_steps = [be - bs for bs, be in blocks]
    elif strategy == "remask":
        extra = [remask_extra_steps if remask_extra_steps is not None else -(-n // 2)
                 for n in planned]
        max_steps = [n + e for n, e in zip(planned, extra)]

    if strategy == "duo":
        allowed = torch.zeros(vocab, dtype=torch.bool, device=device)   # (V,)
        allowed[:len(tokenizer)] = True
        allowed[[i for i in tokenizer.all_special_ids
                 if i != tokenizer.sep_token_id and i < vocab]] = False
        banned = (~allowed).nonzero()[:, 0]

        sampler = sampler or ("renoise" if renoise is not None else "ancestral")

        def new_policy():
            return _Duo(allowed, planned[0], renoise or "random", sampler, temperature)
    elif strategy == "ar":
        end_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None \
            else tokenizer.eos_token_id

        def new_policy():
            return _Autoregressive(end_id)
    else:
        def new_policy():
            return _Unmask(mask_id, "threshold" if strategy == "threshold" else "schedule",
                           remasking if strategy == "llada" else "low_confidence",
                           threshold, strategy == "remask", remask_threshold, max_remask,
                           remask_check)

    x = ids.to(device)                                               # (B, L)

    def moved(t):
        return None if t is None else t.to(device)

    forward = _Forward(model, cache, cache_refresh, answer_start, A, pads,
                       moved(attention_mask), moved(position_ids),
                       shift=1 if strategy == "ar" else 0)
    policies = [new_policy() for _ in prompts]                       # one per row
    if strategy == "remask":
        for r, policy in enumerate(policies):
            policy.probe = partial(forward.probe, x, mask_id, r)
    records = _loop(forward, x, answer_start, A, blocks, planned, max_steps, policies,
                    banned, temperature, seed, strategy == "duo")
    return (row[0] for row in records) if single else records


@torch.inference_mode()
def _loop(forward, x, a0, A, blocks, planned, max_steps, policies, banned, temperature,
          seed, start_random) -> Iterator[list[Step | None]]:
    """THE loop: blocks left to right; in each, predict then let the policy update.

    ``x`` (B, L) holds B rows; each has its own policy, generator and step count, and
    steps while its block has work left. Yields per model step a list with each row's
    :class:`Step` (None for a row that did not step)."""
    device = x.device
    B = x.shape[0]
    gens = [torch.Generator(device=device).manual_seed(seed) for _ in range(B)]
    if start_random:                              # duo: x_T is uniformly random tokens
        for r in range(B):
            ids = policies[r].allowed_ids
            x[r, a0:a0 + A] = ids[torch.randint(len(ids), (A,), generator=gens[r],
                                                device=device)]
    confidence = torch.zeros(B, A, device=device)                    # (B, A)
    x0_hat = x[:, a0:a0 + A].clone()                                 # (B, A)
    current_prob = torch.zeros(B, A, device=device)                  # (B, A)
    n = [0] * B
    for b, (bs, be) in enumerate(blocks):
        forward.new_block()
        k = [0] * B                                                  # steps in block
        rows = list(range(B))
        while True:
            rows = [r for r in rows if k[r] < max_steps[b]
                    and not policies[r].block_done(x[r, a0:a0 + A], bs, be, k[r])]
            if not rows:
                break
            lo, hi, logits = forward(x, rows, bs, be)                # (R, hi - lo, V)
            out: list[Step | None] = [None] * B
            for j, r in enumerate(rows):
                xa = x[r, a0:a0 + A]                                 # (A,) answer now
                x0_hat[r, lo:hi], confidence[r, lo:hi], current_prob[r, lo:hi] = _predict(
                    logits[j], xa[lo:hi], banned, temperature, gens[r])
                policies[r].logits = logits[j]                       # (hi - lo, V)
                new, changed, remasked, corrected = policies[r].update(
                    xa, x0_hat[r], confidence[r], current_prob[r], bs, be, k[r],
                    planned[b], max_steps[b], gens[r])
                x[r, a0:a0 + A] = new
                k[r] += 1
                n[r] += 1
                out[r] = Step(step=n[r], tokens=new.tolist(), changed=changed,
                              remasked=remasked, corrected=corrected,
                              confidence=confidence[r].tolist(), nfe=forward.nfe[r],
                              block=b)
            yield out


def final_steps(records) -> list[Step]:
    """The last :class:`Step` of every row of a batched :func:`decode_steps` run.

    Taught in ``03_greedy_decoding``.
    """
    last: list[Step | None] = []
    for row in records:
        last = [s if s is not None else old for s, old in
                zip(row, last or [None] * len(row))]
    return last


def generate(model, tokenizer, prompt: str | list[str], answer_length: int = 64,
             strategy: str = "greedy", **options) -> str | list[str]:
    """The answer text, cut at the first [SEP] / eos token (options: :func:`decode_steps`).

    A list of prompts is decoded as one batch and gives a list of answers, each the one
    the prompt gets alone.
    Taught in ``03_greedy_decoding``.
    """
    records = decode_steps(model, tokenizer, prompt, answer_length, strategy, **options)
    if isinstance(prompt, str):
        last = None
        for last in records:
            pass
        return answer_text(tokenizer, last.tokens)
    return [answer_text(tokenizer, s.tokens) for s in final_steps(records)]


# -- the terminal animation ----------------------------------------------------------------
_DIM, _GREEN, _RED, _RESET = "\x1b[2m", "\x1b[32m", "\x1b[31m", "\x1b[0m"
MASK_GLYPH = "_"


def render(tokenizer, step: Step, colour: bool = False) -> str:
    """One answer row as text: masks as ``_`` (dim), end/special tokens hidden, new
    tokens green and corrected ones red when ``colour``; newlines shown as ``\\n`` and
    control characters as visible glyphs (:func:`dllm_lesson.tokenizer.visible_text`).

    Taught in ``03_greedy_decoding``.
    """
    mask_id = tokenizer.mask_token_id
    specials = set(tokenizer.all_special_ids)
    new, fixed = set(step.changed), set(step.corrected)
    parts = []
    for i, tok in enumerate(step.tokens):
        if tok == mask_id:
            text, style = MASK_GLYPH, _DIM
        elif tok in specials:
            text, style = "", ""
        else:
            text = visible_text(tokenizer.decode([tok])).replace("\n", "\\n")
            if i == 0:   # the answer's leading space (see answer_text)
                text = text.lstrip(" ")
            style = _RED if i in fixed else _GREEN if i in new else ""
        parts.append(f"{style}{text}{_RESET}" if colour and style and text else text)
    return "".join(parts)


def animate(model, tokenizer, prompt: str, answer_length: int = 64,
            strategy: str = "greedy", delay: float = 0.05, stream=None,
            verbose: bool = False, **options) -> str:
    """De-mask in the terminal, like the seed's ``demo_inference``; returns the answer.

    On a terminal the answer row is redrawn every step (ANSI colours, masks dim). On
    anything else (a file, a pipe, a notebook) no escape codes are written: only the final
    answer line, or one line per step with ``verbose=True``.
    Taught in ``03_greedy_decoding``.
    """
    stream = sys.stdout if stream is None else stream
    tty = bool(getattr(stream, "isatty", lambda: False)())
    records = decode_steps(model, tokenizer, prompt, answer_length, strategy, **options)
    stream.write(f"User: {prompt}\n")                  # after the settings were checked
    prefix = "Assistant: "
    rows_drawn = 0
    last = None
    for last in records:
        if tty:
            width = max(shutil.get_terminal_size().columns, 20)
            plain = prefix + render(tokenizer, last)
            up = f"\x1b[{rows_drawn}A" if rows_drawn else ""
            stream.write(f"{up}\r\x1b[J{prefix}{render(tokenizer, last, colour=True)}")
            stream.flush()
            rows_drawn = (len(plain) - 1) // width
            time.sleep(delay)
        elif verbose:
            row = render(tokenizer, last)
            stream.write(f"step {last.step:>3} nfe {last.nfe:>3}  {row}\n")
    answer = answer_text(tokenizer, last.tokens)
    if tty:                                       # the last frame becomes the plain answer
        stream.write((f"\x1b[{rows_drawn}A" if rows_drawn else "") + "\r\x1b[J")
    stream.write(f"{prefix}{answer}\n")
    stream.flush()
    return answer


def main_generate(argv=None) -> int:
    """``python -m dllm_lesson generate [--model NAME] "PROMPT" ["PROMPT" ...]
    [--strategy ...]`` (``--prompt TEXT`` works too). One prompt: the de-masking is
    animated; several: they are decoded together as one batch and each answer printed.

    Taught in ``03_greedy_decoding``.
    """
    p = argparse.ArgumentParser(
        prog="python -m dllm_lesson generate",
        description="Animate de-masking and print the answer; several prompts are decoded "
                    "as one batch.")
    p.add_argument("prompts", nargs="*", metavar="PROMPT",
                   help='e.g. "What is the capital of Kenya?"')
    p.add_argument("--model", default="tiny-dllm",
                   help="shipped name (tiny-dllm, tiny-duo, ...), hub id or folder")
    p.add_argument("--prompt", action="append", default=[],
                   help="a prompt (repeatable), same as the positional PROMPT")
    p.add_argument("--strategy", default=None, choices=STRATEGIES,
                   help="default: greedy, or ar for a causal LM such as tiny-ar")
    p.add_argument("--answer-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--remasking", default="low_confidence", choices=REMASKING)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--cache", default=None, choices=["prefix", "dual"])
    p.add_argument("--backend", default=None, choices=["transformers", "lesson"],
                   help="default: lesson with --cache or several prompts (batches are then "
                   "bit-exact per row), else transformers")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.05, help="seconds between frames")
    p.add_argument("--verbose", action="store_true",
                   help="one line per step when the output is not a terminal")
    args = p.parse_args(argv)
    prompts = args.prompts + args.prompt
    if not prompts:
        p.error('give a prompt: python -m dllm_lesson generate "What is the capital of '
                'Kenya?"')
    from .loading import load_model

    batch = len(prompts) > 1
    if args.backend:
        backend = args.backend
    elif args.cache or batch:       # the lesson backend, unless the model is causal
        from .loading import model_backend

        backend = model_backend(args.model)
    else:
        backend = "transformers"
    model, tokenizer = load_model(args.model, device=args.device, backend=backend)
    if tokenizer is None:
        p.error(f"{args.model} has no tokenizer files: generation needs one")
    options = dict(steps=args.steps, block_length=args.block_length,
                   threshold=args.threshold, remasking=args.remasking,
                   temperature=args.temperature, cache=args.cache, seed=args.seed)
    strategy = args.strategy or (CAUSAL_STRATEGIES[0] if _is_causal(model) else "greedy")
    try:
        if not batch:
            animate(model, tokenizer, prompts[0], args.answer_length, strategy,
                    delay=args.delay, verbose=args.verbose, **options)
            return 0
        answers = generate(model, tokenizer, prompts, args.answer_length, strategy, **options)
    except ValueError as e:
        p.error(str(e))
    for prompt, answer in zip(prompts, answers):
        print(f"User: {prompt}\nAssistant: {answer}\n")
    return 0
