"""Speed and accuracy of the decoding strategies on long answers: ``python -m dllm_lesson
bench``.

The question the bench answers is Fast-dLLM's: how much faster than LLaDA's baseline
(one token per step, blocks of 32, no cache) can a masked diffusion model write a long
answer, and what does it cost in facts? So the prompts ask for long answers: lists of 7
to 11 countries to describe (:func:`long_prompts`, built from held-out countries), whose
answers fill most of an answer area of 256. All prompts of a row are decoded together as
one batch (:func:`dllm_lesson.sampling.decode_steps`), every row on the same prompts,
weights and code. One row per (strategy, answer length):

* ``nfe``: forward passes per answer (a cached window pass counts one);
  ``tokens_per_nfe = answer_length / nfe`` counts the whole answer area, filler included;
  ``answer_tokens_per_nfe``: the answer's own tokens (before its end token) per pass, the
  honest figure for parallel decoding (filling 200 end tokens at once is easy);
* ``seconds``: wall-clock per prompt (the batch's time / prompts, median over
  ``repeats``); ``speedup_vs_llada`` and ``speedup_vs_greedy``: the baseline's seconds
  over this row's;
* ``accuracy``: the share of the expected facts (every country's capital, continent and
  language) that the answers state (:func:`dllm_lesson.evaluate.fact_score`, pooled over
  prompts), ``accuracy_ci`` its 95% Wilson interval; ``exact``: the share of answers equal
  to the reference answer.
* ``steps``, ``block_length``, ``cache``, ``threshold``: the row's settings.

Below an answer length of 128 the prompts are the corpus's one-country descriptions
(``describe``, ~23 tokens each) instead.
Taught in ``04_block_generation_and_kv_cache`` and ``05_remasking_and_parallel_decoding``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from .sampling import answer_end, answer_text, decode_steps

DUO_STEPS = (8, 16, 32)
KEYS = ("strategy", "answer_length", "nfe", "tokens_per_nfe", "seconds",
        "speedup_vs_greedy", "accuracy", "exact", "steps", "block_length", "cache",
        "threshold", "answer_tokens_per_nfe", "speedup_vs_llada", "accuracy_ci",
        "n_prompts")
#: the parallel rows of the default table, (strategy, threshold, block, cache): threshold
#: decoding without and with the dual cache at the baseline's block size (None), and
#: larger blocks
DEFAULT_PARALLEL = (("threshold", 0.9, None, None), ("threshold", 0.9, None, "dual"),
                    ("threshold", 0.9, 128, "dual"), ("threshold", 0.7, 256, "dual"))


def _row(name, strategy, **options) -> tuple[str, dict]:
    return name, dict(strategy=strategy, **options)


def llada_baseline(answer_length: int, block_length: int = 32) -> tuple[str, dict]:
    """Fast-dLLM's baseline: LLaDA, one token per step, blocks of ``block_length``, no
    cache. Taught in ``04_block_generation_and_kv_cache``."""
    b = min(block_length, answer_length)
    return _row(f"llada 1 token/step block={b}", "llada", steps=answer_length,
                block_length=b)


def bench_strategies(answer_length: int, block_length: int = 32, duo: bool = False,
                     full: bool = False) -> list[tuple[str, dict]]:
    """``[(row name, decode_steps options)]`` for one answer length; the first row is the
    LLaDA baseline, the second greedy.

    Default: the baselines and :data:`DEFAULT_PARALLEL`. ``full``: also LLaDA at a half
    and a quarter of the steps, the prefix cache, threshold decoding over thresholds
    0.5 .. 0.9 and blocks 32 .. the whole answer with the dual cache, and ``remask``.
    ``duo``: Duo's sampler at 8/16/32 steps and LLaDA at the same forward passes.
    Taught in ``04_block_generation_and_kv_cache``.
    """
    L = answer_length
    b = min(block_length, L)
    n_blocks = -(-L // b)
    rows = [llada_baseline(L, block_length), _row("greedy", "greedy")]
    parallel = list(DEFAULT_PARALLEL)
    if full:
        half, quarter = max(L // 2, n_blocks), max(L // 4, n_blocks)
        rows += [_row(f"llada steps={half} block={b}", "llada", steps=half, block_length=b),
                 _row(f"llada steps={quarter} block={b}", "llada", steps=quarter,
                      block_length=b),
                 _row(f"remask steps={half} block={b}", "remask", steps=half,
                      block_length=b)]
        parallel += [("threshold", 0.9, None, "prefix")]
        parallel += [("threshold", t, blk, "dual") for blk in (32, 64, 128, 256)
                     for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    seen = set()
    for strategy, t, blk, cache in parallel:
        blk = min(blk or b, L)
        if (t, blk, cache) in seen:
            continue
        seen.add((t, blk, cache))
        name = f"threshold {t} block={blk}" + (f" {cache}" if cache else "")
        rows.append(_row(name, strategy, threshold=t, block_length=blk, cache=cache))
    if duo:  # Duo's sampler at 8/16/32 steps, and masked diffusion at the same NFE
        names = {n for n, _ in rows}
        for s in DUO_STEPS:
            name = f"llada steps={s} block={b}"
            if name not in names and n_blocks <= s < L:   # s = L: the baseline
                rows.append(_row(name, "llada", steps=s, block_length=b))
        rows += [_row(f"duo steps={s}", "duo", steps=s) for s in DUO_STEPS]
    return rows


def long_prompts(tokenizer, n: int = 64, answer_length: int = 256, seed: int = 0,
                 fill: float = 0.65):
    """``n`` held-out long-answer examples ``[(prompt, keys, reference answer)]``: lists
    of countries to describe, each list with at least three of the countries whose
    description SFT never showed (the corpus's held-out ``describe`` entities) and never
    a list SFT saw, asked with the SFT phrasings; the reference answer (one description
    per country, one per line) fills between ``fill`` and all of the answer area but
    its last 4 positions (room for the end token).

    Built with the corpus's own code (:func:`dllm_lesson.data.build_corpus`,
    :func:`dllm_lesson.data.describe_country`). Taught in
    ``05_remasking_and_parallel_decoding``.
    """
    from .data import N_HELDOUT_PHRASINGS, QUESTIONS, build_corpus, describe_country
    from .facts import COUNTRIES

    corpus = build_corpus(seed)
    by_name = {c[0]: c for c in COUNTRIES}
    held = sorted({e.entity for e in corpus.heldout_entities if e.task == "describe"})
    known = sorted({e.entity for e in corpus.sft if e.task == "describe"})
    sft_lists = {tuple(e.entity.split("|")) for e in corpus.sft if e.task == "describe_many"}
    templates = QUESTIONS["describe_many"][:-N_HELDOUT_PHRASINGS]
    per_country = statistics.mean(
        len(tokenizer(describe_country(*by_name[c]), add_special_tokens=False).input_ids)
        for c in held)
    lo = max(2, int(fill * answer_length / (per_country + 1)))
    hi = max(lo, int((answer_length - 4) / (per_country + 1)))
    rng = random.Random(seed + 1)
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n:
            raise ValueError(f"cannot build {n} long prompts for answer_length="
                             f"{answer_length}: use a larger answer length or fewer prompts")
        k = rng.randint(lo, hi)
        n_held = rng.randint(3, min(k, len(held)))
        names = rng.sample(held, n_held) + rng.sample(known, k - n_held)
        rng.shuffle(names)
        names = tuple(names)
        if names in seen or names in sft_lists:
            continue
        answer = "\n".join(describe_country(*by_name[c]) for c in names)
        size = len(tokenizer(answer, add_special_tokens=False).input_ids)
        if not fill * answer_length <= size <= answer_length - 4:
            continue
        seen.add(names)
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        prompt = rng.choice(templates).format(countries=listed)
        keys = tuple(key for c in names for key in by_name[c][1:])
        out.append((prompt, keys, answer))
    return out


def bench_prompts(tokenizer, answer_length: int, n_prompts: int, seed: int = 0):
    """The prompts of one answer length: :func:`long_prompts` from 128 on; below, the
    corpus's held-out one-country descriptions (``describe``), longest first.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    if answer_length >= 128:
        return long_prompts(tokenizer, n_prompts, answer_length, seed)
    from .data import build_corpus

    pool = sorted((e for e in build_corpus(seed).heldout_entities if e.task == "describe"),
                  key=lambda e: -len(e.answer))

    def fits(e) -> bool:  # the answer and its end token fit in the answer area
        return len(tokenizer(e.answer, add_special_tokens=False).input_ids) < answer_length

    rows = [e for e in pool if fits(e)] or pool
    return [(e.prompt, e.keys, e.answer) for e in rows[:n_prompts]]


def run_row(model, tokenizer, prompts, answer_length: int, options: dict,
            repeats: int = 1, batch_size: int = 64) -> dict:
    """Decode ``prompts`` in batches of ``batch_size`` with one strategy: ``nfe`` (mean),
    ``seconds`` (per prompt, median over ``repeats``), ``accuracy`` / ``accuracy_ci``
    (facts stated, pooled), ``exact``, ``answer_tokens_per_nfe`` and the ``answers``.

    Taught in ``05_remasking_and_parallel_decoding``.
    """
    from .evaluate import score_answer, wilson_interval
    from .sampling import final_steps

    times, last = [], []
    for r in range(repeats):
        start = time.perf_counter()
        finals = []
        for i in range(0, len(prompts), batch_size):
            chunk = [p for p, *_ in prompts[i:i + batch_size]]
            finals += final_steps(decode_steps(model, tokenizer, chunk, answer_length,
                                               **options))
        times.append((time.perf_counter() - start) / len(prompts))
        last = finals
    answers = [answer_text(tokenizer, s.tokens) for s in last]
    stated = needed = 0
    from collections import Counter

    for (_, keys, _), answer in zip(prompts, answers):
        for key, count in Counter(keys).items():
            stated += min(answer.count(key), count)
            needed += count
    nfes = [s.nfe for s in last]
    own = [answer_end(tokenizer, s.tokens) for s in last]
    return dict(nfe=statistics.mean(nfes), seconds=statistics.median(times),
                accuracy=stated / needed, accuracy_ci=wilson_interval(stated, needed),
                exact=statistics.mean(score_answer(a, keys, ref) for (_, keys, ref), a
                                      in zip(prompts, answers)),
                answer_tokens_per_nfe=sum(own) / sum(nfes), answers=answers)


def run_bench(model_name: str = "tiny-dllm", lengths=(256,), repeats: int = 1,
              n_prompts: int = 8, json_path: str | Path | None = None, *,
              duo: bool | None = None, block_length: int = 32, device: str | None = None,
              threads: int | None = None, model=None, tokenizer=None,
              duo_model: str | None = None, verbose: bool = False, full: bool = False,
              batch_size: int = 64, progress: bool = True) -> list[dict]:
    """Decode the bench prompts with every strategy; one dict per (strategy, length).

    Rows have the keys :data:`KEYS` (``json_path``: also written there as a JSON list).
    The model is loaded with ``backend="lesson"`` (the cache rows need it), so every row
    runs on the same weights and code. ``full``: the long table
    (:func:`bench_strategies`). ``duo=None`` adds the duo rows when the model's name
    contains "duo"; ``duo_model`` (a name or path; implies ``duo``) runs them on another
    model, e.g. masked rows on tiny-dllm beside duo rows on tiny-duo; those rows' names
    end in ``[duo_model]``. ``threads`` sets ``torch.set_num_threads``.
    Taught in ``04_block_generation_and_kv_cache``.
    """
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    if repeats < 1 or n_prompts < 1 or batch_size < 1:
        raise ValueError(f"repeats, n_prompts and batch_size must be >= 1, got {repeats}, "
                         f"{n_prompts}, {batch_size}")
    if model is None:
        from .loading import load_model

        model, tokenizer = load_model(model_name, device=device, backend="lesson")
    if tokenizer is None:
        raise ValueError(f"{model_name} has no tokenizer: the bench needs one")
    if duo is None:
        duo = duo_model is not None or "duo" in Path(str(model_name)).name
    duo_pair, suffix = (model, tokenizer), ""
    if duo and duo_model is not None:
        from .loading import load_model

        duo_pair = load_model(duo_model, device=device, backend="lesson")
        suffix = f" [{Path(str(duo_model)).name}]"
    plan = [(L, name, options) for L in lengths
            for name, options in bench_strategies(L, block_length, duo, full)]
    rows = []
    bar = tqdm(plan, desc="bench", disable=not progress, leave=False)
    baselines: dict[int, dict] = {}
    for L, name, options in bar:
        bar.set_postfix_str(f"L={L} {name}")
        prompts = bench_prompts(tokenizer, L, n_prompts)
        m, t = duo_pair if options["strategy"] == "duo" else (model, tokenizer)
        if options["strategy"] == "duo":
            name += suffix
        res = run_row(m, t, prompts, L, options, repeats, batch_size)
        base = baselines.setdefault(L, {})
        if not base:
            base["llada"] = res["seconds"]          # the first row is the LLaDA baseline
        elif "greedy" not in base:
            base["greedy"] = res["seconds"]         # the second is greedy
        row = dict(strategy=name, answer_length=L, nfe=res["nfe"],
                   tokens_per_nfe=L / res["nfe"], seconds=res["seconds"],
                   speedup_vs_greedy=base.get("greedy", res["seconds"]) / res["seconds"],
                   accuracy=res["accuracy"], exact=res["exact"],
                   steps=options.get("steps"), block_length=options.get("block_length"),
                   cache=options.get("cache"), threshold=options.get("threshold"),
                   answer_tokens_per_nfe=res["answer_tokens_per_nfe"],
                   speedup_vs_llada=base["llada"] / res["seconds"],
                   accuracy_ci=list(res["accuracy_ci"]), n_prompts=len(prompts))
        rows.append(row)
        if len(base) == 1:                          # the baseline waits for greedy's time
            continue
        if name == "greedy":
            rows[-2]["speedup_vs_greedy"] = base["greedy"] / base["llada"]
            if verbose:
                tqdm.write(format_row(rows[-2]))
        if verbose:
            tqdm.write(format_row(row))
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def best_parallel(rows: list[dict], within: float = 0.01) -> dict | None:
    """The fastest cached row whose facts stated are within ``within`` (1 point) of the
    LLaDA baseline's at the same answer length, or None.

    Taught in ``05_remasking_and_parallel_decoding``.
    """
    base = {r["answer_length"]: r for r in rows if r["strategy"].startswith("llada 1 ")}
    good = [r for r in rows if r.get("cache") and r["answer_length"] in base
            and r["accuracy"] >= base[r["answer_length"]]["accuracy"] - within]
    return max(good, key=lambda r: r["speedup_vs_llada"], default=None)


_HEADER = (f"{'strategy':<34}{'L':>5}{'NFE':>8}{'tok/NFE':>9}{'ans/NFE':>9}"
           f"{'s/prompt':>10}{'vs llada':>10}{'vs greedy':>10}{'facts':>7}"
           f"{'95% CI':>15}{'exact':>7}")


def format_row(row: dict) -> str:
    """One table line.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    lo, hi = row["accuracy_ci"]
    return (f"{row['strategy']:<34}{row['answer_length']:>5}{row['nfe']:>8.1f}"
            f"{row['tokens_per_nfe']:>9.2f}{row['answer_tokens_per_nfe']:>9.2f}"
            f"{row['seconds']:>10.3f}{row['speedup_vs_llada']:>9.1f}x"
            f"{row['speedup_vs_greedy']:>9.1f}x{row['accuracy']:>7.1%}"
            f"{f'[{lo:.1%}, {hi:.1%}]':>15}{row['exact']:>7.0%}")


def format_table(rows: list[dict]) -> str:
    """The bench table as text.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    return "\n".join([_HEADER, "-" * len(_HEADER)] + [format_row(r) for r in rows])


def main_bench(argv=None) -> int:
    """``python -m dllm_lesson bench [--full] [--json PATH] [--model] [--lengths]
    [--prompts N] [--repeats]``: prints the strategy table.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    p = argparse.ArgumentParser(prog="python -m dllm_lesson bench",
                                description="Speed and accuracy of the decoding strategies "
                                "on long answers, against LLaDA's baseline.")
    p.add_argument("--model", default="tiny-dllm")
    p.add_argument("--full", action="store_true",
                   help="the long table: 64 prompts, lengths 64 and 256, every threshold "
                   "and block size")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="answer lengths (default 256; --full: 64 256)")
    p.add_argument("--repeats", type=int, default=1, help="timing: median of this many")
    p.add_argument("--prompts", type=int, default=None,
                   help="prompts per length (default 8; --full: 64)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts decoded together")
    p.add_argument("--block-length", type=int, default=32, help="the baseline's blocks")
    p.add_argument("--duo", action=argparse.BooleanOptionalAction, default=None,
                   help="add the duo sampler rows at 8/16/32 steps and LLaDA rows at the same "
                   "forward passes (default: when the name has 'duo')")
    p.add_argument("--duo-model", default=None,
                   help="run the duo rows on this model (e.g. tiny-duo beside --model "
                   "tiny-dllm); implies --duo")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows here")
    args = p.parse_args(argv)
    lengths = args.lengths or ([64, 256] if args.full else [256])
    n_prompts = args.prompts or (64 if args.full else 8)
    print(f"model {args.model}, torch threads {args.threads or torch.get_num_threads()}, "
          f"{n_prompts} prompts per length in batches of {args.batch_size}, median of "
          f"{args.repeats}", flush=True)
    print(_HEADER, flush=True)
    try:
        rows = run_bench(args.model, lengths, args.repeats, n_prompts, args.json,
                         duo=args.duo, block_length=args.block_length, device=args.device,
                         threads=args.threads, duo_model=args.duo_model, verbose=True,
                         full=args.full, batch_size=args.batch_size)
    except ValueError as e:
        p.error(str(e))
    best = best_parallel(rows)
    if best is not None:
        print(f"\nfastest cached row within 1 point of LLaDA's facts: {best['strategy']} "
              f"(L={best['answer_length']}), {best['speedup_vs_llada']:.1f}x LLaDA's "
              f"speed, {best['answer_tokens_per_nfe']:.1f} answer tokens per pass")
    return 0
