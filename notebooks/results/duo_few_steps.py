"""Accuracy against forward passes for the Duo notebooks (09 and 10), precomputed.

Decoding 240 held-out questions at six step counts with four model/sampler pairs takes
minutes on two CPU cores, longer than a notebook should run, so the numbers live in
``duo_few_steps.json`` beside this script and the notebooks read them. Regenerate (from
the repository root, after the shipped models change)::

    python notebooks/results/duo_few_steps.py

Every row comes from :func:`dllm_lesson.duo.accuracy_by_passes` (exact match, 95% Wilson
interval, forward passes and self-corrections per answer).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from dllm_lesson import duo, load_model
from dllm_lesson.duo_results import weights_sha256
from dllm_lesson.evaluate import SHORT_TASKS, held_out_examples, not_leaked

OUT = Path(__file__).with_suffix(".json")
STEPS = (1, 2, 4, 8, 16, 32)
N_QUESTIONS = 240
#: label -> (model, strategy, decoder options)
RUNS = {
    "tiny-dllm, LLaDA low-confidence": ("tiny-dllm", "llada", {"remasking": "low_confidence"}),
    "tiny-duo, ancestral": ("tiny-duo", "duo", {"sampler": "ancestral"}),
    "tiny-duo, predict-and-renoise (seed)": ("tiny-duo", "duo", {"sampler": "renoise"}),
    "tiny-duo-dcd, ancestral": ("tiny-duo-dcd", "duo", {"sampler": "ancestral"}),
}


def main(argv=None) -> int:
    torch.set_num_threads(1)
    labels = list(argv or sys.argv[1:]) or list(RUNS)
    tasks = not_leaked(SHORT_TASKS)          # less what SFT gives away (``sound`` in v2)
    examples = held_out_examples("heldout_entities", tasks=tasks, limit=N_QUESTIONS)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results.setdefault("runs", {})
    results.update({"split": "heldout_entities", "tasks": list(tasks),
                    "n_questions": len(examples), "steps": list(STEPS),
                    "command": "python notebooks/results/duo_few_steps.py"})
    for label in labels:
        name, strategy, options = RUNS[label]
        try:
            model, tok = load_model(name, device="cpu", backend="lesson")
        except Exception as e:  # noqa: BLE001 - a model not built yet: say so, go on
            print(f"skip {label}: {e}")
            continue
        start = time.time()
        rows = duo.accuracy_by_passes(model, tok, examples, STEPS, strategy=strategy,
                                      **options)
        run = {"model": name, "weights_sha256": weights_sha256(name), "strategy": strategy,
               "options": options, "rows": rows, "seconds": round(time.time() - start, 1)}
        print(label, [(r["steps"], round(r["accuracy"], 3)) for r in rows], flush=True)
        if OUT.exists():               # another label may have finished meanwhile: keep it
            results["runs"] = json.loads(OUT.read_text())["runs"]
        results["runs"][label] = run
        OUT.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
