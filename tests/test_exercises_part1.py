"""Part 1 exercises (notebooks 00-03): every check passes on its reference and on an
independent, vectorised solution (often the library's own function), and fails
(AssertionError) on plausible mistakes. The notebooks hold each stub and a commented
``check`` call."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dllm_lesson import losses, noise
from dllm_lesson.exercises import part1
from dllm_lesson.exercises import verify as run

REPO = Path(__file__).resolve().parents[1]



def fails(name, fn):
    with pytest.raises(AssertionError):
        run(name, fn)


# -- 00_welcome --------------------------------------------------------------------------
def test_fill_order():
    def vectorised(steps):
        order = torch.zeros(len(steps[0].tokens), dtype=torch.long)
        for s in steps:
            order[torch.tensor(s.changed, dtype=torch.long)] = s.step
        return order

    run("fill_order", vectorised)
    fails("fill_order", lambda steps: [o - 1 if o else 0 for o in
                                       part1.fill_order_reference(steps)])  # 0-based
    # the positions in the order they were filled (the inverse permutation)
    fails("fill_order", lambda steps: [p for s in steps for p in s.changed])


def test_fill_order_matches_the_library_plot():
    """viz's decode-order plot reads the same thing from real records."""
    from dllm_lesson import viz

    steps = part1._random_greedy_steps(random.Random(3), 12, per_step=2)
    assert viz._commit_steps(steps).tolist() == part1.fill_order_reference(steps)


def _demask_vectorised(predict, x, mask_id, k):
    x, passes = x.clone(), 0
    while (x == mask_id).any():
        conf, tok = predict(x).max(-1)                               # (L,), (L,)
        passes += 1
        conf = conf.masked_fill(x != mask_id, -1.0)
        pick = torch.sort(conf, descending=True, stable=True).indices[:k]
        pick = pick[conf[pick] >= 0]
        x[pick] = tok[pick]
    return x, passes


def test_demask():
    run("demask", _demask_vectorised)

    def one_pass(predict, x, mask_id, k):                           # never re-predicts
        x, passes = x.clone(), 0
        conf, tok = predict(x).max(-1)
        while (x == mask_id).any():
            passes += 1
            c = conf.masked_fill(x != mask_id, -1.0)
            pick = torch.sort(c, descending=True, stable=True).indices[:k]
            pick = pick[c[pick] >= 0]
            x[pick] = tok[pick]
        return x, passes

    def least_confident(predict, x, mask_id, k):
        x, passes = x.clone(), 0
        while (x == mask_id).any():
            conf, tok = predict(x).max(-1)
            passes += 1
            conf = conf.masked_fill(x != mask_id, 2.0)
            pick = torch.sort(conf, stable=True).indices[:k]
            pick = pick[conf[pick] <= 1]
            x[pick] = tok[pick]
        return x, passes

    def left_to_right(predict, x, mask_id, k):                      # AR order, k at a time
        x, passes = x.clone(), 0
        while (x == mask_id).any():
            tok = predict(x).argmax(-1)
            passes += 1
            pick = (x == mask_id).nonzero()[:k, 0]
            x[pick] = tok[pick]
        return x, passes

    def passes_off_by_one(predict, x, mask_id, k):
        x, passes = _demask_vectorised(predict, x, mask_id, k)
        return x, int((x.numel() + k - 1) // k)                      # counts every position

    for wrong in (one_pass, least_confident, left_to_right, passes_off_by_one):
        fails("demask", wrong)


def test_demask_with_k_1_is_the_library_greedy():
    """k = 1 is the seed's greedy decoder: same tokens and passes as decode_steps."""
    import dllm_lesson
    from dllm_lesson.sampling import build_sequence, decode_steps

    model, tok = dllm_lesson.load_model("tiny-dllm", device="cpu")
    prompt, A = "What sound does a dog make?", 8
    ids, a0 = build_sequence(tok, prompt, A)

    def predict(x):
        with torch.no_grad():
            probs = model(input_ids=x[None]).logits[0].softmax(-1)
        probs[:, tok.mask_token_id] = 0.0                            # as the engine
        return probs

    tokens, passes = part1.demask_reference(predict, ids[0], tok.mask_token_id, 1)
    steps = list(decode_steps(model, tok, prompt, answer_length=A, strategy="greedy"))
    assert tokens[a0:a0 + A] == steps[-1].tokens and passes == steps[-1].nfe == A
    _, passes4 = part1.demask_reference(predict, ids[0], tok.mask_token_id, 3)
    assert passes4 == 3                                              # ceil(8 / 3)


# -- 01_bert_masking ---------------------------------------------------------------------
def vectorised_bert_rule(x0, picked, action, random_tok, mask_id):
    xt = torch.where(picked & (action < 0.8), torch.full_like(x0, mask_id), x0)
    swap = picked & (action >= 0.8) & (action < 0.9)
    xt = torch.where(swap, random_tok, xt)
    labels = torch.where(picked, x0, torch.full_like(x0, -100))
    return xt, labels


def test_bert_mask_rule():
    run("bert_mask_rule", vectorised_bert_rule)

    def no_keep(x0, picked, action, random_tok, mask_id):          # 80/20, no "keep"
        xt, labels = vectorised_bert_rule(x0, picked, action, random_tok, mask_id)
        return torch.where(picked & (action >= 0.8), random_tok, xt), labels

    def labels_everywhere(x0, picked, action, random_tok, mask_id):
        xt, _ = vectorised_bert_rule(x0, picked, action, random_tok, mask_id)
        return xt, x0.clone()

    def only_masks_labelled(x0, picked, action, random_tok, mask_id):
        xt, labels = vectorised_bert_rule(x0, picked, action, random_tok, mask_id)
        return xt, torch.where(xt == mask_id, x0, torch.full_like(x0, -100))

    for wrong in (no_keep, labels_everywhere, only_masks_labelled):
        fails("bert_mask_rule", wrong)


def test_library_bert_mask_follows_the_rule():
    """noise.bert_mask draws (u, action, random pick) in that order: replaying the draws
    through the exercise's rule gives the library's output exactly."""
    x0 = torch.randint(5, 60, (4, 50), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, 0] = False
    xt, labels = noise.bert_mask(x0, maskable, 4, 60, mask_prob=0.3,
                                 generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    picked = (torch.rand(x0.shape, generator=g) < 0.3) & maskable
    action = torch.rand(x0.shape, generator=g)
    random_tok = torch.randint(60, x0.shape, generator=g)
    xt_ref, lab_ref = part1.bert_mask_rule_reference(x0, picked, action, random_tok, 4)
    assert torch.equal(xt, xt_ref) and torch.equal(labels, lab_ref)


def test_masked_cross_entropy():
    run("masked_cross_entropy", losses.mlm_loss)                    # the library's loss
    run("masked_cross_entropy", lambda lg, y: F.cross_entropy(
        lg.reshape(-1, lg.shape[-1]), y.reshape(-1), ignore_index=-100))

    def all_positions(logits, labels):                              # scores every token
        y = torch.where(labels == -100, torch.zeros_like(labels), labels)
        return F.cross_entropy(logits.transpose(1, 2), y)

    def summed(logits, labels):
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                               reduction="sum")

    def mean_over_all(logits, labels):                              # divides by B * L
        return summed(logits, labels) / labels.numel()

    for wrong in (all_positions, summed, mean_over_all):
        fails("masked_cross_entropy", wrong)


# -- 02_llada_training -------------------------------------------------------------------
def _elbo_vectorised(log_probs, x0, maskable, t, u, mask_id):
    total = 0.0
    for k in range(len(t)):
        masked = maskable.bool() & (u[k] < t[k])                     # (L,)
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
        nll = -log_probs(xt).gather(1, x0[:, None])[:, 0]            # (L,)
        total = total + (nll * masked).sum() / t[k]
    return total / len(t)


def test_masked_elbo():
    run("masked_elbo", _elbo_vectorised)

    def weighted(log_probs, x0, maskable, t, u, mask_id, weight):
        total = 0.0
        for k in range(len(t)):
            masked = maskable.bool() & (u[k] < t[k])
            xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
            nll = -log_probs(xt).gather(1, x0[:, None])[:, 0]
            total += float((nll * masked).sum()) * weight(float(t[k]))
        return total / len(t)

    def no_weight(*args):                                            # plain masked CE
        return weighted(*args, weight=lambda t: 1.0)

    def times_t(*args):                                              # t instead of 1/t
        return weighted(*args, weight=lambda t: t)

    def per_masked_token(log_probs, x0, maskable, t, u, mask_id):    # a mean, not a sum
        total = 0.0
        for k in range(len(t)):
            masked = maskable.bool() & (u[k] < t[k])
            xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
            nll = -log_probs(xt).gather(1, x0[:, None])[:, 0]
            total += float((nll * masked).sum() / masked.sum().clamp(min=1) / t[k])
        return total / len(t)

    def clean_input(log_probs, x0, maskable, t, u, mask_id):         # never masks x_t
        total = 0.0
        for k in range(len(t)):
            masked = maskable.bool() & (u[k] < t[k])
            nll = -log_probs(x0.clone()).gather(1, x0[:, None])[:, 0]
            total += float((nll * masked).sum() / t[k])
        return total / len(t)

    for wrong in (no_weight, per_masked_token, clean_input, times_t):
        fails("masked_elbo", wrong)


def test_masked_elbo_is_the_training_loss_times_length():
    """One sample of the ELBO estimate is LLaDA's training loss (inverse_t, eps = 0) times
    the number of maskable tokens: the loss the course trains with is this bound, per
    token."""
    g = torch.Generator().manual_seed(0)
    L, V = 12, 9
    logits = torch.randn(L, V, generator=g) * 2
    x0 = torch.randint(1, V, (L,), generator=g)
    maskable = torch.ones(L, dtype=torch.bool)
    maskable[0] = False
    t = torch.tensor([0.37])
    u = torch.rand(1, L, generator=g)
    estimate = part1.masked_elbo_reference(lambda xt: logits.log_softmax(-1), x0, maskable,
                                           t, u, mask_id=0)
    masked = (u < t) & maskable[None]                                # (1, L)
    loss = losses.llada_loss(logits[None], x0[None], masked, t[:, None], maskable[None])
    assert abs(estimate - float(loss) * int(maskable.sum())) < 1e-4
    assert masked.any()


def test_llada_loss_from_ce_matches_library():
    """The exercise's loss equals losses.llada_loss once the cross-entropy is computed."""
    g = torch.Generator().manual_seed(0)
    B, L, V = 3, 10, 13
    logits = torch.randn(B, L, V, generator=g)
    x0 = torch.randint(0, V, (B, L), generator=g)
    maskable = torch.rand(B, L, generator=g) < 0.8
    xt, masked, p_mask = noise.llada_mask(x0, maskable, 4, generator=g)
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")   # (B, L)
    for inverse_t in (True, False):
        ours = part1.llada_loss_from_ce_reference(
            ce, masked, p_mask if inverse_t else torch.ones_like(p_mask), maskable)
        lib = losses.llada_loss(logits, x0, masked, p_mask, maskable, inverse_t=inverse_t)
        assert abs(float(ours) - float(lib)) < 1e-5


def test_llada_loss_from_ce():
    def vectorised(ce, masked, p_mask, maskable):
        w = masked.float() / p_mask                                  # (B, L)
        return ((ce * w).sum(1) / maskable.sum(1).clamp(min=1)).mean()

    run("llada_loss_from_ce", vectorised)

    def no_inverse_t(ce, masked, p_mask, maskable):
        return vectorised(ce, masked, torch.ones_like(p_mask), maskable)

    def per_masked_token(ce, masked, p_mask, maskable):              # divides by #masked
        return vectorised(ce, masked, p_mask, masked)

    def times_p(ce, masked, p_mask, maskable):
        return ((ce * masked * p_mask).sum(1) / maskable.sum(1)).mean()

    def flat_mean(ce, masked, p_mask, maskable):                     # pools the rows
        return (ce * masked / p_mask).sum() / maskable.sum()

    for wrong in (no_inverse_t, per_masked_token, times_p, flat_mean):
        fails("llada_loss_from_ce", wrong)


def test_sft_maskable():
    def vectorised(assistant_mask, lengths):
        pos = torch.arange(assistant_mask.shape[1])[None]            # (1, L)
        return assistant_mask.bool() | (pos >= lengths[:, None])

    run("sft_maskable", vectorised)
    fails("sft_maskable", lambda am, lengths: am.bool())             # never learns to stop

    def whole_row(am, lengths):                                      # prompt masked too
        return torch.ones_like(am, dtype=torch.bool)

    def after_prompt(am, lengths):                                   # forgets the filler
        out = am.bool().clone()
        out[:, -1] = True
        return out

    for wrong in (whole_row, after_prompt):
        fails("sft_maskable", wrong)


def test_sft_maskable_matches_training_batches():
    """The loss mask of a real SFT batch (training.Batches with [SEP] filler) is what
    the exercise describes."""
    from transformers import AutoTokenizer

    from dllm_lesson.data import build_corpus
    from dllm_lesson.training import Batches, encode_chat

    tok = AutoTokenizer.from_pretrained(REPO / "dllm_lesson" / "checkpoints" / "tiny-dllm")
    examples = build_corpus(0).sft[::500][:6]                        # several tasks
    rows = [encode_chat(tok, ex.to_row()["messages"], 512) for ex in examples]
    assert None not in rows
    batch = Batches(rows, 6, tok.pad_token_id, tok.sep_token_id, 8, 512, seed=0).next()
    ids, lm = batch["input_ids"], batch["loss_mask"]                 # (B, L)
    B, L = ids.shape
    # rebuild each row's assistant mask and chat length from the rows themselves
    by_ids = {tuple(r[0]): r for r in rows}
    assistant = torch.zeros(B, L, dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        row = next(r for k, r in by_ids.items() if ids[b, :len(k)].tolist() == list(k))
        lengths[b] = len(row[0])
        assistant[b, :len(row[1])] = torch.tensor(row[1])
        assert (ids[b, len(row[0]):] == tok.sep_token_id).all()     # filler is [SEP]
    assert torch.equal(lm, part1.sft_maskable_reference(assistant, lengths))


# -- 03_greedy_decoding ------------------------------------------------------------------
def vectorised_greedy_step(probs, is_masked):
    conf, tok = probs.max(dim=-1)                                    # (L,)
    conf = conf.masked_fill(~is_masked, -1.0)
    pos = int(conf.argmax())
    return pos, int(tok[pos])


def test_greedy_step():
    run("greedy_step", vectorised_greedy_step)

    def ignores_mask(probs, is_masked):
        conf, tok = probs.max(dim=-1)
        return int(conf.argmax()), int(tok[conf.argmax()])

    def least_confident(probs, is_masked):
        conf, tok = probs.max(dim=-1)
        pos = int(conf.masked_fill(~is_masked, 2.0).argmin())
        return pos, int(tok[pos])

    def left_to_right(probs, is_masked):
        pos = int(is_masked.nonzero()[0, 0])
        return pos, int(probs[pos].argmax())

    for wrong in (ignores_mask, least_confident, left_to_right):
        fails("greedy_step", wrong)


def test_greedy_decode():
    def loop(predict, x, mask_id):
        x, order = x.clone(), []
        while (x == mask_id).any():
            pos, tok = vectorised_greedy_step(predict(x), x == mask_id)
            x[pos] = tok
            order.append(pos)
        return x, order

    run("greedy_decode", loop)

    def predict_once(predict, x, mask_id):                           # no re-prediction
        x, order = x.clone(), []
        probs = predict(x)
        while (x == mask_id).any():
            pos, tok = vectorised_greedy_step(probs, x == mask_id)
            x[pos] = tok
            order.append(pos)
        return x, order

    def all_at_once(predict, x, mask_id):                            # one pass fills all
        x = x.clone()
        masked = x == mask_id
        probs = predict(x)
        conf, tok = probs.max(-1)
        order = sorted(masked.nonzero()[:, 0].tolist(), key=lambda i: -float(conf[i]))
        x[masked] = tok[masked]
        return x, order

    def left_to_right(predict, x, mask_id):
        x, order = x.clone(), []
        while (x == mask_id).any():
            pos = int((x == mask_id).nonzero()[0, 0])
            x[pos] = int(predict(x)[pos].argmax())
            order.append(pos)
        return x, order

    for wrong in (predict_once, all_at_once, left_to_right):
        fails("greedy_decode", wrong)


def test_greedy_decode_reference_is_the_library_greedy():
    """On a real (random, tiny) ModernBERT, the reference loop commits the same tokens in
    the same order as the library's greedy strategy."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from dllm_lesson.sampling import build_sequence, decode_steps

    path = REPO / "dllm_lesson" / "checkpoints" / "tiny-dllm"
    if not (path / "model.safetensors").exists():
        pytest.skip("shipped tiny-dllm missing")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    prompt, A = "Which colour is grass?", 10
    ids, a0 = build_sequence(tok, prompt, A)

    @torch.no_grad()
    def predict(x):
        probs = torch.softmax(model(input_ids=x[None]).logits[0], -1)  # (L, V)
        probs[:, tok.mask_token_id] = 0.0                              # as the engine
        return probs

    tokens, order = part1.greedy_decode_reference(predict, ids[0], tok.mask_token_id)
    steps = list(decode_steps(model, tok, prompt, answer_length=A, strategy="greedy"))
    assert order == [s.changed[0] + a0 for s in steps]
    assert tokens[a0:a0 + A] == steps[-1].tokens
