#!/usr/bin/env python3
"""Duo / flow-LM training: Gaussian noise on one-hot tokens, soft tokens, scaled symmetric KL.

Usage:
    ./train_flowlm.py                     # full recipe: ModernBERT-large + Tulu 3 SFT, 8 GPUs
    ./train_flowlm.py --preset tiny       # CPU, offline corpus, from the shipped tiny-bert
    torchrun --standalone --nproc_per_node=2 train_flowlm.py --preset tiny
    accelerate launch --config_file configs/deepspeed.yaml train_flowlm.py
    sbatch configs/slurm_multinode.sbatch train_flowlm.py

Same engine, options, resume, metrics.jsonl and self-launch as ./train_dllm.py.

What is trained: each row draws a noise weight w ~ U(noise_min, noise_max); its response
tokens become soft tokens softmax(((1 - w) one_hot(x0) + w * eps) / tau), eps ~ N(0, I),
fed to the model as embeddings, with tau annealed from tau_start to tau_end over the run
(argmax of the noisy one-hot = the corrupted token of a uniform-state diffusion). The loss
is the symmetric KL between prediction and the clean one-hot, scaled per row by
w / (V (1 - w) + w). Code: dllm_lesson/duo.py and dllm_lesson/training.py.
"""

from dllm_lesson.training import script_main

if __name__ == "__main__":
    script_main("flowlm", doc=__doc__)
