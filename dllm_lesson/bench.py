"""Speed and accuracy of every decoding strategy: ``python -m dllm_lesson bench``.

For each answer length the same held-out prompts are decoded with every strategy of
:mod:`dllm_lesson.sampling`. One row per (strategy, length):

* ``nfe``: model forward passes per answer (mean over prompts; a cached window pass
  counts one), ``tokens_per_nfe = answer_length / nfe``;
* ``seconds``: wall-clock per prompt (mean over the prompts of one pass, median over
  ``repeats`` passes), ``speedup_vs_greedy`` = greedy's seconds / this row's;
* ``accuracy``: the fraction of the expected facts (capitals, continents, languages of
  every country asked about) that the answers state, averaged over prompts
  (:func:`dllm_lesson.evaluate.fact_score`); long answers get partial credit;
* ``exact``: the fraction of answers equal to the reference answer, as ``eval`` scores
  (:func:`dllm_lesson.evaluate.score_answer`).

Prompts: the corpus's held-out entities with long answers, longest first. For lengths
>= 128 the ``describe_many`` rows (3 to 6 countries, answers of ~70-150 tokens; the rest
of the answer area must be filled with end tokens) whose answer fits; below, the
``describe`` rows (one country, ~35 tokens).
Taught in ``04_block_generation_and_kv_cache`` and ``05_remasking_and_parallel_decoding``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from .sampling import answer_text, decode_steps

DUO_STEPS = (8, 16, 32)
KEYS = ("strategy", "answer_length", "nfe", "tokens_per_nfe", "seconds",
        "speedup_vs_greedy", "accuracy", "exact")


def bench_strategies(answer_length: int, block_length: int = 32,
                     duo: bool = False) -> list[tuple[str, dict]]:
    """``[(row name, decode_steps options)]`` for one answer length.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    L = answer_length
    b = min(block_length, L)
    n_blocks = -(-L // b)
    half, quarter = max(L // 2, n_blocks), max(L // 4, n_blocks)
    rows = [
        ("greedy", dict(strategy="greedy")),
        (f"llada steps={half} block={b}",
         dict(strategy="llada", steps=half, block_length=b)),
        (f"llada steps={quarter} block={b}",
         dict(strategy="llada", steps=quarter, block_length=b)),
        (f"threshold 0.9 block={b}", dict(strategy="threshold", threshold=0.9,
                                          block_length=b)),
        (f"threshold 0.9 block={b} prefix", dict(strategy="threshold", threshold=0.9,
                                                 block_length=b, cache="prefix")),
        (f"threshold 0.9 block={b} dual", dict(strategy="threshold", threshold=0.9,
                                               block_length=b, cache="dual")),
        (f"remask steps={half} block={b}", dict(strategy="remask", steps=half,
                                                block_length=b)),
    ]
    if duo:  # Duo's sampler at 8/16/32 steps, and masked diffusion at the same NFE
        names = {n for n, _ in rows}
        for s in DUO_STEPS:
            name = f"llada steps={s} block={b}"
            if name not in names and n_blocks <= s <= L:
                rows.append((name, dict(strategy="llada", steps=s, block_length=b)))
        rows += [(f"duo steps={s}", dict(strategy="duo", steps=s)) for s in DUO_STEPS]
    return rows


def bench_prompts(tokenizer, answer_length: int, n_prompts: int, seed: int = 0):
    """Held-out examples for one answer length: ``[(prompt, keys, reference answer)]``.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    from .data import build_corpus

    corpus = build_corpus(seed)
    task = "describe_many" if answer_length >= 128 else "describe"
    # held-out entities: countries whose description SFT never showed (and, for lists,
    # country combinations it never saw), asked with the SFT phrasings; longest first
    pool = sorted((e for e in corpus.heldout_entities if e.task == task),
                  key=lambda e: -len(e.answer))

    def fits(e) -> bool:  # the answer and its end token fit in the answer area
        return len(tokenizer(e.answer, add_special_tokens=False).input_ids) < answer_length

    rows = [e for e in pool if fits(e)] or pool
    return [(e.prompt, e.keys, e.answer) for e in rows[:n_prompts]]


def _run_row(model, tokenizer, prompts, answer_length, options, repeats):
    """(mean nfe, median seconds per prompt, fact accuracy, exact rate) of a strategy."""
    from .evaluate import fact_score, score_answer

    times, nfes, correct, facts = [], [], [], []
    for r in range(repeats):
        start = time.perf_counter()
        for prompt, keys, reference in prompts:
            last = None
            for last in decode_steps(model, tokenizer, prompt, answer_length, **options):
                pass
            if r == 0:
                nfes.append(last.nfe)
                answer = answer_text(tokenizer, last.tokens)
                correct.append(score_answer(answer, keys, reference))
                facts.append(fact_score(answer, keys))
        times.append((time.perf_counter() - start) / len(prompts))
    return (statistics.mean(nfes), statistics.median(times), statistics.mean(facts),
            sum(correct) / len(correct))


def run_bench(model_name: str = "tiny-dllm", lengths=(64, 256), repeats: int = 3,
              n_prompts: int = 8, json_path: str | Path | None = None, *,
              duo: bool | None = None, block_length: int = 32, device: str | None = None,
              threads: int | None = None, model=None, tokenizer=None,
              duo_model: str | None = None, verbose: bool = False) -> list[dict]:
    """Decode held-out prompts with every strategy; one dict per (strategy, length).

    Rows have the keys ``strategy, answer_length, nfe, tokens_per_nfe, seconds,
    speedup_vs_greedy, accuracy`` (``json_path``: also written there as a JSON list).
    The model is loaded with ``backend="lesson"`` (the cache rows need it), so every row
    runs on the same weights and code. ``duo=None`` adds the duo rows when the model's
    name contains "duo"; with them come LLaDA rows at the same step counts (equal forward
    passes). ``duo_model`` (a name or path; implies ``duo``) runs the duo rows on another
    model, e.g. masked rows on tiny-dllm beside duo rows on tiny-duo; those rows' names end
    in ``[duo_model]``. ``threads`` sets ``torch.set_num_threads`` (default: torch's).
    Taught in ``04_block_generation_and_kv_cache``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if repeats < 1 or n_prompts < 1:
        raise ValueError(f"repeats and n_prompts must be >= 1, got {repeats}, {n_prompts}")
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
    rows = []
    for L in lengths:
        prompts = bench_prompts(tokenizer, L, n_prompts)
        greedy_seconds = None
        for name, options in bench_strategies(L, block_length, duo):
            m, t = duo_pair if options["strategy"] == "duo" else (model, tokenizer)
            if options["strategy"] == "duo":
                name += suffix
            nfe, seconds, accuracy, exact = _run_row(m, t, prompts, L, options, repeats)
            if greedy_seconds is None:
                greedy_seconds = seconds          # the first row is greedy
            row = dict(strategy=name, answer_length=L, nfe=nfe, tokens_per_nfe=L / nfe,
                       seconds=seconds, speedup_vs_greedy=greedy_seconds / seconds,
                       accuracy=accuracy, exact=exact)
            rows.append(row)
            if verbose:
                print(format_row(row), flush=True)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


_HEADER = (f"{'strategy':<34}{'L':>5}{'NFE':>8}{'tok/NFE':>9}{'s/prompt':>10}"
           f"{'speedup':>9}{'facts':>7}{'exact':>7}")


def format_row(row: dict) -> str:
    """One table line."""
    return (f"{row['strategy']:<34}{row['answer_length']:>5}{row['nfe']:>8.1f}"
            f"{row['tokens_per_nfe']:>9.2f}{row['seconds']:>10.3f}"
            f"{row['speedup_vs_greedy']:>8.1f}x{row['accuracy']:>7.1%}{row['exact']:>7.0%}")


def format_table(rows: list[dict]) -> str:
    """The bench table as text.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    return "\n".join([_HEADER, "-" * len(_HEADER)] + [format_row(r) for r in rows])


def main_bench(argv=None) -> int:
    """``python -m dllm_lesson bench [--json PATH] [--model] [--lengths] [--repeats]
    [--prompts N]``: prints the strategy table.

    Taught in ``04_block_generation_and_kv_cache``.
    """
    p = argparse.ArgumentParser(prog="python -m dllm_lesson bench",
                                description="Speed and accuracy of every strategy.")
    p.add_argument("--model", default="tiny-dllm")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts per length")
    p.add_argument("--block-length", type=int, default=32)
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
    print(f"model {args.model}, torch threads {args.threads or torch.get_num_threads()}, "
          f"{args.prompts} prompts, median of {args.repeats}", flush=True)
    print(_HEADER, flush=True)
    try:
        run_bench(args.model, args.lengths, args.repeats, args.prompts, args.json,
                  duo=args.duo, block_length=args.block_length, device=args.device,
                  threads=args.threads, duo_model=args.duo_model, verbose=True)
    except ValueError as e:
        p.error(str(e))
    return 0
