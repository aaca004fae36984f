#!/usr/bin/env python3
"""Throughput of the full preset's shape on one GPU, through the real training core.

``./train_dllm.py``'s full preset trains ModernBERT-large on a chat SFT mixture at
sequence 512 in bf16. This script runs :func:`dllm_lesson.training.train` itself (the same
loop, loss, sparse head, fused AdamW, bf16 autocast, clipping and schedule) on a model
with ModernBERT-large's configuration and random weights, so no hub is needed: the data
are the offline corpus's chat rows (``--data chat``: response-only masking, rows padded
with end tokens to the batch's longest, as the preset trains) or its packed plain text
(``--data text``: every row full length), tokenised by the course tokenizer (its ids are
a subset of the 50,368-word vocabulary, which the model keeps). For each ``--batch-size``
it prints tokens/s and model FLOPs utilisation (MFU):

    FLOPs per step = dllm_lesson.modernbert.training_flops(config, tokens, scored, seq)

that is 6 FLOPs per weight per token for the body's matrices (attention, feed-forward,
the head's dense layer), the decoder (d x V) only at the positions the loss scores (the
training core computes no other logits; counted from the run's own batches), and 12 d
per (query, key) pair for attention, with a span of the full sequence for global layers
and ``min(seq, local_attention)`` for the sliding-window ones (what an ideal kernel does;
SDPA with a mask computes the full square).
Peak: 989 TFLOP/s dense bf16 (H100 SXM); pass ``--peak-tflops`` for another GPU.

    python benchmarks/full_preset_throughput.py --batch-size 16 32 64 --steps 20
    python benchmarks/full_preset_throughput.py --batch-size 32 --compile
    python benchmarks/full_preset_throughput.py --cpu-smoke      # seconds, on a CPU

``--cpu-smoke`` runs the same code on a CPU with a toy configuration (2 layers, 64 wide,
sequence 128), to check that the script works before a GPU session spends time on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# the code of this checkout, not another installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def large_config(tokenizer, smoke: bool = False):
    """ModernBERT-large's configuration (vocabulary 50,368) with the course tokenizer's
    special ids; ``smoke``: the same vocabulary, a toy body."""
    from transformers import ModernBertConfig

    body = dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28,
                num_attention_heads=16, global_attn_every_n_layers=3, local_attention=128)
    if smoke:
        body = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, global_attn_every_n_layers=2, local_attention=32)
    t = tokenizer
    return ModernBertConfig(
        vocab_size=50368, max_position_embeddings=8192, pad_token_id=t.pad_token_id,
        cls_token_id=t.cls_token_id, sep_token_id=t.sep_token_id, bos_token_id=t.cls_token_id,
        eos_token_id=t.sep_token_id, mask_token_id=t.mask_token_id, embedding_dropout=0.0,
        attention_dropout=0.0, mlp_dropout=0.0, **body)


def run(batch_size: int, args, tokenizer) -> dict:
    from transformers import ModernBertForMaskedLM

    from dllm_lesson import training
    from dllm_lesson.modernbert import training_flops

    torch.manual_seed(0)
    config = large_config(tokenizer, smoke=args.cpu_smoke)
    model = ModernBertForMaskedLM(config)
    counts = []                     # per micro batch: (tokens, positions scored, length)
    real_step_loss, real_logits_at = training.step_loss, training.logits_at

    def counting_logits_at(model, input_ids, attention_mask, where):
        counts[-1][1] += int(where.sum())
        return real_logits_at(model, input_ids, attention_mask, where)

    def counting_step_loss(cfg, model, batch, *a, **k):
        am = batch["attention_mask"]
        counts.append([int(am.sum()), 0, am.shape[1]])
        return real_step_loss(cfg, model, batch, *a, **k)

    stamps = []
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(
            training.PRESETS["dllm"]["full"], model="(random ModernBERT-large)",
            dataset="offline", data=args.data, seq_len=args.seq_len,
            batch_size=batch_size, grad_accum=1, max_steps=args.warmup + args.steps,
            warmup_steps=2, log_every=1, save_every=10**9, output_dir=out,
            progress=False, compile=args.compile,
            mixed_precision="no" if args.cpu_smoke else "auto")
        training.step_loss, training.logits_at = counting_step_loss, counting_logits_at
        try:
            training.train(cfg, model=model, tokenizer=tokenizer,
                           callback=lambda rec: stamps.append(time.perf_counter()))
        finally:
            training.step_loss, training.logits_at = real_step_loss, real_logits_at
    # steps warmup+1 .. warmup+steps: between the stamps of step `warmup` and the last
    seconds = stamps[-1] - stamps[args.warmup - 1]
    timed = counts[args.warmup:]
    tokens = sum(c[0] for c in timed)
    flops = sum(training_flops(config, tokens=c[0], scored=c[1], seq_len=c[2]) for c in timed)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    res = {"device": device, "params": sum(p.numel() for p in model.parameters()),
           "batch": batch_size, "seq": args.seq_len, "data": args.data,
           "compile": args.compile, "steps": len(timed),
           "mean_length": round(sum(c[2] for c in timed) / len(timed), 1),
           "scored_fraction": round(sum(c[1] for c in timed) / max(tokens, 1), 3),
           "step_s": round(seconds / len(timed), 4), "tokens_per_s": round(tokens / seconds),
           "tflops": round(flops / seconds / 1e12, 2),
           "mfu": round(flops / seconds / (peak * 1e12), 4) if peak else None}
    if torch.cuda.is_available():
        res["max_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        torch.cuda.reset_peak_memory_stats()
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, nargs="+", default=[32],
                   help="per-GPU rows per step; several values are measured one by one")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--data", choices=("chat", "text"), default="chat")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="TrainConfig.compile (torch.compile)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak (default: from its name, H100 989)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="toy model, sequence 128, 3 + 2 steps on a CPU: checks the script")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.cpu_smoke:
        args.seq_len, args.steps, args.warmup = 128, 3, 2
        args.batch_size = args.batch_size if args.batch_size != [32] else [4]
    elif not torch.cuda.is_available():
        p.error("no GPU here: this measures the full preset on a GPU; --cpu-smoke checks "
                "the script on a CPU")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from dllm_lesson.loading import model_path

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model_path("tiny-bert"))
    rows = []
    for b in args.batch_size:
        try:
            rows.append(run(b, args, tokenizer))
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": b, "error": "out of GPU memory"})
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
