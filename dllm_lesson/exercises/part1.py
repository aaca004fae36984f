"""Exercises of notebooks 00-03: masked diffusion, BERT masking, LLaDA training, greedy
decoding.

Each exercise is a slow, obvious reference (the ``*_reference`` functions) and a checker
``_check_<name>(candidate, reference)`` that draws random inputs from a seeded generator
and raises ``AssertionError`` with the first input where the two disagree. Notebooks
call ``check("<name>", my_function)``; ``tests/test_exercises_part1.py`` runs every
checker against its reference and against plausible wrong answers.
"""

from __future__ import annotations

import random

import torch

from ..noise import IGNORE_INDEX
from ..sampling import Step
from . import exercise

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _fail(name: str, inputs: str, got, expected) -> AssertionError:
    return AssertionError(f"{name}: wrong answer for {inputs}\n  yours:    {got}\n"
                          f"  expected: {expected}")


def _as_list(value) -> list:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return [int(v) for v in value]


def _close(a, b, atol=1e-5, rtol=1e-5) -> bool:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol))


# ---------------------------------------------------------------------------------------
# 00_welcome
# ---------------------------------------------------------------------------------------


def fill_order_reference(steps) -> list[int]:
    """For each answer position, the step number (1-based, ``Step.step``) at which it was
    filled; 0 for a position no step filled.

    Taught in ``00_welcome``.
    """
    order = [0] * len(steps[0].tokens)
    for s in steps:
        for pos in s.changed:       # the positions this step set
            order[pos] = s.step
    return order


def _random_greedy_steps(rng: random.Random, length: int, per_step: int = 1,
                         stop_early: bool = False) -> list[Step]:
    """Step records of a made-up decoding: ``per_step`` random positions per step."""
    mask_id = 4
    order = list(range(length))
    rng.shuffle(order)
    if stop_early:
        order = order[:rng.randint(1, length)]
    tokens = [mask_id] * length
    steps = []
    for n, i in enumerate(range(0, len(order), per_step), start=1):
        changed = sorted(order[i:i + per_step])
        for pos in changed:
            tokens[pos] = rng.randint(5, 99)
        conf = [round(rng.random(), 3) for _ in range(length)]
        steps.append(Step(step=n, tokens=list(tokens), changed=changed, confidence=conf,
                          nfe=n))
    return steps


@exercise("fill_order", "00_welcome", fill_order_reference)
def _check_fill_order(candidate, reference):
    rng = random.Random(0)
    for trial in range(40):
        length = rng.randint(1, 24)
        steps = _random_greedy_steps(rng, length, per_step=rng.choice([1, 1, 2, 3]),
                                     stop_early=trial % 4 == 3)
        expected = reference(steps)
        got = _as_list(candidate(steps))
        if got != expected:
            rows = "; ".join(f"step {s.step} changed {s.changed}" for s in steps)
            raise _fail("fill_order", f"{length} positions, records: {rows}", got, expected)


def demask_reference(predict, x, mask_id: int, k: int) -> tuple[list[int], int]:
    """A masked-diffusion sampler loop that commits ``k`` tokens per forward pass.

    While ``x`` (L,) holds ``mask_id``: call ``predict(x)`` once (probabilities (L, V)),
    take each masked position's most likely token and its probability (the confidence),
    and commit the ``k`` most confident masked positions (all that are left if fewer;
    ties go to the lower position). Returns ``(final tokens, number of predict calls)``:
    ``ceil(masks / k)`` passes, so ``k = 1`` costs as many passes as an autoregressive
    model and ``k = masks`` a single one.

    Taught in ``00_welcome``.
    """
    x = torch.as_tensor(x).clone()
    passes = 0
    while bool((x == mask_id).any()):
        probs = predict(x.clone())                                  # (L, V)
        passes += 1
        conf, best = probs.max(dim=-1)                              # (L,), (L,)
        masked = [i for i in range(len(x)) if int(x[i]) == mask_id]
        masked.sort(key=lambda i: -float(conf[i]))                  # stable: lower first
        for i in masked[:k]:
            x[i] = best[i]
    return x.tolist(), passes


@exercise("demask", "00_welcome", demask_reference)
def _check_demask(candidate, reference):
    g = torch.Generator().manual_seed(7)
    mask_id = 0
    for trial in range(30):
        L, V = int(torch.randint(1, 14, (1,), generator=g)), 7
        model = _ToyModel(g, L, V, mask_id)
        x = torch.randint(1, V, (L,), generator=g)
        x[torch.randperm(L, generator=g)[:int(torch.randint(1, L + 1, (1,), generator=g))]] \
            = mask_id
        k = [1, 2, 3, 5, 100][trial % 5]
        expected = reference(model, x.clone(), mask_id, k)
        model.calls = 0
        got = candidate(model, x.clone(), mask_id, k)
        try:
            got = (_as_list(got[0]), int(got[1]))
        except (TypeError, ValueError, IndexError) as err:
            raise AssertionError(f"demask: return (final tokens, passes), got {got!r}") from err
        inputs = f"x={x.tolist()} (mask_id=0), k={k}, toy model #{trial}"
        if got != expected:
            raise _fail("demask", inputs, got, expected)
        if model.calls != expected[1]:
            raise AssertionError(f"demask: {inputs}: predict was called {model.calls} "
                                 f"times but you report {got[1]} passes")


# ---------------------------------------------------------------------------------------
# 01_bert_masking
# ---------------------------------------------------------------------------------------


def bert_mask_rule_reference(x0, picked, action, random_tok, mask_id: int):
    """BERT's 80/10/10 rule with the random draws given, position by position.

    For a picked position: ``action < 0.8`` -> ``[MASK]``; ``0.8 <= action < 0.9`` -> the
    random token ``random_tok``; ``action >= 0.9`` -> unchanged. Positions not picked stay
    as they are. ``labels`` is ``x0`` at picked positions and ``-100`` elsewhere.
    All inputs are (B, L); returns ``(xt, labels)``, both (B, L) long.
    Taught in ``01_bert_masking``.
    """
    B, L = x0.shape
    xt = x0.clone()
    labels = torch.full_like(x0, IGNORE_INDEX)
    for b in range(B):
        for i in range(L):
            if not picked[b, i]:
                continue
            labels[b, i] = x0[b, i]
            if action[b, i] < 0.8:
                xt[b, i] = mask_id
            elif action[b, i] < 0.9:
                xt[b, i] = random_tok[b, i]
    return xt, labels


@exercise("bert_mask_rule", "01_bert_masking", bert_mask_rule_reference)
def _check_bert_mask_rule(candidate, reference):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        B, L = int(torch.randint(1, 4, (1,), generator=g)), int(
            torch.randint(1, 40, (1,), generator=g))
        x0 = torch.randint(5, 50, (B, L), generator=g)
        picked = torch.rand(B, L, generator=g) < 0.5
        action = torch.rand(B, L, generator=g)
        if trial == 0:  # one of each: random token, unchanged, [MASK]
            picked.view(-1)[:3] = True
            action.view(-1)[:3] = torch.tensor([0.85, 0.95, 0.05])[:action.numel()]
        random_tok = torch.randint(5, 50, (B, L), generator=g)
        xt_ref, lab_ref = reference(x0, picked, action, random_tok, 4)
        xt, labels = candidate(x0.clone(), picked.clone(), action.clone(),
                               random_tok.clone(), 4)
        inputs = (f"x0={x0.tolist()}, picked={picked.int().tolist()}, "
                  f"action={action.round(decimals=2).tolist()}, "
                  f"random_tok={random_tok.tolist()}, mask_id=4")
        if not torch.equal(torch.as_tensor(xt).long(), xt_ref):
            raise _fail("bert_mask_rule (xt)", inputs, torch.as_tensor(xt).tolist(),
                        xt_ref.tolist())
        if not torch.equal(torch.as_tensor(labels).long(), lab_ref):
            raise _fail("bert_mask_rule (labels)", inputs, torch.as_tensor(labels).tolist(),
                        lab_ref.tolist())


def masked_cross_entropy_reference(logits, labels):
    """BERT's loss: the mean of ``-log softmax(logits)[label]`` over positions whose label
    is not ``-100``. ``logits`` (B, L, V), ``labels`` (B, L); returns a scalar tensor.

    Taught in ``01_bert_masking``.
    """
    total, count = 0.0, 0
    B, L, _ = logits.shape
    for b in range(B):
        for i in range(L):
            y = int(labels[b, i])
            if y == IGNORE_INDEX:
                continue
            log_probs = torch.log_softmax(logits[b, i].double(), dim=-1)   # (V,)
            total += -float(log_probs[y])
            count += 1
    return torch.tensor(total / count if count else float("nan"), dtype=torch.float64)


@exercise("masked_cross_entropy", "01_bert_masking", masked_cross_entropy_reference)
def _check_masked_cross_entropy(candidate, reference):
    g = torch.Generator().manual_seed(1)
    for trial in range(15):
        B, L, V = 2, int(torch.randint(3, 20, (1,), generator=g)), 11
        logits = torch.randn(B, L, V, generator=g) * 3
        x0 = torch.randint(0, V, (B, L), generator=g)
        picked = torch.rand(B, L, generator=g) < 0.3
        picked[0, 0] = True                                     # at least one target
        labels = torch.where(picked, x0, torch.full_like(x0, IGNORE_INDEX))
        expected = reference(logits, labels)
        got = candidate(logits.clone(), labels.clone())
        if not _close(got, expected, atol=1e-4):
            raise _fail("masked_cross_entropy", f"logits of shape {tuple(logits.shape)}, "
                        f"labels={labels.tolist()}", float(got), float(expected))


# ---------------------------------------------------------------------------------------
# 02_llada_training
# ---------------------------------------------------------------------------------------


def masked_elbo_reference(log_probs, x0, maskable, t, u, mask_id: int):
    """The Monte-Carlo estimate of masked diffusion's negative ELBO for one sequence, an
    upper bound on its negative log-likelihood ``-log p(x0)`` (nats).

    .. math:: -\\log p_\\theta(x_0) \\le \\mathbb{E}_{t \\sim U(0,1)}\\Big[\\frac{1}{t}
              \\sum_{i:\\,x_t^i = M} -\\log p_\\theta(x_0^i \\mid x_t)\\Big]

    (LLaDA Eq. 3-4; MDLM Eq. 10 with the linear schedule). One sample per entry of ``t``
    (K,): position ``i`` is masked in sample ``k`` when it is ``maskable`` and
    ``u[k, i] < t[k]`` (``u`` (K, L) uniform draws), giving ``x_t``; ``log_probs(x_t)``
    returns the model's log-probabilities (L, V). Returns the mean over the K samples of
    ``(1 / t_k) * sum over masked i of -log_probs(x_t)[i, x0_i]``, a float.

    Taught in ``02_llada_training``.
    """
    total = 0.0
    for k in range(len(t)):
        xt = torch.as_tensor(x0).clone()
        masked = [i for i in range(len(xt)) if bool(maskable[i]) and float(u[k, i]) < float(t[k])]
        for i in masked:
            xt[i] = mask_id
        lp = log_probs(xt)                                            # (L, V)
        total += sum(-float(lp[i, int(x0[i])]) for i in masked) / float(t[k])
    return total / len(t)


@exercise("masked_elbo", "02_llada_training", masked_elbo_reference)
def _check_masked_elbo(candidate, reference):
    g = torch.Generator().manual_seed(2)
    mask_id = 0
    for trial in range(12):
        L, V, K = int(torch.randint(2, 12, (1,), generator=g)), 7, [1, 3, 8][trial % 3]
        model = _ToyModel(g, L, V, mask_id)

        def log_probs(xt, model=model):
            return model(xt).clamp_min(1e-12).log()                  # (L, V)

        x0 = torch.randint(1, V, (L,), generator=g)
        maskable = torch.rand(L, generator=g) < 0.8
        maskable[0] = True
        t = 0.05 + 0.95 * torch.rand(K, generator=g)
        u = torch.rand(K, L, generator=g)
        expected = reference(log_probs, x0.clone(), maskable.clone(), t.clone(), u.clone(),
                             mask_id)
        got = candidate(log_probs, x0.clone(), maskable.clone(), t.clone(), u.clone(),
                        mask_id)
        if not _close(float(got), expected, atol=1e-4):
            raise _fail("masked_elbo", f"x0={x0.tolist()}, maskable={maskable.int().tolist()}, "
                        f"t={t.round(decimals=3).tolist()}, u={u.round(decimals=3).tolist()} "
                        f"(mask_id=0), toy model #{trial}", float(got), expected)


def llada_loss_from_ce_reference(ce, masked, p_mask, maskable):
    """LLaDA's loss from per-token cross-entropies, row by row.

    .. math:: \\mathcal{L} = \\frac{1}{B}\\sum_b \\frac{1}{n_b}
              \\sum_{i\\,\\mathrm{masked}} \\frac{\\mathrm{ce}_{b,i}}{p_b}

    ``ce`` (B, L) is ``-log p(x0 | xt)`` at every position, ``masked`` (B, L) bool the
    positions that were masked, ``p_mask`` (B, 1) each row's mask probability and
    ``maskable`` (B, L) bool the positions that could be masked (``n_b`` of them).
    Taught in ``02_llada_training``.
    """
    B, L = ce.shape
    rows = []
    for b in range(B):
        n = max(1, int(maskable[b].sum()))
        s = sum(float(ce[b, i]) / float(p_mask[b, 0]) for i in range(L) if masked[b, i])
        rows.append(s / n)
    return torch.tensor(sum(rows) / B, dtype=torch.float64)


@exercise("llada_loss_from_ce", "02_llada_training", llada_loss_from_ce_reference)
def _check_llada_loss_from_ce(candidate, reference):
    g = torch.Generator().manual_seed(3)
    for trial in range(15):
        B, L = int(torch.randint(1, 5, (1,), generator=g)), int(
            torch.randint(2, 30, (1,), generator=g))
        ce = torch.rand(B, L, generator=g) * 5                       # (B, L)
        maskable = torch.rand(B, L, generator=g) < 0.7
        maskable[:, -1] = True
        p_mask = 0.05 + 0.95 * torch.rand(B, 1, generator=g)         # (B, 1)
        masked = (torch.rand(B, L, generator=g) < p_mask) & maskable
        masked[:, -1] = True                                         # one target a row
        expected = reference(ce, masked, p_mask, maskable)
        got = candidate(ce.clone(), masked.clone(), p_mask.clone(), maskable.clone())
        if not _close(got, expected, atol=1e-4):
            raise _fail("llada_loss_from_ce",
                        f"ce={ce.round(decimals=2).tolist()}, "
                        f"masked={masked.int().tolist()}, "
                        f"p_mask={p_mask.round(decimals=3).tolist()}, "
                        f"maskable={maskable.int().tolist()}", float(got), float(expected))


def sft_maskable_reference(assistant_mask, lengths):
    """Which positions of an SFT batch the corruption may mask (and the loss scores).

    Each row holds a chat of ``lengths[b]`` tokens followed by ``[SEP]`` filler up to the
    batch's length. The answer (``assistant_mask``, 1 on the answer and its ``[SEP]``) is
    maskable, the prompt never is, and every filler position is maskable too: it is a
    target, so the model learns to stop. ``assistant_mask`` (B, L), ``lengths`` (B,);
    returns (B, L) bool.
    Taught in ``02_llada_training``.
    """
    B, L = assistant_mask.shape
    out = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        for i in range(L):
            out[b, i] = bool(assistant_mask[b, i]) or i >= int(lengths[b])
    return out


@exercise("sft_maskable", "02_llada_training", sft_maskable_reference)
def _check_sft_maskable(candidate, reference):
    g = torch.Generator().manual_seed(4)
    for trial in range(20):
        B = int(torch.randint(1, 5, (1,), generator=g))
        lengths = torch.randint(3, 20, (B,), generator=g)
        L = int(lengths.max()) + int(torch.randint(0, 6, (1,), generator=g))
        assistant_mask = torch.zeros(B, L, dtype=torch.long)
        for b in range(B):                       # the answer is the end of each chat
            start = int(torch.randint(1, int(lengths[b]), (1,), generator=g))
            assistant_mask[b, start:int(lengths[b])] = 1
        expected = reference(assistant_mask, lengths)
        got = torch.as_tensor(candidate(assistant_mask.clone(), lengths.clone())).bool()
        if got.shape != expected.shape or not torch.equal(got, expected):
            raise _fail("sft_maskable", f"assistant_mask={assistant_mask.tolist()}, "
                        f"lengths={lengths.tolist()}", got.int().tolist(),
                        expected.int().tolist())


# ---------------------------------------------------------------------------------------
# 03_greedy_decoding
# ---------------------------------------------------------------------------------------


def greedy_step_reference(probs, is_masked) -> tuple[int, int]:
    """One step of the seed's greedy decoder: among the masked positions, the one whose
    most likely token has the highest probability, and that token.

    ``probs`` (L, V) the model's probabilities, ``is_masked`` (L,) bool. Ties go to the
    lower position and the lower token id (what ``argmax`` does). Returns
    ``(position, token)``.
    Taught in ``03_greedy_decoding``.
    """
    best = None
    for pos in range(probs.shape[0]):
        if not is_masked[pos]:
            continue
        p = float(probs[pos].max())                      # this position's confidence
        if best is None or p > best[0]:
            best = (p, pos, int(probs[pos].argmax()))
    if best is None:
        raise ValueError("no masked position left")
    return best[1], best[2]


def _random_probs(g: torch.Generator, L: int, V: int) -> torch.Tensor:
    scale = float(torch.rand(1, generator=g)) * 6 + 0.5
    return torch.softmax(torch.randn(L, V, generator=g) * scale, dim=-1)   # (L, V)


@exercise("greedy_step", "03_greedy_decoding", greedy_step_reference)
def _check_greedy_step(candidate, reference):
    g = torch.Generator().manual_seed(5)
    for trial in range(40):
        L, V = int(torch.randint(1, 16, (1,), generator=g)), 9
        probs = _random_probs(g, L, V)
        is_masked = torch.rand(L, generator=g) < 0.5
        is_masked[int(torch.randint(0, L, (1,), generator=g))] = True   # one at least
        expected = reference(probs, is_masked)
        got = candidate(probs.clone(), is_masked.clone())
        got = tuple(int(v) for v in got)
        if got != expected:
            raise _fail("greedy_step", f"probs={probs.round(decimals=3).tolist()}, "
                        f"is_masked={is_masked.tolist()}", got, expected)


def greedy_decode_reference(predict, x, mask_id: int) -> tuple[list[int], list[int]]:
    """The seed's ``iter_mask_decode`` on one row: while a ``[MASK]`` is left, call
    ``predict(x)`` (probabilities (L, V) for the current row ``x`` (L,)) and commit one
    token with :func:`greedy_step_reference`. Returns ``(final tokens, positions in the
    order they were filled)``.

    Taught in ``03_greedy_decoding``.
    """
    x = torch.as_tensor(x).clone()
    order = []
    while bool((x == mask_id).any()):
        probs = predict(x.clone())                                  # (L, V)
        pos, tok = greedy_step_reference(probs, x == mask_id)
        x[pos] = tok
        order.append(pos)
    return x.tolist(), order


class _ToyModel:
    """A tiny deterministic "model": each position's logits depend on the whole row, so
    committing one token changes the other predictions (as in a real dLLM)."""

    def __init__(self, g: torch.Generator, L: int, V: int, mask_id: int):
        self.mask_id = mask_id
        self.emb = torch.randn(V + 1, 8, generator=g)               # (V+1, 8)
        self.pos = torch.randn(L, 8, generator=g)                   # (L, 8)
        self.out = torch.randn(8, V, generator=g) * 2               # (8, V)
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        x = torch.as_tensor(x).long()
        h = self.emb[x] + self.pos[:len(x)]                         # (L, 8)
        h = h + torch.tanh(h.mean(0, keepdim=True))                 # context from all
        probs = torch.softmax(h @ self.out, dim=-1)                 # (L, V)
        probs[:, self.mask_id] = 0.0                                # never predict [MASK]
        return probs


@exercise("greedy_decode", "03_greedy_decoding", greedy_decode_reference)
def _check_greedy_decode(candidate, reference):
    g = torch.Generator().manual_seed(6)
    mask_id = 0
    for trial in range(15):
        L, V = int(torch.randint(2, 12, (1,), generator=g)), 7
        model = _ToyModel(g, L, V, mask_id)
        x = torch.randint(1, V, (L,), generator=g)
        n_masks = int(torch.randint(1, L + 1, (1,), generator=g))
        x[torch.randperm(L, generator=g)[:n_masks]] = mask_id        # some masks
        exp_tokens, exp_order = reference(model, x.clone(), mask_id)
        model.calls = 0
        got = candidate(model, x.clone(), mask_id)
        got_tokens, got_order = _as_list(got[0]), _as_list(got[1])
        if (got_tokens, got_order) != (exp_tokens, exp_order):
            raise _fail("greedy_decode", f"x={x.tolist()} (mask_id=0), toy model #{trial}",
                        (got_tokens, got_order), (exp_tokens, exp_order))
        if model.calls != len(exp_order):
            raise AssertionError(f"greedy_decode: {model.calls} calls of predict for "
                                 f"{len(exp_order)} masks; expected one call per token")


