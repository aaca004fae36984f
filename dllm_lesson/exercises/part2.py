"""Exercises of notebooks 04, 05 and 12: several tokens per step, blocks, KV cache windows,
remasking and threshold decoding, and the arithmetic of scaling up.

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


@exercise("block_bounds", "04_block_generation_and_kv_cache", block_bounds_reference)
def _check_block_bounds(candidate, reference):
    rng = random.Random(1)
    cases = [(32, 8), (32, None), (30, 8), (5, 8), (1, 1), (48, 16), (50, 16)]
    cases += [(rng.randint(1, 300), rng.choice([None, rng.randint(1, 64)]))
              for _ in range(200)]
    for answer_length, block_length in cases:
        expected = reference(answer_length, block_length)
        got = candidate(answer_length, block_length)
        try:
            got = [(int(s), int(e)) for s, e in got]
        except (TypeError, ValueError) as err:
            raise AssertionError("block_bounds: return a list of (start, end) pairs, got "
                                 f"{got!r}") from err
        if got != expected:
            raise _fail("block_bounds", f"answer_length={answer_length}, "
                        f"block_length={block_length}", got, expected)


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


@exercise("cache_window", "04_block_generation_and_kv_cache", cache_window_reference)
def _check_cache_window(candidate, reference):
    rng = random.Random(2)
    cases = [("dual", 60, 13, 0, 16), ("prefix", 60, 13, 0, 16), ("dual", 60, 13, 32, 46),
             ("prefix", 60, 13, 32, 46)]
    for _ in range(200):
        answer_start = rng.randint(1, 40)
        answer_length = rng.randint(1, 100)
        bounds = block_bounds_reference(answer_length, rng.randint(1, answer_length))
        bs, be = rng.choice(bounds)
        seq_len = answer_start + answer_length + rng.randint(1, 3)   # [SEP] after
        cases.append((rng.choice(["prefix", "dual"]), seq_len, answer_start, bs, be))
    for case in cases:
        expected = reference(*case)
        got = candidate(*case)
        try:
            got = (int(got[0]), int(got[1]))
        except (TypeError, ValueError, IndexError) as err:
            raise AssertionError(f"cache_window: return (lo, hi), got {got!r}") from err
        if got != expected:
            kind, seq_len, a0, bs, be = case
            raise _fail("cache_window", f"kind={kind!r}, seq_len={seq_len}, "
                        f"answer_start={a0}, block_start={bs}, block_end={be}",
                        got, expected)


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


# ---------------------------------------------------------------------------------------
# 12_scaling_up
# ---------------------------------------------------------------------------------------


def step_budget_reference(batch_size: int, grad_accum: int, world_size: int, seq_len: int,
                          n_rows: int) -> tuple[int, int, int]:
    """``(rows_per_step, max_tokens_per_step, steps_per_epoch)`` of a training config.

    One optimizer step sees ``batch_size`` rows per device per micro step, ``grad_accum``
    micro steps, on ``world_size`` devices: ``rows = batch_size * grad_accum *
    world_size``; at most ``rows * seq_len`` tokens (rows are padded to the longest of a
    batch, at most ``seq_len``); ``steps_per_epoch = n_rows // rows`` whole steps in one
    pass over ``n_rows`` rows.

    Taught in ``12_scaling_up``.
    """
    rows = batch_size * grad_accum * world_size          # the global batch
    return rows, rows * seq_len, n_rows // rows


@exercise("step_budget", "12_scaling_up", step_budget_reference)
def _check_step_budget(candidate, reference):
    rng = random.Random(6)
    cases = [(8, 4, 8, 512, 939_343), (16, 1, 1, 384, 3434), (32, 1, 8, 512, 10_000)]
    cases += [(rng.randint(1, 64), rng.randint(1, 16), rng.choice([1, 2, 8, 16, 32, 64]),
               rng.choice([128, 256, 512, 1024]), rng.randint(1, 2_000_000))
              for _ in range(200)]
    for case in cases:
        expected = reference(*case)
        got = candidate(*case)
        try:
            got = tuple(int(v) for v in got)
        except (TypeError, ValueError) as err:
            raise AssertionError("step_budget: return (rows_per_step, "
                                 f"max_tokens_per_step, steps_per_epoch), got {got!r}"
                                 ) from err
        if got != expected:
            b, a, w, s, n = case
            raise _fail("step_budget", f"batch_size={b}, grad_accum={a}, world_size={w}, "
                        f"seq_len={s}, n_rows={n}", got, expected)


def mfu_reference(tokens_per_s: float, n_params: int, n_layers: int, d_model: int,
                  seq_len: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: the fraction of the GPU's peak the training step uses.

    ``flops_per_token = 6 N + 12 n_layers d_model seq_len`` (6N: the dense matmuls,
    forward 2N and backward 4N; the second term: attention scores and their use), and
    ``MFU = flops_per_token * tokens_per_s / peak_flops``.

    Taught in ``12_scaling_up``.
    """
    flops_per_token = 6 * n_params + 12 * n_layers * d_model * seq_len
    return flops_per_token * tokens_per_s / peak_flops


@exercise("mfu", "12_scaling_up", mfu_reference)
def _check_mfu(candidate, reference):
    rng = random.Random(7)
    cases = [(54_494, 395_881_664, 28, 1024, 512, 989e12),
             (40_558, 395_881_664, 28, 1024, 512, 989e12)]
    cases += [(rng.uniform(1e3, 1e6), rng.randint(10**6, 10**10), rng.randint(2, 80),
               rng.choice([256, 512, 1024, 4096]), rng.choice([128, 512, 2048, 8192]),
               rng.choice([312e12, 989e12, 1979e12])) for _ in range(200)]
    for case in cases:
        expected = reference(*case)
        got = float(candidate(*case))
        if not math.isclose(got, expected, rel_tol=1e-6):
            tok, n, nl, d, s, peak = case
            raise _fail("mfu", f"tokens_per_s={tok:.1f}, n_params={n}, n_layers={nl}, "
                        f"d_model={d}, seq_len={s}, peak_flops={peak:.3g}",
                        f"{got:.6f}", f"{expected:.6f}")
