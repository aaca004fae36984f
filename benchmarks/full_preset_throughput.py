#!/usr/bin/env python3
"""Throughput of the full preset's shape on one GPU: ModernBERT-large, sequence 512, bf16.

No hub is needed: the model is ModernBERT-large's configuration with random weights. One
training step is exactly the training core's (``dllm_lesson.training.step_loss``, LLaDA
objective, AdamW). Prints tokens/s and model FLOPs utilisation (MFU):

    MFU = (6 N + 12 n_layers d_model seq) * tokens/s / peak_flops

(6N for the dense matmuls forward + backward, the second term for attention scores; all
layers counted as global attention, an upper bound since 2/3 of ModernBERT's layers use a
128-token window). Peak: 989 TFLOP/s dense bf16 for an H100 SXM.

    python benchmarks/full_preset_throughput.py --batch-size 16 --steps 20
"""

import argparse
import json
import time

import torch


def large_config(vocab_size=50368):
    from transformers import ModernBertConfig

    return ModernBertConfig(
        vocab_size=vocab_size, hidden_size=1024, intermediate_size=2624,
        num_hidden_layers=28, num_attention_heads=16, global_attn_every_n_layers=3,
        local_attention=128, max_position_embeddings=8192, pad_token_id=50283,
        cls_token_id=50281, sep_token_id=50282, bos_token_id=50281, eos_token_id=50282,
        mask_token_id=50284, embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from transformers import ModernBertForMaskedLM

    from dllm_lesson import losses, noise

    dev = "cuda"
    torch.manual_seed(0)
    cfg = large_config()
    cfg._attn_implementation = args.attn
    model = ModernBertForMaskedLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    B, L = args.batch_size, args.seq_len
    x0 = torch.randint(5, 50000, (B, L), device=dev)
    am = torch.ones_like(x0)
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, : L // 4] = False                     # a prompt that is never masked

    def step():
        xt, masked, p_mask = noise.llada_mask(x0, maskable, cfg.mask_token_id)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=xt, attention_mask=am).logits
        loss = losses.llada_loss(logits, x0, masked, p_mask, maskable)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    tok_s = B * L / dt
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * L
    mfu = flops_per_token * tok_s / (args.peak_tflops * 1e12)
    res = {"gpu": torch.cuda.get_device_name(), "params": n_params, "batch": B, "seq": L,
           "attn": args.attn, "step_s": round(dt, 4), "tokens_per_s": round(tok_s),
           "mfu": round(mfu, 4), "loss": float(loss),
           "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    main()
