"""The training core: exact resume, NaN stop, bad rows, config checks, the root scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dllm_lesson import training
from dllm_lesson.training import TrainConfig, TrainingDiverged, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, global_attn_every_n_layers=2, local_attention=16)


def small_cfg(out, **kw):
    base = dict(objective="llada", model="scratch", model_config=SMALL, data="chat",
                seq_len=96, batch_size=4, lr=3e-3, warmup_steps=2, max_steps=6,
                fill_max=8, log_every=1, save_every=3, output_dir=str(out), progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("objective,data,text_mix", [
    ("llada", "chat", 0.5), ("mlm", "text", 0.0), ("duo", "chat", 0.3)])
def test_resume_is_exact(tmp_path, objective, data, text_mix):
    """Stopped after 3 steps and rerun on the same output dir, a run logs the same later
    losses as an uninterrupted one (CPU, within 1e-4)."""
    kw = dict(objective=objective, data=data, text_mix=text_mix)
    train(small_cfg(tmp_path / "full", **kw))

    def crash(rec):  # the run dies after logging step 4, whose checkpoint never came
        if rec["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(tmp_path / "part", **kw), callback=crash)
    assert training.latest_checkpoint(tmp_path / "part").name == "step-3"
    train(small_cfg(tmp_path / "part", **kw))
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "part")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]   # no duplicated or lost lines
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])
    assert len({round(v, 6) for v in a.values()}) > 1     # the loss really moves


def test_group_by_length_pads_less_and_visits_every_row():
    """group_by_length: batches of rows of similar length, so far fewer end tokens pad
    the short answers up to a long one; an epoch still visits every row once, each
    epoch in another order, and a restored data position continues the same batches."""
    rng = __import__("random").Random(0)
    lengths = [rng.choice([20, 30, 40]) if rng.random() < 0.9 else 300 for _ in range(640)]
    rows = [([7] * n, [1] * n) for n in lengths]

    def epoch(group, seed=0):
        b = training.Batches(rows, 16, 0, None, 0, 512, seed=seed, group_by_length=group)
        out = [b.next() for _ in range(40)]
        return out, b

    plain, _ = epoch(False)
    grouped, b = epoch(True)
    cells = [sum(x["input_ids"].numel() for x in e) for e in (plain, grouped)]
    assert cells[1] < cells[0] / 3, cells                   # 10% long rows: 3x less padding
    seen = sorted(n for x in grouped for n in x["attention_mask"].sum(1).tolist())
    assert seen == sorted(lengths)                          # every row once
    assert [x["input_ids"].shape[1] for x in grouped] != sorted(
        x["input_ids"].shape[1] for x in grouped)          # long batches anywhere, not last
    state = b.state()
    nxt = b.next()
    again = training.Batches(rows, 16, 0, None, 0, 512, seed=0, group_by_length=True)
    again.load_state(state)
    assert torch.equal(again.next()["attention_mask"], nxt["attention_mask"])
    other, _ = epoch(True, seed=1)
    assert [x["input_ids"].shape for x in other] != [x["input_ids"].shape for x in grouped]


def test_resume_differs_without_state(tmp_path):
    """Control for the test above: a fresh run with another seed logs other losses."""
    train(small_cfg(tmp_path / "a", max_steps=3))
    train(small_cfg(tmp_path / "b", max_steps=3, seed=1))
    a = [r["loss"] for r in read_metrics(tmp_path / "a")]
    b = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3


def _full_logits_loss(cfg, model, batch, tok, gen):
    """The loss as the core computed it before logits_at: every position's logits, the
    formulas of that version written out (the noise drawn exactly as step_loss draws it)."""
    import torch.nn.functional as F

    from dllm_lesson import noise

    x0, am, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    if cfg.objective == "mlm":
        specials = torch.tensor(tok.all_special_ids)
        xt, labels = noise.bert_mask(x0, lm, tok.mask_token_id, len(tok), cfg.mask_prob,
                                     generator=gen,
                                     random_ids=training._non_special(len(tok), specials))
        logits = model(input_ids=xt, attention_mask=am).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                               ignore_index=-100)
    xt, masked, p_mask = noise.llada_mask(x0, lm, tok.mask_token_id, cfg.eps, generator=gen)
    logits = model(input_ids=xt, attention_mask=am).logits
    ce = F.cross_entropy(logits.transpose(1, 2).float(), x0, reduction="none")
    w = masked.float() / p_mask
    return ((ce * w).sum(1) / lm.sum(1).clamp(min=1)).mean()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("objective,kind", [("mlm", "text"), ("llada", "text"),
                                            ("llada", "chat")])   # chat + llada: SFT
def test_sparse_logits_same_loss_and_gradients(objective, kind):
    """The core computes logits only where the loss reads them (training.logits_at); on
    one real batch of each objective its loss equals the full-logits loss to 1e-5, and so
    do the gradients; the model's config and full forward are untouched after."""
    cfg = TrainConfig(objective=objective, model="tiny-bert", data=kind, seq_len=128,
                      batch_size=4, fill_max=16, mask_prob=0.3)
    model, tok = training.init_model(cfg)
    fill = tok.sep_token_id if kind == "chat" else None
    batches = training.Batches(training.load_rows(cfg, tok, kind), cfg.batch_size,
                               tok.pad_token_id, fill, cfg.fill_max, cfg.seq_len, cfg.seed)
    batch = batches.next()
    results = []
    for sparse in (True, False):
        model.zero_grad()
        gen = torch.Generator().manual_seed(123)
        loss = (training.step_loss(cfg, model, batch, 0, tok, None, gen, kind) if sparse
                else _full_logits_loss(cfg, model, batch, tok, gen))
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                      if p.grad is not None}))
    (a, ga), (b, gb) = results
    assert a > 0 and abs(a - b) <= 1e-5 * max(1.0, abs(b)), (a, b)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for name in ga:
        scale = gb[name].abs().max().item()
        assert scale > 0, name                       # every parameter gets a gradient
        assert (ga[name] - gb[name]).abs().max().item() <= 1e-3 * scale, name
    assert model.config.sparse_prediction is False and model.sparse_prediction is False
    ids = batch["input_ids"][:1]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_logits_at_other_models():
    """A model without transformers' sparse head (the library's compact ModernBERT) gets
    the same logits from logits_at: all computed, then picked."""
    from dllm_lesson import load_model

    model, _ = load_model("tiny-bert", backend="lesson")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (2, 12), generator=g)
    am = torch.ones_like(ids)
    where = torch.rand(2, 12, generator=g) < 0.4
    got = training.logits_at(model, ids, am, where)
    assert got.shape == (int(where.sum()), model.vocab_size)
    torch.testing.assert_close(got, model(input_ids=ids, attention_mask=am).logits[where])


def test_compile_option_trains_the_same(tmp_path, monkeypatch):
    """``compile=True`` (torch.compile of the model, in place) trains the same losses on a
    CPU, and its checkpoint resumes without compiling (same state-dict keys). Inductor's
    C++ compilation takes minutes here on a busy CPU (measured: 441 s for 3 steps, the
    same losses), so the test compiles through dynamo and AOT autograd only
    (``aot_eager``): our side of it (tracing the sparse head, the wrappers, the
    checkpoints) is what it checks."""
    try:
        torch.compile(lambda x: x * 2, backend="aot_eager")(torch.ones(2))
    except Exception as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.compile does not work here: {e}")
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: real(self, **{"backend": "aot_eager", **kw}))
    train(small_cfg(tmp_path / "plain", max_steps=3))
    train(small_cfg(tmp_path / "compiled", max_steps=2, save_every=2, compile=True))
    train(small_cfg(tmp_path / "compiled", max_steps=3, compile=False))   # resumes
    a = [r["loss"] for r in read_metrics(tmp_path / "plain")]
    b = [r["loss"] for r in read_metrics(tmp_path / "compiled")]
    assert len(a) == len(b) == 3
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4, (a, b)


def test_optimizer_and_older_checkpoints():
    """AdamW runs multi-tensor on a CPU (fused on a GPU); a checkpoint whose saved config
    predates a field (here ``compile``) resumes when the field has its default."""
    cfg = small_cfg("unused")
    opt = training.make_optimizer(cfg, torch.nn.Linear(3, 2), "cpu")
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    saved = {k: v for k, v in cfg.to_dict().items() if k != "compile"}
    training.check_resumable(cfg, saved)
    with pytest.raises(ValueError, match="different config"):
        training.check_resumable(small_cfg("unused", lr=0.5), saved)


def test_outputs_hf_format_and_metrics(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    res = train(small_cfg(tmp_path / "run", max_steps=2))
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert tok.chat_template and tok.mask_token == "[MASK]"
    ids = torch.tensor([[2, 5, 4, 3]])
    assert model(input_ids=ids).logits.shape == (1, 4, len(tok))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(r) for r in rows)
    assert res["steps"] == 2 and res["tokens"] > 0


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path / "run", max_steps=6, save_every=2)
    real = training.step_loss

    def poisoned(cfg_, model, batch, step, *a, **k):
        loss = real(cfg_, model, batch, step, *a, **k)
        return loss * float("nan") if step == 4 else loss

    monkeypatch.setattr(training, "step_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step 5"):
        train(cfg)
    last = training.latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name == "step-4"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 4
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no NaN model exported


def test_bad_rows_are_skipped_and_counted(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "The capital of France is Paris."}]},
        {"messages": [{"role": "user", "content": "no answer here"}]},          # no assistant
        {"messages": [{"role": "user", "content": "long " * 200},
                      {"role": "assistant", "content": "too long"}]},            # > seq_len
        {"messages": [{"role": "user", "content": 3}, {"content": None}]},       # not text
        {"messages": "not a list"},
    ] * 4
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train(small_cfg(tmp_path / "run", dataset=str(data), max_steps=3, batch_size=5))
    # 3 steps x 5 rows from a shuffled 20-row table with 16 bad rows: most are skipped
    assert res["skipped_rows"] >= 5
    logged = read_metrics(tmp_path / "run")[-1]["skipped_rows"]
    assert logged == res["skipped_rows"] and logged > 0


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1})
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="gpt")   # "ar" is the causal baseline now
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(small_cfg(tmp_path / "r1", dataset=str(tmp_path / "missing.jsonl")))
    (tmp_path / "plain.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(ValueError, match="no 'messages' column"):
        train(small_cfg(tmp_path / "r2", dataset=str(tmp_path / "plain.jsonl")))
    # an output dir holding a checkpoint of a different config: refused, nothing lost
    train(small_cfg(tmp_path / "r3", max_steps=3))
    before = sorted(p.name for p in (tmp_path / "r3" / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="different config"):
        train(small_cfg(tmp_path / "r3", max_steps=6, lr=1e-2))
    assert sorted(p.name for p in (tmp_path / "r3" / "checkpoints").iterdir()) == before


def test_model_without_mask_token(tmp_path, tiny_modernbert_dir):
    src = tmp_path / "nomask"
    shutil.copytree(tiny_modernbert_dir, src)
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.mask_token = None
    model = AutoModelForMaskedLM.from_pretrained(src)
    with pytest.raises(ValueError, match="no mask token"):
        train(small_cfg(tmp_path / "run"), model=model, tokenizer=tok)


def _script_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


@pytest.mark.parametrize("script", ["train_dllm.py", "train_flowlm.py"])
def test_script_help(script):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                         text=True, env=_script_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--preset" in out.stdout and "--output-dir" in out.stdout
    assert "--max-steps" in out.stdout


def test_script_rejects_bad_option(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train_dllm.py"), "--preset", "tiny",
                          "--lr", "fast"], capture_output=True, text=True,
                         env=_script_env(), timeout=120)
    assert out.returncode != 0 and "--lr" in out.stderr


@pytest.mark.parametrize("script", ["train_dllm.py", "train_flowlm.py"])
def test_script_full_preset_offline(tmp_path, script):
    """The default (full) preset without internet: one message naming what it needs and
    how to run offline, not a traceback."""
    env = dict(_script_env(), HF_HOME=str(tmp_path / "empty-cache"))
    out = subprocess.run([sys.executable, str(ROOT / script), "--max-steps", "1",
                          "--output-dir", str(tmp_path / "run")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for needed in (training.FULL_MODEL, training.FULL_DATA, "--preset tiny",
                   f"./{script} --model /path/to/"):
        assert needed in out.stderr, (needed, out.stderr[-3000:])


def test_flowlm_script_resume_is_exact(tmp_path):
    """``./train_flowlm.py --preset tiny`` (Duo) stopped after its step-2 checkpoint and
    started again on the same output dir logs the uninterrupted run's later losses."""
    def run(out):
        cmd = [sys.executable, str(ROOT / "train_flowlm.py"), "--preset", "tiny",
               "--max-steps", "4", "--batch-size", "4", "--seq-len", "128",
               "--save-every", "2", "--keep-checkpoints", "2", "--log-every", "1",
               "--output-dir", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=_script_env(),
                             timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]

    run(tmp_path / "full")
    run(tmp_path / "part")
    # the state a crash between the step-2 and step-4 checkpoints leaves behind: the
    # metrics of steps 3-4 were written; their checkpoint, the "latest" pointer to it and
    # the final model were not
    part = tmp_path / "part"
    shutil.rmtree(part / "checkpoints" / "step-4")
    (part / "checkpoints" / "latest").write_text("step-2")
    (part / "model.safetensors").unlink()
    assert training.latest_checkpoint(part).name == "step-2"
    run(part)
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    b = {r["step"]: r["loss"] for r in read_metrics(part)}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]           # steps 3-4 logged once
    for step in (3, 4):
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])
    assert (part / "model.safetensors").exists()
    assert len({round(v, 6) for v in a.values()}) > 1


def test_torchrun_two_cpu_processes(tmp_path):
    """``torchrun --standalone --nproc_per_node=2 train_dllm.py --preset tiny`` on CPUs
    (gloo): both ranks train, rank 0 writes metrics and the model."""
    from dllm_lesson.loading import model_path

    try:
        model_path("tiny-bert")
    except Exception as e:  # pragma: no cover - shipped models are part of the package
        pytest.fail(f"shipped tiny-bert missing: {e}")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(ROOT / "train_dllm.py"), "--preset", "tiny",
           "--max-steps", "2", "--batch-size", "2", "--seq-len", "256",
           "--save-every", "1", "--log-every", "1", "--output-dir", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_script_env(), timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "model.safetensors").exists()
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert len(state["data"]) == 2                       # one data position per rank
    # each step consumed one global batch: 2 ranks x batch 2 (ranks take disjoint slices)
    assert [d["chat"]["cursor"] for d in state["data"]] == [8, 8]
