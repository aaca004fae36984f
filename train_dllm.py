#!/usr/bin/env python3
"""Masked diffusion (LLaDA-style) training: a pretrained BERT fine-tuned with variable masking.

Usage:
    ./train_dllm.py                       # full recipe: ModernBERT-large + Tulu 3 SFT, 8 GPUs
    ./train_dllm.py --preset tiny         # CPU, offline corpus, from the shipped tiny-bert
    ./train_dllm.py --preset tiny --max-steps 50 --output-dir runs/mine
    torchrun --standalone --nproc_per_node=2 train_dllm.py --preset tiny   # 2 CPU procs
    accelerate launch --config_file configs/fsdp.yaml train_dllm.py        # FSDP
    sbatch configs/slurm_multinode.sbatch train_dllm.py                    # several nodes

Started without a launcher on a machine with several GPUs, it relaunches itself on all
of them. Rerun on the same --output-dir to resume from the last checkpoint. Each logged
step appends {"step": n, "loss": x, ...} to OUTPUT_DIR/metrics.jsonl; the final model is
saved in Hugging Face format in OUTPUT_DIR. Every TrainConfig field is an option
(--lr, --seq-len, --inverse-t false, ...).

What is trained: each step draws t ~ U(0, 1) per row and masks each response token with
probability (1 - eps) t + eps (resampled every step); the loss is the masked cross-entropy
divided by that probability, per token. Answers are followed by [SEP] filler targets, so
the model learns to stop. Code: dllm_lesson/training.py (shared with ./train_flowlm.py and
the notebooks).
"""

from dllm_lesson.training import script_main

if __name__ == "__main__":
    script_main("dllm", doc=__doc__)
