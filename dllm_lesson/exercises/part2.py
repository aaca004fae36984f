"""Exercises of notebooks 04, 05 and 12: several tokens per step, blocks, KV cache windows,
remasking, threshold decoding and dependent tokens, and the arithmetic of scaling up.

Each exercise is a slow, obvious reference (the ``*_reference`` functions) and a checker
``_check_<name>(candidate, reference)`` that draws random inputs from a seeded generator
and raises ``AssertionError`` with the first input where the two disagree. Notebooks call
``check("<name>", my_function)``; ``tests/test_exercises_part2.py`` runs every checker
against its reference and against plausible wrong answers, and compares the references
with what the decoding engine really does.
"""

from __future__ import annotations

import math
import random

import torch

from . import exercise

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _fail(name: str, inputs: str, got, expected) -> AssertionError:
    return AssertionError(f"{name}: wrong answer for {inputs}\n  yours:    {got}\n"
                          f"  expected: {expected}")


def _as_int_list(value, name: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    try:
        return [int(v) for v in value]
    except TypeError as e:
        raise AssertionError(f"{name}: return a list of ints, got {value!r}") from e


def _positions(value, name: str) -> list[int]:
    """A list / LongTensor of positions or a bool mask -> sorted list of positions."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        return value.nonzero()[:, 0].tolist()
    return sorted(_as_int_list(value, name))


# ---------------------------------------------------------------------------------------
# 04_block_generation_and_kv_cache
# ---------------------------------------------------------------------------------------


def num_transfer_tokens_reference(mask_count: int, steps: int) -> list[int]:
    """How many masks to commit at each of ``steps`` steps (LLaDA's
    ``get_num_transfer_tokens``): ``mask_count = steps * base + rem``, every step commits
    ``base`` and the first ``rem`` steps one more.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    base, rem = divmod(mask_count, steps)                  # mask_count = steps*base + rem
    return [base + (1 if i < rem else 0) for i in range(steps)]


@exercise("num_transfer_tokens", "04_block_generation_and_kv_cache",
          num_transfer_tokens_reference)
def _check_num_transfer_tokens(candidate, reference):
    rng = random.Random(0)
    cases = [(8, 8), (8, 4), (10, 4), (7, 3), (3, 5), (1, 1), (64, 64), (64, 7)]
    cases += [(rng.randint(1, 200), rng.randint(1, 64)) for _ in range(200)]
    for mask_count, steps in cases:
        expected = reference(mask_count, steps)
        got = _as_int_list(candidate(mask_count, steps), "num_transfer_tokens")
        if got != expected:
            hint = ""
            if len(got) == steps and sum(got) != mask_count:
                hint = f" (yours commit {sum(got)} tokens in total, not {mask_count})"
            raise _fail("num_transfer_tokens" + hint,
                        f"mask_count={mask_count}, steps={steps}", got, expected)


def block_bounds_reference(answer_length: int, block_length: int | None
                           ) -> list[tuple[int, int]]:
    """Semi-autoregressive blocks ``[(start, end), ...]`` (end exclusive) that cover the
    answer left to right; the last block may be shorter; ``block_length=None`` is one block.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    size = block_length or answer_length
    bounds = []
    start = 0
    while start < answer_length:
        end = min(start + size, answer_length)             # the last block may be shorter
        bounds.append((start, end))
        start = end
    return bounds


def cache_window_reference(kind: str, seq_len: int, answer_start: int, block_start: int,
                           block_end: int) -> tuple[int, int]:
    """Sequence positions ``[lo, hi)`` that a cached step recomputes while decoding the
    block ``[block_start, block_end)`` of the answer (answer positions; the answer starts
    at sequence position ``answer_start``; the sequence has ``seq_len`` tokens).

    ``"prefix"``: from the block to the end of the sequence (the prompt and the finished
    blocks come from the cache); ``"dual"``: the block alone (the masked suffix comes from
    the cache too).

    Taught in ``04_block_generation_and_kv_cache``.
    """
    if kind not in ("prefix", "dual"):
        raise ValueError(f"kind must be 'prefix' or 'dual', got {kind!r}")
    lo = answer_start + block_start                        # first position of the block
    hi = seq_len if kind == "prefix" else answer_start + block_end
    return lo, hi


def split_steps_reference(steps: int, blocks) -> list[int]:
    """``steps`` split evenly over the blocks, earlier blocks taking the remainder, and
    never more steps than a block has tokens (LLaDA: ``steps // num_blocks`` each).

    Taught in ``04_block_generation_and_kv_cache``.
    """
    base, rem = divmod(steps, len(blocks))
    return [min(base + (1 if b < rem else 0), be - bs) for b, (bs, be) in enumerate(blocks)]


def _most_confident(probs, x, positions, n, mask_id) -> list[int]:
    """The ``n`` masked ``positions`` of ``x`` whose prediction is the most probable
    (ties: the lower position), sorted."""
    conf = probs.max(dim=-1).values                                   # (L,)
    cands = [p for p in positions if int(x[p]) == mask_id]
    cands.sort(key=lambda p: -float(conf[p]))                         # stable sort
    return sorted(cands[:n])


def block_decode_reference(predict, x, answer_start: int, answer_length: int,
                           mask_id: int, steps: int, block_length: int | None
                           ) -> tuple[list[int], list[list[int]]]:
    """LLaDA's semi-autoregressive sampler on one row, low-confidence remasking.

    The answer (``answer_length`` masks from ``answer_start`` in ``x`` (L,)) is cut into
    blocks (:func:`block_bounds_reference`), the ``steps`` are split over them
    (:func:`split_steps_reference`), and each block is finished before the next starts:
    inside it, step after step, call ``predict(x)`` (probabilities (L, V)) and commit
    the most confident masked positions *of the block*, as many as
    :func:`num_transfer_tokens_reference` says for that step. Returns ``(final tokens,
    answer positions committed at each step)``.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    x = torch.as_tensor(x).clone()
    blocks = block_bounds_reference(answer_length, block_length)
    committed = []
    for (bs, be), n_steps in zip(blocks, split_steps_reference(steps, blocks)):
        positions = range(answer_start + bs, answer_start + be)
        masks = sum(int(x[p]) == mask_id for p in positions)
        for n in num_transfer_tokens_reference(masks, n_steps):
            probs = predict(x.clone())                                # (L, V)
            chosen = _most_confident(probs, x, positions, n, mask_id)
            x[chosen] = probs.argmax(dim=-1)[chosen]
            committed.append([p - answer_start for p in chosen])
    return x.tolist(), committed


def _toy_row(g, mask_id):
    """A prompt of 1-5 tokens, then an answer area of masks; (x, answer_start, A)."""
    prompt = int(torch.randint(1, 6, (1,), generator=g))
    A = int(torch.randint(1, 17, (1,), generator=g))
    x = torch.cat([torch.randint(1, 7, (prompt,), generator=g),
                   torch.full((A,), mask_id)])
    return x, prompt, A


@exercise("block_decode", "04_block_generation_and_kv_cache", block_decode_reference)
def _check_block_decode(candidate, reference):
    from .part1 import _ToyModel

    g = torch.Generator().manual_seed(8)
    mask_id = 0
    for trial in range(40):
        x, a0, A = _toy_row(g, mask_id)
        model = _ToyModel(g, len(x), 7, mask_id)
        block_length = [None, 1, 2, 3, 4, 8][trial % 6]
        n_blocks = len(block_bounds_reference(A, block_length))
        steps = int(torch.randint(n_blocks, A + 1, (1,), generator=g))
        expected = reference(model, x.clone(), a0, A, mask_id, steps, block_length)
        model.calls = 0
        got = candidate(model, x.clone(), a0, A, mask_id, steps, block_length)
        try:
            got = (_as_int_list(got[0], "block_decode"),
                   [sorted(_as_int_list(c, "block_decode")) for c in got[1]])
        except (TypeError, IndexError) as err:
            raise AssertionError("block_decode: return (final tokens, committed per step), "
                                 f"got {got!r}") from err
        inputs = (f"x={x.tolist()} (mask_id=0), answer_start={a0}, answer_length={A}, "
                  f"steps={steps}, block_length={block_length}, toy model #{trial}")
        if got != expected:
            raise _fail("block_decode", inputs, got, expected)
        if model.calls != len(expected[1]):
            raise AssertionError(f"block_decode: {inputs}: {model.calls} calls of predict "
                                 f"for {len(expected[1])} steps; call it once per step")


class _RecordingCachedModel:
    """A stand-in for the lesson's ModernBERT with a KV cache: logits come from a fixed
    random table, a full pass reads each token's left neighbour, a window pass the token
    itself (so stale and fresh results differ), and every call is recorded."""

    def __init__(self, g: torch.Generator, V: int):
        self.table = torch.randn(V, V, generator=g) * 3              # (V, V)
        self.calls: list[tuple] = []

    def __call__(self, input_ids):
        self.calls.append(("full", 0, input_ids.shape[1]))
        return type("Out", (), {"logits": self.table[input_ids.roll(1, dims=1)]})()

    def build_cache(self, input_ids):
        self.calls.append(("build_cache", 0, input_ids.shape[1]))
        return self.table[input_ids.roll(1, dims=1)], ("cache", input_ids.clone())

    def forward_window(self, window_ids, start, cache):
        if not (isinstance(cache, tuple) and cache[:1] == ("cache",)):
            raise AssertionError("forward_window needs the cache that build_cache returned")
        self.calls.append(("window", start, start + window_ids.shape[1]))
        return self.table[window_ids]                                # (1, W, V)


def dual_cache_block_reference(model, x, lo: int, hi: int, counts: list[int],
                               mask_id: int):
    """Decode one block with Fast-dLLM's dual cache.

    ``x`` (1, T) the sequence, the block at sequence positions ``[lo, hi)``, ``counts``
    the tokens to commit at each of the block's steps. Step 1: ``model.build_cache(x)``
    returns ``(logits (1, T, V), cache)``: one full pass that also stores every layer's
    K, V. Later steps: ``model.forward_window(x[:, lo:hi], lo, cache)`` recomputes only
    the block (logits (1, hi - lo, V)); everything else is read from the cache. Each step
    commits, among the block's masked positions, the ``counts[k]`` most confident
    (softmax, ``mask_id`` never predicted: its probability set to 0; ties: the lower
    position). Returns the new ``x``.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    x = x.clone()
    logits, cache = model.build_cache(x)                             # (1, T, V)
    window = logits[0, lo:hi]                                        # (hi - lo, V)
    for k, n in enumerate(counts):
        if k > 0:
            window = model.forward_window(x[:, lo:hi], lo, cache)[0]  # (hi - lo, V)
        probs = torch.softmax(window.float(), dim=-1)
        probs[:, mask_id] = 0.0
        chosen = _most_confident(probs, x[0, lo:hi], range(hi - lo), n, mask_id)
        for i in chosen:
            x[0, lo + i] = int(probs[i].argmax())
    return x


@exercise("dual_cache_block", "04_block_generation_and_kv_cache", dual_cache_block_reference)
def _check_dual_cache_block(candidate, reference):
    g = torch.Generator().manual_seed(9)
    mask_id = 0
    for trial in range(30):
        V = 9
        T = int(torch.randint(6, 24, (1,), generator=g))
        lo = int(torch.randint(1, T - 2, (1,), generator=g))
        hi = int(torch.randint(lo + 1, T, (1,), generator=g))
        x = torch.randint(1, V, (1, T), generator=g)
        x[0, lo:] = mask_id                                           # block and after
        x[0, -1] = 1                                                  # a final [SEP]
        n_steps = int(torch.randint(1, hi - lo + 1, (1,), generator=g))
        counts = num_transfer_tokens_reference(hi - lo, n_steps)
        model = _RecordingCachedModel(g, V)
        expected = reference(model, x.clone(), lo, hi, counts, mask_id)
        want_calls = model.calls
        model.calls = []
        got = torch.as_tensor(candidate(model, x.clone(), lo, hi, counts, mask_id))
        inputs = f"x={x.tolist()} (mask_id=0), block [{lo}, {hi}), counts={counts}"
        if model.calls != want_calls:
            raise AssertionError(f"dual_cache_block: {inputs}:\n  your model calls: "
                                 f"{model.calls}\n  expected:         {want_calls}\n  (one "
                                 "build_cache, then forward_window on the block alone)")
        if got.shape != expected.shape or not torch.equal(got.long(), expected):
            raise _fail("dual_cache_block", inputs, got.tolist(), expected.tolist())


# ---------------------------------------------------------------------------------------
# 05_remasking_and_parallel_decoding
# ---------------------------------------------------------------------------------------


def select_positions_reference(confidence: torch.Tensor, masked: torch.Tensor, n: int,
                               remasking: str, rand: torch.Tensor) -> list[int]:
    """The ``n`` masked positions LLaDA commits this step, sorted.

    ``confidence`` (A,) the probability of each position's prediction, ``masked`` (A,)
    bool, ``rand`` (A,) uniform random numbers. ``"low_confidence"`` commits the ``n``
    masked positions with the *highest* confidence (the low-confidence ones stay masked,
    hence the name); ``"random"`` scores positions by ``rand`` instead (LLaDA:
    ``x0_p = rand``). If fewer than ``n`` positions are masked, all of them.

    Taught in ``05_remasking_and_parallel_decoding``.
    """
    if remasking not in ("low_confidence", "random"):
        raise ValueError("remasking must be 'low_confidence' or 'random', got "
                         f"{remasking!r}")
    score = confidence if remasking == "low_confidence" else rand     # (A,)
    candidates = [i for i in range(len(score)) if bool(masked[i])]
    candidates.sort(key=lambda i: -float(score[i]))                  # best first
    return sorted(candidates[:n])


def _random_confidences(g: torch.Generator, A: int) -> torch.Tensor:
    """Distinct confidences in (0, 1), (A,)."""
    return (torch.randperm(10 * A, generator=g)[:A].double() + 0.5) / (10 * A)


@exercise("select_positions", "05_remasking_and_parallel_decoding",
          select_positions_reference)
def _check_select_positions(candidate, reference):
    g = torch.Generator().manual_seed(3)
    for trial in range(300):
        A = int(torch.randint(1, 40, (1,), generator=g))
        confidence = _random_confidences(g, A)
        rand = _random_confidences(g, A)
        masked = torch.rand(A, generator=g) < 0.6
        if trial % 7 == 0:
            masked[:] = True
        n = int(torch.randint(1, A + 1, (1,), generator=g))
        remasking = "low_confidence" if trial % 2 == 0 else "random"
        expected = reference(confidence, masked, n, remasking, rand)
        got = _positions(candidate(confidence.clone(), masked.clone(), n, remasking,
                                   rand.clone()), "select_positions")
        if got != expected:
            raise _fail("select_positions", f"remasking={remasking!r}, n={n},\n"
                        f"  confidence={[round(float(c), 3) for c in confidence]},\n"
                        f"  masked={masked.int().tolist()},\n"
                        f"  rand={[round(float(r), 3) for r in rand]}", got, expected)


def threshold_commit_reference(confidence: torch.Tensor, masked: torch.Tensor,
                               threshold: float) -> torch.Tensor:
    """Threshold parallel decoding: which masked positions commit this step, bool (A,).

    Every masked position whose confidence is ``>= threshold``; if there is none, the
    single most confident masked position (the first one on a tie), so each step makes
    progress. Nothing when no position is masked.

    Taught in ``05_remasking_and_parallel_decoding``.
    """
    commit = torch.zeros(len(confidence), dtype=torch.bool)              # (A,)
    best, best_conf = None, -math.inf
    for i in range(len(confidence)):
        if not bool(masked[i]):
            continue
        if float(confidence[i]) >= threshold:
            commit[i] = True
        if float(confidence[i]) > best_conf:
            best, best_conf = i, float(confidence[i])
    if best is not None and not bool(commit.any()):                      # at least one
        commit[best] = True
    return commit


@exercise("threshold_commit", "05_remasking_and_parallel_decoding",
          threshold_commit_reference)
def _check_threshold_commit(candidate, reference):
    g = torch.Generator().manual_seed(4)
    for trial in range(300):
        A = int(torch.randint(1, 30, (1,), generator=g))
        confidence = torch.rand(A, generator=g, dtype=torch.float64)
        threshold = [0.9, 0.5, 0.99, 0.3, 1.0][trial % 5]
        if trial % 3 == 0:
            confidence[0] = threshold                    # exactly on the threshold
        if trial % 4 == 1:
            confidence = confidence * threshold * 0.9    # nobody reaches the threshold
        masked = torch.rand(A, generator=g) < 0.7
        if trial % 11 == 0:
            masked[:] = False
        expected = reference(confidence, masked, threshold)
        got = candidate(confidence.clone(), masked.clone(), threshold)
        got_pos = _positions(got, "threshold_commit")
        exp_pos = _positions(expected, "threshold_commit")
        if got_pos != exp_pos:
            raise _fail("threshold_commit (positions committed)",
                        f"threshold={threshold},\n"
                        f"  confidence={[round(float(c), 3) for c in confidence]},\n"
                        f"  masked={masked.int().tolist()}", got_pos, exp_pos)


def remask_positions_reference(current_prob: torch.Tensor, committed: torch.Tensor,
                               remask_threshold: float, max_remask: int) -> list[int]:
    """Committed tokens to turn back into ``[MASK]``, sorted: those whose probability
    under the model's new prediction fell below ``remask_threshold``, at most
    ``max_remask`` of them, the least probable first.

    ``current_prob`` (A,) is the model's probability of the token each position holds
    now; ``committed`` (A,) bool marks positions committed in an earlier step.

    Taught in ``05_remasking_and_parallel_decoding``.
    """
    low = [i for i in range(len(current_prob))
           if bool(committed[i]) and float(current_prob[i]) < remask_threshold]
    low.sort(key=lambda i: float(current_prob[i]))                   # least probable first
    return sorted(low[:max_remask])


@exercise("remask_positions", "05_remasking_and_parallel_decoding",
          remask_positions_reference)
def _check_remask_positions(candidate, reference):
    g = torch.Generator().manual_seed(5)
    for trial in range(300):
        A = int(torch.randint(1, 30, (1,), generator=g))
        current_prob = _random_confidences(g, A)
        committed = torch.rand(A, generator=g) < 0.6
        remask_threshold = [0.3, 0.5, 0.8, 0.05][trial % 4]
        max_remask = int(torch.randint(0, 4, (1,), generator=g))
        expected = reference(current_prob, committed, remask_threshold, max_remask)
        got = _positions(candidate(current_prob.clone(), committed.clone(),
                                   remask_threshold, max_remask), "remask_positions")
        if got != expected:
            raise _fail("remask_positions", f"remask_threshold={remask_threshold}, "
                        f"max_remask={max_remask},\n"
                        f"  current_prob={[round(float(p), 3) for p in current_prob]},\n"
                        f"  committed={committed.int().tolist()}", got, expected)


def joint_pair_reference(model, input_ids: torch.Tensor, pos_a: int, pos_b: int,
                         top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two masked positions, two ways of choosing their pair: ``(product, joint)``, each
    ``(top, top)``, rows the ``top`` most likely tokens at ``pos_a`` in one forward pass
    (most likely first), columns those at ``pos_b``.

    ``product[i, j] = p_a(a_i) p_b(b_j)``, both from that one pass (what committing both
    positions in the same step samples from); ``joint[i, j] = p_a(a_i) p(b_j | a_i)``,
    where ``p(. | a_i)`` is ``pos_b``'s distribution in a second pass with ``a_i`` written
    at ``pos_a`` (what committing ``pos_a`` first, then ``pos_b``, samples from).
    ``model(input_ids=ids).logits``: (B, L, V); ``input_ids`` (L,).

    The library's version is :func:`dllm_lesson.evaluate.joint_and_product`. Taught in
    ``05_remasking_and_parallel_decoding``.
    """
    from ..evaluate import joint_and_product

    out = joint_and_product(model, input_ids, pos_a, pos_b, top)
    return out["product"], out["joint"]


class _PairModel:
    """A toy LM whose prediction at each position depends on the tokens elsewhere."""

    def __init__(self, g: torch.Generator, V: int, L: int):
        self.base = torch.randn(L, V, generator=g, dtype=torch.float64) * 2   # (L, V)
        self.pull = torch.randn(V, V, generator=g, dtype=torch.float64) * 2   # (V, V)

    def __call__(self, input_ids):
        class Out:
            pass
        ids = torch.as_tensor(input_ids)                                     # (B, L)
        ctx = self.pull[ids].sum(dim=1, keepdim=True) - self.pull[ids]       # (B, L, V)
        out = Out()
        out.logits = self.base[None] + ctx / ids.shape[1]
        return out


@exercise("joint_pair", "05_remasking_and_parallel_decoding", joint_pair_reference)
def _check_joint_pair(candidate, reference):
    g = torch.Generator().manual_seed(12)
    for trial in range(40):
        V, L = int(torch.randint(6, 30, (1,), generator=g)), int(torch.randint(3, 9, (1,),
                                                                                generator=g))
        model, mask_id = _PairModel(g, V, L), V - 1
        ids = torch.randint(0, V - 1, (L,), generator=g)
        pos_a, pos_b = torch.randperm(L, generator=g)[:2].tolist()
        ids[pos_a] = ids[pos_b] = mask_id
        top = int(torch.randint(2, min(V, 6), (1,), generator=g))
        inputs = f"V={V}, L={L}, input_ids={ids.tolist()}, pos_a={pos_a}, pos_b={pos_b}, " \
                 f"top={top}"
        want_product, want_joint = reference(model, ids.clone(), pos_a, pos_b, top)
        got = candidate(model, ids.clone(), pos_a, pos_b, top)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise AssertionError(f"joint_pair: return (product, joint), got {type(got)}")
        for what, have, want in (("product", got[0], want_product),
                                 ("joint", got[1], want_joint)):
            have = torch.as_tensor(have, dtype=torch.float64)
            if have.shape != want.shape or not torch.allclose(have, want, atol=1e-6):
                raise _fail("joint_pair", f"{inputs} ({what})",
                            have.numpy().round(4).tolist(), want.numpy().round(4).tolist())


# ---------------------------------------------------------------------------------------
# 12_scaling_up
# ---------------------------------------------------------------------------------------


def step_budget_reference(lengths, batch_size: int, grad_accum: int, world_size: int,
                          seq_len: int) -> tuple[int, int, list[int]]:
    """``(rows_per_step, max_tokens_per_step, tokens_per_step)`` over one epoch.

    ``lengths``: each row's token count, in the epoch's (already shuffled) order. One
    optimizer step takes ``rows = batch_size * grad_accum * world_size`` rows: in each of
    its ``grad_accum`` micro steps, rank ``r`` of ``world_size`` takes the ``r``-th run of
    ``batch_size`` consecutive rows (as :class:`dllm_lesson.training.Batches` does). Every
    rank pads its micro batch to its longest row, cut at ``seq_len``, so the batch costs
    ``batch_size * min(longest, seq_len)`` tokens. ``tokens_per_step[k]``: the padded tokens
    of optimizer step ``k``, summed over its micro steps and ranks, for the whole steps of
    the epoch only (``len(lengths) // rows`` of them; the leftover rows wait for the next
    epoch). ``max_tokens_per_step = rows * seq_len`` is the bound no step exceeds.

    Taught in ``12_scaling_up``.
    """
    rows = batch_size * grad_accum * world_size          # the global batch
    tokens = []
    for k in range(len(lengths) // rows):                # whole optimizer steps only
        total = 0
        for micro in range(grad_accum):
            for rank in range(world_size):
                lo = k * rows + (micro * world_size + rank) * batch_size
                chunk = lengths[lo:lo + batch_size]      # this rank's micro batch
                total += len(chunk) * min(max(chunk), seq_len)
        tokens.append(total)
    return rows, rows * seq_len, tokens


@exercise("step_budget", "12_scaling_up", step_budget_reference)
def _check_step_budget(candidate, reference):
    rng = random.Random(6)
    cases = [([3, 5, 2, 7], 1, 1, 1, 8), ([3, 5, 2, 7, 4], 2, 1, 1, 8),
             ([3, 5, 2, 7, 9, 1, 1, 1], 2, 2, 1, 6), ([3, 5, 2, 7, 9, 1, 1, 1], 2, 1, 2, 6)]
    for _ in range(150):
        b, a, w = rng.randint(1, 6), rng.randint(1, 4), rng.choice([1, 2, 3, 4])
        seq_len = rng.choice([16, 32, 64])
        n = rng.randint(1, 4 * b * a * w + b)
        cases.append(([rng.randint(1, seq_len + 8) for _ in range(n)], b, a, w, seq_len))
    for lengths, b, a, w, s in cases:
        expected = reference(list(lengths), b, a, w, s)
        got = candidate(list(lengths), b, a, w, s)
        try:
            rows, bound, tokens = got
            got = (int(rows), int(bound), [int(t) for t in tokens])
        except (TypeError, ValueError) as err:
            raise AssertionError("step_budget: return (rows_per_step, max_tokens_per_step, "
                                 f"tokens_per_step as a list), got {got!r}") from err
        if got != expected:
            raise _fail("step_budget", f"lengths={lengths}, batch_size={b}, grad_accum={a}, "
                        f"world_size={w}, seq_len={s}", got, expected)


def train_flops_reference(config, tokens: int, scored: int, seq_len: int) -> float:
    """FLOPs of one training step of a ModernBERT masked LM, counted matrix by matrix:
    :func:`dllm_lesson.modernbert.training_flops` (its docstring has the count).

    Taught in ``12_scaling_up``.
    """
    from ..modernbert import training_flops

    return training_flops(config, tokens, scored, seq_len)


def _flops_configs(rng: random.Random) -> list:
    from types import SimpleNamespace

    large = SimpleNamespace(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28,
                            vocab_size=50368, global_attn_every_n_layers=3,
                            local_attention=128)
    tiny = SimpleNamespace(hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                           vocab_size=2788, global_attn_every_n_layers=3, local_attention=64)
    configs = [large, tiny]
    for _ in range(40):
        configs.append(SimpleNamespace(
            hidden_size=rng.choice([64, 256, 768, 1024, 2048]),
            intermediate_size=rng.choice([128, 1152, 2624, 5248]),
            num_hidden_layers=rng.randint(1, 40), vocab_size=rng.randint(1000, 260_000),
            global_attn_every_n_layers=rng.randint(1, 5),
            local_attention=rng.choice([32, 64, 128, 256])))
    return configs


@exercise("train_flops", "12_scaling_up", train_flops_reference)
def _check_train_flops(candidate, reference):
    rng = random.Random(7)
    cases = [(c, tokens, scored, seq)
             for c in _flops_configs(rng)
             for seq in (rng.choice([16, 100, 512, 4096]),)
             for tokens in (seq * rng.randint(1, 64),)
             for scored in (0, rng.randint(1, tokens), tokens)]
    for config, tokens, scored, seq in cases:
        expected = reference(config, tokens, scored, seq)
        got = float(candidate(config, tokens, scored, seq))
        if not math.isclose(got, expected, rel_tol=1e-9):
            inputs = (f"hidden_size={config.hidden_size}, intermediate_size="
                      f"{config.intermediate_size}, layers={config.num_hidden_layers}, "
                      f"vocab={config.vocab_size}, global every "
                      f"{config.global_attn_every_n_layers}, window {config.local_attention}, "
                      f"tokens={tokens}, scored={scored}, seq_len={seq}")
            raise _fail("train_flops", inputs, f"{got:.6g}", f"{expected:.6g}")
