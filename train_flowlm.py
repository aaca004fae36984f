#!/usr/bin/env python3
"""Duo / flow-LM training: Gaussian noise on one-hot tokens, soft tokens, the uniform-state ELBO.

Usage:
    ./train_flowlm.py                     # full recipe: ModernBERT-large + Tulu 3 SFT, 8 GPUs
    ./train_flowlm.py --preset tiny       # CPU, offline corpus, from the shipped tiny-bert
    torchrun --standalone --nproc_per_node=2 train_flowlm.py --preset tiny
    accelerate launch --config_file configs/deepspeed.yaml train_flowlm.py
    sbatch configs/slurm_multinode.sbatch train_flowlm.py

Same engine, options, resume, metrics.jsonl and self-launch as ./train_dllm.py.

What is trained (--objective duo): each row draws a time t ~ U(0, 1), a Gaussian log-SNR
gamma(t) = gamma_min + t (gamma_max - gamma_min) and its variance-preserving weights; the
response tokens become soft tokens softmax((alpha~ one_hot(x0) + sigma~ eps) / tau),
eps ~ N(0, I), fed to the model as embeddings (tau annealed from tau_start to tau_end). The
argmax of the noisy one-hot is the corrupted token of a uniform-state diffusion whose signal
level alpha_t is the diffusion transformation operator's T(alpha~). The loss:
  --duo-loss elbo     (default) the uniform-state NELBO (the Duo paper's, UDLM-style);
  --duo-loss sym_kl   the seed's symmetric KL, scaled per row by --duo-scale
                      (batch_mean: the seed's w / (V (1 - w) + w) over its batch mean;
                      seed: raw; none), with w ~ U(noise_min, noise_max), clean 1 - w.

Few-step distillation (--objective dcd --teacher PATH): discrete consistency distillation
of a trained Duo model (the teacher, refreshed from the student every --dcd-update-every
steps while the step gap doubles from 1 / --dcd-base-steps):
    ./train_flowlm.py --preset tiny --model tiny-duo --objective dcd --teacher tiny-duo

Code: dllm_lesson/duo.py (DuoObjective, DCDObjective) and dllm_lesson/training.py.
"""

from dllm_lesson.training import script_main

if __name__ == "__main__":
    script_main("flowlm", doc=__doc__)
