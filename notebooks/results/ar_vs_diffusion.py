"""Precompute notebook 11's head-to-head of tiny-ar and tiny-dllm (corpus v2).

    python notebooks/results/ar_vs_diffusion.py          # writes ar_vs_diffusion.json
    python notebooks/results/ar_vs_diffusion.py --limit 8 --out /tmp/check.json

Both models answer the same questions, each with its own decoder of the course's one
engine: tiny-dllm greedily (one token per forward pass, the most confident position
first), tiny-ar left to right (strategy ``"ar"``, one token per pass). Three sets:

- ``forward``: held-out entities of the four country tasks (240, a fixed subsample);
- ``reversal_forward`` / ``reversal_backward``: the 30 countries whose capital the
  pretraining text states one way only ("The capital of X is Y.", never "Y is the capital
  of X."), asked that way (120) and the other way round (120); SFT never asks them;
- ``infill``: "The capital of ___ is Y." for every country whose capital has another name:
  tiny-dllm fills the masks between the two sides (:func:`dllm_lesson.infill.infill_masked`),
  tiny-ar scores each country's whole sentence (:func:`~dllm_lesson.infill.infill_by_scoring`,
  one pass per candidate).

Per question, right or wrong (as a 0/1 string), so the notebook can pair the models
question by question; forward passes and seconds per answer; the shipped weights' sha256,
so the notebook fails when the models change and this file is stale.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import time

OUT = pathlib.Path(__file__).with_suffix(".json")
CORPUS_VERSION = 2
TASKS = ("capital", "continent", "language", "country_of_capital")
N_FORWARD = 240
ANSWER_LENGTH = 24
MODELS = {"tiny-dllm": "greedy", "tiny-ar": "ar"}


def question_sets(limit: int | None = None) -> dict:
    from dllm_lesson.data import build_corpus

    corpus = build_corpus(version=CORPUS_VERSION)
    rows = [r for r in corpus.heldout_entities if r.task in TASKS]
    forward = random.Random(1234).sample(rows, min(N_FORWARD, len(rows)))
    sets = {"forward": forward, "reversal_forward": list(corpus.reversal_forward),
            "reversal_backward": list(corpus.reversal_backward)}
    return {k: v[:limit] for k, v in sets.items()}


def infill_items(limit: int | None = None) -> list[dict]:
    """(left, right, answer, reversal?) for every country whose capital has another name:
    the reversal countries first, then the others in alphabetical order."""
    from dllm_lesson.data import build_corpus
    from dllm_lesson.facts import COUNTRIES

    corpus = build_corpus(version=CORPUS_VERSION)
    rev = sorted({ex.entity for ex in corpus.reversal_forward})
    capital = {c[0]: c[1] for c in COUNTRIES}
    others = sorted(c for c in capital if c not in rev and c != capital[c])
    items = [{"left": "The capital of", "right": f" is {capital[c]}.", "answer": c,
              "reversal": c in rev} for c in rev + others]
    return items[:limit]


def measure(name: str, strategy: str, model, tok, sets: dict, items: list[dict]) -> dict:
    from dllm_lesson.claims import wilson_interval
    from dllm_lesson.evaluate import evaluate_answers
    from dllm_lesson.facts import COUNTRIES
    from dllm_lesson.infill import infill_by_scoring, infill_masked

    out = {}
    for set_name, examples in sets.items():
        start = time.perf_counter()
        r = evaluate_answers(model, tok, examples, strategy=strategy,
                             answer_length=ANSWER_LENGTH, progress=False)
        seconds = time.perf_counter() - start
        ok = [c for *_, c in r["rows"]]
        out[set_name] = {"n": r["n"], "correct": sum(ok), "accuracy": r["accuracy"],
                         "ci95": list(wilson_interval(sum(ok), r["n"])),
                         "mean_nfe": r["mean_nfe"],
                         "seconds_per_answer": round(seconds / max(1, r["n"]), 4),
                         "bits": "".join("1" if c else "0" for c in ok),
                         "answers": [a for _, a, _ in r["rows"]]}
    candidates = sorted(c[0] for c in COUNTRIES)
    fills, passes, start = [], 0, time.perf_counter()
    for it in items:
        if strategy == "ar":
            text, n = infill_by_scoring(model, tok, it["left"], it["right"], candidates)
        else:
            text, n = infill_masked(model, tok, it["left"], it["right"])
        fills.append(text)
        passes += n
    ok = [f == it["answer"] for f, it in zip(fills, items)]
    out["infill"] = {"n": len(items), "correct": sum(ok),
                     "accuracy": sum(ok) / max(1, len(items)),
                     "ci95": list(wilson_interval(sum(ok), len(items))),
                     "mean_nfe": passes / max(1, len(items)),
                     "seconds_per_answer": round((time.perf_counter() - start)
                                                 / max(1, len(items)), 4),
                     "bits": "".join("1" if c else "0" for c in ok), "answers": fills}
    return out


def main(argv=None):
    import torch

    from dllm_lesson import load_model
    from dllm_lesson.duo_results import weights_sha256

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="first N questions of each set")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets, items = question_sets(args.limit), infill_items(args.limit)
    doc = {"command": "python notebooks/results/ar_vs_diffusion.py",
           "corpus_version": CORPUS_VERSION, "answer_length": ANSWER_LENGTH,
           "tasks": list(TASKS), "prompts": {k: [ex.prompt for ex in v]
                                             for k, v in sets.items()},
           "infill": items, "models": {}}
    for name, strategy in MODELS.items():
        model, tok = load_model(name, device="cpu")
        start = time.perf_counter()
        doc["models"][name] = {"strategy": strategy, "weights_sha256": weights_sha256(name),
                               "params": sum(p.numel() for p in model.parameters()),
                               "results": measure(name, strategy, model, tok, sets, items),
                               "seconds": round(time.perf_counter() - start, 1)}
        print(name, {k: round(v["accuracy"], 3)
                     for k, v in doc["models"][name]["results"].items()}, flush=True)
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
