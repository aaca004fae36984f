"""``python -m dllm_lesson build-models``: rebuild every shipped checkpoint from scratch.

The recipe, with fixed seeds, through the one training core (:func:`training.train`):

1. ``tiny-bert``: a small ModernBERT trained from scratch as BERT (MLM, 15% masking,
   80/10/10) on the corpus's plain text;
2. ``tiny-dllm``: tiny-bert continued with LLaDA's variable masking on the plain text, then
   SFT with response-only variable masking (answers followed by ``[SEP]`` filler, so the
   model learns to stop), with a share of plain-text steps mixed in, then a second SFT
   round on the short answers at a lower learning rate;
3. ``tiny-ar``: the autoregressive baseline, a causal ModernBERT decoder of the same shape
   trained with the next-token loss on the same text and chat data (its stages mirror
   tiny-dllm's);
4. ``tiny-duo``: tiny-dllm fine-tuned with the Duo paper's objective (Gaussian noise on
   one-hot tokens on the Gaussian-to-discrete schedule, soft tokens with tau annealing,
   the uniform-state ELBO) on the same chat data. (From tiny-bert, as the seed does, 1500
   GPU steps gave a model that ignored the prompt: 2% held-out accuracy.)
5. ``tiny-duo-dcd``: tiny-duo after discrete consistency distillation (few-step Duo): a
   frozen teacher refreshed from the student every round, the step gap doubling.

Every stage trains on corpus v2 (``CORPUS_VERSION``; ``--corpus-version 3`` builds on v3);
a stage's record (``build_run.json``) holds the corpus fingerprint, and ``--reuse`` refuses
a stage trained on another corpus.
Every stage uses the course's chat template (``chat_template="course"``), which puts the
answer after ``"Assistant:"`` and a space, so that an answer's first word is the same token
as in the question (``" Afghanistan"``). Until November 2026 it put the answer on a new line:
the first word was then a different token (``"Afghanistan"``, no space), which SFT only
ever saw for the countries it asked about, and tiny-dllm answered "Which continent is
Afghanistan in?" with "Kuwait is in Asia." (66% on held-out continents).

Each shipped folder gets a model card (data, steps, wall time, measured metrics, the
command that rebuilds it). Taught in ``00_welcome`` and ``02_llada_training``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from .cards import machine, model_card
from .data import CORPUS_VERSION, VERSIONS  # the generated corpus every stage trains on
from .training import TINY_MODEL, TrainConfig, init_model, latest_checkpoint, train

MODEL_FILES = ("config.json", "model.safetensors")   # shipped beside the tokenizer's files
MODEL_CONFIG = dict(TINY_MODEL, num_hidden_layers=6, global_attn_every_n_layers=3)
RUN_RECORD = "build_run.json"       # a stage's figures (steps, tokens, wall time, loss)
MODELS = ("tiny-bert", "tiny-dllm", "tiny-ar", "tiny-duo", "tiny-duo-dcd")  # build order
#: the models each one starts from
NEEDS = {"tiny-bert": set(), "tiny-dllm": {"tiny-bert"}, "tiny-ar": set(),
         "tiny-duo": {"tiny-dllm"}, "tiny-duo-dcd": {"tiny-duo"}}


def recipe(work: Path, scale: float = 1.0,
           corpus_version: int = CORPUS_VERSION) -> dict[str, list[TrainConfig]]:
    """The stages of each shipped model. ``scale`` shrinks step counts (tests use it);
    ``corpus_version`` is the generated corpus every stage trains on."""
    def n(steps):
        return max(2, int(steps * scale))

    common = dict(seed=0, log_every=max(1, n(50) // 5), save_every=n(250),
                  mixed_precision="no",  # fp32: tiny models gain nothing from bf16
                  chat_template="course", corpus_version=corpus_version)
    bert = TrainConfig(objective="mlm", model="scratch", model_config=MODEL_CONFIG,
                       data="text", seq_len=128, batch_size=64, lr=2e-3,
                       warmup_steps=n(100), max_steps=n(2500),
                       output_dir=str(work / "tiny-bert"), **common)
    dllm_text = TrainConfig(objective="llada", model=str(work / "tiny-bert"), data="text",
                            seq_len=128, batch_size=64, lr=1e-3, warmup_steps=n(50),
                            max_steps=n(1000), output_dir=str(work / "tiny-dllm-text"),
                            **common)
    dllm_sft = TrainConfig(objective="llada", model=str(work / "tiny-dllm-text"), data="chat",
                           text_mix=0.25, seq_len=384, batch_size=64, lr=1e-3,
                           warmup_steps=n(50), max_steps=n(1500), fill_max=96,
                           group_by_length=True, output_dir=str(work / "tiny-dllm-sft"),
                           **common)
    # (group_by_length: one answer in ten is a long list or count, and without it nearly
    # every batch of 64 is padded to one such answer: 2.4x the tokens of grouped batches)
    # a second, gentler SFT round on the short answers alone (seq 128: the longer rows are
    # skipped and counted), cheap enough for a laptop CPU. Probed on CPU from the first
    # round: 1000 steps took held-out entities from 82% to 89%; 400 more steps on every
    # answer (seq 384) after them lost 1 point on entities and 4 on phrasings (continent
    # questions). Long answers held up without them (share of facts stated in held-out
    # describe_many answers: 0.46 before, 0.54 after the short round).
    dllm_short = dataclasses.replace(dllm_sft, model=str(work / "tiny-dllm-sft"), seq_len=128,
                                     batch_size=32, lr=3e-4, warmup_steps=n(10),
                                     max_steps=n(2000), fill_max=48, seed=1,
                                     output_dir=str(work / "tiny-dllm"))
    # Duo starts from tiny-dllm: it already answers from the prompt, and learns here to
    # denoise random tokens instead of masks (from tiny-bert, 1500 GPU steps were not
    # enough for it to use the prompt: 2% held-out accuracy). The paper's loss: the
    # uniform-state NELBO on the Gaussian-to-discrete schedule (duo.DuoSchedule). Short
    # answers only (seq 128: rows longer than that are skipped and counted), a small share
    # of plain text, so that the stage runs on a laptop CPU.
    duo = TrainConfig(objective="duo", duo_loss="elbo", model=str(work / "tiny-dllm"),
                      data="chat", text_mix=0.1, seq_len=128, batch_size=16, lr=5e-4,
                      warmup_steps=n(20), max_steps=n(500), fill_max=48,
                      output_dir=str(work / "tiny-duo"), **common)
    # few-step generation: discrete consistency distillation of tiny-duo into itself. The
    # teacher (tiny-duo, then the student's own weights) is refreshed every 80 steps and
    # the gap doubles: 1/16, 1/8, 1/4 of the time axis (the last: a 4-step sampler's jump)
    dcd = TrainConfig(objective="dcd", model=str(work / "tiny-duo"),
                      teacher=str(work / "tiny-duo"), data="chat", text_mix=0.0, seq_len=128,
                      batch_size=16, lr=2e-4, warmup_steps=n(10), min_lr_ratio=1.0,
                      max_steps=n(240), dcd_update_every=n(80), dcd_base_steps=16,
                      fill_max=48, output_dir=str(work / "tiny-duo-dcd"), **common)
    # the autoregressive baseline: the same shape, corpus, tokenizer and training core, a
    # causal decoder instead of an encoder (objective "ar": next-token loss on every text
    # token, on the answer and its end tokens in SFT). Its stages mirror tiny-dllm's: the
    # text steps of tiny-bert and tiny-dllm-text together, then the same two SFT rounds.
    ar_text = dataclasses.replace(bert, objective="ar", max_steps=n(3500),
                                  output_dir=str(work / "tiny-ar-text"))
    # (no [SEP] fill after the answer: a causal model stops at the first end token, so
    # the fill would only add trivial targets)
    ar_sft = dataclasses.replace(dllm_sft, objective="ar", model=str(work / "tiny-ar-text"),
                                 fill_max=0, output_dir=str(work / "tiny-ar-sft"))
    ar_short = dataclasses.replace(dllm_short, objective="ar", model=str(work / "tiny-ar-sft"),
                                   fill_max=0, output_dir=str(work / "tiny-ar"))
    return {"tiny-bert": [bert], "tiny-dllm": [dllm_text, dllm_sft, dllm_short],
            "tiny-ar": [ar_text, ar_sft, ar_short], "tiny-duo": [duo], "tiny-duo-dcd": [dcd]}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


_FINGERPRINTS: dict = {}


def corpus_fingerprint(cfg: TrainConfig) -> str | None:
    """The fingerprint of the generated corpus a stage trains on (None for other data)."""
    if cfg.dataset != "offline":
        return None
    if cfg.corpus_version not in _FINGERPRINTS:
        from .data import build_corpus

        _FINGERPRINTS[cfg.corpus_version] = build_corpus(
            version=cfg.corpus_version).fingerprint()
    return _FINGERPRINTS[cfg.corpus_version]


class StaleStage(ValueError):
    """``--reuse`` found a stage trained on another corpus (or of unknown origin)."""


def _record_path(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) / RUN_RECORD


def _check_corpus(cfg: TrainConfig) -> None:
    """Refuse to reuse (or resume) a stage whose record names another corpus."""
    path, want = _record_path(cfg), corpus_fingerprint(cfg)
    rec = json.loads(path.read_text()) if path.exists() else {}
    have = rec.get("corpus")
    if have != want:
        why = (f"was built from corpus {have}" if have else
               "has no build record naming its corpus")
        raise StaleStage(
            f"stage {Path(cfg.output_dir).name} ({cfg.output_dir}) {why}, but the recipe "
            f"now trains on corpus v{cfg.corpus_version} ({want}). Delete that folder, or "
            f"build without --reuse, to train it again.")


def _train_stage(cfg: TrainConfig) -> dict:
    """Train one stage, resuming its last checkpoint if an earlier build was interrupted;
    its record (corpus fingerprint, machine, wall time so far) is kept up to date, so a
    killed build resumes with ``--reuse`` and its card still counts the whole time."""
    path = _record_path(cfg)
    before = json.loads(path.read_text()).get("seconds", 0.0) if path.exists() else 0.0
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def note(_rec=None, **done):
        rec = {"corpus": corpus_fingerprint(cfg), "built_on": machine(),
               "seconds": before + time.time() - t0, **done}
        path.write_text(json.dumps(rec, indent=1) + "\n")
        return rec

    note(finished=False)
    res = train(cfg, callback=lambda r: note(finished=False, step=r["step"]))
    rec = note(finished=True, resumed=bool(before),
               **{k: res[k] for k in ("steps", "tokens", "final_loss")})
    return dict(res, **rec)


def _load_record(cfg: TrainConfig) -> dict | None:
    """A reused stage's figures, or None where the stage left no finished record."""
    path = _record_path(cfg)
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    return dict(rec, reused=True) if rec.get("finished", True) and "tokens" in rec else None


def measure(name: str, model, tokenizer, limit: int | None,
            corpus_version: int = CORPUS_VERSION) -> dict:
    """The metrics that go into a model card: the same as ``python -m dllm_lesson eval``
    (:func:`dllm_lesson.evaluate.measure_model`) on the held-out splits of the corpus the
    model trained on, on a fixed subsample of ``limit``."""
    from .evaluate import measure_model

    return measure_model(name, model, tokenizer, limit=limit, corpus_version=corpus_version)


def build_models(names=MODELS, work_dir="runs/build",
                 dest=None, scale: float = 1.0, eval_limit: int | None = 400,
                 reuse: bool = False, corpus_version: int = CORPUS_VERSION) -> dict:
    """Train the shipped models from scratch and copy them (with model cards) to ``dest``
    (default: the package's checkpoints folder).

    With ``reuse``, the last stage whose finished output is already in ``work_dir`` is
    loaded instead of retrained (the stages before it are skipped), a stage an earlier
    build left unfinished resumes from its last checkpoint, and a stage trained on another
    corpus than the recipe's is refused (:class:`StaleStage`). ``corpus_version``: the
    generated corpus of every stage (default the shipped models'; the cards say which)."""
    from . import loading as shipped
    from .loading import is_causal

    work = Path(work_dir)
    dest = Path(dest) if dest is not None else Path(shipped.CHECKPOINT_ROOT)
    plan = recipe(work, scale, corpus_version)
    unknown = [n for n in names if n not in plan]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    done = {}
    wanted = set(names)
    for name in reversed(MODELS):
        if name in wanted:
            wanted |= NEEDS[name]
    for name in MODELS:
        if name not in wanted:
            continue
        runs, model, tok = [], None, None
        final = Path(plan[name][-1].output_dir)
        if reuse and name not in names and (final / "model.safetensors").exists():
            _check_corpus(plan[name][-1])
            print(f"reusing {final}", flush=True)   # a finished base model
            continue
        # with reuse, start after the last stage whose output is already there
        first = 0
        if reuse:
            for i, cfg in enumerate(plan[name]):
                if (Path(cfg.output_dir) / "model.safetensors").exists():
                    first = i
        for i, cfg in enumerate(plan[name]):
            done_dir = Path(cfg.output_dir)
            if i < first:
                runs.append(_load_record(cfg))
                continue
            if reuse and (done_dir / "model.safetensors").exists():
                _check_corpus(cfg)
                print(f"reusing {done_dir}", flush=True)
                # loaded as the stage itself loads its model (and its chat template)
                model, tok = init_model(dataclasses.replace(cfg, model=str(done_dir)))
                runs.append(_load_record(cfg))
                continue
            if reuse and latest_checkpoint(done_dir) is not None:
                _check_corpus(cfg)
                print(f"resuming {done_dir} from {latest_checkpoint(done_dir).name}",
                      flush=True)
            else:
                shutil.rmtree(cfg.output_dir, ignore_errors=True)  # from scratch
            res = _train_stage(cfg)
            runs.append(res)
            model, tok = res["model"], res["tokenizer"]
        if name not in names:
            continue
        model.to(_device())
        metrics = measure(name, model, tok, eval_limit, plan[name][-1].corpus_version)
        n_params = sum(p.numel() for p in model.parameters())
        out = dest / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        src = Path(plan[name][-1].output_dir)
        for f in MODEL_FILES:
            shutil.copy2(src / f, out / f)
        tok.save_pretrained(str(out))   # with the recipe's chat template, reused or not
        how = ("`python -m dllm_lesson build-models`, right after training"
               + (f" (held-out rows: a fixed subsample of {eval_limit} questions per split)"
                  if eval_limit else ""))
        (out / "README.md").write_text(model_card(name, plan[name], runs, metrics, n_params,
                                                  how, causal=is_causal(model.config)))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        done[name] = metrics
        print(f"{name}: {json.dumps(metrics)}", flush=True)
    return done


def main_build(argv=None):
    """``python -m dllm_lesson build-models``: rebuild the shipped tiny models."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dllm_lesson build-models",
                                description=main_build.__doc__)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--work-dir", default="runs/build", help="where the training runs go")
    p.add_argument("--dest", default=None, help="where the shipped folders go "
                   "(default: inside the installed package)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every step count (e.g. 0.01 for a smoke test)")
    p.add_argument("--eval-limit", type=int, default=400)
    p.add_argument("--corpus-version", type=int, default=CORPUS_VERSION, choices=VERSIONS,
                   help=f"the generated corpus every stage trains on (default "
                        f"{CORPUS_VERSION}, the shipped models')")
    p.add_argument("--reuse", action="store_true", help="load stages already finished in "
                   "--work-dir instead of retraining them, and resume an interrupted one "
                   "(refused for a stage trained on another corpus)")
    args = p.parse_args(argv)
    t = time.time()
    try:
        build_models(args.models, args.work_dir, args.dest, args.scale, args.eval_limit,
                     args.reuse, args.corpus_version)
    except StaleStage as e:
        p.error(str(e))
    print(f"built {', '.join(args.models)} in {time.time() - t:.0f} s")
