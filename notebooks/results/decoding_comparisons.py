"""Precompute the decoding comparisons of notebooks 04 and 05 on 200 held-out questions
(and 208 open-ended ones).

    python notebooks/results/decoding_comparisons.py            # writes decoding_comparisons.json
    python notebooks/results/decoding_comparisons.py --limit 10 --out /tmp/check.json

Every configuration decodes the same questions (held-out phrasings of the four country
tasks, a fixed subsample) with ``evaluate.evaluate_answers``, the scoring loop behind
``python -m dllm_lesson eval``, and records per question whether the answer was right, so
the notebooks can give 95% intervals and paired comparisons. The notebooks read the JSON
and re-decode a few questions to check that it still matches what this script produces.

A second set, ``open_ended``, decodes every question of corpus v2's open-ended split
("Name a country in Africa and its capital.", "Name two countries where Spanish is
spoken."), scored for consistency: there the tokens of a right answer depend on each
other, so the order and the number of tokens committed per pass matter (notebook 05).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

SPLIT = "heldout_phrasings"
TASKS = ("capital", "continent", "language", "country_of_capital")
ANSWER_LENGTH = 24
N_QUESTIONS = 200
HOT = dict(steps=12, temperature=1.5)      # sampling that makes mistakes (notebook 05)


def configs() -> dict[str, dict]:
    """name -> options of ``decode_steps`` (strategy included)."""
    out = {}
    for s in (24, 12, 8, 6, 5, 4, 3, 2, 1):                       # 04: steps vs accuracy
        out[f"llada S={s}"] = dict(strategy="llada", steps=s)
    for s in (12, 6, 3):                                          # 04: blocks of 8
        out[f"llada S={s} blocks of 8"] = dict(strategy="llada", steps=s, block_length=8)
    for s in (24, 8):                                             # 05: random order
        for seed in (0, 1, 2):
            out[f"random S={s} seed={seed}"] = dict(strategy="llada", steps=s,
                                                    remasking="random", seed=seed)
    for tau in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):                  # 05: threshold
        out[f"threshold {tau}"] = dict(strategy="threshold", threshold=tau)
    out["remask S=24"] = dict(strategy="remask", steps=24)        # 05: re-masking, argmax
    for seed in (0, 1):                                           # 05: re-masking, sampled
        out[f"hot llada seed={seed}"] = dict(strategy="llada", seed=seed, **HOT)
        for check in ("visible", "masked"):
            out[f"hot remask {check} seed={seed}"] = dict(
                strategy="remask", remask_check=check, seed=seed, **HOT)
    return out


OPEN_SPLIT = "open_ended"
OPEN_ANSWER_LENGTH = 32


def open_configs() -> dict[str, dict]:
    """The open-ended comparisons: low confidence against random order at 1 to 32 tokens
    per pass (32 steps = one token per pass), and threshold decoding."""
    out = {}
    for s in (32, 16, 8, 4, 1):
        out[f"llada S={s}"] = dict(strategy="llada", steps=s)
        for seed in (0, 1, 2):
            out[f"random S={s} seed={seed}"] = dict(strategy="llada", steps=s,
                                                    remasking="random", seed=seed)
    for tau in (0.5, 0.7, 0.9):
        out[f"threshold {tau}"] = dict(strategy="threshold", threshold=tau)
    return out


def open_questions():
    from dllm_lesson.evaluate import held_out_examples

    return held_out_examples(OPEN_SPLIT)


def questions(limit: int = N_QUESTIONS):
    from dllm_lesson.evaluate import held_out_examples

    return held_out_examples(SPLIT, tasks=TASKS, limit=N_QUESTIONS)[:limit]


def measure(model, tokenizer, name_options: dict[str, dict], examples,
            answer_length: int = ANSWER_LENGTH) -> dict:
    """Decode ``examples`` with each configuration; per-question results as a 0/1 string."""
    from dllm_lesson.evaluate import evaluate_answers

    out = {}
    for name, options in name_options.items():
        r = evaluate_answers(model, tokenizer, examples, answer_length=answer_length,
                             progress=False, **options)
        ok = [c for *_, c in r["rows"]]
        out[name] = {"options": options, "n": r["n"], "correct": sum(ok),
                     "accuracy": r["accuracy"], "mean_nfe": r["mean_nfe"],
                     "tokens_per_nfe": r["tokens_per_nfe"],
                     "answers_with_correction": r["answers_with_correction"],
                     "bits": "".join("1" if c else "0" for c in ok),
                     "wrong": {str(i): a for i, (_, a, c) in enumerate(r["rows"]) if not c}}
    return out


def main(argv=None):
    import torch

    from dllm_lesson import load_model
    from dllm_lesson.duo_results import weights_sha256

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=N_QUESTIONS, help="first N questions")
    p.add_argument("--only", nargs="*", default=None, help="configuration names")
    p.add_argument("--out", default=str(pathlib.Path(__file__).with_suffix(".json")))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("tiny-dllm", device="cpu", backend="lesson")
    examples = questions(args.limit)
    chosen = {k: v for k, v in configs().items() if not args.only or k in args.only}
    start = time.perf_counter()
    results = measure(model, tokenizer, chosen, examples)
    open_examples = open_questions()[:args.limit]
    chosen = {k: v for k, v in open_configs().items() if not args.only or k in args.only}
    open_results = measure(model, tokenizer, chosen, open_examples, OPEN_ANSWER_LENGTH)
    doc = {"command": "python notebooks/results/decoding_comparisons.py",
           "model": "tiny-dllm", "weights_sha256": weights_sha256("tiny-dllm"),
           "split": SPLIT, "tasks": list(TASKS),
           "answer_length": ANSWER_LENGTH, "n": len(examples),
           "prompts": [ex.prompt for ex in examples], "results": results,
           "open_ended": {"split": OPEN_SPLIT, "answer_length": OPEN_ANSWER_LENGTH,
                          "n": len(open_examples),
                          "prompts": [ex.prompt for ex in open_examples],
                          "tasks": [ex.task for ex in open_examples],
                          "results": open_results},
           "seconds": round(time.perf_counter() - start, 1)}
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}: {len(results)} configurations x {len(examples)} questions "
          f"in {doc['seconds']} s")


if __name__ == "__main__":
    main()
