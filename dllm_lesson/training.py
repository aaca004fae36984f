"""The one training loop: masked diffusion (``./train_dllm.py``), Duo (``./train_flowlm.py``),
``python -m dllm_lesson build-models`` and the short runs in the notebooks all call
:func:`train`.

It runs on `accelerate`: plain ``python`` on one device, DDP under ``accelerate launch`` or
``torchrun`` (gloo on CPUs, NCCL on GPUs), FSDP / DeepSpeed through the accelerate config
files in ``configs/``. bf16 autocast on GPUs. What it guarantees:

* checkpoints are written to a temporary folder and renamed into place (atomic), and a rerun
  on the same ``output_dir`` resumes exactly: model, optimiser, scheduler, RNG state and data
  position (the corruption noise of step ``n`` is drawn from a generator seeded by
  ``(seed, n, rank)``, so a resumed run draws the same masks as an uninterrupted one);
* a non-finite loss stops the run and leaves the last good checkpoint untouched;
* bad data rows (no assistant turn, longer than ``seq_len``, not text) are skipped and
  counted (``skipped_rows`` in the metrics);
* one JSON object per logged step is appended to ``output_dir/metrics.jsonl``;
* the final model is saved in Hugging Face format in ``output_dir`` (config, weights,
  tokenizer with its chat template).

Taught in ``02_llada_training`` (masked) and ``10_scaling_up`` (the root scripts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import losses, noise
from .data import CORPUS_VERSION

OBJECTIVES = ("mlm", "llada", "duo", "dcd", "ar")
#: objectives that train a causal (left-to-right) LM instead of a masked one
CAUSAL_OBJECTIVES = ("ar",)
DATA_KINDS = ("text", "chat")
# config fields that may change between a run and its resumption
RESUMABLE_FIELDS = {"max_steps", "output_dir", "log_every", "save_every", "keep_checkpoints",
                    "progress", "mixed_precision", "compile"}


@dataclass
class TrainConfig:
    """Everything a run needs. Presets are plain instances (see ``PRESETS``)."""

    objective: str = "llada"          # mlm | llada | duo | dcd (Duo's few-step distillation)
    #                                   | ar (the autoregressive baseline)
    model: str = "tiny-bert"          # shipped name, local folder, hub id, or "scratch"
    model_config: dict = field(default_factory=dict)  # ModernBertConfig kwargs for scratch
    tokenizer: str | None = None      # default: the model's own (course tokenizer: scratch)
    chat_template: str | None = None  # "course": the course's template replaces the
    #                                   tokenizer's own (build-models sets it on each stage)
    dataset: str = "offline"          # "offline", a .jsonl file / folder, or a hub id
    corpus_version: int = CORPUS_VERSION  # "offline": which generated corpus (1 or 2);
    #                                   default: the one the shipped models were trained on
    dataset_split: str | None = None  # default: "pretrain" (text) / "sft" (chat), hub "train"
    data: str = "chat"                # text (packed plain text) | chat (messages)
    text_mix: float = 0.0             # chat runs: fraction of steps trained on plain text
    seq_len: int = 256
    batch_size: int = 32              # per device, per micro step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    max_steps: int = 1000
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_prob: float = 0.15           # mlm
    eps: float = 1e-3                 # llada: p_mask = (1 - eps) t + eps
    inverse_t: bool = True            # llada: divide the masked loss by p_mask
    fill_max: int = 64                # chat: up to this many extra [SEP] after the answer
    group_by_length: bool = False     # chat: batch rows of similar length together (less
    #                                   end-token padding; transformers' group_by_length)
    # duo
    noise_min: float = 0.0
    noise_max: float = 0.6
    tau_start: float = 1e-3
    tau_end: float = 1e-8
    duo_loss: str = "elbo"            # elbo (the paper's NELBO) | sym_kl (the seed's) | ce
    duo_scale: str | None = None      # sym_kl/ce: seed | batch_mean | none (None: batch_mean;
    #                                   true/false = seed/none); the ELBO takes none
    duo_gamma_min: float = -3.5       # Duo's Gaussian log-SNR range (duo.DuoSchedule)
    duo_gamma_max: float = 0.0
    # dcd (discrete consistency distillation, duo.DCDObjective)
    teacher: str | None = None        # the Duo model to distil (shipped name or folder)
    dcd_update_every: int = 100       # refresh the teacher and double the gap every N steps
    dcd_base_steps: int = 32          # the first round's gap is 1 / dcd_base_steps
    dcd_kl: str = "bwd"               # bwd: KL(student || teacher) | fwd
    # bookkeeping
    output_dir: str = "runs/dllm"
    seed: int = 0
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 1
    mixed_precision: str = "auto"     # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False             # torch.compile the model (worth it on GPUs; on a CPU
    #                                   the compilation takes longer than a short run)
    progress: bool = True

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.data not in DATA_KINDS:
            raise ValueError(f"data must be one of {DATA_KINDS}, got {self.data!r}")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every",
                     "save_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.chat_template not in (None, "course"):
            raise ValueError(f"chat_template must be None (the tokenizer's own) or 'course', "
                             f"got {self.chat_template!r}")
        from .data import VERSIONS

        if self.corpus_version not in VERSIONS:
            raise ValueError(f"corpus_version must be one of {VERSIONS}, "
                             f"got {self.corpus_version!r}")
        if not 0.0 <= self.text_mix <= 1.0:
            raise ValueError(f"text_mix must be in [0, 1], got {self.text_mix}")
        if self.objective in ("duo", "dcd"):
            from .duo import check_duo_config

            check_duo_config(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TINY_MODEL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=256, max_position_embeddings=512,
                  global_attn_every_n_layers=2, local_attention=64)


# -- data ------------------------------------------------------------------------------
class ChatRows:
    """Chat rows encoded lazily with the chat template; bad rows become ``None``."""

    def __init__(self, dataset, tokenizer, seq_len: int):
        self.dataset, self.tokenizer, self.seq_len = dataset, tokenizer, seq_len

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i: int):
        return encode_chat(self.tokenizer, self.dataset[i].get("messages"), self.seq_len)


def encode_chat(tokenizer, messages, seq_len: int):
    """``messages`` -> ``(ids, response_mask)`` lists, or ``None`` for a row to skip
    (not a list of text messages, no assistant turn, longer than ``seq_len``).

    Taught in ``02_llada_training``.
    """
    if not isinstance(messages, list) or not messages:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        return None
    roles = [m.get("role") or ("user", "assistant")[i % 2] for i, m in enumerate(messages)]
    if "assistant" not in roles:
        return None
    out = tokenizer.apply_chat_template(messages, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if len(ids) > seq_len or sum(mask) == 0:
        return None
    return ids, mask


def pack_texts(texts, tokenizer, seq_len: int):
    """Plain text -> fixed-length rows ``[CLS] doc [SEP] doc [SEP] ...`` (BERT-style)."""
    stream: list[int] = []
    for text in texts:
        if isinstance(text, str) and text.strip():
            stream += tokenizer(text, add_special_tokens=False)["input_ids"]
            stream.append(tokenizer.sep_token_id)
    body = seq_len - 1
    rows = []
    for i in range(0, len(stream) - body // 2, body):
        chunk = [tokenizer.cls_token_id] + stream[i:i + body]
        rows.append((chunk, [0] + [1] * (len(chunk) - 1)))
    return rows


class Batches:
    """Deterministic, resumable batches: epoch ``e`` visits rows in the order of a
    permutation seeded by ``(seed, e)``; rank ``r`` of ``w`` takes its slice of each
    global batch. ``state()`` / ``load_state()`` give the data position."""

    def __init__(self, rows, batch_size: int, pad_id: int, fill_id: int | None,
                 fill_max: int, seq_len: int, seed: int, rank: int = 0, world: int = 1,
                 group_by_length: bool = False):
        if len(rows) == 0:
            raise ValueError("the dataset has no rows")
        self.rows, self.bs, self.pad_id = rows, batch_size, pad_id
        self.fill_id, self.fill_max, self.seq_len = fill_id, fill_max, seq_len
        self.seed, self.rank, self.world = seed, rank, world
        self.group_by_length = group_by_length
        self.epoch, self.cursor, self.skipped = 0, 0, 0
        self._order = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "skipped": self.skipped}

    def load_state(self, s: dict):
        self.epoch, self.cursor, self.skipped = s["epoch"], s["cursor"], s["skipped"]
        self._order = None

    def _perm(self):
        if self._order is None:
            rng = random.Random(self.seed * 100_003 + self.epoch)
            self._order = list(range(len(self.rows)))
            rng.shuffle(self._order)
            if self.group_by_length:
                self._order = self._grouped(self._order, rng)
        return self._order

    def _grouped(self, order: list[int], rng: random.Random) -> list[int]:
        """The epoch's order with rows of similar length in the same global batch (as
        transformers' ``LengthGroupedSampler``): each run of 50 batches is sorted by length
        and cut into batches, and the full batches are shuffled. A batch is padded to its
        longest row, so a few long answers no longer stretch nearly every batch."""
        g = self.bs * self.world
        mega = 50 * g
        size = [0 if r is None else len(r[0]) for r in self.rows]
        runs = [sorted(order[i:i + mega], key=lambda j: -size[j])
                for i in range(0, len(order), mega)]
        flat = [j for run in runs for j in run]
        n_full = len(flat) // g
        batches = [flat[k * g:(k + 1) * g] for k in range(n_full)]
        rng.shuffle(batches)
        return [j for b in batches for j in b] + flat[n_full * g:]

    def next(self) -> dict:
        order, g = self._perm(), self.bs * self.world
        if self.cursor + g > len(order):
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
            order = self._perm()
        start = self.cursor + self.rank * self.bs
        idx = order[start:start + self.bs]
        self.cursor += g
        items = []
        for i in idx:
            item = self.rows[i]
            if item is None:
                self.skipped += 1
                continue
            ids, lm = item
            if self.fill_id is not None and self.fill_max > 0:
                # extra [SEP] targets after the answer: the model learns to stop and to
                # fill an answer area longer than its answer
                r = random.Random(self.seed * 7_919 + self.epoch * 1_000_003 + i)
                k = min(r.randint(0, self.fill_max), self.seq_len - len(ids))
                ids, lm = ids + [self.fill_id] * k, lm + [1] * k
            items.append((ids, lm))
        if self.fill_id is not None:
            # LLaDA pads short answers with end tokens up to the longest row of the batch:
            # they are real inputs and targets (no attention-masked padding at all)
            return collate(items, self.fill_id, pad_is_target=True)
        return collate(items, self.pad_id)


def collate(items, pad_id: int, pad_is_target: bool = False) -> dict:
    """Right-pad rows to the longest: ``input_ids``, ``attention_mask``, ``loss_mask``.

    With ``pad_is_target`` the padding is made of real tokens (attended to and scored),
    as LLaDA pads answers with end tokens."""
    if not items:
        return {"input_ids": torch.zeros(0, 1, dtype=torch.long),
                "attention_mask": torch.zeros(0, 1, dtype=torch.long),
                "loss_mask": torch.zeros(0, 1, dtype=torch.bool)}
    L = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    am = torch.zeros((len(items), L), dtype=torch.long)
    lm = torch.zeros((len(items), L), dtype=torch.bool)
    for b, (x, m) in enumerate(items):
        ids[b, :len(x)] = torch.tensor(x)
        am[b, :len(x)] = 1
        lm[b, :len(x)] = torch.tensor(m, dtype=torch.bool)
        if pad_is_target:
            am[b, len(x):] = 1
            lm[b, len(x):] = True
    return {"input_ids": ids, "attention_mask": am, "loss_mask": lm}


def load_rows(cfg: TrainConfig, tokenizer, kind: str):
    from .data import load_chat_dataset

    split = cfg.dataset_split or (("pretrain" if kind == "text" else "sft")
                                  if cfg.dataset == "offline" else "train")
    hub = cfg.dataset != "offline" and not Path(cfg.dataset).expanduser().exists()
    try:
        ds = load_chat_dataset(cfg.dataset, split=split, seed=0,
                               version=cfg.corpus_version)
    except ValueError as e:
        if not hub:
            raise
        cause = e.__cause__ or e
        raise SourceUnavailable(f"could not load the dataset {cfg.dataset!r} (split "
                                f"{split!r}): it is not a local file or folder, and the hub "
                                f"could not provide it ({type(cause).__name__}: "
                                f"{str(cause).strip().splitlines()[0]})") from e
    if kind == "text":
        if "text" not in ds.column_names:
            raise ValueError(f"dataset {cfg.dataset!r} has no 'text' column for text training")
        return pack_texts(ds["text"], tokenizer, cfg.seq_len)
    if "messages" not in ds.column_names:
        raise ValueError(f"dataset {cfg.dataset!r} has no 'messages' column; chat training "
                         "needs rows like {'messages': [{'role': 'user', 'content': ...}, "
                         "{'role': 'assistant', 'content': ...}]}")
    return ChatRows(ds, tokenizer, cfg.seq_len)


# -- model -----------------------------------------------------------------------------
def init_model(cfg: TrainConfig):
    """Build (model, tokenizer): from scratch with the course tokenizer, or from weights.

    Objective ``"ar"`` builds the autoregressive baseline instead: a causal ModernBERT
    decoder (``ModernBertDecoderForCausalLM``) of the same shape as the masked models."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
        ModernBertConfig,
        ModernBertDecoderConfig,
        ModernBertDecoderForCausalLM,
        ModernBertForMaskedLM,
    )

    from .tokenizer import CHAT_TEMPLATE, build_tokenizer, ensure_chat_template

    if cfg.model == "scratch":
        tok = (AutoTokenizer.from_pretrained(cfg.tokenizer) if cfg.tokenizer
               else build_tokenizer())
        conf = dict(TINY_MODEL, **cfg.model_config)
        causal = cfg.objective in CAUSAL_OBJECTIVES
        config_class = ModernBertDecoderConfig if causal else ModernBertConfig
        mconf = config_class(
            vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id, cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id, mask_token_id=tok.mask_token_id,
            embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0, **conf)
        torch.manual_seed(cfg.seed)
        model = (ModernBertDecoderForCausalLM if causal else ModernBertForMaskedLM)(mconf)
    else:
        from transformers import AutoConfig

        from .loading import SHIPPED, is_causal, model_path

        path = str(model_path(cfg.model)) if cfg.model in SHIPPED else cfg.model
        causal = cfg.objective in CAUSAL_OBJECTIVES
        config = _load_source(AutoConfig.from_pretrained, path, "model")
        if is_causal(config) != causal:
            raise ValueError(
                f"objective {cfg.objective!r} trains a {'causal' if causal else 'masked'} LM "
                f"but {cfg.model!r} is a {'masked' if causal else 'causal'} one; start from "
                f"model='scratch' or from a {'causal' if causal else 'masked'} checkpoint")
        auto = AutoModelForCausalLM if causal else AutoModelForMaskedLM
        model = _load_source(auto.from_pretrained, path, "model")
        tok = _load_source(AutoTokenizer.from_pretrained, cfg.tokenizer or path, "tokenizer")
    if cfg.chat_template == "course":
        tok.chat_template = CHAT_TEMPLATE
    tok = ensure_chat_template(tok)
    return model, tok


class SourceUnavailable(OSError):
    """A model, tokenizer or dataset that a run names could not be loaded: not a local
    folder, and the hub could not give it (no internet, not in the cache, no such id)."""


def _load_source(load, source: str, what: str):
    """``load(source)``; the hub's or transformers' OSError becomes one clear
    :class:`SourceUnavailable` naming the source."""
    from .loading import _hub_errors, _looks_like_path

    try:
        return load(source)
    except _hub_errors() as e:
        if Path(source).expanduser().exists():
            raise                           # a local folder with a problem of its own
        where = ("there is no such folder" if _looks_like_path(source) else
                 "it is not a local folder, and the hub could not provide it (no internet, "
                 "not in the local cache, or no such repository)")
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceUnavailable(f"could not load the {what} {source!r}: {where}. "
                                f"({type(e).__name__}: {cause})") from e


# -- one step's loss ---------------------------------------------------------------------
def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              where: torch.Tensor) -> torch.Tensor:
    """The logits (N, V) at the positions where ``where`` (B, L) is True, row by row (the
    order of ``where.nonzero()``): the only ones a masked loss reads.

    The vocabulary projection (hidden -> V logits, then the softmax of the loss) is the
    largest cost of a small model, and a masked loss reads a fraction of the positions, so
    the encoder runs on every token and the prediction head on those positions only. For
    transformers' ``ModernBertForMaskedLM`` that is its own ``sparse_prediction`` switch
    (the head runs where ``labels != -100``), turned on for this one call: the model's
    config, its saved checkpoints and every other call (decoding needs all the logits)
    keep the full head. Its built-in loss is skipped for the call (ours is weighted).
    Other models compute every logit and the positions are picked after. ``model`` may be
    wrapped (DDP, ``torch.compile``): the call goes through the wrapper. A mask of ones
    (LLaDA pads chat rows with end tokens that are attended to) is passed as no mask: the
    same result, and the attention kernels skip the masking.

    Taught in ``02_llada_training``.
    """
    from accelerate.utils import extract_model_from_parallel

    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None       # no padding: the attention kernels run without a mask
    inner = extract_model_from_parallel(model)
    if not hasattr(inner, "sparse_prediction"):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[where]
    labels = torch.where(where, input_ids, torch.full_like(input_ids, -100))
    saved = (inner.sparse_prediction, inner.sparse_pred_ignore_index,
             inner.__dict__.get("_loss_function"))
    inner.sparse_prediction, inner.sparse_pred_ignore_index = True, -100
    inner.loss_function = _no_loss
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask,
                     labels=labels).logits                             # (N, V)
    finally:
        inner.sparse_prediction, inner.sparse_pred_ignore_index = saved[:2]
        if saved[2] is None:
            del inner._loss_function                  # back to the class's own
        else:
            inner._loss_function = saved[2]


def _no_loss(*args, **kwargs):
    return None


def step_loss(cfg: TrainConfig, model, batch: dict, step: int, tokenizer, duo_objective,
              generator: torch.Generator, kind: str):
    """The loss of one micro batch under the run's objective. The masked objectives compute
    logits at the positions their loss reads only (:func:`logits_at`)."""
    x0, am, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    if cfg.objective == "mlm":
        specials = torch.tensor(tokenizer.all_special_ids, device=x0.device)
        xt, labels = noise.bert_mask(x0, lm, tokenizer.mask_token_id, len(tokenizer),
                                     cfg.mask_prob, generator=generator,
                                     random_ids=_non_special(len(tokenizer), specials))
        picked = labels != noise.IGNORE_INDEX
        return losses.mlm_loss(logits_at(model, xt, am, picked), labels[picked])
    if cfg.objective == "llada":
        xt, masked, p_mask = noise.llada_mask(x0, lm, tokenizer.mask_token_id, cfg.eps,
                                              generator=generator)
        return losses.llada_loss(logits_at(model, xt, am, masked), x0, masked, p_mask, lm,
                                 inverse_t=cfg.inverse_t)
    if cfg.objective == "ar":
        # position i predicts token i + 1: the head runs where the next token is scored
        # (transformers' logits_to_keep, a boolean mask: the answer's positions in SFT)
        keep = torch.zeros_like(lm, dtype=torch.bool)
        keep[:, :-1] = lm[:, 1:]
        if bool(am.all()):
            am = None
        logits = model(input_ids=x0, attention_mask=am, logits_to_keep=keep).logits
        return losses.ar_loss(logits, x0, lm)
    loss, _ = duo_objective.loss(model, batch, step, generator=generator)
    return loss


def _non_special(vocab_size: int, specials: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(vocab_size, dtype=torch.bool, device=specials.device)
    keep[specials] = False
    return keep.nonzero().squeeze(1)


# -- checkpoints -------------------------------------------------------------------------
def _ckpt_root(cfg) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def latest_checkpoint(output_dir) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    f = root / "latest"
    if not f.exists():
        return None
    p = root / f.read_text().strip()
    return p if (p / "trainer_state.json").exists() else None


def _atomic_write(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(acc, cfg, step: int, data_state: dict):
    root = _ckpt_root(cfg)
    tmp = root / f".tmp-step-{step}"
    final = root / f"step-{step}"
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    states = [None] * acc.num_processes
    if acc.num_processes > 1:
        import torch.distributed as dist

        dist.all_gather_object(states, data_state)
    else:
        states = [data_state]
    if acc.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "data": states, "config": cfg.to_dict()}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)                      # the checkpoint appears whole
        _atomic_write(root / "latest", final.name)  # then becomes the one to resume
        kept = sorted((p for p in root.glob("step-*")), key=lambda p: int(p.name[5:]))
        for old in kept[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def check_resumable(cfg: TrainConfig, saved: dict):
    """Refuse to resume a checkpoint written under a different configuration."""
    defaults = TrainConfig().to_dict()     # fields newer than the checkpoint: defaults
    diff = {k: (saved.get(k, defaults[k]), v) for k, v in cfg.to_dict().items()
            if k not in RESUMABLE_FIELDS and saved.get(k, defaults[k]) != v}
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{cfg.output_dir} holds a checkpoint of a different config ({lines})."
                         " Use another --output-dir, or the same options to resume.")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# -- the loop ------------------------------------------------------------------------------
def lr_lambda(cfg: TrainConfig):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos
    return f


def make_optimizer(cfg: TrainConfig, model, device) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only. Its update runs as one fused kernel
    on a GPU and as multi-tensor (``foreach``) operations elsewhere, instead of a Python
    loop over the parameters: the same update, fewer kernel launches."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    speed = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, **speed)


def train(cfg: TrainConfig, model=None, tokenizer=None, callback=None) -> dict:
    """Train (or resume) a run; returns a summary dict. ``callback(record)`` is called on
    the main process at every logged step (notebooks draw live loss curves with it).

    Taught in ``02_llada_training``.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    # several CPU processes (torchrun on a machine without GPUs): DDP over gloo
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    acc = Accelerator(mixed_precision=mp, cpu=multi_cpu)
    # no "removed shared tensor" note at every save: the decoder is tied to the embeddings
    # on purpose
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if model is None:
        model, tokenizer = init_model(cfg)
    if tokenizer.mask_token_id is None and cfg.objective not in CAUSAL_OBJECTIVES:
        raise ValueError(f"model {cfg.model!r} has no mask token; masked diffusion needs one")
    out = Path(cfg.output_dir)
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        check_resumable(cfg, json.loads((ckpt / "trainer_state.json").read_text())["config"])

    kinds = ["text"] if cfg.data == "text" else (["chat", "text"] if cfg.text_mix else ["chat"])
    streams = {}
    for kind in kinds:
        rows = load_rows(cfg, tokenizer, kind)
        fill = tokenizer.sep_token_id if kind == "chat" else None
        streams[kind] = Batches(rows, cfg.batch_size, tokenizer.pad_token_id, fill,
                                cfg.fill_max, cfg.seq_len, cfg.seed,
                                acc.process_index, acc.num_processes,
                                group_by_length=cfg.group_by_length and kind == "chat")
    duo_objective = None
    if cfg.objective in ("duo", "dcd"):
        from .duo import objective_from_config

        duo_objective = objective_from_config(cfg, tokenizer)

    optimizer = make_optimizer(cfg, model, acc.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if cfg.compile:
        model.compile()     # in place: the module and its state-dict keys stay the same
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(scheduler)

    step = 0
    if ckpt is not None:
        acc.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        step = state["step"]
        data = state["data"][acc.process_index]
        for kind, s in streams.items():
            s.load_state(data[kind])
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(out / "metrics.jsonl", step)

    model.train()
    device = acc.device
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress and
               acc.is_main_process), desc=f"{cfg.objective} {out.name}", dynamic_ncols=True)
    t0, tokens, last_loss = time.time(), 0, float("nan")
    log_losses: list[float] = []
    while step < cfg.max_steps:
        gen, kind = step_plan(cfg, step, acc.process_index)
        step_loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            batch = {k: v.to(device) for k, v in streams[kind].next().items()}
            tokens += int(batch["attention_mask"].sum()) * acc.num_processes
            sync = micro == cfg.grad_accum - 1
            with (nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                if batch["input_ids"].shape[0] == 0:   # every row was bad: a no-op step
                    loss = sum(p.sum() for p in model.parameters()) * 0.0
                else:
                    loss = step_loss(cfg, model, batch, step, tokenizer, duo_objective,
                                     _device_generator(gen, device), kind)
                acc.backward(loss / cfg.grad_accum)
            step_loss_sum += loss.detach().float() / cfg.grad_accum
        mean_loss = acc.reduce(step_loss_sum.reshape(1), reduction="mean").item()
        if not math.isfinite(mean_loss):
            bar.close()
            last = latest_checkpoint(out)
            raise TrainingDiverged(
                f"loss became {mean_loss} at step {step + 1}; stopped without saving. "
                f"Last good checkpoint: {last or 'none yet'}. Lower --lr or check the data.")
        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_loss = mean_loss
        log_losses.append(mean_loss)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            elapsed = time.time() - t0
            rec = {"step": step, "loss": round(sum(log_losses) / len(log_losses), 6),
                   "lr": scheduler.get_last_lr()[0], "kind": kind,
                   "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
                   "skipped_rows": sum(s.skipped for s in streams.values())}
            log_losses = []
            if acc.is_main_process:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                if callback is not None:
                    callback(rec)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_checkpoint(acc, cfg, step, {k: s.state() for k, s in streams.items()})
    bar.close()
    elapsed = time.time() - t0
    if acc.is_main_process:
        from transformers.utils import logging as hf_logging

        unwrapped = acc.unwrap_model(model)
        bars_on = hf_logging.is_progress_bar_enabled()   # quiet: no shard-writing bar
        hf_logging.disable_progress_bar()
        unwrapped.save_pretrained(str(out), state_dict=acc.get_state_dict(model),
                                  safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        if bars_on:                          # leave the reader's setting as it was
            hf_logging.enable_progress_bar()
    acc.wait_for_everyone()
    model = acc.unwrap_model(model)
    model.eval()
    return {"model": model, "tokenizer": tokenizer, "steps": step, "final_loss": last_loss,
            "seconds": elapsed, "tokens": tokens,
            "tokens_per_s": tokens / max(elapsed, 1e-9),
            "skipped_rows": sum(s.skipped for s in streams.values())}


def step_plan(cfg: TrainConfig, step: int, rank: int = 0) -> tuple[torch.Generator, str]:
    """What optimiser step ``step`` of rank ``rank`` does, from the seed alone (so a resumed
    run repeats it exactly): its random generator (noise, masks) and the data kind it
    trains on, "text" for a ``text_mix`` share of chat runs' steps, else ``cfg.data``."""
    gen = torch.Generator(device="cpu").manual_seed(
        (cfg.seed * 1_000_003 + step) * 1_009 + rank)
    use_text = cfg.data == "chat" and cfg.text_mix > 0 and (
        torch.rand(1, generator=gen).item() < cfg.text_mix)
    return gen, "text" if (cfg.data == "text" or use_text) else "chat"


def _device_generator(gen: torch.Generator, device) -> torch.Generator:
    """The step's generator, on the device where the batch lives."""
    if torch.device(device).type == "cpu":
        return gen
    seed = int(torch.randint(2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


def _truncate_metrics(path: Path, step: int):
    """On resume, drop metric lines logged after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= step]
    _atomic_write(path, "".join(ln + "\n" for ln in keep))


def read_metrics(output_dir) -> list[dict]:
    """The run's ``metrics.jsonl`` as a list of dicts."""
    p = Path(output_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


# -- presets and the command line of the root scripts ----------------------------------------
FULL_MODEL = "answerdotai/ModernBERT-large"
FULL_DATA = "allenai/tulu-3-sft-mixture"

PRESETS = {
    "dllm": {
        # CPU, offline corpus, from the shipped tiny-bert: a minute or two
        "tiny": TrainConfig(objective="llada", model="tiny-bert", data="chat", text_mix=0.25,
                            seq_len=384, batch_size=16, lr=1e-3, warmup_steps=20,
                            max_steps=200, fill_max=96, log_every=10, save_every=50,
                            output_dir="runs/dllm-tiny"),
        # 8 x H100: ModernBERT-large, a chat SFT mixture, sequence 512,
        # response-only variable masking; 8 GPUs x 8 rows x 4 accumulation = 256 rows/step
        "full": TrainConfig(objective="llada", model=FULL_MODEL, dataset=FULL_DATA,
                            data="chat", seq_len=512, batch_size=8, grad_accum=4, lr=5e-5,
                            min_lr_ratio=0.1, warmup_steps=500, max_steps=20_000,
                            fill_max=128, log_every=10, save_every=1000,
                            output_dir="runs/dllm-full"),
    },
    "flowlm": {
        "tiny": TrainConfig(objective="duo", model="tiny-bert", data="chat", text_mix=0.25,
                            seq_len=384, batch_size=16, lr=1e-3, warmup_steps=20,
                            max_steps=200, fill_max=96, log_every=10, save_every=50,
                            noise_min=0.0, noise_max=0.6, output_dir="runs/flowlm-tiny"),
        # the seed anneals tau over 500K steps; this preset does the same
        "full": TrainConfig(objective="duo", model=FULL_MODEL, dataset=FULL_DATA,
                            data="chat", seq_len=512, batch_size=8, grad_accum=4, lr=5e-5,
                            warmup_steps=500, max_steps=500_000, fill_max=128,
                            noise_min=0.0, noise_max=0.6, log_every=10, save_every=1000,
                            output_dir="runs/flowlm-full"),
    },
}


def _parse_value(text: str, like):
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(like, dict):
        return json.loads(text)
    if like is None:
        return text
    return type(like)(text)


def _offline_advice(kind: str, preset: str, cfg: TrainConfig, err: Exception) -> str:
    """The one message a root script prints when its model or data cannot be loaded."""
    script = {"dllm": "./train_dllm.py", "flowlm": "./train_flowlm.py"}[kind]
    from .loading import SHIPPED

    def on_hub(source, local_names):
        return source and source not in local_names and not Path(source).expanduser().exists()

    needs = " and ".join(
        f"the {what} {source!r}" for what, source, local in (
            ("model", cfg.model, (*SHIPPED, "scratch")), ("tokenizer", cfg.tokenizer, ()),
            ("dataset", cfg.dataset, ("offline",))) if on_hub(source, local))
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return (f"{script}: {err}\n"
            f"This run (preset {preset!r}) needs {needs} from the Hugging Face hub "
            f"(downloaded on the first run, then cached), so its first run needs internet"
            f"{' (HF_HUB_OFFLINE=1 is set here: the hub was not asked)' if offline else ''}."
            f"\nWithout internet:\n"
            f"  {script} --preset tiny                 # CPU, the shipped tiny model and the "
            f"offline corpus\n"
            f"  {script} --model /path/to/ModernBERT-large --dataset /path/to/chat.jsonl\n"
            f"      # local copies: a model folder (config + weights + tokenizer) and a JSONL "
            f"file or folder of rows {{\"messages\": [...]}}")


def script_main(kind: str, argv=None, doc: str = "") -> dict | None:
    """The command line shared by ``./train_dllm.py`` (kind ``dllm``) and
    ``./train_flowlm.py`` (kind ``flowlm``): presets, every config field as an option,
    self-launch on several GPUs."""
    import argparse
    import subprocess
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS[kind]), default="full",
                   help="tiny: CPU + offline corpus; full (default): the 8 x H100 recipe")
    p.add_argument("--no-launch", action="store_true",
                   help="on a machine with several GPUs, do not relaunch on all of them")
    p.add_argument("--accelerate-config", default=None,
                   help="accelerate config file (configs/fsdp.yaml, configs/deepspeed.yaml)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        opt = "--" + f.name.replace("_", "-")
        p.add_argument(opt, dest=f.name, default=None, metavar=f.name.upper(),
                       help=f"(default: the preset's; built-in {getattr(defaults, f.name)!r})")
    args = p.parse_args(argv)

    # several GPUs and no launcher: launch ourselves on all of them (the seed's
    # "Run with ./train_dllm.py (8 H100s)")
    n_gpu = torch.cuda.device_count()
    launched = any(k in os.environ for k in ("LOCAL_RANK", "RANK", "ACCELERATE_PROCESS_ID"))
    if not launched and not args.no_launch and (n_gpu > 1 or args.accelerate_config):
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if args.accelerate_config:
            cmd += ["--config_file", args.accelerate_config]
        else:
            cmd += ["--multi_gpu", "--num_processes", str(n_gpu)]
        cmd += [sys.argv[0], *argv, "--no-launch"]
        print("launching:", " ".join(cmd), flush=True)
        raise SystemExit(subprocess.call(cmd))

    base = PRESETS[kind][args.preset].to_dict()
    for f in dataclasses.fields(TrainConfig):
        text = getattr(args, f.name)
        if text is not None:
            try:
                base[f.name] = _parse_value(text, base[f.name])
            except ValueError as e:
                p.error(f"--{f.name.replace('_', '-')}: {e}")
    try:
        cfg = TrainConfig.from_dict(base)
    except ValueError as e:
        p.error(str(e))
    try:
        res = train(cfg)
    except SourceUnavailable as e:
        raise SystemExit(_offline_advice(kind, args.preset, cfg, e)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {res['steps']} steps, final loss {res['final_loss']:.4f}, "
              f"{res['tokens_per_s']:.0f} tokens/s; model saved to {cfg.output_dir}")
    return res
