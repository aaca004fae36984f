#!/usr/bin/env python3
"""The tiny preset's training throughput on this CPU: our core against transformers' Trainer.

Both sides train the same model (the shipped tiny-bert) on the same batches (the
training core's ``Batches``: the tiny preset's chat/text mix, in the same order), with
the same loss (``training.step_loss``, LLaDA objective, logits at the masked positions
only, the same per-step noise seeds), the same AdamW (``training.make_optimizer``),
learning-rate schedule and gradient clipping. Only the loop differs:
``dllm_lesson.training.train`` (accelerate) against ``transformers.Trainer``. Batches are
built inside both timed loops. Runs alternate (ours, Trainer, ours, Trainer, ...) so that
a busy machine slows both alike; the table reports the median of each.

    python benchmarks/trainer_comparison.py --steps 60 --repeats 3 --threads 2

Tokens/s counts attended tokens (``attention_mask``), as ``metrics.jsonl`` does. Our
figure is the one logged at the last step (before the final save); the Trainer's runs
from its first step's start to its last step's end, without the save.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# the code of this checkout, not another installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiny_config(steps: int, out: str):
    from dllm_lesson.training import PRESETS

    return dataclasses.replace(PRESETS["dllm"]["tiny"], max_steps=steps, log_every=1,
                               save_every=10 * steps, output_dir=out, progress=False)


def run_ours(steps: int) -> dict:
    from dllm_lesson.training import read_metrics, train

    with tempfile.TemporaryDirectory() as out:
        train(tiny_config(steps, out))
        records = read_metrics(out)
    return {"tokens_per_s": records[-1]["tokens_per_s"],
            "losses": [r["loss"] for r in records]}


def run_trainer(steps: int) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from dllm_lesson.training import (
        Batches,
        init_model,
        load_rows,
        lr_lambda,
        make_optimizer,
        step_loss,
        step_plan,
    )

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out:
        cfg = tiny_config(steps, out)
        torch.manual_seed(cfg.seed)
        model, tok = init_model(cfg)
        streams = {}
        for kind in ("chat", "text"):
            fill = tok.sep_token_id if kind == "chat" else None
            streams[kind] = Batches(load_rows(cfg, tok, kind), cfg.batch_size,
                                    tok.pad_token_id, fill, cfg.fill_max, cfg.seq_len,
                                    cfg.seed)

        class SameBatches(torch.utils.data.IterableDataset):
            """The core's batch sequence: a chat or text batch per step, as train() picks."""

            def __iter__(self):
                for step in range(cfg.max_steps):
                    yield streams[step_plan(cfg, step)[1]].next()

        class LLaDATrainer(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
                step = self.state.global_step
                gen, kind = step_plan(cfg, step)       # the same noise seed as train()
                loss = step_loss(cfg, model, inputs, step, tok, None, gen, kind)
                losses.append(loss.item())
                return loss

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == 0:
                    self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                self.t1 = time.perf_counter()

        opt = make_optimizer(cfg, model, "cpu")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        tokens, losses = [], []

        def collate(items):
            (batch,) = items
            tokens.append(int(batch["attention_mask"].sum()))
            return batch

        args = TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=1,
            max_grad_norm=cfg.grad_clip, logging_steps=steps, save_strategy="no",
            report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
            remove_unused_columns=False, seed=cfg.seed)
        clock = Clock()
        trainer = LLaDATrainer(model=model, args=args, train_dataset=SameBatches(),
                              data_collator=collate, optimizers=(opt, sched),
                              callbacks=[clock])
        trainer.train()
    return {"tokens_per_s": sum(tokens[:steps]) / (clock.t1 - clock.t0), "losses": losses}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(run_ours(args.steps))
        theirs.append(run_trainer(args.steps))
        print(f"repeat {r + 1}: ours {ours[-1]['tokens_per_s']:,.0f} tokens/s, Trainer "
              f"{theirs[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    a = statistics.median(x["tokens_per_s"] for x in ours)
    b = statistics.median(x["tokens_per_s"] for x in theirs)
    res = {"steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
           "ours_tokens_per_s": round(a), "trainer_tokens_per_s": round(b),
           "ratio_ours_over_trainer": round(a / b, 3),
           # the same training, step by step? (max |loss difference| over the steps)
           "max_loss_difference": max(abs(x - y) for x, y in zip(ours[-1]["losses"],
                                                                  theirs[-1]["losses"])),
           "final_loss": [ours[-1]["losses"][-1], theirs[-1]["losses"][-1]]}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
