#!/usr/bin/env python3
"""Training throughput of the tiny preset on this CPU, through the real training core.

Two stages, each run by ``dllm_lesson.training.train`` exactly as the scripts run them:

* ``sft``: ``./train_dllm.py --preset tiny`` (LLaDA objective on the chat data, a quarter of
  the steps on plain text, sequence 384, batch 16, from the shipped tiny-bert);
* ``mlm``: the first stage of ``build-models`` (tiny-bert from scratch: BERT's MLM on the
  plain text, sequence 128, batch 64).

To compare two versions of the code on a shared, busy machine, give each source tree with
``--tree``: every run is a fresh process that imports ``dllm_lesson`` from that tree, and
runs alternate (tree A, tree B, tree A, ...) so that load from other processes slows both
alike. The table reports medians. Both versions train on the same batches with the same
noise, so the time per step compares like with like.

    git archive <old commit> | tar -x -C /tmp/old
    python benchmarks/training_throughput.py --tree /tmp/old --tree . --steps 20 --repeats 3

``tokens_per_s`` is the core's own figure (attended tokens, as ``metrics.jsonl`` logs it)
at the last step; ``step_s`` is the median wall time of a step after the first two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("sft", "mlm")


def stage_config(stage: str, steps: int, out: str, **overrides):
    """The stage's TrainConfig, shortened to ``steps`` and logging every step."""
    import dataclasses

    from dllm_lesson.training import PRESETS

    if stage == "sft":
        cfg = PRESETS["dllm"]["tiny"]
    elif stage == "mlm":
        from dllm_lesson.build import recipe

        cfg = recipe(Path(out))["tiny-bert"][0]
    else:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return dataclasses.replace(cfg, max_steps=steps, log_every=1, save_every=10 * steps,
                               output_dir=out, progress=False, **overrides)


def worker(stage: str, steps: int, threads: int, overrides: dict) -> dict:
    """One run in this process: time every step through train()'s callback."""
    import torch

    import dllm_lesson
    from dllm_lesson.training import train

    torch.set_num_threads(threads)
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        cfg = stage_config(stage, steps, out, **overrides)
        records = []

        def clock(rec):
            stamps.append(time.perf_counter())
            records.append(rec)

        train(cfg, callback=clock)
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]   # steps 3 .. N
    return {"code": str(Path(dllm_lesson.__file__).parent.parent), "stage": stage,
            "steps": steps, "step_s": statistics.median(gaps),
            "tokens_per_s": records[-1]["tokens_per_s"], "final_loss": records[-1]["loss"]}


def run_in(tree: str, stage: str, steps: int, threads: int, overrides: dict) -> dict:
    """Run :func:`worker` in a fresh process that imports ``dllm_lesson`` from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--worker", stage, "--steps", str(steps),
           "--threads", str(threads), "--set", json.dumps(overrides)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"run in {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", default=None,
                   help="a source tree to import dllm_lesson from (repeat to compare); "
                        "default: this repository")
    p.add_argument("--stage", action="append", choices=STAGES, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--set", default="{}",
                   help='TrainConfig overrides as JSON, e.g. \'{"compile": true}\'')
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    overrides = json.loads(args.set)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads, overrides)))
        return
    trees = args.tree or [str(Path(__file__).resolve().parents[1])]
    stages = args.stage or list(STAGES)
    runs = {(t, s): [] for t in trees for s in stages}
    for r in range(args.repeats):
        for s in stages:
            for t in trees:                     # interleaved: A, B, A, B, ...
                rec = run_in(t, s, args.steps, args.threads, overrides)
                runs[t, s].append(rec)
                print(f"repeat {r + 1} {s:>3} {t}: {rec['step_s']:.3f} s/step, "
                      f"{rec['tokens_per_s']:,.0f} tokens/s, loss {rec['final_loss']:.4f}",
                      flush=True)
    rows = []
    for s in stages:
        base = None
        for t in trees:
            step_s = statistics.median(x["step_s"] for x in runs[t, s])
            tps = statistics.median(x["tokens_per_s"] for x in runs[t, s])
            base = base or step_s
            rows.append({"stage": s, "tree": t, "code": runs[t, s][0]["code"],
                         "step_s": round(step_s, 4), "tokens_per_s": round(tps),
                         "speedup_vs_first_tree": round(base / step_s, 3),
                         "final_loss": [x["final_loss"] for x in runs[t, s]]})
    print(json.dumps({"steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                      "overrides": overrides, "rows": rows}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
