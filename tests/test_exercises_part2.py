"""Part 2 exercises (notebooks 04, 05, 10): every check passes on its reference and fails
(AssertionError) on plausible mistakes; the references agree with what the decoding
engine, the training loop's batching and the throughput benchmark really do."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from dllm_lesson import sampling
from dllm_lesson.exercises import part2
from dllm_lesson.exercises import verify as run

REPO = Path(__file__).resolve().parents[1]



def fails(name, fn):
    with pytest.raises(AssertionError):
        run(name, fn)


# -- 04: tokens per step, blocks, cache windows ------------------------------------------
def test_num_transfer_tokens_matches_the_engine():
    for mask_count in range(1, 70):
        for steps in range(1, 20):
            ref = part2.num_transfer_tokens_reference(mask_count, steps)
            assert ref == sampling.num_transfer_tokens(mask_count, steps)
            # the engine's running form ceil(masks left / steps left) gives the same counts
            left, running = mask_count, []
            for k in range(steps):
                n = sampling.commit_count(left, steps - k)
                running.append(n)
                left -= n
            assert running == ref and sum(ref) == mask_count


def test_num_transfer_tokens_wrong_answers_fail():
    fails("num_transfer_tokens", lambda m, s: [m // s] * s)               # loses rem
    fails("num_transfer_tokens", lambda m, s: [m // s] * (s - 1) + [m - (s - 1) * (m // s)])
    fails("num_transfer_tokens",                                          # rem at the end
          lambda m, s: [m // s + (1 if i >= s - m % s else 0) for i in range(s)])
    fails("num_transfer_tokens", lambda m, s: [math.ceil(m / s)] * s)


def test_block_bounds_matches_the_engine():
    if not hasattr(sampling, "_blocks"):
        pytest.skip("the engine's private _blocks helper was renamed")
    for answer_length in range(1, 60):
        for block_length in [None, *range(1, 40)]:
            assert (part2.block_bounds_reference(answer_length, block_length)
                    == sampling._blocks(answer_length, block_length))


def test_split_steps_matches_the_engine():
    for answer_length in range(1, 40):
        for block_length in (None, 1, 3, 8, 16):
            blocks = part2.block_bounds_reference(answer_length, block_length)
            for steps in range(len(blocks), 40):
                assert (part2.split_steps_reference(steps, blocks)
                        == sampling._split_steps(steps, blocks))


def _block_decode_vectorised(predict, x, a0, A, mask_id, steps, block_length):
    x, committed = x.clone(), []
    size = block_length or A
    blocks = [(s, min(s + size, A)) for s in range(0, A, size)]
    base, rem = divmod(steps, len(blocks))
    for b, (bs, be) in enumerate(blocks):
        n_steps = min(base + (b < rem), be - bs)
        for k in range(n_steps):
            block = x[a0 + bs:a0 + be]                                   # a view
            left = int((block == mask_id).sum())
            n = -(-left // (n_steps - k))                                # ceil
            conf, tok = predict(x.clone())[a0 + bs:a0 + be].max(-1)
            conf = conf.masked_fill(block != mask_id, -1.0)
            pick = torch.sort(conf, descending=True, stable=True).indices[:n]
            block[pick] = tok[pick]
            committed.append(sorted((pick + bs).tolist()))
    return x, committed


def test_block_decode():
    run("block_decode", _block_decode_vectorised)

    def one_block(predict, x, a0, A, mask_id, steps, block_length):   # ignores blocks
        return _block_decode_vectorised(predict, x, a0, A, mask_id, steps, None)

    def whole_answer(predict, x, a0, A, mask_id, steps, block_length):
        # right step counts, but candidates from the whole answer, not the block
        x, committed = x.clone(), []
        blocks = part2.block_bounds_reference(A, block_length)
        for (bs, be), n_steps in zip(blocks, part2.split_steps_reference(steps, blocks)):
            for n in part2.num_transfer_tokens_reference(be - bs, n_steps):
                conf, tok = predict(x.clone())[a0:a0 + A].max(-1)
                conf = conf.masked_fill(x[a0:a0 + A] != mask_id, -1.0)
                pick = torch.sort(conf, descending=True, stable=True).indices[:n]
                pick = pick[conf[pick] >= 0]
                x[a0 + pick] = tok[pick]
                committed.append(sorted(pick.tolist()))
        return x, committed

    def last_block_takes_rest(predict, x, a0, A, mask_id, steps, block_length):
        x, committed = x.clone(), []
        blocks = part2.block_bounds_reference(A, block_length)
        per = [steps // len(blocks)] * len(blocks)
        per[-1] += steps - sum(per)
        per = [min(p, be - bs) for p, (bs, be) in zip(per, blocks)]
        for (bs, be), n_steps in zip(blocks, per):
            for n in part2.num_transfer_tokens_reference(be - bs, n_steps):
                conf, tok = predict(x.clone())[a0 + bs:a0 + be].max(-1)
                conf = conf.masked_fill(x[a0 + bs:a0 + be] != mask_id, -1.0)
                pick = torch.sort(conf, descending=True, stable=True).indices[:n]
                x[a0 + bs + pick] = tok[pick]
                committed.append(sorted((pick + bs).tolist()))
        return x, committed

    for wrong in (one_block, whole_answer, last_block_takes_rest):
        fails("block_decode", wrong)


@pytest.fixture(scope="module")
def tiny_dllm():
    from dllm_lesson import load_model

    return load_model("tiny-dllm", device="cpu", backend="lesson")


def test_block_decode_reference_is_the_library_llada(tiny_dllm):
    """On the shipped model, the reference loop commits what decode_steps' llada
    strategy commits, step by step."""
    model, tok = tiny_dllm
    prompt, A = "Tell me about Peru.", 20
    ids, a0 = sampling.build_sequence(tok, prompt, A)

    def predict(x):
        with torch.no_grad():
            probs = model(input_ids=x[None]).logits[0].float().softmax(-1)
        probs[:, tok.mask_token_id] = 0.0                                # as the engine
        return probs

    for steps, block_length in ((10, 8), (7, 4), (20, None)):
        tokens, committed = part2.block_decode_reference(predict, ids[0], a0, A,
                                                         tok.mask_token_id, steps,
                                                         block_length)
        records = list(sampling.decode_steps(model, tok, prompt, A, "llada", steps=steps,
                                             block_length=block_length))
        assert committed == [s.changed for s in records]
        assert tokens[a0:a0 + A] == records[-1].tokens


def test_dual_cache_block_reference_is_the_library_dual_cache(tiny_dllm):
    """Block by block, the reference reproduces decode_steps(..., cache="dual")."""
    model, tok = tiny_dllm
    prompt, A, b, steps = "Tell me about Chile.", 24, 8, 12
    ids, a0 = sampling.build_sequence(tok, prompt, A)
    records = list(sampling.decode_steps(model, tok, prompt, A, "llada", steps=steps,
                                         block_length=b, cache="dual"))
    x = ids.clone()
    blocks = part2.block_bounds_reference(A, b)
    for (bs, be), n_steps in zip(blocks, part2.split_steps_reference(steps, blocks)):
        counts = part2.num_transfer_tokens_reference(be - bs, n_steps)
        x = part2.dual_cache_block_reference(model, x, a0 + bs, a0 + be, counts,
                                             tok.mask_token_id)
    assert x[0, a0:a0 + A].tolist() == records[-1].tokens


def test_dual_cache_block_wrong_answers_fail():
    def no_cache(model, x, lo, hi, counts, mask_id):                     # full passes
        x = x.clone()
        for n in counts:
            probs = model(input_ids=x).logits[0, lo:hi].float().softmax(-1)
            probs[:, mask_id] = 0
            conf, tok = probs.max(-1)
            conf = conf.masked_fill(x[0, lo:hi] != mask_id, -1.0)
            pick = torch.sort(conf, descending=True, stable=True).indices[:n]
            x[0, lo + pick] = tok[pick]
        return x

    def prefix_window(model, x, lo, hi, counts, mask_id):                # to the end
        x = x.clone()
        logits, cache = model.build_cache(x)
        window = logits[0, lo:hi]
        for k, n in enumerate(counts):
            if k:
                window = model.forward_window(x[:, lo:], lo, cache)[0, :hi - lo]
            probs = window.float().softmax(-1)
            probs[:, mask_id] = 0
            conf, tok = probs.max(-1)
            conf = conf.masked_fill(x[0, lo:hi] != mask_id, -1.0)
            pick = torch.sort(conf, descending=True, stable=True).indices[:n]
            x[0, lo + pick] = tok[pick]
        return x

    def rebuild_every_step(model, x, lo, hi, counts, mask_id):
        x = x.clone()
        for n in counts:
            logits, _ = model.build_cache(x)
            probs = logits[0, lo:hi].float().softmax(-1)
            probs[:, mask_id] = 0
            conf, tok = probs.max(-1)
            conf = conf.masked_fill(x[0, lo:hi] != mask_id, -1.0)
            pick = torch.sort(conf, descending=True, stable=True).indices[:n]
            x[0, lo + pick] = tok[pick]
        return x

    def mask_not_banned(model, x, lo, hi, counts, mask_id):
        x = x.clone()
        logits, cache = model.build_cache(x)
        window = logits[0, lo:hi]
        for k, n in enumerate(counts):
            if k:
                window = model.forward_window(x[:, lo:hi], lo, cache)[0]
            conf, tok = window.float().softmax(-1).max(-1)
            conf = conf.masked_fill(x[0, lo:hi] != mask_id, -1.0)
            pick = torch.sort(conf, descending=True, stable=True).indices[:n]
            x[0, lo + pick] = tok[pick]
        return x

    def written(model, x, lo, hi, counts, mask_id):           # an independent solution
        x = x.clone()
        logits, cache = model.build_cache(x)
        for k, n in enumerate(counts):
            window = logits[0, lo:hi] if k == 0 else \
                model.forward_window(x[:, lo:hi], lo, cache)[0]
            probs = window.float().softmax(-1)
            probs[:, mask_id] = 0
            best = [(-float(probs[i].max()), i, int(probs[i].argmax()))
                    for i in range(hi - lo) if int(x[0, lo + i]) == mask_id]
            for _, i, token in sorted(best)[:n]:                 # ties: the lower position
                x[0, lo + i] = token
        return x

    run("dual_cache_block", written)
    for wrong in (no_cache, prefix_window, rebuild_every_step, mask_not_banned):
        fails("dual_cache_block", wrong)


class _FakeCachedModel(nn.Module):
    """Logits from a fixed random table of (token, position); records cache windows."""

    def __init__(self, vocab_size, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g) * 3)
        self.windows = []

    def forward(self, input_ids):
        logits = self.table[input_ids.roll(1, dims=1)]                   # (B, L, V)
        return type("Out", (), {"logits": logits})()

    def build_cache(self, input_ids):
        self.windows.append((0, input_ids.shape[1], "full"))
        return self.forward(input_ids).logits, object()

    def forward_window(self, window_ids, start, cache):
        self.windows.append((start, start + window_ids.shape[1], "window"))
        return self.table[window_ids]                                    # (B, W, V)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from dllm_lesson.loading import model_path

    return AutoTokenizer.from_pretrained(str(model_path("tiny-dllm")))


@pytest.mark.parametrize("kind", ["prefix", "dual"])
def test_cache_window_matches_the_engine(tokenizer, kind):
    model = _FakeCachedModel(len(tokenizer))
    prompt, A, b = "What is the capital of France?", 20, 6
    ids, a0 = sampling.build_sequence(tokenizer, prompt, A)
    records = list(sampling.decode_steps(model, tokenizer, prompt, A, "llada", steps=12,
                                         block_length=b, cache=kind))
    assert records
    blocks = part2.block_bounds_reference(A, b)
    windows = [w for w in model.windows if w[2] == "window"]
    assert windows
    for lo, hi, _ in windows:
        expected = {part2.cache_window_reference(kind, ids.shape[1], a0, bs, be)
                    for bs, be in blocks}
        assert (lo, hi) in expected


def test_cache_window_rejects_unknown_kind():
    with pytest.raises(ValueError, match="prefix"):
        part2.cache_window_reference("suffix", 10, 2, 0, 4)


# -- 05: which positions commit / re-mask ------------------------------------------------
class _FakeModel(nn.Module):
    """Context-dependent logits: each position's row depends on its left neighbour."""

    def __init__(self, vocab_size, seed=0, scale=3.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g) * scale)

    def forward(self, input_ids):
        logits = self.table[input_ids.roll(1, dims=1)]                   # (B, L, V)
        return type("Out", (), {"logits": logits})()


def _replay(records, mask_id, A):
    """(tokens before the step, step) pairs."""
    before = [mask_id] * A
    for s in records:
        yield before, s
        before = s.tokens


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.5, 0.99])
def test_threshold_commit_matches_the_engine(tokenizer, threshold):
    model = _FakeModel(len(tokenizer), scale=4.0)
    A, b = 18, 6
    mask = tokenizer.mask_token_id
    records = list(sampling.decode_steps(model, tokenizer, "Tell me about Peru.", A,
                                         "threshold", threshold=threshold, block_length=b))
    for before, s in _replay(records, mask, A):
        bs, be = part2.block_bounds_reference(A, b)[s.block]
        masked = torch.tensor([t == mask and bs <= i < be for i, t in enumerate(before)])
        conf = torch.tensor(s.confidence, dtype=torch.float64)
        expected = part2.threshold_commit_reference(conf, masked, threshold)
        assert s.changed == expected.nonzero()[:, 0].tolist()


def test_select_positions_low_confidence_matches_the_engine(tokenizer):
    model = _FakeModel(len(tokenizer), seed=1)
    A, steps, b = 16, 6, 8
    mask = tokenizer.mask_token_id
    records = list(sampling.decode_steps(model, tokenizer, "Describe Chile.", A, "llada",
                                         steps=steps, block_length=b))
    for before, s in _replay(records, mask, A):
        bs, be = part2.block_bounds_reference(A, b)[s.block]
        masked = torch.tensor([t == mask and bs <= i < be for i, t in enumerate(before)])
        conf = torch.tensor(s.confidence, dtype=torch.float64)
        rand = torch.rand(A, dtype=torch.float64)
        got = part2.select_positions_reference(conf, masked, len(s.changed),
                                               "low_confidence", rand)
        assert s.changed == got


def test_select_positions_random_commits_masked_ones_of_the_block(tokenizer):
    model = _FakeModel(len(tokenizer), seed=2)
    A, b = 16, 8
    mask = tokenizer.mask_token_id
    records = list(sampling.decode_steps(model, tokenizer, "Describe Chile.", A, "llada",
                                         steps=8, block_length=b, remasking="random"))
    for before, s in _replay(records, mask, A):
        bs, be = part2.block_bounds_reference(A, b)[s.block]
        assert all(before[i] == mask and bs <= i < be for i in s.changed)


def test_select_positions_wrong_answers_fail():
    def lowest_confidence(conf, masked, n, remasking, rand):      # misreads the name
        score = conf if remasking == "low_confidence" else rand
        idx = [i for i in range(len(score)) if masked[i]]
        return sorted(sorted(idx, key=lambda i: float(score[i]))[:n])

    def ignores_masked(conf, masked, n, remasking, rand):
        score = conf if remasking == "low_confidence" else rand
        return sorted(torch.argsort(score, descending=True)[:n].tolist())

    def always_confidence(conf, masked, n, remasking, rand):
        return part2.select_positions_reference(conf, masked, n, "low_confidence", rand)

    for wrong in (lowest_confidence, ignores_masked, always_confidence):
        fails("select_positions", wrong)


def test_select_positions_accepts_a_bool_mask():
    def as_mask(conf, masked, n, remasking, rand):
        out = torch.zeros(len(conf), dtype=torch.bool)
        out[part2.select_positions_reference(conf, masked, n, remasking, rand)] = True
        return out

    run("select_positions", as_mask)


def test_threshold_commit_wrong_answers_fail():
    def strict(conf, masked, thr):                                # > instead of >=
        out = masked & (conf > thr)
        if masked.any() and not out.any():
            out[torch.where(masked, conf, -1.0).argmax()] = True
        return out

    def no_fallback(conf, masked, thr):                           # may commit nothing
        return masked & (conf >= thr)

    def ignores_masked(conf, masked, thr):
        out = conf >= thr
        if not out.any():
            out[conf.argmax()] = True
        return out

    def fallback_without_mask(conf, masked, thr):                 # best of all positions
        out = masked & (conf >= thr)
        if not out.any():
            out[conf.argmax()] = True
        return out

    for wrong in (strict, no_fallback, ignores_masked, fallback_without_mask):
        fails("threshold_commit", wrong)


def test_remask_positions_wrong_answers_fail():
    def no_limit(p, committed, thr, k):
        return [i for i in range(len(p)) if committed[i] and p[i] < thr]

    def highest_first(p, committed, thr, k):
        low = [i for i in range(len(p)) if committed[i] and p[i] < thr]
        return sorted(sorted(low, key=lambda i: -float(p[i]))[:k])

    def leftmost_first(p, committed, thr, k):
        return [i for i in range(len(p)) if committed[i] and p[i] < thr][:k]

    def includes_masked(p, committed, thr, k):
        low = [i for i in range(len(p)) if p[i] < thr]
        return sorted(sorted(low, key=lambda i: float(p[i]))[:k])

    for wrong in (no_limit, highest_first, leftmost_first, includes_masked):
        fails("remask_positions", wrong)


def test_remask_positions_matches_the_engine_policy():
    """The engine's re-mask rule (policy ``_Unmask`` with visible probabilities) picks
    the same positions as the reference."""
    if not hasattr(sampling, "_Unmask"):
        pytest.skip("the engine's private _Unmask policy was renamed")
    rng = random.Random(0)
    mask = 4
    for trial in range(100):
        A = rng.randint(2, 20)
        xa = torch.tensor([mask if rng.random() < 0.4 else rng.randint(5, 50)
                           for _ in range(A)])
        prob = torch.tensor([rng.random() for _ in range(A)])
        thr, k = rng.choice([0.3, 0.5, 0.9]), rng.randint(0, 3)
        policy = sampling._Unmask(mask, "schedule", "low_confidence", 0.9, True, thr, k)
        x0_hat = torch.full((A,), 7)
        conf = torch.rand(A)
        _, changed, remasked, _ = policy.update(xa, x0_hat, conf, prob, 0, A, 0, 4, 8,
                                                torch.Generator().manual_seed(trial))
        committed = xa != mask
        assert remasked == part2.remask_positions_reference(prob, committed, thr, k)


# -- 10: batch arithmetic and MFU --------------------------------------------------------
def test_step_budget_matches_the_training_batches():
    """The training loop's data order, walked with Batches: one micro step takes
    batch_size rows per rank, each padded to its batch's longest row; the epoch's whole
    optimizer steps cost the tokens the reference counts."""
    from dllm_lesson.training import Batches

    gen = random.Random(3)
    rows = [([2] * n, [1] * n) for n in (gen.randint(1, 8) for _ in range(103))]
    for bs, accum, world in [(4, 2, 3), (8, 1, 1), (5, 3, 2)]:
        streams = [Batches(rows, bs, 0, None, 0, 8, seed=0, rank=r, world=world)
                   for r in range(world)]
        order = list(streams[0]._perm())                 # the epoch's shuffled row order
        per_step, bound, tokens = part2.step_budget_reference(
            [len(rows[i][0]) for i in order], bs, accum, world, 8)
        assert per_step == bs * accum * world and bound == per_step * 8
        walked = []
        while len(walked) < len(tokens):
            total = 0
            for _ in range(accum):
                for s in streams:
                    total += s.next()["input_ids"].numel()     # padded rows x longest
            walked.append(total)
        assert walked == tokens and len(tokens) == len(rows) // per_step
        assert all(t <= bound for t in tokens) and streams[0].epoch == 0


def test_step_budget_by_hand():
    # 2 rows a micro batch, 2 ranks, 1 micro step: rank 0 gets [3, 5] -> 2 x 5, rank 1
    # [2, 7] -> 2 x 6 (cut at seq_len 6); step 2 the same with [9, 1] -> 12, [1, 1] -> 2
    assert part2.step_budget_reference([3, 5, 2, 7, 9, 1, 1, 1, 4], 2, 1, 2, 6) == \
        (4, 24, [10 + 12, 12 + 2])


def test_step_budget_wrong_answers_fail():
    def walk(lengths, b, a, w, s, pad):
        rows = b * a * w
        steps = [lengths[k * rows:(k + 1) * rows] for k in range(len(lengths) // rows)]
        return rows, rows * s, [pad(step, b, w, s) for step in steps]

    def per_rank(step, b, w, s):                                   # the right padding
        return sum(len(c) * min(max(c), s) for c in
                   (step[i:i + b] for i in range(0, len(step), b)))

    run("step_budget", lambda *a: walk(*a, per_rank))           # an independent solution
    fails("step_budget", lambda *a: walk(*a, lambda st, b, w, s: sum(st)))     # no padding
    fails("step_budget", lambda *a: walk(*a, lambda st, b, w, s: len(st) * s))  # the bound
    fails("step_budget", lambda *a: walk(*a, lambda st, b, w, s:               # whole step
                                         len(st) * min(max(st), s)))
    fails("step_budget", lambda *a: walk(*a, lambda st, b, w, s:               # no cut
                                         sum(len(c) * max(c) for c in
                                             (st[i:i + b] for i in range(0, len(st), b)))))
    fails("step_budget", lambda *a: walk(*a, lambda st, b, w, s: sum(          # strided ranks
        len(c) * min(max(c), s) for c in (st[r::w] for r in range(w)) if c)))

    def with_partial(lengths, b, a, w, s):                     # counts the unfinished step
        rows, bound, tokens = walk(lengths, b, a, w, s, per_rank)
        rest = lengths[len(tokens) * rows:]
        return rows, bound, tokens + ([per_rank(rest, b, w, s)] if rest else [])
    fails("step_budget", with_partial)


def test_training_flops_counts_the_linear_layers_of_a_real_modernbert():
    """The count's body is exactly the weights of the model's Linear layers but the decoder,
    its decoder term the decoder's weights, its attention term 12 d per (query, key) pair."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from dllm_lesson.modernbert import layer_is_global, training_flops

    cfg = ModernBertConfig(vocab_size=300, hidden_size=48, intermediate_size=80,
                           num_hidden_layers=5, num_attention_heads=4,
                           global_attn_every_n_layers=2, local_attention=16,
                           max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, cls_token_id=1, sep_token_id=2)
    model = ModernBertForMaskedLM(cfg)
    decoder = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m is not decoder)
    seq = 40
    spans = sum(seq if g else 16 for g in layer_is_global(cfg))     # 3 global, 2 local
    assert spans == 3 * 40 + 2 * 16
    assert training_flops(cfg, tokens=1, scored=0, seq_len=seq) == 6 * linear + 12 * 48 * spans
    assert training_flops(cfg, tokens=0, scored=1, seq_len=seq) == 6 * decoder.weight.numel()
    # the textbook count is the special case: every position scored, every layer global
    dense = ModernBertConfig(**{**cfg.to_dict(), "layer_types": ["full_attention"] * 5})
    n = linear + decoder.weight.numel()
    assert training_flops(dense, seq, seq, seq) == (6 * n + 12 * 5 * 48 * seq) * seq


def test_train_flops_independent_solution_passes():
    def mine(config, tokens, scored, seq_len):
        d, inner, v = config.hidden_size, config.intermediate_size, config.vocab_size
        total = 0
        for layer in range(config.num_hidden_layers):
            is_global = layer % config.global_attn_every_n_layers == 0
            keys = seq_len if is_global else min(seq_len, config.local_attention)
            total += 6 * tokens * (3 * d * d + d * d + d * 2 * inner + inner * d)
            total += 12 * d * keys * tokens
        return total + 6 * tokens * d * d + 6 * scored * d * v

    run("train_flops", mine)


def test_train_flops_wrong_answers_fail():
    def textbook(c, tokens, scored, seq):            # 6N + 12 L d T, decoder on every token
        n = c.num_hidden_layers * (4 * c.hidden_size ** 2 + 3 * c.hidden_size
                                   * c.intermediate_size) + c.hidden_size * (c.hidden_size
                                                                             + c.vocab_size)
        return (6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq) * tokens

    def ungated(c, tokens, scored, seq):             # the feed-forward as d x I, not d x 2I
        ref = part2.train_flops_reference(c, tokens, scored, seq)
        return ref - 6 * tokens * c.num_hidden_layers * c.hidden_size * c.intermediate_size

    fails("train_flops", textbook)
    fails("train_flops", ungated)
    fails("train_flops", lambda c, t, s, q: part2.train_flops_reference(c, t, s, q) / 3)
    fails("train_flops", lambda c, t, s, q: part2.train_flops_reference(c, t, t, q))


# -- 05: dependent tokens ------------------------------------------------------------------
def _one_pass(model, ids, pos_a, pos_b, top):
    probs = model(input_ids=ids[None]).logits[0].double().softmax(-1)
    p_a, a = probs[pos_a].topk(top)
    p_b, b = probs[pos_b].topk(top)
    return probs, p_a, a, p_b, b


def test_joint_pair_wrong_answers_fail():
    def product_twice(model, ids, pos_a, pos_b, top):      # "joint" from the same pass
        _, p_a, _, p_b, _ = _one_pass(model, ids, pos_a, pos_b, top)
        table = p_a[:, None] * p_b[None, :]
        return table, table

    def conditional_only(model, ids, pos_a, pos_b, top):   # forgets the factor p_a(a_i)
        _, p_a, a, p_b, b = _one_pass(model, ids, pos_a, pos_b, top)
        fixed = ids.repeat(top, 1)
        fixed[:, pos_a] = a
        given = model(input_ids=fixed).logits[:, pos_b].double().softmax(-1)
        return p_a[:, None] * p_b[None, :], given[:, b]

    def columns_from_second_pass(model, ids, pos_a, pos_b, top):  # other candidates
        _, p_a, a, p_b, b = _one_pass(model, ids, pos_a, pos_b, top)
        fixed = ids.repeat(top, 1)
        fixed[:, pos_a] = a
        given = model(input_ids=fixed).logits[:, pos_b].double().softmax(-1)
        return p_a[:, None] * p_b[None, :], p_a[:, None] * given.topk(top).values

    for wrong in (product_twice, conditional_only, columns_from_second_pass):
        fails("joint_pair", wrong)


def test_joint_and_product_see_a_dependency_one_pass_cannot():
    """A toy LM whose position 1 copies whatever stands at position 0 (and is unsure what
    that is while position 0 is masked): the joint puts all its mass on the diagonal,
    pairs (x, x); the product of the one-pass marginals spreads it over every pair."""
    from dllm_lesson.evaluate import joint_and_product

    V, mask_id = 5, 4

    class Copier:
        def __call__(self, input_ids):
            class Out:
                pass
            ids = torch.as_tensor(input_ids)
            logits = torch.zeros(ids.shape[0], ids.shape[1], V, dtype=torch.float64)
            logits[:, :, mask_id] = -1e9
            logits[:, 0, :mask_id] = torch.tensor([2.0, 1.0, 0.5, 0.0])  # unsure
            for r in range(ids.shape[0]):
                if ids[r, 0] != mask_id:               # copy a known first token
                    logits[r, 1, :] = -1e9
                    logits[r, 1, ids[r, 0]] = 0.0
                else:                                  # else: as unsure as position 0
                    logits[r, 1, :mask_id] = torch.tensor([2.0, 1.0, 0.5, 0.0])
            out = Out()
            out.logits = logits
            return out

    out = joint_and_product(Copier(), torch.tensor([mask_id, mask_id, 3]), 0, 1, top=4)
    assert out["cand_a"].tolist() == out["cand_b"].tolist() == [0, 1, 2, 3]
    joint, product = out["joint"], out["product"]
    assert torch.allclose(joint, torch.diag(out["p_a"]), atol=1e-9)       # pairs (x, x)
    assert abs(float(joint.sum()) - 1) < 1e-9
    off_diagonal = float(product.sum() - product.diagonal().sum())
    assert 0.5 < off_diagonal < 0.7                    # most of the product is mixed pairs
